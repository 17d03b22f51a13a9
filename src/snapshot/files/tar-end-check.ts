import { BLOCK, padTo512 } from './tar-header.ts';

/**
 * Tells a tar stream that reaches its end-of-archive marker (zero blocks) from one cut short.
 * tar-stream accepts a stream that stops exactly between two entries as complete, which for a
 * restore would silently drop the rest of the tree.
 */
export class TarEndCheck {
  #bytes = 0;
  #entriesEnd = 0;
  #tail: Buffer = Buffer.alloc(0);

  /** Pass every byte of the archive through here, in order. */
  observe(chunk: Buffer): void {
    this.#bytes += chunk.length;
    this.#tail = chunk.length >= BLOCK ? chunk : Buffer.concat([this.#tail, chunk]);
    if (this.#tail.length > BLOCK) this.#tail = this.#tail.subarray(-BLOCK);
  }

  /** `byteOffset` is where tar-stream found the entry's data (after any pax or long-name header). */
  entry(byteOffset: number, size: number): void {
    this.#entriesEnd = byteOffset + padTo512(size);
  }

  /**
   * Something followed the last entry and the stream ends with a zero block: a stream cut after
   * a pax header would end with the header's text instead.
   */
  isComplete(): boolean {
    return this.#bytes > this.#entriesEnd && this.#tail.length === BLOCK && this.#tail.every((byte) => byte === 0);
  }
}
