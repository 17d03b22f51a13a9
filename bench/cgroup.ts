import { rmdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Removes a benchmark's writer cgroup once its processes are gone: rmdir fails (EBUSY) while
 * one is still in it, for up to 5 s after a kill. False if it is still there then.
 */
export async function removeCgroup(dir: string): Promise<boolean> {
  for (let i = 0; i < 100; i++) {
    try {
      rmdirSync(dir);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return true;
      await sleep(50);
    }
  }
  return false;
}
