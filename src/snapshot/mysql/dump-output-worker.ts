/**
 * The dump output worker: our header line, then everything mysqldump writes into its result
 * file (a FIFO, dump-output.ts), read with blocking reads into whole chunks until its end.
 */
import { closeSync, openSync } from 'node:fs';
import { AgentError } from '../../errors.ts';
import { runChunkWorker } from '../chunk-worker/worker.ts';
import type { DumpOutputWorkerData, OpenedMessage } from './dump-output.ts';

runChunkWorker<DumpOutputWorkerData, void, OpenedMessage>((data, out, post) => {
  out.write(Buffer.from(data.header));
  // At once: the main thread holds the FIFO open for writing until it hears this.
  const fd = openSync(data.fifo, 'r');
  post({ kind: 'opened' });
  try {
    const { error } = out.readFrom(fd, Number.POSITIVE_INFINITY);
    if (error) throw new AgentError('E_CAPTURE_FAILED', `reading mysqldump's output failed: ${error.message}`, { cause: error });
  } finally {
    closeSync(fd);
  }
});
