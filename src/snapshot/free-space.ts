import { statfs } from 'node:fs/promises';
import { AgentError } from '../errors.ts';

/**
 * Fails before anything is staged when the filesystem holding `dir` has less room than `bytes`
 * (what the restore will write there) plus a margin: a restore that fills a disk half way
 * would stop the services sharing it and fail anyway.
 */
export async function requireFreeSpace(dir: string, bytes: number | undefined, what: string): Promise<void> {
  if (bytes === undefined) return;
  const fs = await statfs(dir);
  const available = fs.bavail * fs.bsize;
  const needed = bytes + Math.max(MARGIN_MIN, bytes * MARGIN_SHARE);
  if (available < needed) {
    throw new AgentError(
      'E_RESTORE_FAILED',
      `not enough free space for ${what} in ${dir}: it needs about ${mib(needed)} MiB and the filesystem has ${mib(available)} MiB free; free space there and restore again — nothing was changed`,
      { details: { path: dir, neededBytes: needed, availableBytes: available } },
    );
  }
}

/** Metadata (directories, inodes, filesystem blocks) on top of the raw bytes. */
const MARGIN_SHARE = 0.02;
const MARGIN_MIN = 16 << 20;

function mib(bytes: number): string {
  return (bytes / (1 << 20)).toFixed(1);
}
