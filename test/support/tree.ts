/** Building, describing and comparing real file trees for the files driver's tests. */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync, lstatSync } from 'node:fs';
import { chmod, chown, lchown, link, lutimes, mkdir, mkdtemp, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { buffer } from 'node:stream/consumers';
import { promisify } from 'node:util';
import tar from 'tar-stream';

export const MiB = 1024 * 1024;
export const run = promisify(execFile);

export interface TempDir {
  path: string;
  cleanup(): Promise<void>;
}

export async function tempDir(prefix = 'files-test-'): Promise<TempDir> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  return { path: dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** What a restore must reproduce of one entry (the root itself is not described). */
export interface EntryDescription {
  type: 'file' | 'directory' | 'symlink';
  mode: number;
  uid: number;
  gid: number;
  /** Whole seconds: what tar keeps. Symlinks' own mtimes are compared too. */
  mtime: number;
  size?: number;
  sha256?: string;
  target?: string;
}

/** relative path → description, in sorted order. */
export function describeTree(root: string): Map<string, EntryDescription> {
  const entries = new Map<string, EntryDescription>();
  const visit = (relative: string): void => {
    for (const name of readdirSync(path.join(root, relative)).sort()) {
      const rel = relative === '' ? name : `${relative}/${name}`;
      const absolute = path.join(root, rel);
      const stats = lstatSync(absolute);
      const common = { mode: stats.mode & 0o7777, uid: stats.uid, gid: stats.gid, mtime: Math.floor(stats.mtimeMs / 1000) };
      if (stats.isDirectory()) {
        entries.set(rel, { type: 'directory', ...common });
        visit(rel);
      } else if (stats.isSymbolicLink()) {
        entries.set(rel, { type: 'symlink', ...common, mode: 0, target: readlinkSync(absolute) });
      } else {
        const sha256 = createHash('sha256').update(readFileSync(absolute)).digest('hex');
        entries.set(rel, { type: 'file', ...common, size: stats.size, sha256 });
      }
    }
  };
  visit('');
  return entries;
}

/** Groups of paths that are one inode (hard links), each group sorted, groups sorted. */
export function hardLinkGroups(root: string): string[][] {
  const byInode = new Map<number, string[]>();
  const visit = (relative: string): void => {
    for (const name of readdirSync(path.join(root, relative))) {
      const rel = relative === '' ? name : `${relative}/${name}`;
      const stats = lstatSync(path.join(root, rel));
      if (stats.isDirectory()) visit(rel);
      else if (stats.isFile() && stats.nlink > 1) byInode.set(stats.ino, [...(byInode.get(stats.ino) ?? []), rel]);
    }
  };
  visit('');
  return [...byInode.values()].map((group) => group.sort()).sort((a, b) => (a[0] ?? '').localeCompare(b[0] ?? ''));
}

const OLD = new Date('2001-02-03T04:05:06Z');
const LONG_COMPONENT = 'c'.repeat(60);

/** A path longer than 255 bytes, so neither ustar's name nor name+prefix can hold it. */
export const DEEP_FILE = `${Array.from({ length: 5 }, (_, i) => `${LONG_COMPONENT}${i}`).join('/')}/deep.txt`;
export const LONG_NAME = `${'L'.repeat(150)}.txt`;

/**
 * Every kind of entry the files driver must round trip: files (empty, small, a few MiB),
 * nested and special-mode directories, symlinks (relative, absolute, dangling), hard links,
 * modes, foreign owners, old mtimes, long and non-ASCII names.
 */
export async function buildFixtureTree(root: string): Promise<void> {
  const file = async (rel: string, content: string | Buffer, mode = 0o644): Promise<void> => {
    await mkdir(path.dirname(path.join(root, rel)), { recursive: true });
    await writeFile(path.join(root, rel), content);
    await chmod(path.join(root, rel), mode);
  };
  await file('empty.txt', '', 0o600);
  await file('small.txt', 'hello\n', 0o640);
  await file('big.bin', randomBytes(3 * MiB + 123), 0o755);
  await file('setuid-tool', '#!/bin/sh\n', 0o4755);
  await file('dir/nested/deeper/file.txt', 'deep\n');
  await file('private/secret.txt', 'secret\n', 0o600);
  await file(LONG_NAME, 'long name\n');
  await file(DEEP_FILE, 'deep path\n');
  await file('café.txt', 'é\n');
  await file('日本/語.txt', '日本語\n');
  await file('😀 emoji.txt', '😀\n');
  await file('hard-a', 'shared inode\n');
  await link(path.join(root, 'hard-a'), path.join(root, 'dir/hard-b'));
  await mkdir(path.join(root, 'setgid-dir'));
  await file('setgid-dir/inside.txt', 'group\n');
  await mkdir(path.join(root, 'links'));
  await symlink('../small.txt', path.join(root, 'links/relative'));
  await symlink('/etc/hostname', path.join(root, 'links/absolute'));
  await symlink('does-not-exist', path.join(root, 'links/dangling'));

  await chown(path.join(root, 'small.txt'), 1234, 2345);
  await chown(path.join(root, 'setgid-dir'), 1234, 2345);
  await lchown(path.join(root, 'links/relative'), 1234, 2345);
  await chmod(path.join(root, 'setgid-dir'), 0o2775);
  await chmod(path.join(root, 'private'), 0o700);

  // Old mtimes, each different, directories last and deepest first (their children moved them).
  const described = [...describeTree(root).entries()].reverse();
  for (const [index, [rel, entry]] of described.entries()) {
    const when = new Date(OLD.getTime() + index * 86_400_000);
    if (entry.type === 'symlink') await lutimes(path.join(root, rel), when, when);
    else await utimes(path.join(root, rel), when, when);
  }
}

/** Entry names and types of an archive, in archive order, read with tar-stream. */
export async function listArchive(archive: Buffer): Promise<{ name: string; type: string; size: number; linkname: string | null }[]> {
  const entries: { name: string; type: string; size: number; linkname: string | null }[] = [];
  const extractor = tar.extract();
  extractor.end(archive);
  for await (const entry of extractor) {
    const { name, type, size, linkname } = entry.header;
    entries.push({ name, type, size, linkname });
    entry.resume();
  }
  return entries;
}

export interface ArchiveEntry {
  header: Partial<tar.Header> & { name: string };
  content?: string | Buffer;
}

/** An archive built entry by entry, as an attacker would. */
export async function buildArchive(entries: ArchiveEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const done = buffer(pack);
  for (const { header, content } of entries) {
    await new Promise<void>((resolve, reject) => {
      const callback = (error?: Error | null): void => (error ? reject(error) : resolve());
      if (content === undefined) pack.entry(header, callback);
      else pack.entry(header, content, callback);
    });
  }
  pack.finalize();
  return done;
}

/** Paths this process has open (its own fds and its worker threads'). */
export function openPaths(): string[] {
  const paths: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      paths.push(readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // closed between the listing and the readlink
    }
  }
  return paths;
}
