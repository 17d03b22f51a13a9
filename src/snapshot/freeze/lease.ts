import type { Logger } from 'pino';
import { AgentError } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { startGuard, type FreezeGuard } from './guard-client.ts';
import type { FreezeJournal } from './journal.ts';
import { thawAll, type FreezeTarget } from './targets.ts';

export interface FreezeLease {
  /** Aborted when the deadline passes or the guard thawed (everything is thawed by then). */
  readonly signal: AbortSignal;
  /** Thaws everything; safe to call more than once. Resolves to the pause in ms. */
  thaw(): Promise<number>;
}

export interface FreezeOptions {
  env: string;
  targets: readonly FreezeTarget[];
  journal: FreezeJournal;
  deadlineMs: number;
  signal: AbortSignal;
  logger: Logger;
}

/**
 * Freezes the writers as a lease: journaled before the first freeze, thawed on thaw(), on the
 * deadline, on cancel, and on any failure while freezing. A thaw that fails is retried and
 * logged loudly; the journal entry stays so the daemon or the next start retries it.
 *
 * This process dying must not leave the writers frozen either: a guard process (guard.ts),
 * started before the journal entry is written, thaws what the entry names when this process
 * dies (its pipe closes) or the deadline passes, whatever this process is doing; the daemon
 * watches every entry too (watch.ts). The guard's start-up is before the first freeze, so it
 * is never part of the pause, and the deadline counts from the journal entry, after it.
 * Filesystems are frozen through the guard (its own `fsfreeze` child), so that a freeze still
 * in flight when this process dies cannot land after the guard's thaw; and a thaw here, on a
 * deadline or a cancel, first waits for the freeze in flight to end.
 */
export async function freezeWriters(options: FreezeOptions): Promise<FreezeLease> {
  const { targets, journal, logger } = options;
  const name = `${options.env}-${process.pid}`;
  const deadline = new AbortController();
  let journalFile: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  let started = performance.now();
  let thawing: Promise<number> | undefined;
  let guard: FreezeGuard | undefined;
  /** The freeze in flight: a thaw waits for it to end (it is told to stop), or it could land after. */
  let freezing: Promise<void> | undefined;

  // Declared before the guard starts: it may report a thaw of its own at any time after.
  function thaw(): Promise<number> {
    thawing ??= (async () => {
      clearTimeout(timer);
      options.signal.removeEventListener('abort', onCancel);
      await freezing?.catch(() => {});
      const thawStarted = performance.now();
      const failures = await thawAll(targets, () => reachedPhase('freeze:thawing'));
      const pauseMs = performance.now() - started;
      const thawMs = performance.now() - thawStarted;
      if (failures.length > 0) {
        guard?.release(); // the entry stays: the guard tries once more, then the daemon, then the next start
        logger.error({ env: options.env, failures }, 'THAW FAILED: writers may still be frozen; the guard, the daemon and the next agent start retry');
        throw new AgentError('E_CAPTURE_FAILED', `could not thaw ${failures.map((f) => f.path).join(', ')}: ${failures[0]?.error}`);
      }
      if (journalFile) await journal.remove(journalFile);
      guard?.release(); // the entry is gone first: the guard finds nothing to thaw and exits
      // The thaw's own share of the pause, for the benchmark's breakdown (bench/databases.ts).
      logger.info({ env: options.env, pauseMs: Math.round(pauseMs), thawMs: Math.round(thawMs * 10) / 10 }, 'writers thawed');
      return pauseMs;
    })();
    return thawing;
  }
  function onCancel() {
    void thaw().catch(() => {});
  }

  guard = await startGuard(journal.fileOf(name), (reason) => {
    logger.error({ env: options.env, reason }, 'the freeze guard thawed the writers: the backup is abandoned');
    deadline.abort(
      reason === 'deadline'
        ? timeout(options)
        : new AgentError('E_CANCELLED', `the freeze guard of ${options.env} was stopped and thawed the writers: the point in time is lost`),
    );
    onCancel();
  });
  const deadlineAt = Date.now() + options.deadlineMs;
  try {
    journalFile = await journal.record(name, {
      pid: process.pid,
      env: options.env,
      since: new Date().toISOString(),
      deadline: new Date(deadlineAt).toISOString(),
      targets: targets.map((t) => ({ kind: t.kind, path: t.path })),
    });
  } catch (error) {
    guard.release();
    throw error;
  }
  guard.arm(deadlineAt);
  timer = setTimeout(() => {
    logger.error({ env: options.env, deadlineMs: options.deadlineMs }, 'freeze deadline exceeded: thawing');
    onCancel();
    deadline.abort(timeout(options));
  }, options.deadlineMs);
  options.signal.addEventListener('abort', onCancel, { once: true });

  try {
    if (!guard.running) throw new AgentError('E_CAPTURE_FAILED', `the freeze guard (pid ${guard.pid}) exited before the freeze; nothing was frozen`);
    await reachedPhase('freeze:journaled');
    started = performance.now();
    for (const target of targets) {
      const signal = AbortSignal.any([options.signal, deadline.signal]);
      // A filesystem is frozen by the guard's own fsfreeze child (guard.ts says why).
      freezing = target.kind === 'fsfreeze' ? guard.freeze(target.path, signal) : target.freeze(signal);
      await freezing;
    }
  } catch (error) {
    await thaw().catch(() => {});
    if (deadline.signal.aborted) throw deadline.signal.reason;
    throw error;
  }
  logger.info(
    { env: options.env, targets: targets.length, freezeMs: Math.round((performance.now() - started) * 10) / 10, guardPid: guard.pid, guardStartMs: Math.round(guard.startMs) },
    'writers frozen',
  );
  await reachedPhase('freeze:frozen');
  return { signal: deadline.signal, thaw };
}

function timeout(options: FreezeOptions): AgentError {
  return new AgentError('E_FREEZE_TIMEOUT', `the freeze of ${options.env} exceeded its ${options.deadlineMs} ms deadline; writers were thawed and the backup abandoned`);
}
