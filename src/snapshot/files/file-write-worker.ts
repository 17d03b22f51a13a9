/**
 * A file write worker: creates the small files of a restore with synchronous calls. On the
 * main thread each file cost six thread-pool round trips (open, write, fchown, fchmod,
 * futimes, close): ~550,000 futex calls and ~6 s of system time for 20,000 files, and the main
 * thread's dispatch of them bounded the whole restore. Here each is one plain syscall.
 */
import { closeSync, constants, fchmodSync, fchownSync, ftruncateSync, futimesSync, openSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import type { WorkerReply } from '../../worker-pool.ts';
import { dataRuns } from './data-runs.ts';
import type { BatchedFile, FileBatch, FileBatchResult } from './file-batch.ts';

if (parentPort === null) throw new Error('file-write-worker.ts runs as a worker thread started by FileWriter');
const port = parentPort;

// O_EXCL: never reuse (or write through) whatever is already at the path, symlinks included.
const CREATE_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

function writeBatch({ memory, files }: FileBatch): FileBatchResult {
  let at = 0;
  for (const [index, file] of files.entries()) {
    const content = Buffer.from(memory, at, file.length);
    at += file.length;
    let fd: number;
    try {
      fd = openSync(file.path, CREATE_FILE, 0o600);
    } catch (error) {
      return failure(index, 'create', error);
    }
    try {
      writeFile(fd, file, content);
    } catch (error) {
      try {
        closeSync(fd);
      } catch {
        // the write's failure is the one to report
      }
      return failure(index, 'write', error);
    }
    try {
      closeSync(fd); // NFS reports EIO, EDQUOT or ENOSPC here: this file's failure, with its errno
    } catch (error) {
      return failure(index, 'write', error);
    }
  }
  return {};
}

function writeFile(fd: number, file: BatchedFile, content: Buffer): void {
  let length = 0;
  for (const [start, end] of dataRuns(content, 0)) {
    for (let offset = start; offset < end; ) offset += writeSync(fd, content, offset, end - offset, offset);
    length = end;
  }
  if (length < content.length) ftruncateSync(fd, content.length);
  // chown before chmod: changing the owner clears setuid and setgid bits.
  if (file.owner) fchownSync(fd, file.owner.uid, file.owner.gid);
  fchmodSync(fd, file.mode);
  const mtime = new Date(file.mtimeMs);
  futimesSync(fd, mtime, mtime);
}

function failure(index: number, step: 'create' | 'write', error: unknown): FileBatchResult {
  return { failed: { index, step, code: (error as NodeJS.ErrnoException).code, message: (error as Error).message } };
}

port.on('message', (request: FileBatch & { seq: number }) => {
  let reply: WorkerReply<FileBatchResult>;
  try {
    reply = { seq: request.seq, result: writeBatch(request) };
  } catch (error) {
    reply = { seq: request.seq, error: (error as Error).message };
  }
  // Freed now: this thread's heap is tiny, so its next GC (which would free it) may be far off.
  request.memory.transfer(0);
  port.postMessage(reply);
});
