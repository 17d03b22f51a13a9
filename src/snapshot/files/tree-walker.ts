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
  type Dirent,
  type Stats,
} from 'node:fs';
import { AgentError } from '../../errors.ts';
import type { ChunkOutput } from './chunk-output.ts';
import type { ExcludeMatcher } from './excludes.ts';
import type { PackStats } from './pack.ts';
import { PackCancelled } from './pack-protocol.ts';
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

/** Writes the whole tar archive of the tree under `root` to `out`. */
export function writeTreeArchive(root: string, isExcluded: ExcludeMatcher, out: ChunkOutput): PackStats {
  const walker = new TreeWalker(isExcluded, out);
  walker.walkRoot(root);
  out.zeros(2 * BLOCK);
  out.end();
  return walker.result();
}

class TreeWalker {
  readonly #isExcluded: ExcludeMatcher;
  readonly #out: ChunkOutput;
  readonly #stats: PackStats = { files: 0, directories: 0, symlinks: 0, hardlinks: 0, bytes: 0, allocatedBytes: 0, warnings: [] };
  /** "dev:ino" → archive name of the first path of a multiply linked file. */
  readonly #firstLinks = new Map<string, string>();
  #suppressedWarnings = 0;

  constructor(isExcluded: ExcludeMatcher, out: ChunkOutput) {
    this.#isExcluded = isExcluded;
    this.#out = out;
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
    this.#header({ name, type: 'file', size, ...metadata(stats) });
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
  if (error instanceof AgentError || error instanceof PackCancelled) return error;
  return new AgentError(
    'E_CAPTURE_FAILED',
    `cannot archive ${path}: ${(error as Error).message}; check the file system and the agent's permissions`,
    { cause: error, details: { path } },
  );
}
