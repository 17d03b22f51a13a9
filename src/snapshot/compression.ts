import { availableParallelism } from 'node:os';
import { Transform, type Duplex, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { childEnv } from '../child-env.ts';
import { claimRecyclable, freeNow, offerForRecycling, recycle, transferableMemory, type GiveBack } from '../chunk-recycling.ts';
import { sharedCompressionPool, type CompressionPool, type FrameFormat } from './compress-pool.ts';

export type Compression = 'zstd' | 'gzip' | 'none';

export const compressionExtension: Record<Compression, string> = { zstd: '.zst', gzip: '.gz', none: '' };

export interface CompressOptions {
  level: number;
  /** Input bytes per independently compressed frame (zstd) or member (gzip). */
  blockBytes?: number;
  /** Compression workers (threads) of the process's shared pool, if it has to be made. */
  workers?: number;
}

/**
 * Input bytes per frame. 3 MiB measured as fast as 4 MiB, for 0.1 % more output (still 0.6 %
 * less than `zstd -1 -T0`), and gave the lowest peak RSS uploading to S3: ~250 MiB against
 * ~265 for 4 MiB and ~290 for 2 MiB (docs/benchmarks.md).
 */
export const BLOCK_BYTES = 3 << 20;

/**
 * Workers per compressor on a big host: 4 compress zstd -1 at ~1.5 GB/s, more than a store
 * takes, and a node's other cores belong to the services it hosts.
 */
const MAX_WORKERS = 4;

/**
 * Compresses in independent frames (zstd) or members (gzip) of `blockBytes`, one per worker
 * thread at a time: a Node zstd or gzip stream uses one thread. Concatenated frames or members
 * are one valid stream (`zstd -d`, `tar --zstd`, `gunzip`). Frames carry a checksum, so
 * `zstd -t` spots corruption on its own. Measured on the benchmark tar (2 cores): zstd -1 in
 * frames costs 0.8× the CPU of `zstd -1 -T0` and its output is 0.6 % smaller.
 * Memory: about blockBytes × (workers + 2) in and as much out.
 */
export function createCompressor(kind: Compression, options: CompressOptions): Duplex {
  if (kind === 'none') return new Transform({ transform: (chunk, _encoding, done) => done(null, chunk) });
  const pool = sharedCompressionPool(options.workers ?? Math.min(availableParallelism(), MAX_WORKERS));
  return new FrameCompressor(pool, { kind, level: options.level }, options.blockBytes ?? BLOCK_BYTES);
}

class FrameCompressor extends Transform {
  readonly #pool: CompressionPool;
  readonly #format: FrameFormat;
  readonly #blockBytes: number;
  /**
   * Frames in order: one more than workers, so that a worker that finishes finds the next
   * block waiting (one per worker measured 6 % slower).
   */
  readonly #inFlight: Promise<Buffer>[] = [];
  readonly #maxInFlight: number;
  /** The block being filled, and how much of it is. */
  #block: Buffer | undefined;
  #filled = 0;
  /**
   * Block memory back from the workers, filled again: a new multi-MiB block per frame cost
   * the kernel a fresh zeroed page per 4 KiB (a quarter of a million page faults per GiB).
   */
  readonly #spare: ArrayBuffer[] = [];

  constructor(pool: CompressionPool, format: FrameFormat, blockBytes: number) {
    super({ readableHighWaterMark: blockBytes });
    this.#pool = pool;
    this.#format = format;
    this.#blockBytes = blockBytes;
    this.#maxInFlight = pool.size + 1;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    // A block that arrives whole (the pack worker's chunks) goes to a worker and back to its
    // producer without a copy; anything else is copied into a block of our own.
    const giveBack = this.#filled === 0 && chunk.length >= this.#blockBytes ? claimRecyclable(chunk) : undefined;
    if (giveBack) {
      this.#submit(transferableMemory(chunk), chunk.length, giveBack);
    } else {
      for (let offset = 0; offset < chunk.length; ) {
        const block = (this.#block ??= this.#takeBlock());
        const copied = chunk.copy(block, this.#filled, offset);
        offset += copied;
        this.#filled += copied;
        if (this.#filled === block.length) this.#submitBlock();
      }
      recycle(chunk);
    }
    // Backpressure: hold the callback while the workers are busy, so input waits for output.
    if (this.#inFlight.length < this.#maxInFlight) return done();
    this.#drain(this.#maxInFlight - 1).then(() => done(), done);
  }

  override _flush(done: TransformCallback): void {
    if (this.#filled > 0) this.#submitBlock();
    this.#drain(0).then(() => done(), done);
  }

  #takeBlock(): Buffer {
    const memory = this.#spare.pop();
    return memory ? Buffer.from(memory) : Buffer.allocUnsafeSlow(this.#blockBytes);
  }

  #submitBlock(): void {
    const block = this.#block!;
    const length = this.#filled;
    this.#block = undefined;
    this.#filled = 0;
    this.#submit(block.buffer as ArrayBuffer, length, this.#keepSpare);
  }

  readonly #keepSpare: GiveBack = (memory) => {
    if (this.#spare.length < this.#maxInFlight) this.#spare.push(memory);
  };

  /** Compresses the first `length` bytes of `memory` (transferred) into the next frame. */
  #submit(memory: ArrayBuffer, length: number, giveBack: GiveBack): void {
    const frame = this.#pool.compress(memory, length, this.#format).then(({ frame, memory }) => {
      giveBack(memory);
      // Nobody downstream keeps a frame once written: the store frees it then.
      return offerForRecycling(frame, freeNow);
    });
    frame.catch(() => {}); // surfaced in order by #drain; never an unhandled rejection
    this.#inFlight.push(frame);
  }

  /** Pushes the oldest frames, in order, until at most `left` are in flight. */
  async #drain(left: number): Promise<void> {
    while (this.#inFlight.length > left) this.push(await this.#inFlight.shift()!);
  }
}

/**
 * A streaming decompressor for `kind` (reads concatenated frames/members). Async only because
 * execa is loaded on first use: ~65 ms of every command's start that reads no element (list,
 * show, prune) would otherwise go to it.
 */
export async function createDecompressor(kind: Compression): Promise<Duplex> {
  switch (kind) {
    case 'zstd':
      // Not Node's decoder: it stops after the first frame unless that frame's output ends on
      // a chunk boundary (nodejs/node#64741), erroring or silently dropping the rest.
      // stderr is kept (a few lines at most) so that a failure says what zstd found wrong.
      // Destroying the duplex closes the child's pipes, which ends it (EOF, or EPIPE on a full
      // stdout), and the duplex closes only once the child has exited.
      const { execa } = await import('execa');
      return execa('zstd', ['-q', '-d', '-c'], { buffer: { stdout: false, stderr: true }, stdin: 'pipe', stdout: 'pipe', stderr: 'pipe', env: childEnv(), extendEnv: false }).duplex();
    case 'gzip':
      return zlib.createGunzip({ chunkSize: 1 << 20 });
    case 'none':
      return new Transform({ transform: (chunk, _encoding, done) => done(null, chunk) });
  }
}
