import { Cron } from 'croner';
import { AgentError } from '../errors.ts';
import { parseDuration } from '../units.ts';

/**
 * An environment's automated backup schedule (config `schedule:`): a fixed interval
 * (`every: 6h`) or a cron expression (`cron: "0 *\/6 * * *"`: minute hour day-of-month month
 * day-of-week, in the environment's timeZone; names such as `MON` and `JAN`, `@daily` and the
 * other nicknames, `L` and `#` as croner reads them). Cron is croner's (a well-kept parser with
 * real time-zone arithmetic, DST gaps and repeats included) rather than our own. Pure
 * functions; the daemon's scheduler (scheduler.ts) runs them.
 */
export type Schedule = { kind: 'every'; everyMs: number } | { kind: 'cron'; expression: string };

/** The smallest interval accepted (tests use 2 s; production schedules are hours). */
const MIN_EVERY_MS = 1_000;

export function parseSchedule(value: { every?: string | undefined; cron?: string | undefined }): Schedule {
  if ((value.every === undefined) === (value.cron === undefined)) {
    throw new AgentError('E_CONFIG_INVALID', 'schedule: give exactly one of every (such as "6h") or cron (such as "0 */6 * * *")');
  }
  if (value.every !== undefined) {
    const everyMs = parseDuration(value.every);
    if (everyMs === undefined || everyMs < MIN_EVERY_MS) throw new AgentError('E_CONFIG_INVALID', 'schedule.every: must be a duration of at least 1s, such as "6h" or "1d"');
    return { kind: 'every', everyMs };
  }
  const expression = value.cron!.trim();
  // Five fields (or a nickname): croner would also take a seconds field, which a backup schedule has no use for.
  if (!expression.startsWith('@') && expression.split(/\s+/).length !== 5) {
    throw new AgentError('E_CONFIG_INVALID', `schedule.cron ${JSON.stringify(expression)}: needs 5 fields (minute hour day-of-month month day-of-week), or a nickname such as @daily`);
  }
  const cron = cronOf(expression, 'UTC');
  if (!cron.nextRun(new Date())) throw new AgentError('E_CONFIG_INVALID', `schedule.cron ${JSON.stringify(expression)}: never matches`);
  return { kind: 'cron', expression };
}

/** A paused croner job: used only to compute times, it never fires. */
function cronOf(expression: string, timeZone: string): Cron {
  try {
    // legacyMode: when both day fields are restricted, a day matching either runs (cron's rule).
    return new Cron(expression, { paused: true, timezone: timeZone, legacyMode: true });
  } catch (error) {
    throw new AgentError('E_CONFIG_INVALID', `schedule.cron ${JSON.stringify(expression)}: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * The first run strictly after `after` (cron), or `every` after the last run. A schedule that
 * never ran is due at once (`every`) or at its next cron time.
 */
export function nextRun(schedule: Schedule, lastRun: Date | undefined, now: Date, timeZone: string): Date {
  if (schedule.kind === 'every') return lastRun ? new Date(lastRun.getTime() + schedule.everyMs) : now;
  const from = lastRun && lastRun.getTime() < now.getTime() ? lastRun : now;
  const next = cronOf(schedule.expression, timeZone).nextRun(from);
  if (!next) throw new AgentError('E_CONFIG_INVALID', `schedule.cron ${JSON.stringify(schedule.expression)}: never matches again`);
  return next;
}
