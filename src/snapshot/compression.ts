import { availableParallelism } from 'node:os';
import { Transform, type Duplex, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { execa } from 'execa';
import { childEnv } from '../child-env.ts';
import { claimRecyclable, freeNow, offerForRecycling, recycle } from '../chunk-recycling.ts';
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
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  constructor(pool: CompressionPool, format: FrameFormat, blockBytes: number) {
    super({ readableHighWaterMark: blockBytes });
    this.#pool = pool;
    this.#format = format;
    this.#blockBytes = blockBytes;
    this.#maxInFlight = pool.size + 1;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    if (this.#pendingBytes < this.#blockBytes) return done();
    this.#submit();
    // Backpressure: hold the callback while the workers are busy, so input waits for output.
    if (this.#inFlight.length < this.#maxInFlight) return done();
    this.#pushOldest().then(() => done(), done);
  }

  override _flush(done: TransformCallback): void {
    if (this.#pendingBytes > 0) this.#submit();
    const drain = async () => {
      while (this.#inFlight.length > 0) await this.#pushOldest();
    };
    drain().then(() => done(), done);
  }

  #submit(): void {
    const pieces = this.#pending;
    this.#pending = [];
    // A block that arrived whole (the pack worker's chunks) goes to a worker and back to its
    // producer without a copy; anything else is gathered into a block of our own.
    const giveBack = pieces.length === 1 ? claimRecyclable(pieces[0]!) : undefined;
    const block = giveBack ? pieces[0]! : Buffer.concat(pieces, this.#pendingBytes);
    this.#pendingBytes = 0;
    if (!giveBack) pieces.forEach(recycle);
    const frame = this.#pool.compress(block, this.#format).then(({ frame, memory }) => {
      giveBack?.(memory);
      // Nobody downstream keeps a frame once written: the store frees it then.
      return offerForRecycling(frame, freeNow);
    });
    frame.catch(() => {}); // surfaced in order by #pushOldest; never an unhandled rejection
    this.#inFlight.push(frame);
  }

  async #pushOldest(): Promise<void> {
    const frame = await this.#inFlight.shift()!;
    this.push(frame);
  }
}

/** A streaming decompressor for `kind` (reads concatenated frames/members). */
export function createDecompressor(kind: Compression): Duplex {
  switch (kind) {
    case 'zstd':
      // Not Node's decoder: it stops after the first frame unless that frame's output ends on
      // a chunk boundary (nodejs/node#64741), erroring or silently dropping the rest.
      // stderr is kept (a few lines at most) so that a failure says what zstd found wrong.
      // Destroying the duplex closes the child's pipes, which ends it (EOF, or EPIPE on a full
      // stdout), and the duplex closes only once the child has exited.
      return execa('zstd', ['-q', '-d', '-c'], { buffer: { stdout: false, stderr: true }, stdin: 'pipe', stdout: 'pipe', stderr: 'pipe', env: childEnv(), extendEnv: false }).duplex();
    case 'gzip':
      return zlib.createGunzip({ chunkSize: 1 << 20 });
    case 'none':
      return new Transform({ transform: (chunk, _encoding, done) => done(null, chunk) });
  }
}
