import { Transform, type TransformCallback } from 'node:stream';

/**
 * Tells `onBytes` at most once per this many bytes (and once at the end): a dump arrives in
 * 64 KiB reads, and a progress update per read (its timestamp, rate and job record) cost the
 * main thread ~0.3 s per GiB.
 */
const REPORT_EVERY_BYTES = 1 << 20;

/** Counts the bytes that pass, and tells `onBytes` the running total. */
export class ByteCounter extends Transform {
  bytes = 0;
  readonly #onBytes: ((total: number) => void) | undefined;
  #reported = 0;

  constructor(onBytes?: (total: number) => void) {
    super({ highWaterMark: 1 << 20 });
    this.#onBytes = onBytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes - this.#reported >= REPORT_EVERY_BYTES) this.#report();
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    if (this.bytes !== this.#reported) this.#report();
    done();
  }

  #report(): void {
    this.#reported = this.bytes;
    this.#onBytes?.(this.bytes);
  }
}
