import { availableParallelism } from 'node:os';
import { Transform, type Duplex, type TransformCallback } from 'node:stream';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { execa } from 'execa';

export type Compression = 'zstd' | 'gzip' | 'none';

export const compressionExtension: Record<Compression, string> = { zstd: '.zst', gzip: '.gz', none: '' };

export interface CompressOptions {
  level: number;
  /** gzip: input bytes per independently compressed member. */
  blockBytes?: number;
  /** gzip: members compressed at once on libuv's thread pool. */
  concurrency?: number;
}

const gzip = promisify(zlib.gzip);

/**
 * zstd runs as the `zstd` CLI with one worker per core (-T0): Node's own zstd costs 43–57 %
 * more CPU per byte and uses one core per stream (docs/benchmarks.md), and its decoder stops
 * after the first frame of a multi-frame stream (nodejs/node#64741). The output is one
 * standard stream with frame checksums (`zstd -d`, `tar --zstd`).
 *
 * gzip (for tools that want .tar.gz/.sql.gz) is compressed in independent members, several at
 * once on the thread pool: Node's gzip stream uses one thread. Concatenated members are one
 * valid gzip stream. Memory: about blockBytes × (concurrency + 1) in and as much out.
 */
export function createCompressor(kind: Compression, options: CompressOptions): Duplex {
  switch (kind) {
    case 'none':
      return new Transform({ transform: (chunk, _encoding, done) => done(null, chunk) });
    case 'zstd':
      return zstdCli([`-${options.level}`, '-T0', '-c']);
    case 'gzip': {
      const blockBytes = options.blockBytes ?? 4 << 20;
      // One member more than cores: a core stays busy while the next block is still filling.
      const concurrency = options.concurrency ?? availableParallelism() + 1;
      return new FrameCompressor((block: Buffer) => gzip(block, { level: options.level }), blockBytes, concurrency);
    }
  }
}

/** The zstd CLI as a stream; a non-zero exit fails the stream, destroying it ends the process. */
function zstdCli(args: string[]): Duplex {
  return execa('zstd', ['-q', ...args], { buffer: false, stdin: 'pipe', stdout: 'pipe', stderr: 'pipe' }).duplex();
}

class FrameCompressor extends Transform {
  readonly #compress: (block: Buffer) => Promise<Buffer>;
  readonly #blockBytes: number;
  readonly #concurrency: number;
  readonly #inFlight: Promise<Buffer>[] = [];
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  constructor(compress: (block: Buffer) => Promise<Buffer>, blockBytes: number, concurrency: number) {
    super({ readableHighWaterMark: blockBytes });
    this.#compress = compress;
    this.#blockBytes = blockBytes;
    this.#concurrency = concurrency;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    if (this.#pendingBytes < this.#blockBytes) return done();
    this.#submit();
    // Backpressure: hold the callback while the pool is full, so input waits for output.
    if (this.#inFlight.length < this.#concurrency) return done();
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
    const block = Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    const frame = this.#compress(block);
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
      return zstdCli(['-d', '-c']);
    case 'gzip':
      return zlib.createGunzip({ chunkSize: 1 << 20 });
    case 'none':
      return new Transform({ transform: (chunk, _encoding, done) => done(null, chunk) });
  }
}
