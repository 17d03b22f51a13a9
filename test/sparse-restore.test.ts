import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, stat, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { dataRuns } from '../src/snapshot/files/data-runs.ts';
import { StagingWriter } from '../src/snapshot/files/staging-writer.ts';
import { loopMount } from './support/cgroup.ts';
import { cli, cliJson, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { MiB, run, tempDir } from './support/tree.ts';

const KiB = 1024;
const BLOCK = 4 * KiB;

/** Bytes the filesystem allocated for a file (st_blocks counts 512-byte units). */
async function allocated(file: string): Promise<number> {
  return (await stat(file)).blocks * 512;
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** A sparse file of `size` bytes holding random data only at the given [offset, length] places. */
async function sparseFile(file: string, size: number, data: [number, number][]): Promise<void> {
  const handle = await open(file, 'wx');
  try {
    await handle.truncate(size);
    for (const [offset, length] of data) await handle.write(randomBytes(length), 0, length, offset);
  } finally {
    await handle.close();
  }
}

/** Random data and zero runs, in order: [kind, length]. */
function pattern(parts: ['data' | 'zeros', number][]): Buffer {
  return Buffer.concat(parts.map(([kind, length]) => (kind === 'data' ? randomBytes(length) : Buffer.alloc(length))));
}

describe('StagingWriter leaves aligned zero blocks as holes', () => {
  // Blocks 0, 1, 4 and 5 hold data; blocks 2 and 3 are zeros, and so is everything from
  // 24,000 to the end, which is not a multiple of the block size.
  const layout: ['data' | 'zeros', number][] = [
    ['data', 5000],
    ['zeros', 15_000], // 5,000–20,000: covers blocks 2 and 3 only, part of 1 and 4
    ['data', 1000],
    ['zeros', 2000], // 21,000–23,000: shorter than a block, inside block 5
    ['data', 1000],
    ['zeros', 17_060], // to 41,060, the last bytes of the file
  ];
  const mtime = new Date('2003-04-05T06:07:08Z');

  /** Pieces of odd sizes (1 byte to ~9 KiB), so that chunk boundaries fall anywhere in a block. */
  function splitOddly(content: Buffer): Buffer[] {
    const sizes = [1, 4095, 4097, 3, 777, 8191, 13, 9001];
    const pieces: Buffer[] = [];
    for (let offset = 0, i = 0; offset < content.length; i++) {
      const end = Math.min(content.length, offset + sizes[i % sizes.length]!);
      pieces.push(content.subarray(offset, end));
      offset = end;
    }
    return pieces;
  }

  // 41 KiB goes through the small-file path (written from memory in the background), 1 MiB
  // more through the streaming one: both must keep the holes.
  for (const [kind, lead] of [
    ['small', 0],
    ['large', MiB],
  ] as const) {
    it(`writes a ${kind} file split at odd offsets with the same bytes, length, mode and mtime, allocating only the data blocks`, async () => {
      const dir = await tempDir('sparse-writer-');
      try {
        const content = Buffer.concat([Buffer.alloc(lead), pattern(layout)]);
        const writer = new StagingWriter(dir.path, false);
        await writer.file('f.bin', { mode: 0o640, uid: 0, gid: 0, mtime }, content.length, (async function* () {
          yield* splitOddly(content);
        })());
        await writer.finish();

        const file = path.join(dir.path, 'f.bin');
        expect((await readFile(file)).equals(content)).toBe(true);
        const stats = await stat(file);
        expect(stats.size).toBe(lead + 41_060);
        expect(stats.mode & 0o7777).toBe(0o640);
        // Set after the final ftruncate, or the file would carry the restore's time.
        expect(stats.mtimeMs).toBe(mtime.getTime());
        expect(await allocated(file)).toBe(4 * BLOCK);
      } finally {
        await dir.cleanup();
      }
    });
  }

  it('aligns blocks on the file offset, not on the chunk, and writes a zero run shorter than a block as data', () => {
    // At file offset 4,000: data 0–50, zeros 50–8,000, data 8,000–8,100.
    const chunk = pattern([
      ['data', 50],
      ['zeros', 7950],
      ['data', 100],
    ]);
    // File 4,000–4,096 (its zeros included) is data, 4,096–8,192 a hole, 8,192–12,100 data.
    expect([...dataRuns(chunk, 4000)]).toEqual([
      [0, 96],
      [4192, 8100],
    ]);
  });
});

/** The same sparse tree restored through the real CLI, into a temp directory and into a loop-mounted ext4. */
describe('restore keeps sparse files sparse (real CLI, fs store)', () => {
  let sandbox: Sandbox;
  let source: string;
  let manifest: Manifest;
  let unmount: (() => Promise<void>) | undefined;
  const args = () => ['--config', sandbox.configPath];
  const files = ['disk.img', 'ends-in-hole.bin', 'unaligned-zeros.bin', 'small-sparse.bin', 'all-zeros.bin'];

  beforeAll(async () => {
    sandbox = await createSandbox();
    source = path.join(sandbox.dir, 'source');
    await mkdir(source);
    // 64 MiB with a few KiB at the start, in the middle (across a block boundary) and at the end.
    await sparseFile(path.join(source, 'disk.img'), 64 * MiB, [
      [0, 3 * KiB],
      [32 * MiB - 1000, 4 * KiB],
      [64 * MiB - 2 * KiB, 2 * KiB],
    ]);
    await sparseFile(path.join(source, 'ends-in-hole.bin'), 5 * MiB + 123, [
      [0, 10 * KiB],
      [MiB + 7, 1000],
    ]);
    // Written whole, not sparse: only its one aligned zero block (12,288–16,384) may become a hole.
    await writeFile(
      path.join(source, 'unaligned-zeros.bin'),
      pattern([
        ['data', 10_000],
        ['zeros', 10_000],
        ['data', 3000],
        ['zeros', 3000],
        ['data', 5000],
      ]),
    );
    await sparseFile(path.join(source, 'small-sparse.bin'), 200 * KiB, [
      [0, KiB],
      [199 * KiB, KiB],
    ]);
    await sparseFile(path.join(source, 'all-zeros.bin'), 3 * MiB, []);

    // Smaller than the tree's 72 MiB of apparent size: it fits because the restore keeps holes,
    // and the free-space check counts what the files took on disk (allocatedBytes).
    const mountPoint = path.join(sandbox.dir, 'ext4');
    unmount = await loopMount('ext4', path.join(sandbox.dir, 'ext4.img'), mountPoint, '64M');
    await sandbox.writeConfig({
      environments: {
        site: filesEnv({ uploads: source }),
        tmpcopy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }),
        ext4copy: filesEnv({ uploads: mountPoint }),
      },
    });
    manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
  });
  afterAll(async () => {
    await unmount?.();
    await sandbox.cleanup();
  });

  for (const [target, where] of [
    ['tmpcopy', 'the temp directory'],
    ['ext4copy', 'a loop-mounted ext4'],
  ] as const) {
    it(`restores identical bytes with about the source's allocation into ${where}`, async () => {
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', target, '--yes']);
      expect(restore.exitCode, restore.stderr).toBe(0);
      const restored = target === 'tmpcopy' ? path.join(sandbox.dir, 'copy') : path.join(sandbox.dir, 'ext4');
      await run('sync', ['-f', path.join(restored, 'disk.img')]);

      for (const name of files) {
        const [from, to] = [path.join(source, name), path.join(restored, name)];
        expect((await stat(to)).size, name).toBe((await stat(from)).size);
        expect(await sha256(to), name).toBe(await sha256(from));
      }
      // A few blocks of slack for the filesystem's own extent blocks.
      for (const name of ['disk.img', 'ends-in-hole.bin', 'small-sparse.bin', 'all-zeros.bin']) {
        expect(await allocated(path.join(restored, name)), name).toBeLessThanOrEqual((await allocated(path.join(source, name))) + 4 * BLOCK);
      }
      expect(await allocated(path.join(restored, 'disk.img'))).toBeLessThan(MiB);
      expect(await allocated(path.join(restored, 'all-zeros.bin'))).toBe(0);
      // The aligned zero block is a hole; the shorter and unaligned zero runs around it are data.
      // Counted in the target's blocks: an ext4 this small has 1 KiB ones.
      const unaligned = path.join(restored, 'unaligned-zeros.bin');
      const { bsize } = await statfs(restored);
      expect(await allocated(unaligned)).toBe(Math.ceil((await stat(unaligned)).size / bsize) * bsize - BLOCK);
    });
  }
});
