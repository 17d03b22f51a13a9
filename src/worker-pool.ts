import { Worker, type Transferable } from 'node:worker_threads';
import { AgentError } from './errors.ts';

/** What every pool worker answers: the request's `seq`, and its result or an error message. */
export type WorkerReply<R> = { seq: number; error?: undefined; result: R } | { seq: number; error: string; result?: undefined };

/**
 * Worker threads of one module, one request per worker at a time; requests beyond the workers
 * wait in a queue, in order. Payloads move by transfer where the caller names them, never
 * copied. Idle workers do not keep the process alive. Once a worker fails, every request in
 * the pool fails and it takes no more (`usable`): its owner makes a new one.
 */
export class WorkerPool<Q extends object, R> {
  readonly #workers: Worker[] = [];
  readonly #idle: Worker[] = [];
  readonly #queue: { message: Q & { seq: number }; transfer: readonly Transferable[] }[] = [];
  readonly #waiting = new Map<number, { resolve: (result: R) => void; reject: (error: Error) => void }>();
  readonly #what: string;
  #seq = 0;
  #failure: Error | undefined;

  readonly size: number;

  constructor(module: URL, size: number, what: string) {
    this.size = size;
    this.#what = what;
    for (let i = 0; i < size; i++) {
      const worker = new Worker(module);
      worker.on('message', (reply: WorkerReply<R>) => this.#onReply(worker, reply));
      worker.on('error', (error) => this.#fail(error));
      worker.on('exit', (code) => this.#fail(new Error(`a ${what} worker exited with code ${code}`)));
      worker.unref(); // after the listeners: adding a 'message' listener refs the worker's port
      this.#workers.push(worker);
      this.#idle.push(worker);
    }
  }

  get usable(): boolean {
    return this.#failure === undefined;
  }

  run(request: Q, transfer: readonly Transferable[] = []): Promise<R> {
    if (this.#failure) return Promise.reject(this.#failure);
    const message = { ...request, seq: this.#seq++ };
    return new Promise((resolve, reject) => {
      this.#waiting.set(message.seq, { resolve, reject });
      this.#queue.push({ message, transfer });
      this.#dispatch();
    });
  }

  #dispatch(): void {
    while (this.#idle.length > 0 && this.#queue.length > 0) {
      const worker = this.#idle.pop()!;
      const { message, transfer } = this.#queue.shift()!;
      worker.ref(); // a request in progress keeps the process alive; an idle worker does not
      worker.postMessage(message, transfer);
    }
  }

  #onReply(worker: Worker, reply: WorkerReply<R>): void {
    worker.unref();
    this.#idle.push(worker);
    const waiting = this.#waiting.get(reply.seq);
    this.#waiting.delete(reply.seq);
    if (reply.error === undefined) waiting?.resolve(reply.result);
    else waiting?.reject(new AgentError('E_INTERNAL', `${this.#what} failed: ${reply.error}`));
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
