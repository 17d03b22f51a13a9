import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, stat, utimes, writeFile, chown } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentError, isAgentError } from '../src/errors.ts';
import { FilesDriver } from '../src/snapshot/files/driver.ts';
import { extractTree, type ExtractOptions } from '../src/snapshot/files/extract.ts';
import { packTree } from '../src/snapshot/files/pack.ts';
import { encodeHeader } from '../src/snapshot/files/tar-header.ts';
import {
  buildArchive,
  buildFixtureTree,
  describeTree,
  hardLinkGroups,
  MiB,
  openPaths,
  run,
  tempDir,
  type ArchiveEntry,
  type TempDir,
} from './support/tree.ts';

let work: TempDir;
/** The restore directory; everything else under `work` is "outside". */
let dest: string;
let outside: string;

beforeEach(async () => {
  work = await tempDir('files-extract-');
  dest = path.join(work.path, 'staging');
  outside = path.join(work.path, 'outside');
  await mkdir(dest);
  await mkdir(outside);
});
afterEach(async () => {
  await work.cleanup();
});

function extract(archive: Buffer, options?: ExtractOptions) {
  return extractTree(Readable.from([archive]), dest, options);
}

async function gnuArchive(source: string, ...flags: string[]): Promise<Buffer> {
  const file = path.join(work.path, 'gnu.tar');
  await run('tar', [...flags, '-cf', file, '-C', source, '.']);
  return readFile(file);
}

async function fixture(): Promise<string> {
  const source = path.join(work.path, 'source');
  await mkdir(source);
  await buildFixtureTree(source);
  return source;
}

describe('extractTree of archives from GNU tar', () => {
  it('restores a GNU-format archive (./ names, long-name records) exactly', async () => {
    const source = await fixture();
    const stats = await extract(await gnuArchive(source), { keepSetuid: true });
    expect(describeTree(dest)).toEqual(describeTree(source));
    expect(hardLinkGroups(dest)).toEqual(hardLinkGroups(source));
    expect(stats.hardlinks).toBe(1);
  });

  it('honours pax records of --format=posix: sub-second mtimes and ids beyond ustar range', async () => {
    const source = path.join(work.path, 'source');
    await mkdir(source);
    await writeFile(path.join(source, 'precise.txt'), 'x');
    await utimes(path.join(source, 'precise.txt'), 1_000_000_000.25, 1_000_000_000.25);
    await writeFile(path.join(source, 'big-ids.txt'), 'y');
    await chown(path.join(source, 'big-ids.txt'), 3_000_000, 3_000_001);

    await extract(await gnuArchive(source, '--format=posix'));
    const precise = await stat(path.join(dest, 'precise.txt'));
    expect(precise.mtimeMs).toBe(1_000_000_000_250);
    const bigIds = await stat(path.join(dest, 'big-ids.txt'));
    expect([bigIds.uid, bigIds.gid]).toEqual([3_000_000, 3_000_001]);
  });
});

describe('extractTree options and preconditions', () => {
  it('keeps the restoring user as owner when restoreOwners is false', async () => {
    const source = await fixture();
    await extract(await gnuArchive(source), { restoreOwners: false });
    const small = await lstat(path.join(dest, 'small.txt'));
    expect([small.uid, small.gid]).toEqual([process.getuid?.(), process.getgid?.()]);
    expect(small.mode & 0o7777).toBe(0o640);
  });

  it('round trips uids and gids beyond the ustar fields through its own pack', async () => {
    const source = path.join(work.path, 'source');
    await mkdir(source);
    await writeFile(path.join(source, 'big-ids.txt'), 'y');
    await chown(path.join(source, 'big-ids.txt'), 3_000_000, 3_000_001);
    const { stream } = packTree(source);
    await extractTree(stream, dest);
    const restored = await stat(path.join(dest, 'big-ids.txt'));
    expect([restored.uid, restored.gid]).toEqual([3_000_000, 3_000_001]);
  });

  it('refuses a restore directory that is not empty', async () => {
    await writeFile(path.join(dest, 'already-there'), 'x');
    const archive = await buildArchive([{ header: { name: 'a.txt' }, content: 'a' }]);
    await expect(extract(archive)).rejects.toMatchObject({ code: 'E_RESTORE_FAILED', message: expect.stringContaining(dest) });
  });
});

describe('extractTree refuses unsafe archives (nothing is written outside the restore directory)', () => {
  async function expectRefused(entries: ArchiveEntry[], entryName: string, outsideEntries: string[] = []): Promise<void> {
    const archive = await buildArchive(entries);
    const error = await extract(archive).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(AgentError);
    expect(error).toMatchObject({ code: 'E_UNSAFE_ARCHIVE_ENTRY', message: expect.stringContaining(JSON.stringify(entryName)) });
    expect(await readdir(outside)).toEqual(outsideEntries);
    expect((await readdir(work.path)).sort()).toEqual(['outside', 'staging']);
  }

  it('path traversal: ../escape', async () => {
    await expectRefused([{ header: { name: '../escape' }, content: 'pwned' }], '../escape');
  });

  it('path traversal: a/../../escape', async () => {
    await expectRefused([{ header: { name: 'a/../../escape' }, content: 'pwned' }], 'a/../../escape');
  });

  it('absolute path: /abs/path', async () => {
    const target = path.join(outside, 'abs-target');
    await expectRefused([{ header: { name: target }, content: 'pwned' }], target);
  });

  it('NUL byte in a pax path', async () => {
    await expectRefused([{ header: { name: 'é\u0000/etc/passwd' }, content: 'pwned' }], 'é\u0000/etc/passwd');
  });

  it('symlink to an outside directory, then a file written through it: link/pwned', async () => {
    await expectRefused(
      [
        { header: { name: 'link', type: 'symlink', linkname: outside } },
        { header: { name: 'link/pwned' }, content: 'pwned' },
      ],
      'link/pwned',
    );
  });

  it("symlink to '..', then a file written through it", async () => {
    await expectRefused(
      [
        { header: { name: 'up', type: 'symlink', linkname: '..' } },
        { header: { name: 'up/outside/pwned' }, content: 'pwned' },
      ],
      'up/outside/pwned',
    );
  });

  it('symlink, then a directory entry of the same name, then a file inside it', async () => {
    await expectRefused(
      [
        { header: { name: 'dir', type: 'symlink', linkname: outside } },
        { header: { name: 'dir', type: 'directory' } },
        { header: { name: 'dir/pwned' }, content: 'pwned' },
      ],
      'dir',
    );
  });

  it('a file, then a symlink replacing it (duplicate entry)', async () => {
    await expectRefused(
      [
        { header: { name: 'twice' }, content: 'first' },
        { header: { name: 'twice', type: 'symlink', linkname: path.join(outside, 'x') } },
      ],
      'twice',
    );
  });

  it('hard link to ../../etc/passwd', async () => {
    const before = await stat('/etc/passwd');
    await expectRefused([{ header: { name: 'passwd', type: 'link', linkname: '../../etc/passwd' } }], 'passwd');
    expect((await stat('/etc/passwd')).nlink).toBe(before.nlink);
  });

  it('hard link to an absolute path', async () => {
    await writeFile(path.join(outside, 'victim'), 'keep');
    await expectRefused([{ header: { name: 'h', type: 'link', linkname: path.join(outside, 'victim') } }], 'h', ['victim']);
    expect((await stat(path.join(outside, 'victim'))).nlink).toBe(1);
  });

  it('hard link to a symlink restored before it, which points outside', async () => {
    await expectRefused(
      [
        { header: { name: 'sym', type: 'symlink', linkname: '/etc/passwd' } },
        { header: { name: 'h', type: 'link', linkname: 'sym' } },
      ],
      'h',
    );
  });

  it('hard link to a file that is not in the archive before it', async () => {
    await expectRefused([{ header: { name: 'h', type: 'link', linkname: 'later.txt' } }], 'h');
  });

  it('character device entry', async () => {
    await expectRefused([{ header: { name: 'null', type: 'character-device', devmajor: 1, devminor: 3 } }], 'null');
  });

  it('block device entry', async () => {
    await expectRefused([{ header: { name: 'disk', type: 'block-device', devmajor: 8, devminor: 0 } }], 'disk');
  });

  it('fifo entry', async () => {
    await expectRefused([{ header: { name: 'pipe', type: 'fifo' } }], 'pipe');
  });

  it('restores symlinks pointing anywhere as data, without following them', async () => {
    const archive = await buildArchive([
      { header: { name: 'abs', type: 'symlink', linkname: outside } },
      { header: { name: 'up', type: 'symlink', linkname: '../..' } },
    ]);
    expect(await extract(archive)).toMatchObject({ symlinks: 2 });
    expect(await readdir(outside)).toEqual([]);
    expect((await lstat(path.join(dest, 'abs'))).isSymbolicLink()).toBe(true);
  });
});

describe('extractTree of broken streams', () => {
  async function validArchive(): Promise<Buffer> {
    return buildArchive([
      { header: { name: 'a.txt', mode: 0o644 }, content: randomBytes(100_000) },
      { header: { name: 'dir', type: 'directory' } },
      { header: { name: 'dir/b.txt' }, content: randomBytes(100_000) },
    ]);
  }

  it('a file that cannot be created fails the restore with its own error, not as a forged hard link to a file of its batch', async () => {
    // ENAMETOOLONG stands for any failure to create one file (ENOSPC, EDQUOT, EACCES): the files
    // after it in its batch are not written, and a hard link to one of them must say why.
    const archive = await buildArchive([
      { header: { name: 'x'.repeat(300) }, content: 'a' },
      { header: { name: 't.txt' }, content: 'target' },
      { header: { name: 'h', type: 'link', linkname: 't.txt' } },
    ]);
    await expect(extract(archive)).rejects.toMatchObject({ code: 'E_RESTORE_FAILED', message: /ENAMETOOLONG/ });
  });

  it('fails with E_ARCHIVE_CORRUPT on an archive cut in half', async () => {
    const archive = await validArchive();
    await expect(extract(archive.subarray(0, archive.length / 2))).rejects.toMatchObject({ code: 'E_ARCHIVE_CORRUPT' });
  });

  it('fails with E_ARCHIVE_CORRUPT on an archive cut exactly between two entries', async () => {
    const archive = await buildArchive([
      { header: { name: 'a.txt' }, content: Buffer.alloc(512, 1) },
      { header: { name: 'b.txt' }, content: 'b' },
    ]);
    await expect(extract(archive.subarray(0, 1024))).rejects.toMatchObject({ code: 'E_ARCHIVE_CORRUPT' });
  });

  it('fails with E_ARCHIVE_CORRUPT on an archive cut right after a pax header', async () => {
    const archive = await buildArchive([
      { header: { name: 'a.txt' }, content: Buffer.alloc(512, 1) },
      { header: { name: 'é.txt' }, content: 'b' },
    ]);
    // a.txt (header + one block), then the pax header and its records block.
    await expect(extract(archive.subarray(0, 2048))).rejects.toMatchObject({ code: 'E_ARCHIVE_CORRUPT' });
  });

  it('fails with E_ARCHIVE_CORRUPT on random garbage and on an empty stream', async () => {
    await expect(extract(randomBytes(64 * 1024))).rejects.toMatchObject({ code: 'E_ARCHIVE_CORRUPT' });
    await expect(extract(Buffer.alloc(0))).rejects.toMatchObject({ code: 'E_ARCHIVE_CORRUPT' });
  });

  it("keeps the source's own AgentError, and reports a plain source failure as E_RESTORE_FAILED", async () => {
    const archive = await validArchive();
    const failing = (error: Error) =>
      Readable.from(
        (async function* () {
          yield archive.subarray(0, 4096);
          throw error;
        })(),
      );
    const checksum = new AgentError('E_CHECKSUM_MISMATCH', 'bad checksum');
    await expect(extractTree(failing(checksum), dest)).rejects.toBe(checksum);

    const other = path.join(work.path, 'other');
    await mkdir(other);
    await expect(extractTree(failing(new Error('connection reset')), other)).rejects.toMatchObject({
      code: 'E_RESTORE_FAILED',
      message: 'connection reset',
    });
  });
});

describe('extractTree cancellation', () => {
  it('stops with E_CANCELLED mid-file, destroys the source and closes the file', async () => {
    const size = 1024 * MiB;
    const source = Readable.from(
      (async function* () {
        yield encodeHeader({ name: 'huge.bin', type: 'file', mode: 0o644, uid: 0, gid: 0, size, mtime: 0 });
        for (;;) {
          yield randomBytes(64 * 1024);
          await sleep(1);
        }
      })(),
    );
    const controller = new AbortController();
    const extracting = extractTree(source, dest, { signal: controller.signal });
    while (!(await readdir(dest)).includes('huge.bin')) await sleep(10);
    controller.abort();

    await expect(extracting).rejects.toSatisfy((error) => isAgentError(error, 'E_CANCELLED'));
    expect(source.destroyed).toBe(true);
    expect(openPaths().filter((open) => open.startsWith(dest))).toEqual([]);
  });

  it('stops with E_CANCELLED while small files are written in the background', async () => {
    // Enough files that the abort lands while they are written (worker threads write 2,000 in ~0.1 s).
    const entries: ArchiveEntry[] = Array.from({ length: 20_000 }, (_, i) => ({ header: { name: `f${i}.txt` }, content: `file ${i}` }));
    const archive = await buildArchive(entries);
    const controller = new AbortController();
    const extracting = extract(archive, { signal: controller.signal });
    while ((await readdir(dest)).length < 20) await sleep(1);
    controller.abort();

    await expect(extracting).rejects.toSatisfy((error) => isAgentError(error, 'E_CANCELLED'));
    expect((await readdir(dest)).length).toBeLessThan(20_000);
    expect(openPaths().filter((open) => open.startsWith(dest))).toEqual([]);
  });
});

describe('extractTree clears setuid and setgid bits of files unless told to keep them (issue #10)', () => {
  const forged: ArchiveEntry[] = [
    { header: { name: 'bin/', type: 'directory', mode: 0o2775, uid: 0, gid: 0 } },
    { header: { name: 'bin/rootshell', mode: 0o4755, uid: 0, gid: 0 }, content: '#!/bin/sh\nexec /bin/sh -p\n' },
    { header: { name: 'bin/groupshell', mode: 0o2755, uid: 0, gid: 0 }, content: '#!/bin/sh\n' },
    { header: { name: 'bin/both', mode: 0o6711, uid: 0, gid: 0 }, content: 'x' },
    { header: { name: 'shared/', type: 'directory', mode: 0o1777 } },
    { header: { name: 'plain.txt', mode: 0o644 }, content: 'plain' },
  ];
  const mode = async (rel: string) => (await lstat(path.join(dest, rel))).mode & 0o7777;

  it('clears them by default, counts them and names the first; directories keep setgid and sticky bits', async () => {
    const stats = await extract(await buildArchive(forged));
    expect([await mode('bin/rootshell'), await mode('bin/groupshell'), await mode('bin/both'), await mode('plain.txt')]).toEqual([0o755, 0o755, 0o711, 0o644]);
    expect([await mode('bin'), await mode('shared')]).toEqual([0o2775, 0o1777]);
    expect(stats.setuidCleared).toEqual({ files: 3, paths: ['bin/rootshell', 'bin/groupshell', 'bin/both'] });
  });

  it('keeps them with keepSetuid', async () => {
    const stats = await extract(await buildArchive(forged), { keepSetuid: true });
    expect([await mode('bin/rootshell'), await mode('bin/groupshell'), await mode('bin/both')]).toEqual([0o4755, 0o2755, 0o6711]);
    expect(stats.setuidCleared).toBeUndefined();
  });

  it('the files driver says so in the restore facts, and keeps them when the service sets keepSetuid', async () => {
    const target = path.join(work.path, 'mount');
    const archive = await buildArchive(forged);
    const cleared = await new FilesDriver({ path: target, exclude: [] }).stage(Readable.from([archive]), new AbortController().signal);
    expect(cleared.facts).toMatchObject({
      setuidCleared: 3,
      warning: 'cleared the setuid/setgid bits of 3 files (bin/rootshell, bin/groupshell, bin/both); set keepSetuid: true on the service to restore them as archived',
    });
    await cleared.commit();
    expect((await lstat(path.join(target, 'bin/rootshell'))).mode & 0o7777).toBe(0o755);
    const kept = await new FilesDriver({ path: target, exclude: [], keepSetuid: true }).stage(Readable.from([archive]), new AbortController().signal);
    expect(kept.facts).not.toHaveProperty('warning');
    await kept.commit();
    expect((await lstat(path.join(target, 'bin/rootshell'))).mode & 0o7777).toBe(0o4755);
  });
});
