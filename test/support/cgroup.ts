import { execa, type ResultPromise } from 'execa';
import { mkdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

export type CgroupVersion = 'v1' | 'v2';

const ROOTS: Record<CgroupVersion, string> = { v1: '/sys/fs/cgroup/freezer', v2: '/sys/fs/cgroup/unified' };

export interface TestCgroup {
  path: string;
  /** Starts a process inside the cgroup (it and all it starts stay in it). */
  spawn(command: string, args: string[], options?: { env?: Record<string, string> }): ResultPromise;
  isFrozen(): Promise<boolean>;
  remove(): Promise<void>;
}

/** A real cgroup for tests (v1 freezer or v2), removed with its processes afterwards. */
export async function createCgroup(version: CgroupVersion): Promise<TestCgroup> {
  const dir = path.join(ROOTS[version], `storage-agent-test-${randomBytes(4).toString('hex')}`);
  await mkdir(dir);
  const processes: ResultPromise[] = [];
  return {
    path: dir,
    spawn(command, args, options = {}) {
      // The child joins the cgroup itself before exec, so no write it makes escapes the freezer.
      const child = execa('sh', ['-c', `echo $$ > ${dir}/cgroup.procs && exec "$@"`, 'sh', command, ...args], { reject: false, stdin: 'ignore', env: options.env });
      processes.push(child);
      return child;
    },
    async isFrozen() {
      if (version === 'v1') return (await readFile(path.join(dir, 'freezer.state'), 'utf8')).trim() !== 'THAWED';
      return /^frozen 1$/m.test(await readFile(path.join(dir, 'cgroup.events'), 'utf8'));
    },
    async remove() {
      await writeFile(path.join(dir, version === 'v1' ? 'freezer.state' : 'cgroup.freeze'), version === 'v1' ? 'THAWED' : '0').catch(() => {});
      for (const child of processes) child.kill('SIGKILL');
      await Promise.all(processes);
      for (let i = 0; i < 50; i++) {
        try {
          await rmdir(dir);
          return;
        } catch {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
    },
  };
}

/** A loop-mounted filesystem of `type` (ext4, xfs, btrfs) in a sparse image file. */
export async function loopMount(type: 'ext4' | 'xfs' | 'btrfs', image: string, mountPoint: string, size = '512M'): Promise<() => Promise<void>> {
  await execa('truncate', ['-s', size, image]);
  const mkfs = { ext4: ['mkfs.ext4', '-q', '-F'], xfs: ['mkfs.xfs', '-q', '-f', '-m', 'reflink=1'], btrfs: ['mkfs.btrfs', '-q', '-f'] }[type];
  await execa(mkfs[0]!, [...mkfs.slice(1), image]);
  await mkdir(mountPoint, { recursive: true });
  await execa('mount', ['-o', 'loop', image, mountPoint]);
  return async () => {
    await execa('fsfreeze', ['--unfreeze', mountPoint], { reject: false });
    await execa('umount', [mountPoint], { reject: false });
  };
}
