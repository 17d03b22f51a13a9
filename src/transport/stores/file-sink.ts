import { open, type FileHandle } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { recycle } from '../../chunk-recycling.ts';

/**
 * A new file as a stream's destination: created exclusively (mode 0600), fsynced before it
 * counts as finished, and each chunk handed back (chunk-recycling.ts) as soon as it is written.
 */
export class FileSink extends Writable {
  readonly #path: string;
  #handle: FileHandle | undefined;

  constructor(path: string) {
    super({ highWaterMark: 1 << 20 });
    this.#path = path;
  }

  override _construct(callback: (error?: Error | null) => void): void {
    open(this.#path, 'wx', 0o600).then((handle) => {
      this.#handle = handle;
      callback();
    }, callback);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.#writeAll([chunk]).then(() => callback(), callback);
  }

  override _writev(chunks: { chunk: Buffer }[], callback: (error?: Error | null) => void): void {
    this.#writeAll(chunks.map((c) => c.chunk)).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    const handle = this.#handle!;
    this.#handle = undefined;
    // fsync before close: the caller's rename must never publish unwritten data.
    const synced = handle.sync().then(
      () => handle.close(),
      async (error: unknown) => {
        await handle.close().catch(() => {});
        throw error;
      },
    );
    synced.then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const handle = this.#handle;
    this.#handle = undefined;
    if (!handle) return callback(error);
    handle.close().then(() => callback(error), () => callback(error));
  }

  async #writeAll(chunks: Buffer[]): Promise<void> {
    let pending = chunks;
    while (pending.length > 0) {
      // A regular file takes everything at once but for a full disk or an error; loop anyway.
      let { bytesWritten } = await this.#handle!.writev(pending);
      const rest: Buffer[] = [];
      for (const chunk of pending) {
        if (bytesWritten >= chunk.length) bytesWritten -= chunk.length;
        else {
          rest.push(chunk.subarray(bytesWritten));
          bytesWritten = 0;
        }
      }
      pending = rest;
    }
    chunks.forEach(recycle);
  }
}
