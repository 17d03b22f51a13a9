import { constants } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, mkdir, open, symlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from '../../errors.ts';
import { dataRuns } from './data-runs.ts';
import { unsafeEntry } from './entry-path.ts';
import { FileWriter, FileWriteError } from './file-writer.ts';

export interface EntryAttributes {
  mode: number;
  uid: number;
  gid: number;
  mtime: Date;
}

// O_EXCL: never reuse (or write through) whatever is already at the path, symlinks included.
const CREATE_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/*
 * Each async fs call costs a thread-pool round trip and a small file needs six, so files up to
 * SMALL_FILE are read into memory and written by the file write workers, in batches, while
 * the archive moves on (FileWriter bounds the memory they hold). Bigger files are written
 * here, a chunk per call. Measured with the 20,006 files of the 1 GiB benchmark tree: 10.0 s
 * and 6.2 s of system time with them written here, 16 at a time; see docs/benchmarks-repository.md.
 */
const SMALL_FILE = 256 * 1024;

/**
 * Creates entries under an empty restore directory without ever writing outside it.
 *
 * The guarantee rests on one invariant: every parent of an entry is a directory this writer
 * created or checked with lstat, and nothing it creates ever replaces a directory (each
 * creation fails on an existing path). So no path is resolved through a symlink, whatever
 * the archive contains. Paths are relative and already checked by entryPath().
 */
export class StagingWriter {
  readonly #root: string;
  readonly #restoreOwners: boolean;
  /** Relative paths known to be real directories; '' is the root. */
  readonly #directories = new Set<string>(['']);
  /** Applied last, deepest first: creating children changes a directory's mtime. */
  readonly #directoryAttributes: { path: string; attributes: EntryAttributes }[] = [];
  /** Files being written in the background, by path. */
  readonly #writing = new Map<string, Promise<void>>();
  readonly #smallFiles = new FileWriter();
  #backgroundFailure: AgentError | undefined;

  constructor(root: string, restoreOwners: boolean) {
    this.#root = root;
    this.#restoreOwners = restoreOwners;
  }

  async directory(path: string, attributes: EntryAttributes): Promise<void> {
    await this.#ensureParents(path);
    await this.#ensureDirectory(path, path);
    this.#directoryAttributes.push({ path, attributes });
  }

  /** Writes `content` (the entry's `size` bytes of data, consumed whole) into a new file. */
  async file(path: string, attributes: EntryAttributes, size: number, content: AsyncIterable<Buffer>): Promise<void> {
    await this.#ensureParents(path);
    if (size > SMALL_FILE) return this.#writeFile(path, attributes, content);

    const chunks: Buffer[] = [];
    for await (const chunk of content) chunks.push(chunk);
    await this.#smallFiles.room();
    const { mode, uid, gid, mtime } = attributes;
    const owner = this.#restoreOwners ? { uid, gid } : undefined;
    const task = this.#smallFiles.write({ path: this.#absolute(path), mode, ...(owner && { owner }), mtimeMs: mtime.getTime() }, chunks).then(
      () => {},
      (error: unknown) => {
        this.#backgroundFailure ??= error instanceof FileWriteError && error.step === 'create' ? this.#creationFailed(path, error) : this.#failed(path, error);
      },
    );
    this.#writing.set(path, task);
    void task.finally(() => {
      if (this.#writing.get(path) === task) this.#writing.delete(path);
    });
  }

  /** Waits for the files still being written; a failure among them fails the next entry or finish(). */
  async settled(): Promise<void> {
    await this.#smallFiles.settled();
    await Promise.all(this.#writing.values());
  }

  async #writeFile(path: string, attributes: EntryAttributes, content: AsyncIterable<Buffer>): Promise<void> {
    let handle: FileHandle;
    try {
      handle = await open(this.#absolute(path), CREATE_FILE, 0o600);
    } catch (error) {
      throw this.#creationFailed(path, error);
    }
    try {
      await writeSkippingZeroBlocks(handle, content);
      // chown before chmod: changing the owner clears setuid and setgid bits.
      if (this.#restoreOwners) await handle.chown(attributes.uid, attributes.gid);
      await handle.chmod(attributes.mode);
      await handle.utimes(attributes.mtime, attributes.mtime);
    } catch (error) {
      throw this.#failed(path, error);
    } finally {
      await handle.close();
    }
  }

  /** The target is data: it may point anywhere, since nothing is ever written through it. */
  async symlink(path: string, target: string, attributes: EntryAttributes): Promise<void> {
    await this.#ensureParents(path);
    const absolute = this.#absolute(path);
    try {
      await symlink(target, absolute);
    } catch (error) {
      throw this.#creationFailed(path, error);
    }
    try {
      if (this.#restoreOwners) await lchown(absolute, attributes.uid, attributes.gid);
      await lutimes(absolute, attributes.mtime, attributes.mtime);
    } catch (error) {
      throw this.#failed(path, error);
    }
  }

  /** `target` must be a regular file restored earlier from the same archive. */
  async hardlink(path: string, target: string): Promise<void> {
    const notRestored = unsafeEntry(path, `its hard link target ${JSON.stringify(target)} is not a regular file restored before it`);
    const parents = parentsOf(target);
    if (target === '' || !parents.every((parent) => this.#directories.has(parent))) throw notRestored;
    await this.#writing.get(target);
    // A target whose batch failed was never written: the batch's failure is the error, not this link.
    this.#throwBackgroundFailure();
    const targetStats = await lstat(this.#absolute(target)).catch(() => undefined);
    if (targetStats === undefined || !targetStats.isFile()) throw notRestored;
    await this.#ensureParents(path);
    try {
      await link(this.#absolute(target), this.#absolute(path));
    } catch (error) {
      throw this.#creationFailed(path, error);
    }
  }

  /** Sets the directories' owners, modes and mtimes, once nothing more is created in them. */
  async finish(): Promise<void> {
    await this.settled();
    this.#throwBackgroundFailure();
    const deepestFirst = [...this.#directoryAttributes].sort((a, b) => depth(b.path) - depth(a.path));
    for (const { path, attributes } of deepestFirst) {
      const absolute = this.#absolute(path);
      try {
        if (this.#restoreOwners) await lchown(absolute, attributes.uid, attributes.gid);
        await chmod(absolute, attributes.mode);
        await lutimes(absolute, attributes.mtime, attributes.mtime);
      } catch (error) {
        throw this.#failed(path, error);
      }
    }
  }

  /** Also where a background failure surfaces: every entry comes through here. */
  async #ensureParents(path: string): Promise<void> {
    this.#throwBackgroundFailure();
    for (const parent of parentsOf(path)) {
      if (!this.#directories.has(parent)) await this.#ensureDirectory(parent, path);
    }
  }

  /** Creates `path` as a directory, or accepts a real directory already there (never a symlink). */
  async #ensureDirectory(path: string, entry: string): Promise<void> {
    const absolute = this.#absolute(path);
    try {
      await mkdir(absolute, { mode: 0o755 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw this.#failed(path, error);
      const existing = await lstat(absolute).catch((lstatError: unknown) => {
        throw this.#failed(path, lstatError);
      });
      if (!existing.isDirectory()) {
        const what = existing.isSymbolicLink() ? 'a symbolic link' : 'not a directory';
        throw unsafeEntry(entry, path === entry ? `it replaces ${what}` : `its parent ${path} is ${what}`);
      }
    }
    this.#directories.add(path);
  }

  #throwBackgroundFailure(): void {
    if (this.#backgroundFailure !== undefined) throw this.#backgroundFailure;
  }

  #absolute(path: string): string {
    return join(this.#root, path);
  }

  #creationFailed(path: string, error: unknown): AgentError {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
      return unsafeEntry(path, 'it would replace an entry restored before it (the archive names it twice)');
    }
    return this.#failed(path, error);
  }

  #failed(path: string, error: unknown): AgentError {
    if (error instanceof AgentError) return error;
    return new AgentError(
      'E_RESTORE_FAILED',
      `cannot restore ${path} into ${this.#root}: ${(error as Error).message}; check free space and permissions there`,
      { cause: error, details: { path } },
    );
  }
}

/** 'a/b/c' → ['a', 'a/b']. */
function parentsOf(path: string): string[] {
  const parts = path.split('/');
  return parts.slice(0, -1).map((_, index) => parts.slice(0, index + 1).join('/'));
}

function depth(path: string): number {
  return path.split('/').length;
}

/** Writes `content` into the new, empty file behind `handle`, leaving its zero blocks unwritten. */
async function writeSkippingZeroBlocks(handle: FileHandle, content: AsyncIterable<Buffer>): Promise<void> {
  /** The file offset of the chunk's first byte. */
  let position = 0;
  /** The file's length: the end of the last write. */
  let length = 0;
  for await (const chunk of content) {
    for (const [start, end] of dataRuns(chunk, position)) {
      await writeAt(handle, chunk, start, end, position + start);
      length = position + end;
    }
    position += chunk.length;
  }
  if (length < position) await handle.truncate(position);
}

async function writeAt(handle: FileHandle, chunk: Buffer, start: number, end: number, position: number): Promise<void> {
  let offset = start;
  while (offset < end) {
    const { bytesWritten } = await handle.write(chunk, offset, end - offset, position + offset - start);
    offset += bytesWritten;
  }
}
