/**
 * The wire of a restore's file writes between the staging writer (main thread) and the file
 * write workers: a batch of small files, their contents back to back in one transferred buffer.
 */

export interface BatchedFile {
  /** Absolute path of the new file (its parents already checked or created by the staging writer). */
  path: string;
  length: number;
  mode: number;
  /** Set only when owners are restored. */
  owner?: { uid: number; gid: number };
  mtimeMs: number;
}

export interface FileBatch {
  memory: ArrayBuffer;
  files: BatchedFile[];
}

/** The files of a batch written, or the first that failed and at which step (the rest are not written). */
export type FileBatchResult = { failed?: undefined } | { failed: { index: number; step: 'create' | 'write'; code: string | undefined; message: string } };
