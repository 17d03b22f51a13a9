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
  /**
   * Has the guard run `fsfreeze --freeze` on `mount` (one the journal entry names): a freeze in
   * flight when this process dies is then the guard's child, and the guard thaws after it ends.
   * An abort of `signal` stops it; either way this settles only once its process has exited.
   */
  freeze(mount: string, signal: AbortSignal): Promise<void>;
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
  /** The freeze waiting for its answer (one at a time). */
  let pending: { mount: string; settle: (error?: Error) => void } | undefined;
  const lines = createInterface({ input: stdout });
  lines.on('line', (line) => {
    const answer = /^(frozen|failed) (.*)$/.exec(line);
    if (!answer || !pending) return;
    try {
      const body = JSON.parse(answer[2]!) as string | { path: string; error: string; code?: string };
      const mount = typeof body === 'string' ? body : body.path;
      if (mount !== pending.mount) return;
      pending.settle(typeof body === 'string' ? undefined : new AgentError(body.code === 'E_CANCELLED' ? 'E_CANCELLED' : 'E_CAPTURE_FAILED', body.error));
    } catch {
      // not an answer of ours
    }
  });
  child.once('exit', () => {
    exited = true;
    // The guard is gone (killed): it will not answer, and it thaws nothing any more.
    pending?.settle(new AgentError('E_CAPTURE_FAILED', `the freeze guard (pid ${child.pid}) exited while freezing ${pending.mount}`));
  });
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
    freeze: (mount, signal) =>
      new Promise<void>((resolve, reject) => {
        if (exited) return reject(new AgentError('E_CAPTURE_FAILED', `the freeze guard (pid ${child.pid}) has exited: ${mount} was not frozen`));
        if (pending) return reject(new Error(`the freeze guard is still freezing ${pending.mount}`));
        const onAbort = () => void stdin.write('cancel\n');
        pending = {
          mount,
          settle: (error) => {
            pending = undefined;
            signal.removeEventListener('abort', onAbort);
            stdout.unref();
            if (error) reject(error);
            else resolve();
          },
        };
        stdout.ref(); // the answer is awaited: it keeps this process alive until it comes
        stdin.write(`freeze ${JSON.stringify(mount)}\n`);
        if (signal.aborted) onAbort();
        else signal.addEventListener('abort', onAbort, { once: true });
      }),
    release: () => void stdin.end(),
  };
}
