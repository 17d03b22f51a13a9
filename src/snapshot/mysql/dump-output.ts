import { constants } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { childEnv } from '../../child-env.ts';
import { AgentError, cancelled } from '../../errors.ts';
import { siblingModule } from '../../sibling-module.ts';
import { chunkWorkerStream } from '../chunk-worker/stream.ts';
import type { ChunkWorkerData } from '../chunk-worker/protocol.ts';
import { BLOCK_BYTES } from '../compression.ts';

export interface DumpOutputWorkerData extends ChunkWorkerData {
  fifo: string;
  header: string;
}

/** The worker's word that it has the FIFO open. */
export interface OpenedMessage {
  kind: 'opened';
}

/** Where mysqldump writes (its --result-file), and the stream that reads it. */
export interface DumpOutput {
  fifo: string;
  /** The header line, then mysqldump's output, in chunks of the compressor's block size. */
  stream: Readable;
  /**
   * mysqldump has exited (or will never run): its close of the FIFO is the end of the output,
   * once this side's own hold on it is let go. Idempotent.
   */
  close(): Promise<void>;
  /** For an output no dump will write to: stops its reader and closes it. */
  discard(): Promise<void>;
}

const WORKER_URL = siblingModule(import.meta.url, 'dump-output-worker');

/**
 * mysqldump writes into a FIFO (`--result-file`) that a worker thread reads, instead of into a
 * pipe the main thread reads: Node's child stdout is a socket read 64 KiB at a time, each read
 * a trip through the event loop and the stream machinery (16,000 per GiB) and a copy into a
 * compression block. The worker reads with blocking calls straight into whole blocks, which go
 * to the compressor and back without a copy (docs/mysql.md has the figures).
 *
 * This side holds the FIFO open for writing from the start until mysqldump has exited: the
 * worker's open never waits (mysqldump's may come first or not at all, when it fails early),
 * and the worker's end of file is mysqldump's exit, never a moment before mysqldump opened its
 * result file. The hold is let go only once the worker has the FIFO open: a FIFO without any
 * writer would block its open forever. The worker starts here, before the dump (for a
 * consistent backup, before the freeze). The FIFO is in the process's private temp dir
 * (private-temp.ts), removed by close(), and by the next start after a SIGKILL.
 */
export async function openDumpOutput(tempDir: string, header: string, signal: AbortSignal): Promise<DumpOutput> {
  const fifo = path.join(tempDir, `mysqldump-${randomBytes(6).toString('hex')}.fifo`);
  let hold: FileHandle;
  try {
    await execa('mkfifo', ['-m', '600', fifo], { env: childEnv(), extendEnv: false, cancelSignal: signal });
    // Read and write: a FIFO opened so opens at once, with or without a reader.
    hold = await open(fifo, constants.O_RDWR);
  } catch (error) {
    await rm(fifo, { force: true }); // made, then cancelled
    if (signal.aborted) throw cancelled(signal);
    throw new AgentError('E_CAPTURE_FAILED', `could not make the FIFO mysqldump writes into (${fifo}): ${(error as Error).message}`, { cause: error });
  }
  const { promise: workerHasIt, resolve: opened } = Promise.withResolvers<void>();
  const data: Omit<DumpOutputWorkerData, keyof ChunkWorkerData> = { fifo, header };
  const { stream } = chunkWorkerStream<void, typeof data, OpenedMessage>(WORKER_URL, data, {
    // Like the pack worker: the compressor, not the reading, sets the pace.
    credit: 1,
    chunkSize: BLOCK_BYTES,
    what: "reading mysqldump's output",
    onMessage: () => opened(),
  });
  // A worker that failed or was stopped before its open no longer needs a writer.
  stream.once('close', () => opened());
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= workerHasIt.then(async () => {
      await hold.close();
      await rm(fifo, { force: true }); // nobody opens it again: mysqldump has exited, the worker has it
    }));
  return {
    fifo,
    stream,
    close,
    discard: () => {
      stream.destroy();
      return close();
    },
  };
}
