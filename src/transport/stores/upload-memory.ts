import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { recycle } from '../../chunk-recycling.ts';

/**
 * The memory of one multipart upload, freed as soon as no part can need it instead of at V8's
 * next full GC: the chunks of the body (chunk-recycling.ts), and the buffers lib-storage copies
 * them into, one per part. Left to the collector, a 1 GiB upload kept ~60 MiB more resident at
 * peak (docs/benchmarks.md, "Where the time goes").
 *
 * - A body chunk is released once the part holding its last byte has started: lib-storage
 *   assembles parts in order, copying the body's chunks into a new buffer per part, so by then
 *   it has copied every chunk up to that part. A chunk that is itself the body of a part being
 *   uploaded (lib-storage may send a large chunk as it is) waits for that part to succeed.
 * - A part buffer is freed once (1) every UploadPart whose body lies in it has succeeded and (2)
 *   a later part has started from another buffer: lib-storage builds parts in order, so by then
 *   it has copied what it kept of the old buffer into the new one.
 * - Every part buffer has the same size, partSize + 1: lib-storage concatenates what it holds as
 *   soon as that exceeds partSize, so the body is handed over cut at each partSize × n + 1. With
 *   whole frames the buffers ranged from partSize to partSize + a frame, and glibc, which takes
 *   buffers this size from its heap once a freed one has raised its mmap threshold, could not
 *   reuse the holes they left: 25–30 MiB more peak RSS on a 477 MiB backup to RGW
 *   (docs/benchmarks.md, "Peak RSS to S3").
 */
export class UploadMemory {
  readonly #partSize: number;
  readonly #chunks: { chunk: Buffer; end: number }[] = [];
  /** The memory of every body chunk: never taken for a part buffer of lib-storage's. */
  readonly #bodyMemory = new WeakSet<ArrayBufferLike>();
  #bodyBytes = 0;
  /** Body chunks are released up to this byte offset, but for pinned ones. */
  #releaseUpTo = 0;
  /** Memory of body chunks that parts in flight are sending as they are, with the count. */
  readonly #pinned = new Map<ArrayBuffer, number>();
  readonly #partBuffers = new Map<ArrayBuffer, { parts: Set<number>; succeeded: Set<number> }>();
  #latestStart: { part: number; memory: ArrayBuffer } | undefined;

  constructor(partSize: number) {
    this.#partSize = partSize;
  }

  /** `body`, passed through: what the upload reads. */
  track(body: Readable): Readable {
    const chunks = this.#chunks;
    const partSize = this.#partSize;
    const tracked = new Transform({
      writableHighWaterMark: 1 << 20,
      // One piece per read: a byte-mode read() would join the pieces of a cut chunk into a copy.
      readableObjectMode: true,
      readableHighWaterMark: 1,
      transform: (chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) => {
        const start = this.#bodyBytes;
        this.#bodyBytes += chunk.length;
        chunks.push({ chunk, end: this.#bodyBytes });
        this.#bodyMemory.add(chunk.buffer);
        // Views, not copies, cut at the body offsets partSize × n + 1 (n ≥ 1) inside this chunk.
        let at = 0;
        for (let cut = partSize * (Math.floor(Math.max(start - 1, 0) / partSize) + 1) + 1 - start; cut < chunk.length; cut += partSize) {
          tracked.push(chunk.subarray(at, cut));
          at = cut;
        }
        done(null, at === 0 ? chunk : chunk.subarray(at));
      },
    });
    body.on('error', (error) => tracked.destroy(error));
    return body.pipe(tracked);
  }

  /** UploadPart `part` starts sending `body`. */
  started(part: number, body: unknown): void {
    const memory = ownMemory(body);
    if (!memory) return;
    if (!this.#latestStart || part > this.#latestStart.part) this.#latestStart = { part, memory };
    if (this.#bodyMemory.has(memory)) {
      this.#pinned.set(memory, (this.#pinned.get(memory) ?? 0) + 1);
    } else {
      const uses = this.#partBuffers.get(memory) ?? { parts: new Set<number>(), succeeded: new Set<number>() };
      uses.parts.add(part);
      this.#partBuffers.set(memory, uses);
    }
    this.#releaseUpTo = Math.max(this.#releaseUpTo, part * this.#partSize);
    this.#releaseChunks();
    this.#freePartBuffers();
  }

  /** UploadPart `part` succeeded (retries included): its body is no longer read. */
  succeeded(part: number, body: unknown): void {
    const memory = ownMemory(body);
    if (memory) {
      this.#partBuffers.get(memory)?.succeeded.add(part);
      const pins = this.#pinned.get(memory);
      if (pins === 1) this.#pinned.delete(memory);
      else if (pins !== undefined) this.#pinned.set(memory, pins - 1);
    }
    this.#releaseChunks();
    this.#freePartBuffers();
  }

  /** The upload completed: nothing is read any more. */
  completed(): void {
    this.#pinned.clear();
    this.#releaseUpTo = Infinity;
    this.#releaseChunks();
    this.forget();
  }

  /** The upload is over, however it ended: drop every reference (the collector takes the rest). */
  forget(): void {
    this.#chunks.length = 0;
    this.#pinned.clear();
    this.#partBuffers.clear();
    this.#latestStart = undefined;
  }

  #releaseChunks(): void {
    for (let first = this.#chunks[0]; first && first.end <= this.#releaseUpTo; first = this.#chunks[0]) {
      if (this.#pinned.has(first.chunk.buffer as ArrayBuffer)) return;
      recycle(this.#chunks.shift()!.chunk);
    }
  }

  #freePartBuffers(): void {
    const latest = this.#latestStart;
    if (!latest) return;
    for (const [memory, uses] of this.#partBuffers) {
      if (memory === latest.memory || uses.succeeded.size < uses.parts.size) continue;
      if (Math.max(...uses.parts) >= latest.part) continue;
      this.#partBuffers.delete(memory);
      memory.transfer(0); // detached: freed now
    }
  }
}

function ownMemory(body: unknown): ArrayBuffer | undefined {
  return body instanceof Uint8Array && body.buffer instanceof ArrayBuffer ? body.buffer : undefined;
}
