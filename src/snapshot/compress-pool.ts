import { Worker } from 'node:worker_threads';
import { AgentError } from '../errors.ts';
import { siblingModule } from '../sibling-module.ts';
import { transferableMemory } from './chunk-recycling.ts';

export interface FrameFormat {
  kind: 'zstd' | 'gzip';
  level: number;
}

/** One block to compress: `length` bytes at the start of `memory`, which is transferred. */
export interface CompressJob extends FrameFormat {
  seq: number;
  memory: ArrayBuffer;
  length: number;
}

/** The frame (`frameBytes` at `frameOffset` of `frame`), and the block's memory handed back for reuse. */
export type CompressReply =
  | { seq: number; frame: ArrayBuffer; frameOffset: number; frameBytes: number; memory: ArrayBuffer; error?: undefined }
  | { seq: number; error: string; memory: ArrayBuffer; frame?: undefined };

export interface CompressedBlock {
  frame: Buffer;
  /** The input block's memory, back from the worker: its producer may fill it again. */
  memory: ArrayBuffer;
}

const WORKER_URL = siblingModule(import.meta.url, 'compress-worker');

/**
 * Worker threads that compress blocks into independent frames, one block per worker at a time;
 * jobs beyond the workers wait in a queue, in order. Blocks and frames move by transfer, never
 * copied. Node's async one-shot zstd on the thread pool was measured instead: it streams each
 * block through zstd's window (1.2× the CPU) unless the output buffer holds the bound, and
 * every frame then costs the main heap a block-sized buffer to collect (docs/benchmarks.md).
 *
 * One pool serves the whole process (`sharedCompressionPool`): the elements of a consistent
 * backup, stored at once, and the daemon's concurrent jobs share its workers instead of each
 * starting its own (a three-element backup peaked at 339 MiB with a pool each). Idle workers
 * do not keep the process alive.
 */
export class CompressionPool {
  readonly #workers: Worker[] = [];
  readonly #idle: Worker[] = [];
  readonly #queue: CompressJob[] = [];
  readonly #waiting = new Map<number, { resolve: (block: CompressedBlock) => void; reject: (error: Error) => void }>();
  #seq = 0;
  #failure: Error | undefined;

  readonly size: number;

  constructor(size: number) {
    this.size = size;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(WORKER_URL);
      worker.on('message', (reply: CompressReply) => this.#onReply(worker, reply));
      worker.on('error', (error) => this.#fail(error));
      worker.on('exit', (code) => this.#fail(new Error(`a compression worker exited with code ${code}`)));
      worker.unref(); // after the listeners: adding a 'message' listener refs the worker's port
      this.#workers.push(worker);
      this.#idle.push(worker);
    }
  }

  /** False once a worker failed: every job in it failed, and the pool takes no more. */
  get usable(): boolean {
    return this.#failure === undefined;
  }

  /** Compresses `block` into one frame of `format`, taking the block over: its memory is transferred. */
  compress(block: Buffer, format: FrameFormat): Promise<CompressedBlock> {
    if (this.#failure) return Promise.reject(this.#failure);
    const job: CompressJob = { ...format, seq: this.#seq++, memory: transferableMemory(block), length: block.length };
    return new Promise((resolve, reject) => {
      this.#waiting.set(job.seq, { resolve, reject });
      this.#queue.push(job);
      this.#dispatch();
    });
  }

  #dispatch(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      const worker = this.#idle.pop()!;
      const job = this.#queue.shift()!;
      worker.ref(); // a job in progress keeps the process alive; an idle worker does not
      worker.postMessage(job, [job.memory]);
    }
  }

  #onReply(worker: Worker, reply: CompressReply): void {
    worker.unref();
    this.#idle.push(worker);
    const waiting = this.#waiting.get(reply.seq);
    this.#waiting.delete(reply.seq);
    if (reply.frame) waiting?.resolve({ frame: Buffer.from(reply.frame, reply.frameOffset, reply.frameBytes), memory: reply.memory });
    else waiting?.reject(new AgentError('E_INTERNAL', `compression failed: ${reply.error}`));
    this.#dispatch();
  }

  #fail(error: Error): void {
    if (this.#failure) return;
    this.#failure = error;
    for (const { reject } of this.#waiting.values()) reject(error);
    this.#waiting.clear();
    this.#queue.length = 0;
    for (const worker of this.#workers) void worker.terminate();
  }
}

let shared: CompressionPool | undefined;

/** The process's pool of `size` workers, made on first use and again after a worker failed. */
export function sharedCompressionPool(size: number): CompressionPool {
  if (!shared?.usable) shared = new CompressionPool(size);
  return shared;
}
