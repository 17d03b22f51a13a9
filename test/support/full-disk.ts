import { mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

/**
 * Mounts a 64 KiB tmpfs (as root) at `dir` and fills it to 100 %: a state directory where
 * creating a file still succeeds and writing its first byte fails with ENOSPC, as on a full
 * disk (directories can still be made). `prepare` writes what the test needs there first.
 * Resolves with the unmount.
 */
export async function fullTmpfs(dir: string, prepare?: () => Promise<void>): Promise<() => Promise<void>> {
  await mkdir(dir, { recursive: true });
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', dir]);
  await prepare?.();
  const handle = await open(path.join(dir, 'filler'), 'w');
  const block = Buffer.alloc(4096);
  try {
    for (;;) await handle.write(block);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    await handle.close();
  }
  return async () => {
    // A write the code under test still has in flight holds the mount busy for a moment.
    for (let attempt = 0; ; attempt++) {
      const result = await execa('umount', [dir], { reject: attempt >= 40 });
      if (result.exitCode === 0) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
}
