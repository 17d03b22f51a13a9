/** The worker side of a chunk stream (stream.ts): what every chunk worker does around its own reading. */
import { parentPort, workerData } from 'node:worker_threads';
import { toAgentError } from '../../errors.ts';
import { ChunkOutput } from './output.ts';
import { awaitStart, WorkerCancelled, type ChunkWorkerData, type ChunkWorkerMessage } from './protocol.ts';

/**
 * Runs `produce` in this worker thread once it may start: it writes into the output, whose full
 * chunks go to the stream, and returns the stats the stream's `stats` resolves to. A failure is
 * posted with its code; a cancel has nobody left to tell (the stream has failed already).
 * `post` sends the worker's own messages besides the chunks.
 */
export function runChunkWorker<Data extends ChunkWorkerData, Stats, Message = never>(
  produce: (data: Data, out: ChunkOutput, post: (message: Message) => void) => Stats,
): void {
  if (parentPort === null) throw new Error('a chunk worker runs as a worker thread started by chunkWorkerStream()');
  const port = parentPort;
  const data = workerData as Data;
  const post = (message: ChunkWorkerMessage<Stats> | Message, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);
  try {
    awaitStart(data.control);
    const out = new ChunkOutput(data.control, data.chunkSize, data.recycled, (chunk, length) => post({ kind: 'chunk', chunk, length }, [chunk]));
    const stats = produce(data, out, post);
    out.end();
    post({ kind: 'done', stats });
  } catch (error) {
    if (!(error instanceof WorkerCancelled)) {
      const failure = toAgentError(error, 'E_CAPTURE_FAILED');
      post({ kind: 'failed', code: failure.code, message: failure.message, details: failure.details });
    }
  }
}
