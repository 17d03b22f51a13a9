import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { currentProcess, isAlive } from '../liveness.ts';

/**
 * Temp files of this process (the MySQL clients' option file with the password, for one):
 * under the state directory, never /tmp, in a 0700 directory named after the process
 * (`<stateDir>/tmp/<pid>-<start time>`), so that whatever a killed process leaves is found by
 * the next start of any agent process (removeDeadTempDirs) and nobody else can read it.
 */
export async function privateTempDir(stateDir: string): Promise<string> {
  const { pid, startTime } = currentProcess();
  const dir = path.join(stateDir, TEMP_DIR, `${pid}-${startTime ?? 'unknown'}`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/** Removes the temp directories of processes that are gone; returns how many. */
export async function removeDeadTempDirs(stateDir: string): Promise<number> {
  const root = path.join(stateDir, TEMP_DIR);
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names) {
    const match = /^(\d+)-(\d+|unknown)$/.exec(name);
    const owner = match ? { pid: Number(match[1]), startTime: match[2] === 'unknown' ? null : Number(match[2]) } : undefined;
    // A name that is not ours is a leftover too: nothing else writes here.
    if (owner && isAlive(owner)) continue;
    await rm(path.join(root, name), { recursive: true, force: true });
    removed++;
  }
  return removed;
}

const TEMP_DIR = 'tmp';
