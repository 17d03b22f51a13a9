import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { CrashJournal } from '../crash-journal.ts';

const recordSchema = z.object({
  pid: z.number().int(),
  /** The partial file `backup get` writes before renaming it into place. */
  path: z.string(),
});
export type DownloadRecord = z.infer<typeof recordSchema>;

/**
 * The partial files of `backup get` in progress (`<dir>/.<file>.partial-<pid>`), journaled in
 * `<stateDir>/downloads/` before each is created: a get killed mid-write leaves its entry, and
 * the next start removes the file (removeDeadDownloads). The destination is wherever the user
 * pointed --to, so only the journal can say where to look.
 */
export class DownloadJournal extends CrashJournal<DownloadRecord> {
  constructor(stateDir: string) {
    super(stateDir, 'downloads', recordSchema);
  }
}

/** What a partial file's name looks like: never remove anything else, whatever a record says. */
export function isPartialName(file: string): boolean {
  return /^\..+\.partial-\d+$/.test(path.basename(file));
}

/** Removes the partial files of gets whose process is gone, then their entries. */
export async function removeDeadDownloads(stateDir: string, logger: Logger): Promise<void> {
  const journal = new DownloadJournal(stateDir);
  for (const { file, record } of await journal.leftovers()) {
    try {
      if (path.isAbsolute(record.path) && isPartialName(record.path)) await rm(record.path, { force: true });
      await journal.remove(file);
      logger.warn({ phase: 'recovery', path: record.path, pid: record.pid }, 'removed the partial file of a `backup get` whose process is gone');
    } catch (error) {
      logger.error({ phase: 'recovery', path: record.path, err: (error as Error).message }, 'could not remove the partial file of a killed `backup get`; retried at the next start');
    }
  }
}
