import { Worker } from 'node:worker_threads';
import { AgentError } from '../errors.ts';
import { transferableMemory } from './chunk-recycling.ts';

export interface CompressWorkerData {
  kind: 'zstd' | 'gzip';
  level: number;
}

/** One block to compress: `length` bytes at the start of `memory`, which is transferred. */
export interface CompressJob {
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

const WORKER_URL = new URL('./compress-worker.ts', import.meta.url);

/**
 * Worker threads that compress blocks into independent frames, one block per worker at a time;
 * jobs beyond the workers wait in a queue. Blocks and frames move by transfer, never copied.
 * Node's async one-shot zstd on the thread pool was measured instead: it streams each block
 * through zstd's window (1.2× the CPU) unless the output buffer holds the bound, and every
 * frame then costs the main heap a block-sized buffer to collect (docs/benchmarks.md).
 */
export class CompressionPool {
  readonly #workers: Worker[] = [];
  readonly #idle: Worker[] = [];
  readonly #queue: CompressJob[] = [];
  readonly #waiting = new Map<number, { resolve: (block: CompressedBlock) => void; reject: (error: Error) => void }>();
  #seq = 0;
  #failure: Error | undefined;

  readonly size: number;

  constructor(data: CompressWorkerData, size: number) {
    this.size = size;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(WORKER_URL, { workerData: data });
      worker.on('message', (reply: CompressReply) => this.#onReply(worker, reply));
      worker.on('error', (error) => this.#fail(error));
      worker.on('exit', (code) => {
        if (this.#waiting.size > 0) this.#fail(new Error(`a compression worker exited with code ${code}`));
      });
      this.#workers.push(worker);
      this.#idle.push(worker);
    }
  }

  /** Compresses `block`, taking it over: its memory is transferred to a worker. */
  compress(block: Buffer): Promise<CompressedBlock> {
    if (this.#failure) return Promise.reject(this.#failure);
    const job: CompressJob = { seq: this.#seq++, memory: transferableMemory(block), length: block.length };
    return new Promise((resolve, reject) => {
      this.#waiting.set(job.seq, { resolve, reject });
      this.#queue.push(job);
      this.#dispatch();
    });
  }

  /** Stops the workers; jobs not finished fail. */
  async close(): Promise<void> {
    this.#fail(new AgentError('E_CANCELLED', 'compression stopped'));
    await Promise.all(this.#workers.map((worker) => worker.terminate()));
  }

  #dispatch(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      const worker = this.#idle.pop()!;
      const job = this.#queue.shift()!;
      worker.postMessage(job, [job.memory]);
    }
  }

  #onReply(worker: Worker, reply: CompressReply): void {
    this.#idle.push(worker);
    const waiting = this.#waiting.get(reply.seq);
    this.#waiting.delete(reply.seq);
    if (reply.frame) waiting?.resolve({ frame: Buffer.from(reply.frame, reply.frameOffset, reply.frameBytes), memory: reply.memory });
    else waiting?.reject(new AgentError('E_INTERNAL', `compression failed: ${reply.error}`));
    this.#dispatch();
  }

  #fail(error: Error): void {
    this.#failure ??= error;
    for (const { reject } of this.#waiting.values()) reject(this.#failure);
    this.#waiting.clear();
    this.#queue.length = 0;
  }
}
