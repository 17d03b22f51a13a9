import { AgentError } from '../errors.ts';
import { parseDuration } from './units.ts';

/**
 * An environment's automated backup schedule (config `schedule:`): a fixed interval
 * (`every: 6h`) or a 5-field cron expression (`cron: "0 *\/6 * * *"`, minute hour day-of-month
 * month day-of-week, in the environment's timeZone). Pure functions; the daemon's scheduler
 * (scheduler.ts) runs them.
 */
export type Schedule = { kind: 'every'; everyMs: number } | { kind: 'cron'; expression: string; fields: CronFields };

interface CronFields {
  minute: Set<number>;
  hour: Set<number>;
  dayOfMonth: Set<number>;
  month: Set<number>;
  dayOfWeek: Set<number>;
  /** cron's rule: when both day fields are restricted, a day matching either runs. */
  dayOr: boolean;
}

/** The smallest interval accepted (tests use 2 s; production schedules are hours). */
const MIN_EVERY_MS = 1_000;

export function parseSchedule(value: { every?: string | number | undefined; cron?: string | undefined }): Schedule {
  if ((value.every === undefined) === (value.cron === undefined)) {
    throw new AgentError('E_CONFIG_INVALID', 'schedule: give exactly one of every (such as "6h") or cron (such as "0 */6 * * *")');
  }
  if (value.every !== undefined) {
    const everyMs = parseDuration(value.every);
    if (everyMs === undefined || everyMs < MIN_EVERY_MS) throw new AgentError('E_CONFIG_INVALID', 'schedule.every: must be a duration of at least 1s, such as "6h" or "1d"');
    return { kind: 'every', everyMs };
  }
  const expression = value.cron!.trim();
  const parts = expression.split(/\s+/);
  if (parts.length !== 5) throw new AgentError('E_CONFIG_INVALID', `schedule.cron ${JSON.stringify(expression)}: needs 5 fields (minute hour day-of-month month day-of-week)`);
  const [minute, hour, dom, month, dow] = parts as [string, string, string, string, string];
  const dayOfWeek = cronField(dow, 0, 7, 'day-of-week');
  if (dayOfWeek.has(7)) {
    dayOfWeek.delete(7);
    dayOfWeek.add(0); // 7 is Sunday too
  }
  return {
    kind: 'cron',
    expression,
    fields: {
      minute: cronField(minute, 0, 59, 'minute'),
      hour: cronField(hour, 0, 23, 'hour'),
      dayOfMonth: cronField(dom, 1, 31, 'day-of-month'),
      month: cronField(month, 1, 12, 'month'),
      dayOfWeek,
      dayOr: dom !== '*' && dow !== '*',
    },
  };
}

function cronField(text: string, min: number, max: number, what: string): Set<number> {
  const values = new Set<number>();
  const bad = () => new AgentError('E_CONFIG_INVALID', `schedule.cron: ${what} field ${JSON.stringify(text)} is not valid (numbers ${min}-${max}, *, a-b, */n, lists)`);
  for (const item of text.split(',')) {
    const match = /^(\*|(\d+)(?:-(\d+))?)(?:\/(\d+))?$/.exec(item);
    if (!match) throw bad();
    const from = match[1] === '*' ? min : Number(match[2]);
    const to = match[1] === '*' ? max : match[3] !== undefined ? Number(match[3]) : match[4] !== undefined ? max : from;
    const step = match[4] !== undefined ? Number(match[4]) : 1;
    if (from < min || to > max || from > to || step < 1) throw bad();
    for (let v = from; v <= to; v += step) values.add(v);
  }
  return values;
}

const formatters = new Map<string, Intl.DateTimeFormat>();

function localParts(at: Date, timeZone: string) {
  let format = formatters.get(timeZone);
  if (!format) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      weekday: 'short',
    });
    formatters.set(timeZone, format);
  }
  const parts = Object.fromEntries(format.formatToParts(at).map((p) => [p.type, p.value]));
  return {
    month: Number(parts.month),
    day: Number(parts.day),
    hour: Number(parts.hour),
    minute: Number(parts.minute),
    weekday: ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'].indexOf(parts.weekday ?? ''),
  };
}

/**
 * The first run strictly after `after` (cron), or `every` after the last run. A schedule that
 * never ran is due at once (`every`) or at its next cron time.
 */
export function nextRun(schedule: Schedule, lastRun: Date | undefined, now: Date, timeZone: string): Date {
  if (schedule.kind === 'every') return lastRun ? new Date(lastRun.getTime() + schedule.everyMs) : now;
  const from = lastRun && lastRun.getTime() < now.getTime() ? lastRun : now;
  return nextCron(schedule.fields, from, timeZone);
}

/** The next minute after `after` that matches, in local time; steps by day and hour where it can. */
function nextCron(fields: CronFields, after: Date, timeZone: string): Date {
  let t = Math.floor(after.getTime() / 60_000) * 60_000 + 60_000;
  const limit = t + 400 * 86_400_000;
  while (t < limit) {
    const p = localParts(new Date(t), timeZone);
    const domOk = fields.dayOfMonth.has(p.day);
    const dowOk = fields.dayOfWeek.has(p.weekday);
    const dayOk = fields.dayOr ? domOk || dowOk : domOk && dowOk;
    if (!fields.month.has(p.month) || !dayOk) {
      t += ((23 - p.hour) * 60 + (60 - p.minute)) * 60_000; // to the next local midnight (about)
      continue;
    }
    if (!fields.hour.has(p.hour)) {
      t += (60 - p.minute) * 60_000;
      continue;
    }
    if (!fields.minute.has(p.minute)) {
      t += 60_000;
      continue;
    }
    return new Date(t);
  }
  throw new AgentError('E_CONFIG_INVALID', 'schedule.cron: the expression never matches (within 400 days)');
}
