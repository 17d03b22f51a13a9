import { Readable } from 'node:stream';
import { MessageChannel, Worker } from 'node:worker_threads';
import { AgentError, cancelled, toAgentError } from '../../errors.ts';
import { offerForRecycling, type GiveBack } from '../../chunk-recycling.ts';
import { createControl, grantCredit, grantStart, requestCancel, type ChunkWorkerData, type ChunkWorkerMessage } from './protocol.ts';

export interface ChunkStreamOptions<Message> {
  /** Chunks the worker may post that the reader has not taken, besides the one it fills. */
  credit: number;
  chunkSize: number;
  /** Start the worker but let it go only at `begin()` (protocol.ts: awaitStart). */
  held?: boolean;
  signal?: AbortSignal | undefined;
  /** What the worker does, for errors: "packing /srv/app", "reading mysqldump's output". */
  what: string;
  /**
   * An object-mode stream, whose chunks `pushChunk` pushes itself (cut at marks, say), rather
   * than each chunk as it came.
   */
  objects?: { pushChunk(push: (item: unknown) => void, bytes: Buffer): void };
  /** The worker's messages other than chunk/done/failed. */
  onMessage?(message: Message, push: (item: unknown) => void): void;
}

export interface ChunkStream<Stats> {
  stream: Readable;
  /** Resolves once the stream has ended and the worker has exited; rejects with the stream's error otherwise. */
  stats: Promise<Stats>;
  begin(): void;
}

/**
 * A Readable of what a worker thread posts in chunks (chunk-worker/output.ts on its side):
 * the worker reads with synchronous calls, the stream grants it credit as chunks are read, so
 * a slow reader pauses the worker. Chunks go out offered for recycling: a consumer done with
 * one hands its memory back to the worker, which fills it again.
 */
export function chunkWorkerStream<Stats, Data extends object, Message = never>(
  url: URL,
  data: Data,
  options: ChunkStreamOptions<Message>,
): ChunkStream<Stats> {
  const { signal, what, objects, onMessage } = options;
  const control = createControl(options.credit, { held: options.held ?? false });
  const { port1: recycled, port2: workerRecycled } = new MessageChannel();
  const giveBack: GiveBack = (memory) => recycled.postMessage(memory, [memory]);
  const workerData: Data & ChunkWorkerData = { ...data, chunkSize: options.chunkSize, control, recycled: workerRecycled };
  const worker = new Worker(url, { workerData, transferList: [workerRecycled] });

  let owed = 0;
  let finished = false;
  let result: Stats | undefined;
  let failure: AgentError | undefined;

  const stream = new Readable({
    objectMode: objects !== undefined,
    highWaterMark: objects ? 2 : options.chunkSize,
    read() {
      if (owed === 0) return;
      grantCredit(control, owed);
      owed = 0;
    },
    destroy(error, callback) {
      if (!stream.readableEnded) {
        requestCancel(control);
        failure ??= error === null ? new AgentError('E_CANCELLED', `${what} stopped: its stream was destroyed before the end`) : toAgentError(error, 'E_CAPTURE_FAILED');
      }
      callback(error);
    },
  });
  const push = (item: unknown) => void stream.push(item);

  worker.on('message', (message: ChunkWorkerMessage<Stats> | Message) => {
    const known = message as ChunkWorkerMessage<Stats>;
    switch (known.kind) {
      case 'chunk': {
        owed++;
        const bytes = Buffer.from(known.chunk, 0, known.length);
        if (objects) objects.pushChunk(push, bytes);
        else stream.push(offerForRecycling(bytes, giveBack));
        break;
      }
      case 'done':
        finished = true;
        result = known.stats;
        stream.push(null);
        break;
      case 'failed':
        stream.destroy(new AgentError(known.code, known.message, { details: known.details }));
        break;
      default:
        onMessage?.(message as Message, push);
    }
  });
  worker.on('error', (error) => stream.destroy(toAgentError(error, 'E_CAPTURE_FAILED')));

  const onAbort = (): void => {
    stream.destroy(cancelled(signal as AbortSignal));
  };
  signal?.addEventListener('abort', onAbort, { once: true });

  const stats = new Promise<Stats>((resolvePromise, reject) => {
    let exited = false;
    let closed = false;
    const settle = (): void => {
      if (!exited || !closed) return;
      signal?.removeEventListener('abort', onAbort);
      // Without a failure the stream ended, which it only does once the worker posted its stats.
      if (failure === undefined) resolvePromise(result as Stats);
      else reject(failure);
    };
    worker.once('exit', (code) => {
      exited = true;
      if (!finished) stream.destroy(new AgentError('E_INTERNAL', `${what}: its worker exited with code ${code} before finishing`));
      settle();
    });
    stream.once('close', () => {
      closed = true;
      recycled.close();
      settle();
    });
  });
  // Callers that only consume the stream see its error there; keep this copy from being unhandled.
  stats.catch(() => {});
  return { stream, stats, begin: () => grantStart(control) };
}
