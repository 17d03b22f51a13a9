import { randomBytes } from 'node:crypto';
import { appendFileSync, truncateSync } from 'node:fs';
import { mkdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isAgentError } from '../src/errors.ts';
import { recycle } from '../src/chunk-recycling.ts';
import { extractTree } from '../src/snapshot/files/extract.ts';
import { packTree, type PackStats } from '../src/snapshot/files/pack.ts';
import {
  buildFixtureTree,
  DEEP_FILE,
  describeTree,
  hardLinkGroups,
  listArchive,
  LONG_NAME,
  MiB,
  openPaths,
  run,
  tempDir,
  type TempDir,
} from './support/tree.ts';

let work: TempDir;
beforeEach(async () => {
  work = await tempDir('files-pack-');
});
afterEach(async () => {
  await work.cleanup();
});

async function packToBuffer(root: string, excludes?: string[]): Promise<{ archive: Buffer; stats: PackStats }> {
  const { stream, stats } = packTree(root, { excludes });
  const archive = await buffer(stream);
  return { archive, stats: await stats };
}

async function makeDir(name: string): Promise<string> {
  const dir = path.join(work.path, name);
  await mkdir(dir);
  return dir;
}

/** Resolves once the stream has stopped filling: the worker is out of credit, mid-file. */
async function untilWorkerBlocked(stream: Readable): Promise<void> {
  let last = -1;
  while (stream.readableLength === 0 || stream.readableLength !== last) {
    last = stream.readableLength;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

describe('packTree', () => {
  it('fills again the chunks its consumer hands back, and the archive stays the same bytes', async () => {
    const source = await makeDir('source');
    // Several times the chunks in flight (a few of 3 MiB), so that chunks go round more than once.
    for (let i = 0; i < 12; i++) await writeFile(path.join(source, `f${i}`), randomBytes(3 * MiB + i));
    const plain = (await packToBuffer(source)).archive;

    const { stream, stats } = packTree(source);
    const copies: Buffer[] = [];
    let handedBack = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      copies.push(Buffer.from(chunk));
      recycle(chunk);
      if (chunk.length === 0) handedBack++; // transferred back to the worker
    }
    await stats;
    expect(handedBack).toBeGreaterThan(5);
    expect(Buffer.concat(copies).equals(plain)).toBe(true);
  });

  it('round trips every kind of entry through extractTree: content, modes, owners, mtimes, links, names', async () => {
    const source = await makeDir('source');
    await buildFixtureTree(source);

    const { archive, stats } = await packToBuffer(source);
    const restored = await makeDir('restored');
    // Kept here: modes round trip exactly (a restore through the driver clears them by default).
    const extracted = await extractTree(Readable.from([archive]), restored, { keepSetuid: true });

    expect(describeTree(restored)).toEqual(describeTree(source));
    expect(hardLinkGroups(restored)).toEqual([['dir/hard-b', 'hard-a']]);
    expect(hardLinkGroups(source)).toEqual([['dir/hard-b', 'hard-a']]);
    const kinds = [...describeTree(source).values()].map((entry) => entry.type);
    const { warnings, ...counts } = stats;
    expect(warnings).toEqual([]);
    expect(counts).toEqual({
      files: kinds.filter((kind) => kind === 'file').length - 1,
      directories: kinds.filter((kind) => kind === 'directory').length,
      symlinks: 3,
      hardlinks: 1,
      bytes: await fileBytes(source),
      allocatedBytes: expect.any(Number),
      unchanged: 0,
    });
    // Not sparse: on disk they take at least their bytes' blocks (capped at their size).
    expect(counts.allocatedBytes).toBe(counts.bytes);
    const { allocatedBytes: _, unchanged: _unchanged, ...packed } = counts;
    expect(extracted).toEqual(packed);
  });

  it('writes a standard archive that GNU tar lists and extracts identically', async () => {
    const source = await makeDir('source');
    await buildFixtureTree(source);
    const { archive } = await packToBuffer(source);
    const file = path.join(work.path, 'archive.tar');
    await writeFile(file, archive);

    const { stdout: listing } = await run('tar', ['-tvf', file]);
    expect(listing).toContain(`${DEEP_FILE}\n`);
    expect(listing).toContain(`${LONG_NAME}\n`);
    expect(listing).toContain('日本/語.txt\n');
    expect(listing).toContain('😀 emoji.txt\n');
    expect(listing).toContain('links/absolute -> /etc/hostname');
    expect(listing).toMatch(/^hrw-r--r-- 0\/0 +0 .* hard-a link to dir\/hard-b$/m);
    expect(listing).toMatch(/^-rw-r----- 1234\/2345 +6 .* small\.txt$/m);

    const restored = await makeDir('restored');
    await run('tar', ['-xpf', file, '--numeric-owner', '-C', restored]);
    expect(describeTree(restored)).toEqual(describeTree(source));
    expect(hardLinkGroups(restored)).toEqual([['dir/hard-b', 'hard-a']]);
  });

  it('names entries relative to the root, sorted, and writes pax headers only for names ustar cannot hold', async () => {
    const source = await makeDir('source');
    await buildFixtureTree(source);
    const { archive } = await packToBuffer(source);

    const entries = await listArchive(archive);
    // Pre-order, each directory's entries sorted: the order describeTree lists them in.
    const expected = [...describeTree(source)].map(([rel, entry]) => (entry.type === 'directory' ? `${rel}/` : rel));
    expect(entries.map((entry) => entry.name)).toEqual(expected);
    expect(entries.find((entry) => entry.name === 'hard-a')).toMatchObject({ type: 'link', linkname: 'dir/hard-b', size: 0 });

    const paxPaths = [...archive.toString('utf8').matchAll(/\d+ path=([^\n]*)\n/g)].map((match) => match[1]);
    expect(paxPaths).toEqual(expect.arrayContaining([DEEP_FILE, LONG_NAME, 'café.txt', '日本/', '日本/語.txt', '😀 emoji.txt']));
    // ASCII paths up to 255 bytes that split at a '/' into prefix (≤ 155) and name (≤ 100) need none.
    const threeLevels = `${DEEP_FILE.split('/').slice(0, 3).join('/')}/`;
    expect(threeLevels.length).toBeGreaterThan(100);
    expect(paxPaths).not.toContain(threeLevels);
    expect(paxPaths).not.toContain('small.txt');
    expect(entries.map((entry) => entry.name)).toContain(threeLevels);
  });

  it('keeps mtimes before 1970 and after 2038, which need pax records', async () => {
    const source = await makeDir('source');
    const times = { 'before-1970.txt': -315_619_200, 'after-2038.txt': 4_102_444_800 };
    for (const [name, seconds] of Object.entries(times)) {
      await writeFile(path.join(source, name), name);
      // Dates, not numbers: node reads a negative number of seconds as "now".
      await utimes(path.join(source, name), new Date(seconds * 1000), new Date(seconds * 1000));
    }
    const { archive } = await packToBuffer(source);
    const file = path.join(work.path, 'archive.tar');
    await writeFile(file, archive);
    const ours = await makeDir('ours');
    await extractTree(Readable.from([archive]), ours);
    const gnu = await makeDir('gnu');
    await run('tar', ['-xf', file, '-C', gnu]);
    for (const dir of [ours, gnu]) {
      for (const [name, seconds] of Object.entries(times)) {
        expect((await stat(path.join(dir, name))).mtimeMs).toBe(seconds * 1000);
      }
    }
  });

  it('produces the same bytes for the same tree', async () => {
    const source = await makeDir('source');
    await buildFixtureTree(source);
    const first = await packToBuffer(source);
    const second = await packToBuffer(source);
    expect(first.archive.equals(second.archive)).toBe(true);
  });

  it('skips sockets and fifos with a warning', async () => {
    const source = await makeDir('source');
    await writeFile(path.join(source, 'regular.txt'), 'x');
    await run('mkfifo', [path.join(source, 'pipe')]);
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(path.join(source, 'socket'), resolve));
    try {
      const { archive, stats } = await packToBuffer(source);
      expect((await listArchive(archive)).map((entry) => entry.name)).toEqual(['regular.txt']);
      expect(stats.warnings).toEqual([
        `${source}/pipe: skipped: a fifo cannot be archived`,
        `${source}/socket: skipped: a socket cannot be archived`,
      ]);
    } finally {
      server.close();
    }
  });

  it('fails with E_CAPTURE_FAILED when the root does not exist', async () => {
    const missing = path.join(work.path, 'missing');
    const { stream, stats } = packTree(missing);
    await expect(buffer(stream)).rejects.toMatchObject({ code: 'E_CAPTURE_FAILED', message: expect.stringContaining(missing) });
    await expect(stats).rejects.toMatchObject({ code: 'E_CAPTURE_FAILED' });
  });
});

describe('packTree excludes', () => {
  it('honours basename, directory-only, anchored and glob patterns and never descends into excluded directories', async () => {
    const source = await makeDir('source');
    const files = [
      'keep.txt',
      'x.tmp',
      'sub/y.tmp',
      'sub/.hidden.tmp',
      'cache/a.txt',
      'sub/cache/b.txt',
      'styles/s.css',
      'assets/styles',
      'web/sites/default/files/css/c.css',
      'web/sites/default/files/keep.css',
      'other/web/sites/default/files/css/d.css',
      'logs/2024/app.log.gz',
      'logs/app.log',
    ];
    for (const file of files) {
      await mkdir(path.dirname(path.join(source, file)), { recursive: true });
      await writeFile(path.join(source, file), file);
    }

    const { archive } = await packToBuffer(source, ['*.tmp', 'cache', 'styles/', 'web/sites/default/files/css', 'logs/**/*.gz']);
    const names = (await listArchive(archive)).map((entry) => entry.name);
    expect(names).toEqual([
      'assets/',
      'assets/styles',
      'keep.txt',
      'logs/',
      'logs/2024/',
      'logs/app.log',
      'other/',
      'other/web/',
      'other/web/sites/',
      'other/web/sites/default/',
      'other/web/sites/default/files/',
      'other/web/sites/default/files/css/',
      'other/web/sites/default/files/css/d.css',
      'sub/',
      'web/',
      'web/sites/',
      'web/sites/default/',
      'web/sites/default/files/',
      'web/sites/default/files/keep.css',
    ]);
  });

  it('rejects a negated pattern instead of reading it literally', async () => {
    const source = await makeDir('source');
    const { stream, stats } = packTree(source, { excludes: ['!keep.txt'] });
    await expect(buffer(stream)).rejects.toMatchObject({ code: 'E_CONFIG_INVALID', message: expect.stringContaining('!keep.txt') });
    await expect(stats).rejects.toMatchObject({ code: 'E_CONFIG_INVALID' });
  });
});

describe('packTree on a changing tree', () => {
  // The worker blocks once the unread stream holds all its credit, in the middle of a-big.bin:
  // changes made then land between its open and the end of its read, deterministically.
  const BIG = 32 * MiB;

  async function startBlocked(source: string) {
    const { stream, stats } = packTree(source);
    await untilWorkerBlocked(stream);
    return { stream, stats };
  }

  async function extractBoth(archive: Buffer): Promise<{ ours: string; gnu: string }> {
    const ours = await makeDir('ours');
    await extractTree(Readable.from([archive]), ours);
    const file = path.join(work.path, 'archive.tar');
    await writeFile(file, archive);
    const gnu = await makeDir('gnu');
    await run('tar', ['-xf', file, '-C', gnu]);
    return { ours, gnu };
  }

  it('pads a file truncated while read to its declared size and warns', async () => {
    const source = await makeDir('source');
    const original = randomBytes(BIG);
    await writeFile(path.join(source, 'a-big.bin'), original);
    await writeFile(path.join(source, 'b.txt'), 'after');

    const { stream, stats } = await startBlocked(source);
    truncateSync(path.join(source, 'a-big.bin'), 2 * MiB);
    const archive = await buffer(stream);

    expect((await stats).warnings).toEqual([
      expect.stringMatching(new RegExp(`^${source}/a-big\\.bin: changed while read \\(shrank from ${BIG} to \\d+ bytes`)),
    ]);
    for (const dir of Object.values(await extractBoth(archive))) {
      const restored = await readFile(path.join(dir, 'a-big.bin'));
      expect(restored.length).toBe(BIG);
      expect(restored.subarray(0, 2 * MiB).equals(original.subarray(0, 2 * MiB))).toBe(true);
      expect(restored.subarray(BIG - MiB).every((byte) => byte === 0)).toBe(true);
      expect(await readFile(path.join(dir, 'b.txt'), 'utf8')).toBe('after');
    }
  });

  it('stops a file that grows while read at its declared size and warns', async () => {
    const source = await makeDir('source');
    const original = randomBytes(BIG);
    await writeFile(path.join(source, 'a-big.bin'), original);
    await writeFile(path.join(source, 'b.txt'), 'after');

    const { stream, stats } = await startBlocked(source);
    appendFileSync(path.join(source, 'a-big.bin'), randomBytes(MiB));
    const archive = await buffer(stream);

    expect((await stats).warnings).toEqual([
      `${source}/a-big.bin: changed while read (grew from ${BIG} to ${BIG + MiB} bytes; the archive keeps the first ${BIG})`,
    ]);
    for (const dir of Object.values(await extractBoth(archive))) {
      expect((await readFile(path.join(dir, 'a-big.bin'))).equals(original)).toBe(true);
      expect(await readFile(path.join(dir, 'b.txt'), 'utf8')).toBe('after');
    }
  });

  it('skips a file and a directory deleted during the walk with warnings', async () => {
    const source = await makeDir('source');
    await writeFile(path.join(source, 'a-big.bin'), randomBytes(BIG));
    await writeFile(path.join(source, 'b-gone.txt'), 'gone');
    await mkdir(path.join(source, 'c-gone-dir'));
    await writeFile(path.join(source, 'c-gone-dir/inside.txt'), 'gone');
    await writeFile(path.join(source, 'd-kept.txt'), 'kept');

    const { stream, stats } = await startBlocked(source);
    await rm(path.join(source, 'b-gone.txt'));
    await rm(path.join(source, 'c-gone-dir'), { recursive: true });
    const archive = await buffer(stream);

    expect((await stats).warnings).toEqual([
      `${source}/b-gone.txt: skipped: vanished while the tree was read`,
      `${source}/c-gone-dir: skipped: vanished while the tree was read`,
    ]);
    expect((await listArchive(archive)).map((entry) => entry.name)).toEqual(['a-big.bin', 'd-kept.txt']);
    const { ours, gnu } = await extractBoth(archive);
    expect(describeTree(ours)).toEqual(describeTree(gnu));
  });
});

describe('a held packTree (started before a freeze)', () => {
  it('reads nothing of the tree until begin(): what changed before it is in the archive as it was at begin', async () => {
    const source = await makeDir('source');
    await writeFile(path.join(source, 'early.txt'), 'before the pack was started');
    await writeFile(path.join(source, 'removed.txt'), 'gone before begin');
    const { stream, stats, begin } = packTree(source, { held: true });
    await new Promise((resolve) => setTimeout(resolve, 300)); // the worker is up and waiting
    expect(stream.readableLength).toBe(0);
    await writeFile(path.join(source, 'early.txt'), 'changed before begin');
    await writeFile(path.join(source, 'late.txt'), 'made before begin');
    await rm(path.join(source, 'removed.txt'));
    begin();
    const archive = await buffer(stream);
    expect((await stats).files).toBe(2);
    const unpacked = await makeDir('unpacked');
    await extractTree(Readable.from([archive]), unpacked);
    expect(await readFile(path.join(unpacked, 'early.txt'), 'utf8')).toBe('changed before begin');
    expect(await readFile(path.join(unpacked, 'late.txt'), 'utf8')).toBe('made before begin');
    await expect(stat(path.join(unpacked, 'removed.txt'))).rejects.toThrow();
  });

  it('destroyed before begin(), its worker exits having read nothing', async () => {
    const source = await makeDir('source');
    await writeFile(path.join(source, 'a-big.bin'), randomBytes(4 * MiB));
    const { stream, stats } = packTree(source, { held: true });
    await new Promise((resolve) => setTimeout(resolve, 300));
    stream.destroy();
    await expect(stats).rejects.toSatisfy((error) => isAgentError(error, 'E_CANCELLED'));
    expect(openPaths().filter((open) => open.startsWith(source))).toEqual([]);
  });
});

describe('packTree cancellation and backpressure', () => {
  it('stops the worker and closes its files when the signal aborts mid-pack', async () => {
    const source = await makeDir('source');
    await writeFile(path.join(source, 'a-big.bin'), randomBytes(32 * MiB));
    const controller = new AbortController();
    const { stream, stats } = packTree(source, { signal: controller.signal });
    await untilWorkerBlocked(stream);
    expect(openPaths()).toContain(path.join(source, 'a-big.bin'));

    const consumed = pipeline(
      stream,
      new Writable({
        write(_chunk, _encoding, callback) {
          controller.abort();
          callback();
        },
      }),
    );
    await expect(consumed).rejects.toSatisfy((error) => isAgentError(error, 'E_CANCELLED'));
    // stats settles only once the worker has exited.
    await expect(stats).rejects.toSatisfy((error) => isAgentError(error, 'E_CANCELLED'));
    expect(openPaths().filter((open) => open.startsWith(source))).toEqual([]);
  });

  it('stops the worker when the reader destroys the stream', async () => {
    const source = await makeDir('source');
    await writeFile(path.join(source, 'a-big.bin'), randomBytes(32 * MiB));
    const { stream, stats } = packTree(source);
    await untilWorkerBlocked(stream);
    stream.destroy();
    await expect(stats).rejects.toSatisfy((error) => isAgentError(error, 'E_CANCELLED'));
    expect(openPaths().filter((open) => open.startsWith(source))).toEqual([]);
  });

  it('holds a bounded amount in memory while nobody reads, whatever the tree size', async () => {
    const source = await makeDir('source');
    await writeFile(path.join(source, 'a-big.bin'), randomBytes(64 * MiB));
    const { stream, stats } = packTree(source);
    await untilWorkerBlocked(stream);
    expect(stream.readableLength).toBeLessThanOrEqual(16 * MiB);
    const archive = await buffer(stream);
    expect(archive.length).toBe(512 + 64 * MiB + 1024);
    expect((await stats).bytes).toBe(64 * MiB);
  });
});

/** Sum of the sizes of regular files (hard-linked inodes once), like PackStats.bytes counts. */
async function fileBytes(root: string): Promise<number> {
  let total = 0;
  const seen = new Set<number>();
  for (const [rel, entry] of describeTree(root)) {
    if (entry.type !== 'file') continue;
    const { ino } = await stat(path.join(root, rel));
    if (seen.has(ino)) continue;
    seen.add(ino);
    total += entry.size ?? 0;
  }
  return total;
}
