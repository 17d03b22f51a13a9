import { spawn } from 'node:child_process';
import { access, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { childEnv } from '../../child-env.ts';
import { AgentError } from '../../errors.ts';
import type { SavedTarget } from './journal.ts';

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
 * cgroup v1 can stay in FREEZING for good: a parent in vfork() waiting on a child the
 * freezer already stopped is never counted frozen (seen here with a shell writer on 6.18, 9 in
 * 1,000 freezes). Like CRIU, ask again: after this long in FREEZING, thaw and freeze anew
 * (the child execs, the parent is released, the next try nearly always lands). v2 has no
 * such state.
 */
const V1_RETRY_MS = 40;

/**
 * cgroup v1: write FROZEN to freezer.state, then wait until the kernel reports FROZEN (it
 * passes through FREEZING while tasks reach a safe point). cgroup v2: write 1 to
 * cgroup.freeze and wait for "frozen 1" in cgroup.events.
 */
export async function cgroupTarget(dir: string): Promise<FreezeTarget> {
  if (await exists(path.join(dir, 'cgroup.freeze'))) return cgroupOf('cgroup-v2', dir);
  if (await exists(path.join(dir, 'freezer.state'))) return cgroupOf('cgroup-v1', dir);
  throw new AgentError('E_CONFIG_INVALID', `freeze cgroup ${dir} has neither cgroup.freeze (v2) nor freezer.state (v1): check the path exists and is a cgroup`);
}

/** The files each freezer version is driven through. */
const FREEZERS = {
  'cgroup-v2': { control: 'cgroup.freeze', freeze: '1', thaw: '0', state: 'cgroup.events', isFrozen: (state: string) => /^frozen 1$/m.test(state) },
  'cgroup-v1': { control: 'freezer.state', freeze: 'FROZEN', thaw: 'THAWED', state: 'freezer.state', isFrozen: (state: string) => state.trim() === 'FROZEN' },
} as const;

function cgroupOf(kind: keyof typeof FREEZERS, dir: string): FreezeTarget {
  const freezer = FREEZERS[kind];
  const control = path.join(dir, freezer.control);
  return {
    kind,
    path: dir,
    freeze: async (signal) => {
      await write(control, freezer.freeze);
      const retry =
        kind === 'cgroup-v1'
          ? async () => {
              await write(control, freezer.thaw);
              await write(control, freezer.freeze);
            }
          : undefined;
      await waitUntil(signal, dir, async () => freezer.isFrozen(await readFile(path.join(dir, freezer.state), 'utf8')), retry);
    },
    // A cgroup removed since it was frozen (its service stopped) has nothing left to thaw.
    thaw: async () => {
      if (await exists(dir)) await write(control, freezer.thaw);
    },
  };
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

/** A journaled target, to thaw it from another process or after a crash. */
export function savedTarget(saved: SavedTarget): FreezeTarget {
  return saved.kind === 'fsfreeze' ? filesystemTarget(saved.path) : cgroupOf(saved.kind, saved.path);
}

export interface ThawFailure {
  path: string;
  error: string;
}

/**
 * Thaws in reverse order of freezing, every target even when one fails, each tried three
 * times; returns the failures. `afterEach` runs after each target is thawed.
 */
export async function thawAll(targets: readonly FreezeTarget[], afterEach?: () => Promise<void>): Promise<ThawFailure[]> {
  const failures: ThawFailure[] = [];
  for (const target of [...targets].reverse()) {
    let lastError: unknown;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await target.thaw();
        lastError = undefined;
        break;
      } catch (error) {
        lastError = error;
        await new Promise((resolve) => setTimeout(resolve, 50 * (attempt + 1)));
      }
    }
    if (lastError === undefined) await afterEach?.();
    else failures.push({ path: target.path, error: (lastError as Error).message });
  }
  return failures;
}

/**
 * Runs fsfreeze and settles once its process has exited — also when `signal` aborts it (it is
 * sent SIGTERM): a FIFREEZE still running in the kernel ends first, and a thaw that followed
 * the rejection at once (as execFile's does) could run before the freeze lands, leaving the
 * filesystem frozen. node:child_process, not execa: the freeze guard loads this module, and
 * execa alone would add ~65 ms to its start-up.
 */
function run(args: string[], signal?: AbortSignal): Promise<void> {
  const what = `fsfreeze ${args.join(' ')}`;
  if (signal?.aborted) return Promise.reject(new AgentError('E_CANCELLED', `stopped before ${what}`, { cause: signal.reason }));
  return new Promise<void>((resolve, reject) => {
    const child = spawn('fsfreeze', args, { env: childEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const stop = () => child.kill('SIGTERM');
    let settled = false;
    const settle = (error?: Error) => {
      if (settled) return;
      settled = true;
      signal?.removeEventListener('abort', stop);
      if (error) reject(error);
      else resolve();
    };
    child.once('error', (error) => settle(new AgentError('E_CAPTURE_FAILED', `${what} failed: ${error.message}`, { cause: error })));
    child.once('close', (code, killedBy) => {
      if (signal?.aborted) return settle(new AgentError('E_CANCELLED', `stopped ${what}`, { cause: signal.reason }));
      if (code === 0) return settle();
      settle(new AgentError('E_CAPTURE_FAILED', `${what} failed: ${stderr.trim() || (killedBy ? `killed by ${killedBy}` : `exit code ${code}`)}`));
    });
    signal?.addEventListener('abort', stop, { once: true });
  });
}

async function write(file: string, value: string): Promise<void> {
  try {
    await writeFile(file, value);
  } catch (error) {
    throw new AgentError('E_CAPTURE_FAILED', `cannot write ${value} to ${file}: ${(error as Error).message}`, { cause: error });
  }
}

/** Polls `done` until it holds; `retry`, when given, runs every V1_RETRY_MS it does not. */
async function waitUntil(signal: AbortSignal, what: string, done: () => Promise<boolean>, retry?: () => Promise<void>): Promise<void> {
  let since = performance.now();
  while (!(await done())) {
    if (signal.aborted) throw new AgentError('E_CANCELLED', `stopped waiting for ${what} to freeze`, { cause: signal.reason });
    if (retry && performance.now() - since >= V1_RETRY_MS) {
      await retry();
      since = performance.now();
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}
