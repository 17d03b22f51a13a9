import { access, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { AgentError } from '../../errors.ts';

/** Something that can be frozen and thawed: a cgroup (v1 or v2) or a filesystem. */
export interface FreezeTarget {
  readonly kind: 'cgroup-v1' | 'cgroup-v2' | 'fsfreeze';
  readonly path: string;
  freeze(signal: AbortSignal): Promise<void>;
  /** Must succeed on an already thawed target: thaw runs again after a crash. */
  thaw(): Promise<void>;
}

const POLL_MS = 2;

/**
 * cgroup v1: write FROZEN to freezer.state, then wait until the kernel reports FROZEN (it
 * passes through FREEZING while tasks reach a safe point). cgroup v2: write 1 to
 * cgroup.freeze and wait for "frozen 1" in cgroup.events.
 */
export async function cgroupTarget(dir: string): Promise<FreezeTarget> {
  if (await exists(path.join(dir, 'cgroup.freeze'))) {
    return {
      kind: 'cgroup-v2',
      path: dir,
      freeze: async (signal) => {
        await write(path.join(dir, 'cgroup.freeze'), '1');
        await waitUntil(signal, dir, async () => /^frozen 1$/m.test(await readFile(path.join(dir, 'cgroup.events'), 'utf8')));
      },
      thaw: async () => write(path.join(dir, 'cgroup.freeze'), '0'),
    };
  }
  if (await exists(path.join(dir, 'freezer.state'))) {
    return {
      kind: 'cgroup-v1',
      path: dir,
      freeze: async (signal) => {
        await write(path.join(dir, 'freezer.state'), 'FROZEN');
        await waitUntil(signal, dir, async () => (await readFile(path.join(dir, 'freezer.state'), 'utf8')).trim() === 'FROZEN');
      },
      thaw: async () => write(path.join(dir, 'freezer.state'), 'THAWED'),
    };
  }
  throw new AgentError('E_CONFIG_INVALID', `freeze cgroup ${dir} has neither cgroup.freeze (v2) nor freezer.state (v1): check the path exists and is a cgroup`);
}

/** fsfreeze(8): flushes the filesystem and blocks writes to it until thawed. */
export function filesystemTarget(mountPoint: string): FreezeTarget {
  return {
    kind: 'fsfreeze',
    path: mountPoint,
    freeze: async (signal) => {
      await run(['--freeze', mountPoint], signal);
    },
    thaw: async () => {
      try {
        await run(['--unfreeze', mountPoint]);
      } catch (error) {
        // Not frozen (EINVAL): the state we want. Anything else is a real failure.
        if (!/Invalid argument/.test((error as Error).message)) throw error;
      }
    },
  };
}

async function run(args: string[], signal?: AbortSignal): Promise<void> {
  try {
    await execa('fsfreeze', args, { cancelSignal: signal, stdin: 'ignore' });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new AgentError('E_CAPTURE_FAILED', `fsfreeze ${args.join(' ')} failed: ${stderr || (error as Error).message}`, { cause: error });
  }
}

async function write(file: string, value: string): Promise<void> {
  try {
    await writeFile(file, value);
  } catch (error) {
    throw new AgentError('E_CAPTURE_FAILED', `cannot write ${value} to ${file}: ${(error as Error).message}`, { cause: error });
  }
}

async function waitUntil(signal: AbortSignal, what: string, done: () => Promise<boolean>): Promise<void> {
  while (!(await done())) {
    if (signal.aborted) throw new AgentError('E_CANCELLED', `stopped waiting for ${what} to freeze`, { cause: signal.reason });
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}
