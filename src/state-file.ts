import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stateDirWriteError } from './errors.ts';

/**
 * Writes one file of the state directory (a job record, a journal entry, schedule.json) so that
 * a crash never leaves it half written: into a temp file beside it (0600, its directory 0700),
 * then renamed over it. A failed write removes its temp file (on a full disk the create
 * succeeds and the write does not), and a full state directory is E_NO_SPACE naming it.
 */
export async function writeStateFile(stateDir: string, file: string, text: string): Promise<void> {
  const temp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    await writeFile(temp, text, { mode: 0o600 });
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true }).catch(() => {}); // the write's error is the one to report
    throw stateDirWriteError(error, stateDir, file);
  }
}
