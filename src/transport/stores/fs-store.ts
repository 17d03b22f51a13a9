import { mkdir, open, readdir, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { AgentError, cancelled, throwIfCancelled } from '../../errors.ts';
import { FileSink } from './file-sink.ts';
import { checkRange, objectNotFound, objectRangeError, type GetOptions, type ObjectInfo, type ObjectStore, type PutOptions } from './object-store.ts';

/** Temp files live in one directory under the root so a sweep finds every one of them. */
const INCOMPLETE_DIR = '.incomplete';

/**
 * A directory as an object store: the embedded default, so the agent works on a machine
 * with no S3. An object appears atomically: temp file, fsync, rename, fsync of the directory.
 */
export class FsObjectStore implements ObjectStore {
  readonly kind = 'fs';
  readonly maxObjectBytes = Number.MAX_SAFE_INTEGER;
  readonly description: string;
  readonly #root: string;

  constructor(root: string) {
    this.#root = path.resolve(root);
    this.description = `fs:${this.#root}`;
  }

  async put(key: string, body: Readable, options: PutOptions = {}): Promise<void> {
    const target = this.#pathOf(key);
    const tempDir = path.join(this.#root, INCOMPLETE_DIR);
    await mkdir(tempDir, { recursive: true });
    const temp = path.join(tempDir, randomUUID());
    try {
      await pipeline(body, new FileSink(temp), { signal: options.signal });
      await mkdir(path.dirname(target), { recursive: true });
      await rename(temp, target);
      await syncDirectory(path.dirname(target));
    } catch (error) {
      body.destroy();
      await rm(temp, { force: true });
      throw wrapIo(error, `cannot write ${key} to ${this.description}`);
    }
  }

  async get(key: string, _options: GetOptions = {}): Promise<Readable> {
    const file = this.#pathOf(key);
    try {
      const handle = await open(file, 'r');
      return handle.createReadStream({ highWaterMark: 1 << 20 });
    } catch (error) {
      throw wrapIo(error, `cannot read ${key} from ${this.description}`, key);
    }
  }

  async getRange(key: string, offset: number, length: number, options: GetOptions = {}): Promise<Readable> {
    checkRange(key, offset, length);
    const { signal } = options;
    throwIfCancelled(signal);
    const file = this.#pathOf(key);
    let handle;
    try {
      handle = await open(file, 'r');
      // The size of the file this handle reads, not of whatever the path names by then: a short
      // object fails here, before any byte, rather than as a stream that ends early.
      const info = await handle.stat();
      if (!info.isFile()) throw objectNotFound(key);
      if (offset + length > info.size) throw objectRangeError(key, offset, length, info.size, this.description);
    } catch (error) {
      await handle?.close();
      throw wrapIo(error, `cannot read ${key} from ${this.description}`, key);
    }
    if (length === 0) {
      await handle.close();
      return Readable.from([]);
    }
    // A range (a run of a pack's blobs, ≤ 8 MiB) in one read into one buffer of its own, which a
    // reader can keep as it is (read-exactly.ts): 1 MiB reads cost a restore ~0.4 s of main-thread
    // time per GiB in calls and in copying them together.
    const stream = handle.createReadStream({ start: offset, end: offset + length - 1, highWaterMark: Math.min(Math.max(length, 64 << 10), 16 << 20) });
    if (signal) {
      // Fails the stream with the signal's own E_CANCELLED (the stream's `signal` option would
      // fail it with a bare AbortError).
      const onAbort = () => stream.destroy(cancelled(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      stream.once('close', () => signal.removeEventListener('abort', onAbort));
      if (signal.aborted) onAbort(); // while the file was opened
    }
    return stream;
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const info = await stat(this.#pathOf(key));
      return info.isFile() ? { key, size: info.size, lastModified: info.mtime } : undefined;
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw wrapIo(error, `cannot stat ${key} in ${this.description}`);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    // Walk only the directory the prefix names; S3 semantics (a string prefix) are kept by
    // filtering what is under it.
    const slash = prefix.lastIndexOf('/');
    const base = slash < 0 ? '' : prefix.slice(0, slash + 1);
    const keys: string[] = [];
    await this.#walk(base, keys);
    keys.sort();
    for (const key of keys) {
      if (!key.startsWith(prefix)) continue;
      const info = await this.head(key);
      if (info) yield info;
    }
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      const file = this.#pathOf(key);
      try {
        await unlink(file);
      } catch (error) {
        if (!isNotFound(error)) throw wrapIo(error, `cannot delete ${key} from ${this.description}`);
      }
      await this.#pruneEmptyParents(path.dirname(file));
    }
  }

  async sweepIncomplete(_prefix: string, olderThan: Date): Promise<number> {
    const tempDir = path.join(this.#root, INCOMPLETE_DIR);
    let swept = 0;
    let names: string[];
    try {
      names = await readdir(tempDir);
    } catch (error) {
      if (isNotFound(error)) return 0;
      throw wrapIo(error, `cannot list ${tempDir}`);
    }
    for (const name of names) {
      const file = path.join(tempDir, name);
      const info = await stat(file).catch(() => undefined);
      if (info && info.mtime < olderThan) {
        await rm(file, { force: true });
        swept++;
      }
    }
    return swept;
  }

  async presignGet(): Promise<string> {
    throw new AgentError('E_PRESIGN_UNSUPPORTED', `the fs store (${this.#root}) cannot make download URLs: use 'backup get' instead, or an s3 store`);
  }

  async #walk(relativeDir: string, into: string[]): Promise<void> {
    let entries;
    try {
      entries = await readdir(path.join(this.#root, relativeDir), { withFileTypes: true });
    } catch (error) {
      if (isNotFound(error)) return;
      throw wrapIo(error, `cannot list ${relativeDir || '/'} in ${this.description}`);
    }
    for (const entry of entries) {
      if (relativeDir === '' && entry.name === INCOMPLETE_DIR) continue;
      const key = relativeDir + entry.name;
      if (entry.isDirectory()) await this.#walk(`${key}/`, into);
      else if (entry.isFile()) into.push(key);
    }
  }

  async #pruneEmptyParents(dir: string): Promise<void> {
    // Keep the tree tidy: backup directories vanish with their last object, like S3 prefixes.
    let current = dir;
    while (current.startsWith(this.#root + path.sep)) {
      try {
        await rmdir(current);
      } catch {
        return; // not empty (or already gone): stop climbing
      }
      current = path.dirname(current);
    }
  }

  #pathOf(key: string): string {
    const parts = key.split('/');
    if (key === '' || key.startsWith('/') || parts.some((p) => p === '' || p === '.' || p === '..' || p.includes('\0'))) {
      throw new AgentError('E_INVALID_NAME', `invalid object key ${JSON.stringify(key)}`);
    }
    if (parts[0] === INCOMPLETE_DIR) throw new AgentError('E_INVALID_NAME', `object key ${JSON.stringify(key)} uses a reserved name`);
    return path.join(this.#root, ...parts);
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException)?.code === 'ENOENT' || (error as NodeJS.ErrnoException)?.code === 'ENOTDIR';
}

function wrapIo(error: unknown, message: string, key?: string): AgentError {
  if (error instanceof AgentError) return error;
  if ((error as Error)?.name === 'AbortError') return new AgentError('E_CANCELLED', 'the operation was cancelled', { cause: error });
  if (key !== undefined && isNotFound(error)) return objectNotFound(key, error);
  return new AgentError('E_STORE_IO', `${message}: ${(error as Error)?.message ?? String(error)}`, { cause: error });
}
