import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { MessageChannel, Worker } from 'node:worker_threads';
import { AgentError, cancelled, throwIfCancelled, toAgentError } from '../../errors.ts';
import { siblingModule } from '../../sibling-module.ts';
import { offerForRecycling } from '../../chunk-recycling.ts';
import { BLOCK_BYTES } from '../compression.ts';
import type { FileSegment } from '../driver.ts';
import { createControl, grantCredit, grantStart, requestCancel, type PackWorkerData, type PackWorkerMessage } from './pack-protocol.ts';

export interface PackOptions {
  /** Patterns relative to the root; syntax in excludes.ts. */
  excludes?: readonly string[];
  signal?: AbortSignal;
  /**
   * Mark each file's segment (FileSegment objects between the Buffers: the stream is then in
   * object mode), and skip the files this parent snapshot holds unchanged (path → signature).
   */
  parent?: ReadonlyMap<string, string>;
  /**
   * Start the worker (its thread up, its modules loaded) but read nothing of the tree until
   * `begin()`: a consistent backup starts it before the freeze, so that the pause holds only
   * the walk (issue #14 §4).
   */
  held?: boolean;
}

export interface PackStats {
  files: number;
  directories: number;
  symlinks: number;
  hardlinks: number;
  /** File content bytes. */
  bytes: number;
  /** What the files take on disk (st_blocks): less than `bytes` for sparse files. */
  allocatedBytes: number;
  /** Files taken from the parent snapshot unread (counted in files and bytes too). */
  unchanged: number;
  warnings: string[];
}

/** The compressor's block size, so that a chunk is compressed as it comes, without a copy. */
const CHUNK_SIZE = BLOCK_BYTES;
/**
 * Chunks the worker may have posted that the reader has not taken, besides the one it fills:
 * 1, 2 and 4 measured alike end to end (the compressor is the slower side); consumed chunks
 * come back to be refilled.
 */
const CHUNK_CREDIT = 1;
/**
 * With segments the consumer is the repository, whose pace is set by many small blobs rather
 * than by one compressor: more read ahead keeps the worker walking while it catches up.
 */
const SEGMENTED_CHUNK_CREDIT = 4;
const WORKER_URL = siblingModule(import.meta.url, 'pack-worker');

/**
 * A tar stream of the tree under `root` (entry names relative to root, no leading './'; the
 * root itself has no entry). `stats` resolves once the stream has ended and the worker has
 * exited, and rejects with the stream's error otherwise. `begin` lets a `held` pack walk (a
 * no-op otherwise).
 *
 * A worker thread walks and reads the tree with synchronous calls and hands over 1 MiB chunks;
 * the stream grants it credit for more as they are read, so a slow reader pauses the worker.
 */
export function packTree(root: string, options: PackOptions = {}): { stream: Readable; stats: Promise<PackStats>; begin(): void } {
  const { signal } = options;
  throwIfCancelled(signal);

  const segmented = options.parent !== undefined;
  const control = createControl(segmented ? SEGMENTED_CHUNK_CREDIT : CHUNK_CREDIT, { held: options.held ?? false });
  // Chunks a consumer is done with go back to the worker, which fills them again.
  const { port1: recycled, port2: workerRecycled } = new MessageChannel();
  const giveBack = (memory: ArrayBuffer) => recycled.postMessage(memory, [memory]);
  const workerData: PackWorkerData = {
    root: resolve(root),
    excludes: [...(options.excludes ?? [])],
    chunkSize: CHUNK_SIZE,
    control,
    recycled: workerRecycled,
    parent: options.parent,
  };
  const worker = new Worker(WORKER_URL, { workerData, transferList: [workerRecycled] });

  let owed = 0;
  let result: PackStats | undefined;
  let failure: AgentError | undefined;

  // Segment marks in the order they came, each waiting for the bytes before it to be pushed.
  const marks: { offset: number; segment: FileSegment }[] = [];
  let pushed = 0;
  const pushMarks = () => {
    while (marks.length > 0 && marks[0]!.offset === pushed) stream.push(marks.shift()!.segment);
  };
  /** Pushes a chunk's bytes, each waiting mark at its offset between them. */
  const pushSegmented = (bytes: Buffer) => {
    let at = 0;
    while (at < bytes.length) {
      pushMarks();
      const next = marks[0];
      const end = next && next.offset < pushed + bytes.length - at ? at + (next.offset - pushed) : bytes.length;
      stream.push(bytes.subarray(at, end));
      pushed += end - at;
      at = end;
    }
    pushMarks();
  };

  const stream = new Readable({
    objectMode: segmented,
    highWaterMark: segmented ? 2 : CHUNK_SIZE,
    read() {
      if (owed === 0) return;
      grantCredit(control, owed);
      owed = 0;
    },
    destroy(error, callback) {
      if (!stream.readableEnded) {
        requestCancel(control);
        failure ??=
          error === null
            ? new AgentError('E_CANCELLED', `packing ${root} stopped: its stream was destroyed before the end`)
            : toAgentError(error, 'E_CAPTURE_FAILED');
      }
      callback(error);
    },
  });

  worker.on('message', (message: PackWorkerMessage) => {
    switch (message.kind) {
      case 'chunk':
        owed++;
        // Cut at its marks, a chunk is in several views: none is the one consumer that could recycle it.
        if (segmented) pushSegmented(Buffer.from(message.chunk, 0, message.length));
        else stream.push(offerForRecycling(Buffer.from(message.chunk, 0, message.length), giveBack));
        break;
      case 'segment':
        marks.push(message);
        pushMarks();
        break;
      case 'done':
        result = message.stats;
        stream.push(null);
        break;
      case 'failed':
        stream.destroy(new AgentError(message.code, message.message, { details: message.details }));
        break;
    }
  });
  worker.on('error', (error) => stream.destroy(toAgentError(error, 'E_CAPTURE_FAILED')));

  const onAbort = (): void => {
    stream.destroy(cancelled(signal as AbortSignal));
  };
  signal?.addEventListener('abort', onAbort, { once: true });

  const stats = new Promise<PackStats>((resolvePromise, reject) => {
    let exited = false;
    let closed = false;
    const settle = (): void => {
      if (!exited || !closed) return;
      signal?.removeEventListener('abort', onAbort);
      // Without a failure the stream ended, which it only does once the worker posted its stats.
      if (failure === undefined) resolvePromise(result as PackStats);
      else reject(failure);
    };
    worker.once('exit', (code) => {
      exited = true;
      if (result === undefined) {
        stream.destroy(new AgentError('E_INTERNAL', `the pack worker for ${root} exited with code ${code} before finishing`));
      }
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
