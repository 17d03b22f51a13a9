import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stateDirWriteError } from './errors.ts';
import { isProcessAlive } from './liveness.ts';

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

/** `<name>.<pid>.<8 hex>.tmp`: a temp file of writeStateFile (or a lock being taken). */
const TEMP_NAME = /\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/**
 * Removes the temp files a process killed between its write and its rename left in the state
 * directory and its subdirectories (jobs, journals, locks), once that process is gone.
 */
export async function removeDeadTempFiles(stateDir: string): Promise<number> {
  let removed = 0;
  const entries = await readdir(stateDir, { withFileTypes: true }).catch(() => []);
  const dirs = [stateDir, ...entries.filter((e) => e.isDirectory()).map((e) => path.join(stateDir, e.name))];
  for (const dir of dirs) {
    for (const name of await readdir(dir).catch(() => [])) {
      const pid = TEMP_NAME.exec(name)?.[1];
      if (pid === undefined || isProcessAlive(Number(pid))) continue;
      await rm(path.join(dir, name), { force: true });
      removed++;
    }
  }
  return removed;
}
