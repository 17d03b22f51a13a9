/** The pack worker: walks and reads the tree synchronously and posts the tar stream in chunks. */
import { parentPort, workerData } from 'node:worker_threads';
import { toAgentError } from '../../errors.ts';
import type { FileSegment } from '../driver.ts';
import { ChunkOutput } from './chunk-output.ts';
import { compileExcludes } from './excludes.ts';
import { awaitStart, PackCancelled, type PackWorkerData, type PackWorkerMessage } from './pack-protocol.ts';
import { writeTreeArchive } from './tree-walker.ts';

if (parentPort === null) throw new Error('pack-worker.ts runs as a worker thread started by packTree()');
const port = parentPort;
const data = workerData as PackWorkerData;

function post(message: PackWorkerMessage, transfer: ArrayBuffer[] = []): void {
  port.postMessage(message, transfer);
}

try {
  awaitStart(data.control);
  const out = new ChunkOutput(data.control, data.chunkSize, data.recycled, (chunk, length) =>
    post({ kind: 'chunk', chunk, length }, [chunk]),
  );
  const segments = data.parent && { parent: data.parent, mark: (offset: number, segment: FileSegment) => post({ kind: 'segment', offset, segment }) };
  const stats = writeTreeArchive(data.root, compileExcludes(data.excludes), out, segments);
  post({ kind: 'done', stats });
} catch (error) {
  // A cancelled pack has nobody left to tell: the main thread has already failed the stream.
  if (!(error instanceof PackCancelled)) {
    const failure = toAgentError(error, 'E_CAPTURE_FAILED');
    post({ kind: 'failed', code: failure.code, message: failure.message, details: failure.details });
  }
}
