import type { Logger } from 'pino';
import { AgentError } from '../../errors.ts';
import type { FreezeJournal } from './journal.ts';
import type { FreezeTarget } from './targets.ts';

export interface FreezeLease {
  /** Aborted when the deadline passes (everything is thawed by then). */
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
 * logged loudly; the journal entry stays so the next start retries it.
 */
export async function freezeWriters(options: FreezeOptions): Promise<FreezeLease> {
  const { targets, journal, logger } = options;
  const journalFile = await journal.record(`${options.env}-${process.pid}`, {
    pid: process.pid,
    env: options.env,
    since: new Date().toISOString(),
    targets: targets.map((t) => ({ kind: t.kind, path: t.path })),
  });
  const started = performance.now();
  const deadline = new AbortController();
  let thawing: Promise<number> | undefined;

  const thaw = (): Promise<number> => {
    thawing ??= (async () => {
      clearTimeout(timer);
      options.signal.removeEventListener('abort', onCancel);
      const failures = await thawAll(targets);
      const pauseMs = performance.now() - started;
      if (failures.length > 0) {
        logger.error({ env: options.env, failures }, 'THAW FAILED: writers may still be frozen; the next agent start retries');
        throw new AgentError('E_CAPTURE_FAILED', `could not thaw ${failures.map((f) => f.path).join(', ')}: ${failures[0]?.error}`);
      }
      await journal.remove(journalFile);
      logger.info({ env: options.env, pauseMs: Math.round(pauseMs) }, 'writers thawed');
      return pauseMs;
    })();
    return thawing;
  };
  const onCancel = () => void thaw().catch(() => {});
  const timer = setTimeout(() => {
    logger.error({ env: options.env, deadlineMs: options.deadlineMs }, 'freeze deadline exceeded: thawing');
    void thaw().catch(() => {});
    deadline.abort(new AgentError('E_FREEZE_TIMEOUT', `the freeze of ${options.env} exceeded its ${options.deadlineMs} ms deadline; writers were thawed and the backup abandoned`));
  }, options.deadlineMs);
  options.signal.addEventListener('abort', onCancel, { once: true });

  try {
    for (const target of targets) {
      await target.freeze(AbortSignal.any([options.signal, deadline.signal]));
    }
  } catch (error) {
    await thaw().catch(() => {});
    if (deadline.signal.aborted) throw deadline.signal.reason;
    throw error;
  }
  logger.info({ env: options.env, targets: targets.length, freezeMs: Math.round(performance.now() - started) }, 'writers frozen');
  return { signal: deadline.signal, thaw };
}

/** Thaws in reverse order of freezing, every target even when one fails; returns the failures. */
async function thawAll(targets: readonly FreezeTarget[]): Promise<{ path: string; error: string }[]> {
  const failures: { path: string; error: string }[] = [];
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
    if (lastError !== undefined) failures.push({ path: target.path, error: (lastError as Error).message });
  }
  return failures;
}
