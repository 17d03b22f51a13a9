import { isUtf8 } from 'node:buffer';
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  readlinkSync,
  statSync,
  type BigIntStats,
  type Dirent,
  type Stats,
} from 'node:fs';
import { AgentError } from '../../errors.ts';
import type { FileSegment } from '../driver.ts';
import type { ChunkOutput } from '../chunk-worker/output.ts';
import type { ExcludeMatcher } from './excludes.ts';
import type { PackStats } from './pack.ts';
import { WorkerCancelled } from '../chunk-worker/protocol.ts';
import { BLOCK, encodeHeader, padTo512, type TarHeader } from './tar-header.ts';

/*
 * Synchronous on purpose: this runs in the pack worker, where a synchronous fs call costs a few
 * µs against ~80 µs for an async one (MEASUREMENTS.md, "Reading a tree").
 */

// O_NOFOLLOW: the path may have become a symlink since it was listed. O_NONBLOCK: or a fifo,
// whose open would otherwise wait for a writer forever. Neither changes how a file is read.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;

/** Enough to tell what happened; a tree full of sockets must not grow the stats without bound. */
const MAX_WARNINGS = 1000;

const CHANGED_TYPE = 'changed type while the tree was read';

/** Errors that mean "this entry changed or is not ours to read": skip it with a warning. */
const SKIPPABLE: Record<string, string> = {
  ENOENT: 'vanished while the tree was read',
  ENOTDIR: 'vanished while the tree was read',
  ELOOP: CHANGED_TYPE,
  EACCES: 'cannot be read (EACCES)',
  EPERM: 'cannot be read (EPERM)',
};

type Listing = Dirent<Buffer>[];

/** Marks each file's segment of the archive, and skips the files the parent holds unchanged. */
export interface SegmentMarking {
  parent: ReadonlyMap<string, string>;
  mark(offset: number, segment: FileSegment): void;
}

/** Writes the whole tar archive of the tree under `root` to `out` (which its caller ends). */
export function writeTreeArchive(root: string, isExcluded: ExcludeMatcher, out: ChunkOutput, segments?: SegmentMarking): PackStats {
  const walker = new TreeWalker(isExcluded, out, segments);
  walker.walkRoot(root);
  out.zeros(2 * BLOCK);
  return walker.result();
}

class TreeWalker {
  readonly #isExcluded: ExcludeMatcher;
  readonly #out: ChunkOutput;
  readonly #stats: PackStats = { files: 0, directories: 0, symlinks: 0, hardlinks: 0, bytes: 0, allocatedBytes: 0, unchanged: 0, warnings: [] };
  /** "dev:ino" → archive name of the first path of a multiply linked file. */
  readonly #firstLinks = new Map<string, string>();
  readonly #segments: SegmentMarking | undefined;
  #suppressedWarnings = 0;

  constructor(isExcluded: ExcludeMatcher, out: ChunkOutput, segments?: SegmentMarking) {
    this.#isExcluded = isExcluded;
    this.#out = out;
    this.#segments = segments;
  }

  walkRoot(root: string): void {
    let listing: Listing;
    try {
      if (!statSync(root).isDirectory()) throw new Error('not a directory');
      listing = list(root);
    } catch (error) {
      throw new AgentError(
        'E_CAPTURE_FAILED',
        `cannot read the files root ${root}: ${(error as Error).message}; check that it exists, is a directory and is readable by the agent`,
        { cause: error, details: { path: root } },
      );
    }
    this.#walkListing(root === '/' ? '' : root, '', listing);
  }

  result(): PackStats {
    const warnings = [...this.#stats.warnings];
    if (this.#suppressedWarnings > 0) warnings.push(`… and ${this.#suppressedWarnings} more warnings`);
    return { ...this.#stats, warnings };
  }

  #walkListing(directoryPath: string, namePrefix: string, listing: Listing): void {
    for (const entry of listing) {
      if (!isUtf8(entry.name)) {
        this.#warn(`${directoryPath}/${entry.name.toString('latin1')}: skipped: its name is not valid UTF-8`);
        continue;
      }
      const base = entry.name.toString('utf8');
      const name = namePrefix + base;
      const path = `${directoryPath}/${base}`;
      const isDirectory = entry.isDirectory();
      if (this.#isExcluded(name, isDirectory)) continue;
      if (isDirectory) this.#packDirectory(path, name);
      else if (entry.isFile()) this.#packFile(path, name);
      else if (entry.isSymbolicLink()) this.#packSymlink(path, name);
      else this.#warn(`${path}: skipped: a ${specialKind(entry)} cannot be archived`);
    }
  }

  #packDirectory(path: string, name: string): void {
    let stats: Stats;
    let listing: Listing;
    try {
      stats = lstatSync(path);
      if (!stats.isDirectory()) return this.#warn(`${path}: skipped: ${CHANGED_TYPE}`);
      listing = list(path);
    } catch (error) {
      return this.#skipOrThrow(path, error);
    }
    this.#header({ name, type: 'directory', size: 0, ...metadata(stats) });
    this.#stats.directories++;
    this.#walkListing(path, `${name}/`, listing);
  }

  #packSymlink(path: string, name: string): void {
    let stats: Stats;
    let target: Buffer;
    try {
      stats = lstatSync(path);
      if (!stats.isSymbolicLink()) return this.#warn(`${path}: skipped: ${CHANGED_TYPE}`);
      target = readlinkSync(path, { encoding: 'buffer' });
    } catch (error) {
      return this.#skipOrThrow(path, error);
    }
    if (!isUtf8(target)) return this.#warn(`${path}: skipped: its target is not valid UTF-8`);
    this.#header({ name, type: 'symlink', size: 0, linkname: target.toString('utf8'), ...metadata(stats) });
    this.#stats.symlinks++;
  }

  #packFile(path: string, name: string): void {
    if (this.#segments && this.#reuseUnchanged(path, name, this.#segments)) return;
    let fd: number;
    try {
      fd = openSync(path, OPEN_FLAGS);
    } catch (error) {
      return this.#skipOrThrow(path, error);
    }
    try {
      this.#packOpenFile(fd, path, name);
    } catch (error) {
      throw captureFailed(path, error);
    } finally {
      closeSync(fd);
    }
  }

  #packOpenFile(fd: number, path: string, name: string): void {
    // The size comes from the open file, so a file replaced since it was listed is read whole.
    const stats = fstatSync(fd);
    if (!stats.isFile()) return this.#warn(`${path}: skipped: ${CHANGED_TYPE}`);
    if (stats.nlink > 1) {
      const key = `${stats.dev}:${stats.ino}`;
      const first = this.#firstLinks.get(key);
      if (first !== undefined) {
        this.#header({ name, type: 'link', size: 0, linkname: first, ...metadata(stats) });
        this.#stats.hardlinks++;
        return;
      }
      this.#firstLinks.set(key, name);
    }

    const size = stats.size;
    const header = encodeHeader({ name, type: 'file', size, ...metadata(stats) });
    // A file linked once is its own segment (a hard-linked one is not: its entry depends on the walk order).
    if (this.#segments && stats.nlink === 1) {
      const signature = fileSignature(fstatSync(fd, { bigint: true }));
      this.#segments.mark(this.#out.offset, { file: name, signature, reused: false, bytes: header.length + padTo512(size) });
    }
    this.#out.write(header);
    const { bytesRead, error } = this.#out.readFrom(fd, size);
    if (bytesRead < size) {
      // The header already promised `size` bytes: zeros keep the archive readable.
      this.#out.zeros(size - bytesRead);
      this.#warn(
        error === undefined
          ? `${path}: changed while read (shrank from ${size} to ${bytesRead} bytes; the archived copy is padded with zeros)`
          : `${path}: read failed after ${bytesRead} of ${size} bytes (${error.code ?? error.message}); the archived copy is padded with zeros`,
      );
    } else {
      const after = fstatSync(fd);
      if (after.size !== size || after.mtimeMs !== stats.mtimeMs) {
        this.#warn(
          after.size > size
            ? `${path}: changed while read (grew from ${size} to ${after.size} bytes; the archive keeps the first ${size})`
            : `${path}: changed while read (modified during the read; the archived copy may mix old and new content)`,
        );
      }
    }
    this.#out.zeros(padTo512(size) - size);
    this.#stats.files++;
    this.#stats.bytes += size;
    // A restore keeps holes (staging-writer.ts): this, not `size`, is what it needs on disk.
    this.#stats.allocatedBytes += Math.min(size, Number(stats.blocks) * 512);
  }

  /**
   * A file the parent snapshot holds with the same signature is not opened, let alone read:
   * its segment is the parent's. Counted as archived (its bytes are in the backup all the same).
   */
  #reuseUnchanged(path: string, name: string, segments: SegmentMarking): boolean {
    const expected = segments.parent.get(name);
    if (expected === undefined) return false;
    let stats: BigIntStats;
    try {
      stats = lstatSync(path, { bigint: true });
    } catch {
      return false; // the normal path says what happened to it
    }
    if (!stats.isFile() || stats.nlink !== 1n || fileSignature(stats) !== expected) return false;
    segments.mark(this.#out.offset, { file: name, signature: expected, reused: true });
    const size = Number(stats.size);
    this.#stats.unchanged++;
    this.#stats.files++;
    this.#stats.bytes += size;
    this.#stats.allocatedBytes += Math.min(size, Number(stats.blocks) * 512);
    return true;
  }

  #header(header: TarHeader): void {
    this.#out.write(encodeHeader(header));
  }

  #skipOrThrow(path: string, error: unknown): void {
    const reason = SKIPPABLE[(error as NodeJS.ErrnoException).code ?? ''];
    if (reason === undefined) throw captureFailed(path, error);
    this.#warn(`${path}: skipped: ${reason}`);
  }

  #warn(warning: string): void {
    if (this.#stats.warnings.length < MAX_WARNINGS) this.#stats.warnings.push(warning);
    else this.#suppressedWarnings++;
  }
}

/**
 * What says a file is unchanged since the parent snapshot without reading it, as restic and
 * kopia decide: size, mtime and ctime to the nanosecond (a write moves both; a chmod, chown or
 * rename moves ctime), inode, and mode and owner (they are in the tar header). Not the device:
 * a btrfs snapshot of the mount has another one each time, with the same inodes and times.
 */
export function fileSignature(stats: BigIntStats): string {
  return `${stats.size}:${stats.mtimeNs}:${stats.ctimeNs}:${stats.ino}:${stats.mode}:${stats.uid}:${stats.gid}`;
}

function list(path: string): Listing {
  // Names as bytes: a name that is not UTF-8 would otherwise be silently mangled.
  const listing = readdirSync(path, { withFileTypes: true, encoding: 'buffer' });
  return listing.sort((a, b) => Buffer.compare(a.name, b.name));
}

function metadata(stats: Stats): Pick<TarHeader, 'mode' | 'uid' | 'gid' | 'mtime'> {
  return { mode: stats.mode & 0o7777, uid: stats.uid, gid: stats.gid, mtime: Math.floor(stats.mtimeMs / 1000) };
}

function specialKind(entry: Dirent<Buffer>): string {
  if (entry.isSocket()) return 'socket';
  if (entry.isFIFO()) return 'fifo';
  if (entry.isBlockDevice()) return 'block device';
  if (entry.isCharacterDevice()) return 'character device';
  return 'file of unknown type';
}

function captureFailed(path: string, error: unknown): Error {
  if (error instanceof AgentError || error instanceof WorkerCancelled) return error;
  return new AgentError(
    'E_CAPTURE_FAILED',
    `cannot archive ${path}: ${(error as Error).message}; check the file system and the agent's permissions`,
    { cause: error, details: { path } },
  );
}
