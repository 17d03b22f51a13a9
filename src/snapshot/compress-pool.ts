import { siblingModule } from '../sibling-module.ts';
import { WorkerPool } from '../worker-pool.ts';

export interface FrameFormat {
  kind: 'zstd' | 'gzip';
  level: number;
}

/** One block to compress: `length` bytes at the start of `memory`, which is transferred. */
export interface CompressJob extends FrameFormat {
  memory: ArrayBuffer;
  length: number;
}

/** The frame (`frameBytes` at `frameOffset` of `frame`), and the block's memory handed back for reuse. */
export interface CompressResult {
  frame: ArrayBuffer;
  frameOffset: number;
  frameBytes: number;
  memory: ArrayBuffer;
}

export interface CompressedBlock {
  frame: Buffer;
  /** The input block's memory, back from the worker: its producer may fill it again. */
  memory: ArrayBuffer;
}

const WORKER_URL = siblingModule(import.meta.url, 'compress-worker');

/**
 * Worker threads that compress blocks into independent frames, one block per worker at a time.
 * Blocks and frames move by transfer, never copied. Node's async one-shot zstd on the thread
 * pool was measured instead: it streams each block through zstd's window (1.2× the CPU) unless
 * the output buffer holds the bound, and every frame then costs the main heap a block-sized
 * buffer to collect (docs/benchmarks.md).
 *
 * One pool serves the whole process (`sharedCompressionPool`): the elements of a consistent
 * backup, stored at once, and the daemon's concurrent jobs share its workers instead of each
 * starting its own (a three-element backup peaked at 339 MiB with a pool each).
 */
export class CompressionPool {
  readonly #pool: WorkerPool<CompressJob, CompressResult>;

  constructor(size: number) {
    this.#pool = new WorkerPool(WORKER_URL, size, 'compression');
  }

  get size(): number {
    return this.#pool.size;
  }

  get usable(): boolean {
    return this.#pool.usable;
  }

  /** Compresses the first `length` bytes of `memory` into one frame of `format`; the memory is transferred. */
  async compress(memory: ArrayBuffer, length: number, format: FrameFormat): Promise<CompressedBlock> {
    const { frame, frameOffset, frameBytes, memory: back } = await this.#pool.run({ ...format, memory, length }, [memory]);
    return { frame: Buffer.from(frame, frameOffset, frameBytes), memory: back };
  }
}

let shared: CompressionPool | undefined;

/** The process's pool of `size` workers, made on first use and again after a worker failed. */
export function sharedCompressionPool(size: number): CompressionPool {
  if (!shared?.usable) shared = new CompressionPool(size);
  return shared;
}
