/**
 * The content-defined chunker against SHA-256 on the main thread:
 * `node_modules/.bin/node bench/chunker.ts [MiB]` (256 MiB of pseudo-random data by default).
 *
 * Each parameter set is chunked twice: through nextCut over the whole buffer (the hot loop
 * alone) and through the Transform fed 64 KiB writes, as a file read stream delivers them (so
 * nearly every chunk spans inputs and is copied once). "Per edit" is how many bytes of new
 * chunks 16 scattered 100-byte insertions produce, divided by 16: what dedup loses per edit.
 * Best of 3 runs for the timings, since the machine is shared.
 */
import { createCipheriv, createHash, hash } from 'node:crypto';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createChunker, DEFAULT_CHUNKER, gearTable, nextCut, type ChunkerParams } from '../src/transport/repository/chunker.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const totalBytes = Number(process.argv[2] ?? '256') * MiB;
const runs = 3;

/** AES-CTR keystream: random enough for a hash, reproducible, and ~GB/s to make. */
function pseudoRandom(bytes: number, seed = 0): Buffer {
  const key = Buffer.alloc(32, seed);
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(bytes));
}

function best(run: () => void | Promise<void>): Promise<number> {
  return (async () => {
    let fastest = Infinity;
    for (let r = 0; r < runs; r++) {
      const before = performance.now();
      await run();
      fastest = Math.min(fastest, (performance.now() - before) / 1000);
    }
    return fastest;
  })();
}

function cuts(gear: Uint32Array, params: ChunkerParams, data: Buffer): number[] {
  const ends: number[] = [];
  for (let at = 0; at < data.length; ) ends.push((at = nextCut(gear, params, data, at)));
  return ends;
}

/** The same pipeline through `through` (the chunker, or a pass-through to time the plumbing alone). */
async function streamed(through: Transform, data: Buffer): Promise<number> {
  let chunks = 0;
  const pieces = (function* () {
    for (let at = 0; at < data.length; at += 64 * KiB) yield data.subarray(at, at + 64 * KiB);
  })();
  await pipeline(
    Readable.from(pieces, { objectMode: false }),
    through,
    new Writable({
      objectMode: true,
      write(_chunk: Buffer, _encoding, callback) {
        chunks++;
        callback();
      },
    }),
  );
  return chunks;
}

function chunkIds(data: Buffer, ends: number[]): Map<string, number> {
  const ids = new Map<string, number>();
  let start = 0;
  for (const end of ends) {
    ids.set(hash('sha256', data.subarray(start, end), 'base64'), end - start);
    start = end;
  }
  return ids;
}

/** Bytes of new chunks per 100-byte insertion, over 16 insertions spread through the data. */
function bytesPerEdit(gear: Uint32Array, params: ChunkerParams, data: Buffer): number {
  const parts: Buffer[] = [];
  const edits = 16;
  const step = Math.floor(data.length / edits);
  for (let e = 0; e < edits; e++) {
    parts.push(data.subarray(e * step, e * step + step / 2), pseudoRandom(100, 200 + e), data.subarray(e * step + step / 2, (e + 1) * step));
  }
  parts.push(data.subarray(edits * step));
  const edited = Buffer.concat(parts);
  const before = chunkIds(data, cuts(gear, params, data));
  let fresh = 0;
  for (const [id, size] of chunkIds(edited, cuts(gear, params, edited))) if (!before.has(id)) fresh += size;
  return fresh / edits;
}

const data = pseudoRandom(totalBytes);
const gear = gearTable(Buffer.alloc(32, 7));
const mbps = (seconds: number) => (totalBytes / 1e6 / seconds).toFixed(0);
const size = (bytes: number) => (bytes >= MiB ? `${(bytes / MiB).toFixed(2)} MiB` : `${(bytes / KiB).toFixed(0)} KiB`);
const label = (p: ChunkerParams) => `${size(p.minBytes)} / ${size(p.avgBytes)} / ${size(p.maxBytes)}`.replaceAll('.00', '');

const sets: ChunkerParams[] = [
  { minBytes: 256 * KiB, avgBytes: 512 * KiB, maxBytes: 2 * MiB },
  DEFAULT_CHUNKER,
  { minBytes: 1 * MiB, avgBytes: 2 * MiB, maxBytes: 8 * MiB },
  { minBytes: 256 * KiB, avgBytes: 1 * MiB, maxBytes: 8 * MiB },
];

console.log(`${size(totalBytes)} of pseudo-random data, main thread, node ${process.version}, best of ${runs}\n`);
console.log('| min / avg / max | chunks | mean chunk | at max | nextCut MB/s | stream (64 KiB writes) MB/s | new bytes per edit |');
console.log('|---|---|---|---|---|---|---|');
for (const params of sets) {
  let ends: number[] = [];
  const scanSeconds = await best(() => {
    ends = cuts(gear, params, data);
  });
  let streamedChunks = 0;
  const streamSeconds = await best(async () => {
    streamedChunks = await streamed(createChunker(gear, params), data);
  });
  if (streamedChunks !== ends.length) throw new Error(`the stream made ${streamedChunks} chunks, nextCut ${ends.length}`);
  let atMax = 0;
  for (let k = 0, start = 0; k < ends.length; start = ends[k++]!) if (ends[k]! - start === params.maxBytes) atMax++;
  const mark = params === DEFAULT_CHUNKER ? ' (default)' : '';
  console.log(
    `| ${label(params)}${mark} | ${ends.length} | ${size(totalBytes / ends.length)} | ${atMax} | ${mbps(scanSeconds)} | ${mbps(streamSeconds)} | ${size(bytesPerEdit(gear, params, data))} |`,
  );
}

const plumbingSeconds = await best(async () => {
  await streamed(new Transform({ readableObjectMode: true, transform: (chunk, _encoding, callback) => callback(null, chunk) }), data);
});
const sha256Seconds = await best(() => {
  createHash('sha256').update(data).digest();
});
const perChunkSeconds = await best(() => {
  chunkIds(data, cuts(gear, DEFAULT_CHUNKER, data));
});
console.log('\n| for comparison | MB/s |');
console.log('|---|---|');
console.log(`| the stream's plumbing alone (64 KiB writes, pass-through) | ${mbps(plumbingSeconds)} |`);
console.log(`| SHA-256 (node:crypto), whole buffer | ${mbps(sha256Seconds)} |`);
console.log(`| nextCut (default) + SHA-256 of each chunk, one after the other | ${mbps(perChunkSeconds)} |`);
