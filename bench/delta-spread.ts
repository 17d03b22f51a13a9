/**
 * What a database's second dump stores as deltas, and how much that varies between repositories
 * (docs/repository.md, "Databases"): each run opens a repository with a fresh key (so the chunker
 * cuts elsewhere) on a fresh fs store, writes a dump-like stream, then the same with one row in a
 * hundred changed in place with the first as its parent, and takes the second's new bytes over
 * the first's. A moved cut shows as a run far above the median.
 *
 *   node_modules/.bin/node bench/delta-spread.ts [--runs 48] [--chunker small|agent] [--mib 4]
 *
 * small: the contract test's chunker (16/64/256 KiB); agent: the agent's default (512 KiB/1 MiB/8 MiB).
 * Prints the median, mean, min and max share, and every run's. Scratch in BENCH_DIR (default
 * /var/tmp/storage-agent-bench)/delta-spread, removed at the end.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { openRepository } from '../src/transport/repository/repository.ts';
import { FsObjectStore } from '../src/transport/stores/fs-store.ts';
import { dumpLike, editRows } from '../test/support/dump-like.ts';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '48' }, chunker: { type: 'string', default: 'small' }, mib: { type: 'string', default: '4' } } });
const runs = Number(values.runs);
const mib = Number(values.mib);
if (!(runs >= 1) || !(mib > 0) || !['small', 'agent'].includes(values.chunker)) throw new Error('usage: delta-spread.ts [--runs N] [--chunker small|agent] [--mib M]');
const options = values.chunker === 'small' ? { chunker: { minBytes: 16 << 10, avgBytes: 64 << 10, maxBytes: 256 << 10 }, packBytes: 1 << 20 } : {};

const first = dumpLike(mib << 20, 0);
const second = editRows(first, 1);
const scratch = path.join(process.env.BENCH_DIR ?? '/var/tmp/storage-agent-bench', 'delta-spread');
await mkdir(scratch, { recursive: true });
const shares: number[] = [];
try {
  for (let run = 0; run < runs; run++) {
    const root = await mkdtemp(path.join(scratch, 'run-'));
    const store = new FsObjectStore(root);
    const secret = randomBytes(32);
    const keys = { signing: { id: 'bench', secret }, verifying: new Map([['bench', secret]]) };
    const write = async (data: Buffer, parent?: string) => {
      const repository = await openRepository(store, 'bench', keys, { create: true, ...options });
      const written = await repository.writeStream(Readable.from([Buffer.from(data)]), parent ? { parent } : {});
      await repository.commit();
      return written;
    };
    const a = await write(first);
    const b = await write(second, a.root);
    shares.push(b.newBytes / a.newBytes);
    await rm(root, { recursive: true });
  }
} finally {
  await rm(scratch, { recursive: true, force: true });
}
const sorted = [...shares].sort((x, y) => x - y);
const pct = (x: number) => `${(x * 100).toFixed(2)} %`;
console.log(`${runs} runs, ${mib} MiB, ${values.chunker} chunker: second generation stores, of the first: median ${pct(sorted[runs >> 1]!)}, mean ${pct(shares.reduce((s, x) => s + x, 0) / runs)}, min ${pct(sorted[0]!)}, max ${pct(sorted.at(-1)!)}`);
console.log(`each run: ${shares.map(pct).join(', ')}`);
