import { availableParallelism } from 'node:os';
import { siblingModule } from '../../sibling-module.ts';
import { WorkerPool } from '../../worker-pool.ts';
import type { BatchedFile, FileBatch, FileBatchResult } from './file-batch.ts';

const WORKER_URL = siblingModule(import.meta.url, 'file-write-worker');

/** Two writers keep a disk's queue fed while one waits on it; more only contend for the cores. */
const WORKERS = 2;
/**
 * A batch goes once it holds this many files or bytes, or at the next turn of the event loop
 * when a worker is idle; while every worker is busy the batch keeps filling, and goes when one
 * is done (sent at every turn, a restore's batches held ~16 files: 1,228 messages for 20,006).
 */
const BATCH_FILES = 128;
const BATCH_BYTES = 1 << 20;
/**
 * Bytes and files queued and being written at most: the memory a restore's small files hold,
 * and how far the writes run behind the archive (what a cancel still lets land).
 */
const IN_FLIGHT_BYTES = 8 << 20;
const IN_FLIGHT_FILES = 4 * BATCH_FILES;

/** One file of a batch that could not be written: at which step, and the errno code. */
export class FileWriteError extends Error {
  readonly code: string | undefined;
  readonly step: 'create' | 'write';
  constructor(step: 'create' | 'write', code: string | undefined, message: string) {
    super(message);
    this.step = step;
    this.code = code;
  }
}

interface Queued {
  file: BatchedFile;
  content: readonly Buffer[];
  resolve: () => void;
  reject: (error: Error) => void;
}

/**
 * Writes small new files in worker threads, in batches (file-write-worker.ts). Each `write`
 * resolves once its file is complete (content, owner, mode, mtime) and rejects with a
 * FileWriteError; `room` bounds the bytes held, whatever the number of files.
 */
export class FileWriter {
  readonly #pool = sharedFileWritePool();
  #queued: Queued[] = [];
  #queuedBytes = 0;
  #flushing: NodeJS.Immediate | undefined;
  readonly #inFlight = new Set<Promise<void>>();
  #inFlightBytes = 0;
  #inFlightFiles = 0;

  write(file: Omit<BatchedFile, 'length'>, content: readonly Buffer[]): Promise<void> {
    const length = content.reduce((sum, c) => sum + c.length, 0);
    return new Promise((resolve, reject) => {
      this.#queued.push({ file: { ...file, length }, content, resolve, reject });
      this.#queuedBytes += length;
      if (this.#queued.length >= BATCH_FILES || this.#queuedBytes >= BATCH_BYTES) this.#flush();
      else this.#flushSoon();
    });
  }

  /** Sends the batch at the next turn of the event loop if a worker is idle then (else once one is). */
  #flushSoon(): void {
    this.#flushing ??= setImmediate(() => {
      this.#flushing = undefined;
      if (this.#inFlight.size < this.#pool.size) this.#flush();
    });
  }

  /** Returns once the bytes and files queued and being written are under their bounds. */
  async room(): Promise<void> {
    while (this.#queuedBytes + this.#inFlightBytes >= IN_FLIGHT_BYTES || this.#queued.length + this.#inFlightFiles >= IN_FLIGHT_FILES) {
      if (this.#inFlight.size === 0) this.#flush();
      await Promise.race(this.#inFlight);
    }
  }

  /** Sends what is queued and waits for every write (each one's own promise says how it went). */
  async settled(): Promise<void> {
    this.#flush();
    await Promise.all(this.#inFlight);
  }

  #flush(): void {
    if (this.#flushing) clearImmediate(this.#flushing);
    this.#flushing = undefined;
    if (this.#queued.length === 0) return;
    const batch = this.#queued;
    const bytes = this.#queuedBytes;
    this.#queued = [];
    this.#queuedBytes = 0;
    // One copy, into memory the worker takes over: the contents are views of bigger buffers.
    const all = Buffer.allocUnsafeSlow(bytes);
    let at = 0;
    for (const { content } of batch) for (const chunk of content) at += chunk.copy(all, at);
    const request: FileBatch = { memory: all.buffer as ArrayBuffer, files: batch.map((q) => q.file) };
    this.#inFlightBytes += bytes;
    this.#inFlightFiles += batch.length;
    const sent = this.#pool.run(request, [request.memory]).then(
      (result) => settle(batch, result),
      (error: unknown) => batch.forEach((q) => q.reject(error as Error)),
    );
    const tracked = sent.finally(() => {
      this.#inFlight.delete(tracked);
      this.#inFlightBytes -= bytes;
      this.#inFlightFiles -= batch.length;
      if (this.#queued.length > 0) this.#flushSoon(); // what filled meanwhile
    });
    this.#inFlight.add(tracked);
  }
}

function settle(batch: Queued[], result: FileBatchResult): void {
  const failed = result.failed;
  for (const [index, queued] of batch.entries()) {
    if (failed === undefined || index < failed.index) queued.resolve();
    else if (index === failed.index) queued.reject(new FileWriteError(failed.step, failed.code, failed.message));
    else queued.reject(new FileWriteError('write', undefined, `not written: ${batch[failed.index]!.file.path} before it in its batch failed`));
  }
}

let shared: WorkerPool<FileBatch, FileBatchResult> | undefined;

/** The process's file write workers, made on first use and again after one failed. */
function sharedFileWritePool(): WorkerPool<FileBatch, FileBatchResult> {
  if (!shared?.usable) shared = new WorkerPool(WORKER_URL, Math.min(availableParallelism(), WORKERS), 'file write');
  return shared;
}
