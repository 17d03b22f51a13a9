import { readSync } from 'node:fs';
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { takeCredit } from './protocol.ts';

export type SendChunk = (chunk: ArrayBuffer, length: number) => void;

export interface ReadOutcome {
  bytesRead: number;
  /** Set when a read failed part way; the bytes before it are in the output. */
  error?: NodeJS.ErrnoException;
}

/**
 * The worker's side of the tar stream: fills fixed-size chunks and hands each full one to
 * `send` (which transfers it, so nothing is copied), waiting for credit first. File contents
 * are read straight into the chunk. Chunks come back through `recycled` once consumed
 * (chunk-recycling.ts) and are filled again.
 */
export class ChunkOutput {
  readonly #control: Int32Array;
  readonly #size: number;
  readonly #send: SendChunk;
  readonly #recycled: MessagePort;
  #chunk: Buffer;
  #used = 0;
  #sent = 0;

  constructor(control: Int32Array, chunkSize: number, recycled: MessagePort, send: SendChunk) {
    this.#control = control;
    this.#size = chunkSize;
    this.#recycled = recycled;
    this.#send = send;
    this.#chunk = this.#allocate();
  }

  write(bytes: Uint8Array): void {
    let offset = 0;
    while (offset < bytes.length) {
      if (this.#used === this.#size) this.#flush();
      const copied = Math.min(this.#size - this.#used, bytes.length - offset);
      this.#chunk.set(bytes.subarray(offset, offset + copied), this.#used);
      this.#used += copied;
      offset += copied;
    }
  }

  zeros(count: number): void {
    let left = count;
    while (left > 0) {
      if (this.#used === this.#size) this.#flush();
      const filled = Math.min(this.#size - this.#used, left);
      this.#chunk.fill(0, this.#used, this.#used + filled);
      this.#used += filled;
      left -= filled;
    }
  }

  /** Reads up to `count` bytes of `fd` from its current position, stopping early at end of file. */
  readFrom(fd: number, count: number): ReadOutcome {
    let bytesRead = 0;
    while (bytesRead < count) {
      if (this.#used === this.#size) this.#flush();
      let read: number;
      try {
        read = readSync(fd, this.#chunk, this.#used, Math.min(this.#size - this.#used, count - bytesRead), null);
      } catch (error) {
        return { bytesRead, error: error as NodeJS.ErrnoException };
      }
      if (read === 0) break;
      this.#used += read;
      bytesRead += read;
    }
    return { bytesRead };
  }

  /** Bytes written so far: the offset in the stream of the next byte. */
  get offset(): number {
    return this.#sent + this.#used;
  }

  /** Sends what is buffered; the output cannot be written to afterwards. */
  end(): void {
    if (this.#used > 0) this.#sendChunk();
  }

  #flush(): void {
    this.#sendChunk();
    this.#chunk = this.#allocate();
    this.#used = 0;
  }

  #sendChunk(): void {
    takeCredit(this.#control);
    this.#sent += this.#used;
    this.#send(this.#chunk.buffer as ArrayBuffer, this.#used);
  }

  #allocate(): Buffer {
    const returned = receiveMessageOnPort(this.#recycled)?.message as ArrayBuffer | undefined;
    if (returned !== undefined) return Buffer.from(returned);
    // A chunk of its own (never the shared pool) so that it can be transferred. Not zero-filled
    // (measurably cheaper): every byte below #used is written by write/zeros/readFrom, and only
    // those bytes are sent.
    return Buffer.allocUnsafeSlow(this.#size);
  }
}
