import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { childEnv } from '../../child-env.ts';
import { AgentError } from '../../errors.ts';
import { siblingModule } from '../../sibling-module.ts';

const GUARD_MODULE = siblingModule(import.meta.url, 'guard').pathname;
/** Far above its start-up (~0.1 s): a guard that takes longer is not coming. */
const START_TIMEOUT_MS = 10_000;

export interface FreezeGuard {
  readonly pid: number;
  /** ms from spawn to "ready". */
  readonly startMs: number;
  /** Whether the guard process still runs. */
  readonly running: boolean;
  /** Tells the guard when the lease ends (once the lease is journaled). */
  arm(deadlineAt: number): void;
  /** Closes the pipe: the guard thaws whatever the journal file still names, and exits. */
  release(): void;
}

/**
 * Starts the freeze guard (guard.ts) for the lease journaled in `journalFile` and waits until
 * it listens. It runs detached, in a session of its own — a kill of the agent's process group
 * does not reach it — with the minimal child environment (childEnv) plus the compile cache
 * (the agent's may hold store credentials), and never keeps this process alive. `onThawed` runs if the guard
 * thaws while this process still runs (deadline, SIGTERM to the guard).
 */
export async function startGuard(journalFile: string, onThawed: (reason: string) => void): Promise<FreezeGuard> {
  const begun = performance.now();
  const env = childEnv(process.env.NODE_COMPILE_CACHE ? { NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE } : {});
  const child = spawn(process.execPath, [GUARD_MODULE, journalFile], { detached: true, stdio: ['pipe', 'pipe', 'inherit'], env });
  const stdin = child.stdin as Socket;
  const stdout = child.stdout as Socket;
  stdin.on('error', () => {}); // EPIPE once the guard has gone: nothing left to tell it
  let exited = false;
  const lines = createInterface({ input: stdout });
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    const fail = (why: string) => {
      clearTimeout(timer);
      reject(new Error(why));
    };
    child.once('error', (error) => fail(error.message));
    child.once('exit', (code, signal) => {
      exited = true;
      fail(`it exited (${signal ?? `code ${code}`})`);
    });
    lines.on('line', (line) => {
      if (line === 'ready') {
        clearTimeout(timer);
        resolve();
      } else if (line.startsWith('thawed ')) onThawed(line.slice('thawed '.length));
    });
  });
  try {
    await ready;
  } catch (error) {
    child.kill('SIGKILL');
    throw new AgentError('E_CAPTURE_FAILED', `the freeze guard could not start (${(error as Error).message}); nothing was frozen`, { cause: error });
  }
  child.unref();
  stdin.unref();
  stdout.unref();
  return {
    pid: child.pid!,
    startMs: performance.now() - begun,
    get running() {
      return !exited;
    },
    arm: (deadlineAt) => void stdin.write(`deadline ${deadlineAt}\n`),
    release: () => void stdin.end(),
  };
}
