import { Transform, type TransformCallback } from 'node:stream';

/** Counts the bytes that pass, and tells `onBytes` the running total. */
export class ByteCounter extends Transform {
  bytes = 0;
  readonly #onBytes: ((total: number) => void) | undefined;

  constructor(onBytes?: (total: number) => void) {
    super({ highWaterMark: 1 << 20 });
    this.#onBytes = onBytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    this.#onBytes?.(this.bytes);
    done(null, chunk);
  }
}
