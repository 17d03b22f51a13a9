import { AgentError } from '../errors.ts';

/**
 * Retention: which scheduled backups survive a prune, as a pure function of (backup times,
 * rules, now, time zone). Like borg's and restic's `--keep-daily N` …, with these exact semantics:
 *
 * **Periods.** Each rule `{interval: {count, unit}, keep}` cuts local time (the IANA `timeZone`)
 * into consecutive periods; a backup belongs to the period of its local wall-clock time:
 * - `Nh`: blocks of N hours of the local day, from local midnight (N divides 24: `6h` is
 *   00–06, 06–12, 12–18, 18–24). Blocks follow the wall clock: on a 23-hour DST day the block
 *   holding the skipped hour is an hour shorter, on a 25-hour day the repeated hour falls twice
 *   into the same block (with `1h`, both real 02:xx hours share one bucket).
 * - `Nd`: local calendar days (a 23- or 25-hour DST day is one day); N > 1 counts blocks of N
 *   days from 1970-01-01.
 * - `Nw`: ISO weeks, Monday 00:00 to Sunday 24:00 local; N > 1 counts from the ISO week of
 *   1970-01-01.
 * - `NM`: calendar months (N divides 12, so `3M` is calendar quarters).
 * - `Ny`: calendar years (N > 1: a block starts in each year divisible by N).
 * Periods are numbered consecutively, so "k periods back" is exact whatever a month's length.
 *
 * **Rules cascade, finest first** (by nominal length; the written order does not matter). A
 * rule walks the backups newest first; the first one met in a period is that period's newest.
 * If a finer rule already keeps it, the period is *covered*: the backup gets this rule's reason
 * too but does not count towards this rule's `keep` (borg: "backups selected by previous rules
 * do not count towards those of later rules"). Otherwise the rule keeps it, until it has kept
 * `keep` backups. Each rule therefore adds exactly `keep` distinct backups once the history is
 * long enough, and the steady-state total is the sum of the `keep`s — which is how the tiers'
 * counts come out exactly (see {@link TIERS}): no rule ever "wastes" a slot on a backup another
 * rule already holds, whatever the day of the week or of the month.
 *
 * **Horizon.** A rule looks only at the periods from `keep` periods before the one holding the
 * oldest instant the finer rules look at, up to now's period:
 * - the finest rule sees now's period and the `keep` periods before it (`1d` keep 2 on
 *   Wednesday sees Monday to Wednesday: one spare period, so a prune run before today's backup
 *   still keeps two);
 * - each coarser rule sees from `keep` of its periods before the one holding the start of the
 *   finer rule's horizon, up to now's period (advanced: daily 6 sees the last 7 days; weekly 3
 *   sees the 3 ISO weeks before the week in which those 7 days start, and the weeks after;
 *   monthly 12 sees the 12 months before the month in which the weekly horizon starts …).
 * The horizon depends on `now` only, never on which backups exist, so a gap in backups leaves
 * fewer backups, never older ones: the policy does not reach back forever, and a backup older
 * than every horizon is deleted — with one exception:
 *
 * **The newest backup is always kept** (reason "newest"), even when it is older than every
 * horizon: a prune after a long outage never deletes the last backup. It cannot push the
 * total above the sum: when it lies outside the finest rule's horizon, that rule kept nothing.
 *
 * **Future backups** (created after `now`: clock skew) are kept, listed in `future`, and take
 * no part in the rules, so a skewed one cannot take today's period from a real one. A backup
 * whose time is not a valid date is kept too (nothing is deleted that cannot be placed).
 *
 * Run after every scheduled backup, the kept set is stable: selecting again from the survivors
 * at the same `now` keeps all of them, and the backup a rule keeps for a period is always the
 * newest ever taken in it, never a stand-in for one pruned earlier (the year-long simulations
 * in test/retention.test.ts check both after every prune).
 */

export type RetentionUnit = 'h' | 'd' | 'w' | 'M' | 'y';

export interface RetentionInterval {
  readonly count: number;
  readonly unit: RetentionUnit;
}

/** "1d keep 7": the newest backup of each of 7 local calendar days. */
export interface RetentionRule {
  readonly interval: RetentionInterval;
  readonly keep: number;
}

export type TierName = 'essential' | 'advanced' | 'premium';

const rule = (count: number, unit: RetentionUnit, keep: number): RetentionRule =>
  Object.freeze({ interval: Object.freeze({ count, unit }), keep });

/**
 * The schedule tiers of the seeds (essential 2, advanced 21, premium 44), as cascading rules
 * whose `keep`s add up to exactly those counts in steady state:
 * - essential: 2 daily (today's newest and yesterday's).
 * - advanced: 6 daily + 3 weekly + 12 monthly = 21 (6 days of dailies counting today, weeklies
 *   to about a month back, then the 12 months before those).
 * - premium: 4 six-hourly + 29 daily + 11 monthly = 44. The four 6-hour blocks of the last day
 *   hold today's newest backup (and yesterday's last, until today's 18–24 block has one), so
 *   the 29 dailies are the days before those: 30 days of dailies counting today (the seeds'
 *   "30 daily"; 31 before 18:00), then the 11 months before those (a year in all). Premium
 *   expects a backup in every local 6-hour block; with fewer, it keeps fewer.
 * Steady state needs a history as long as the horizons: about 13 months for advanced and
 * premium; until then each rule keeps what the history offers and the count only grows.
 */
export const TIERS: Readonly<Record<TierName, readonly RetentionRule[]>> = Object.freeze({
  essential: Object.freeze([rule(1, 'd', 2)]),
  advanced: Object.freeze([rule(1, 'd', 6), rule(1, 'w', 3), rule(1, 'M', 12)]),
  premium: Object.freeze([rule(6, 'h', 4), rule(1, 'd', 29), rule(1, 'M', 11)]),
});

const TIER_NAMES = Object.keys(TIERS) as TierName[];

/** How many backups the rules keep in steady state (future and undated ones aside). */
export function retainedCount(rules: readonly RetentionRule[]): number {
  return rules.reduce((sum, r) => sum + r.keep, 0);
}

/** "1d×6 + 1w×3 + 1M×12" */
export function describeRules(rules: readonly RetentionRule[]): string {
  return rules.map((r) => `${r.interval.count}${r.interval.unit}×${r.keep}`).join(' + ');
}

// --- Parsing the config ---------------------------------------------------------------------

const UNITS = new Set<string>(['h', 'd', 'w', 'M', 'y']);

/**
 * The rules of an environment's `retention` setting: a tier name, or a list of
 * `{interval: "1d", count: 7}`. Every problem is E_CONFIG_INVALID naming the rule. `where` is
 * the setting's place in the config, for the message.
 */
export function parseRules(value: unknown, where = 'retention'): RetentionRule[] {
  if (typeof value === 'string') {
    const tier = TIERS[value as TierName];
    if (!Object.hasOwn(TIERS, value) || tier === undefined) {
      throw configError(where, `unknown schedule tier ${JSON.stringify(value)} (expected ${TIER_NAMES.join(', ')}, or a list of {interval, count} rules)`, { value });
    }
    return tier.map((r) => rule(r.interval.count, r.interval.unit, r.keep));
  }
  if (!Array.isArray(value)) {
    throw configError(where, `must be a schedule tier (${TIER_NAMES.join(', ')}) or a list of {interval, count} rules such as [{interval: 1d, count: 7}]`, { value: show(value) });
  }
  if (value.length === 0) throw configError(where, 'the list of rules is empty: give at least one {interval, count} rule', {});
  const rules: RetentionRule[] = [];
  const seen = new Map<string, number>();
  value.forEach((raw: unknown, index) => {
    const parsed = parseRule(raw, ruleAt(where, index, raw), index);
    const key = `${parsed.interval.count}${parsed.interval.unit}`;
    const earlier = seen.get(key);
    if (earlier !== undefined) {
      throw configError(ruleAt(where, index, raw), `repeats interval ${key} of rule ${earlier + 1}: give each interval once`, { rule: index + 1, value: raw });
    }
    seen.set(key, index);
    rules.push(parsed);
  });
  return rules;
}

function parseRule(raw: unknown, what: string, index: number): RetentionRule {
  const fail = (why: string): never => {
    throw configError(what, why, { rule: index + 1, value: raw });
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return fail('must be an object {interval, count}, such as {interval: 1d, count: 7}');
  const record = raw as Record<string, unknown>;
  const extra = Object.keys(record).filter((key) => key !== 'interval' && key !== 'count');
  if (extra.length > 0) return fail(`unknown key ${extra.map((k) => JSON.stringify(k)).join(', ')} (a rule has interval and count)`);
  const interval = parseInterval(record.interval, fail);
  const count = record.count;
  if (count === undefined) return fail('count is missing: how many periods keep a backup');
  if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 1) return fail(`count must be a whole number of at least 1, not ${show(count)}`);
  return rule(interval.count, interval.unit, count);
}

function parseInterval(value: unknown, fail: (why: string) => never): RetentionInterval {
  if (value === undefined) return fail('interval is missing, such as "6h", "1d", "1w", "1M" or "1y"');
  if (typeof value !== 'string') return fail(`interval must be a string such as "1d", not ${show(value)}`);
  const m = /^\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*$/.exec(value);
  if (!m) return fail(`interval ${JSON.stringify(value)} is not a count and a unit, such as "1d"`);
  const [, digits = '', unit = ''] = m;
  if (!UNITS.has(unit)) {
    const hint = unit === 'm' ? ' (M is months; minutes are not a retention period)' : '';
    return fail(`interval ${JSON.stringify(value)} has unknown unit ${JSON.stringify(unit)}: units are h (hours), d (days), w (ISO weeks), M (months), y (years)${hint}`);
  }
  const count = Number(digits);
  if (!Number.isSafeInteger(count)) return fail(`interval ${JSON.stringify(value)} must be a whole number of ${unit}`);
  if (count < 1) return fail(`interval ${JSON.stringify(value)} must be at least 1${unit}`);
  if (unit === 'h' && 24 % count !== 0) return fail(`interval ${JSON.stringify(value)}: hour blocks must divide the day (1, 2, 3, 4, 6, 8, 12 or 24h)`);
  if (unit === 'M' && 12 % count !== 0) return fail(`interval ${JSON.stringify(value)}: month blocks must divide the year (1, 2, 3, 4, 6 or 12M)`);
  return { count, unit: unit as RetentionUnit };
}

/** `what` is where the problem sits; empty when the caller names the field itself (the config's errors do). */
function configError(what: string, why: string, details: Record<string, unknown>): AgentError {
  return new AgentError('E_CONFIG_INVALID', what ? `${what}: ${why}` : why, { details });
}

const ruleAt = (where: string, index: number, raw: unknown) => `${where ? `${where}: ` : ''}rule ${index + 1} ${show(raw)}`;

function show(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

// --- Local calendar --------------------------------------------------------------------------

const DAY_MS = 86_400_000;

/** A local wall-clock hour: `day` counts local calendar days from 1970-01-01. */
interface LocalHour {
  readonly day: number;
  readonly hour: number;
}

/** Per time zone: the formatter (costly to build) and the local hours already computed. */
interface Zone {
  readonly formatter: Intl.DateTimeFormat;
  readonly memo: Map<number, LocalHour>;
}
const zones = new Map<string, Zone>();
/** Bounds the memo: a daemon sees a few hundred backup times per environment. */
const MEMO_LIMIT = 8192;

function zoneOf(timeZone: string): Zone {
  let zone = zones.get(timeZone);
  if (zone === undefined) {
    let formatter: Intl.DateTimeFormat;
    try {
      formatter = new Intl.DateTimeFormat('en-US', {
        timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric',
      });
    } catch (error) {
      throw new AgentError('E_CONFIG_INVALID', `retention time zone ${JSON.stringify(timeZone)} is not an IANA time zone such as "Europe/Berlin" or "UTC"`, {
        cause: error,
        details: { timeZone },
      });
    }
    zone = { formatter, memo: new Map() };
    zones.set(timeZone, zone);
  }
  return zone;
}

function localHour(zone: Zone, ms: number): LocalHour {
  const known = zone.memo.get(ms);
  if (known !== undefined) return known;
  let year = 0;
  let month = 0;
  let day = 0;
  let hour = 0;
  for (const part of zone.formatter.formatToParts(ms)) {
    if (part.type === 'year') year = Number(part.value);
    else if (part.type === 'month') month = Number(part.value);
    else if (part.type === 'day') day = Number(part.value);
    else if (part.type === 'hour') hour = Number(part.value);
  }
  const at = { day: dayNumber(year, month, day), hour };
  if (zone.memo.size >= MEMO_LIMIT) zone.memo.clear();
  zone.memo.set(ms, at);
  return at;
}

const dayNumber = (year: number, month: number, day: number): number => Date.UTC(year, month - 1, day) / DAY_MS;

function civil(day: number): { year: number; month: number; date: number } {
  const d = new Date(day * DAY_MS);
  return { year: d.getUTCFullYear(), month: d.getUTCMonth() + 1, date: d.getUTCDate() };
}

const pad = (n: number, width = 2): string => String(n).padStart(width, '0');
const isoDate = (day: number): string => {
  const c = civil(day);
  return `${pad(c.year, 4)}-${pad(c.month)}-${pad(c.date)}`;
};
/** ISO weeks numbered from the week of 1970-01-01 (a Thursday: its Monday is day -3). */
const weekNumber = (day: number): number => Math.floor((day + 3) / 7);
function isoWeekLabel(monday: number): string {
  const thursday = monday + 3;
  const year = civil(thursday).year;
  return `${pad(year, 4)}-W${pad(Math.floor((thursday - dayNumber(year, 1, 1)) / 7) + 1)}`;
}

// --- Periods ---------------------------------------------------------------------------------

interface Period {
  /** The reason's prefix: "6-hourly", "daily", "2w" … */
  readonly name: string;
  ordinal(at: LocalHour): number;
  /** The local wall-clock hour at which period `ordinal` starts. */
  start(ordinal: number): LocalHour;
  label(ordinal: number): string;
}

const UNIT_WORDS: Record<RetentionUnit, string> = { h: 'hourly', d: 'daily', w: 'weekly', M: 'monthly', y: 'yearly' };
/** Nominal lengths in hours, to order the rules finest first. */
const UNIT_HOURS: Record<RetentionUnit, number> = { h: 1, d: 24, w: 168, M: 730.5, y: 8766 };

function periodOf(interval: RetentionInterval): Period {
  const { count: n, unit } = interval;
  const name = n === 1 ? UNIT_WORDS[unit] : unit === 'h' ? `${n}-hourly` : `${n}${unit}`;
  switch (unit) {
    case 'h': {
      const perDay = 24 / n;
      const start = (o: number): LocalHour => {
        const day = Math.floor(o / perDay);
        return { day, hour: (o - day * perDay) * n };
      };
      return {
        name,
        ordinal: (at) => at.day * perDay + Math.floor(at.hour / n),
        start,
        label: (o) => {
          const s = start(o);
          return `${isoDate(s.day)}T${pad(s.hour)}`;
        },
      };
    }
    case 'd':
      return { name, ordinal: (at) => Math.floor(at.day / n), start: (o) => ({ day: o * n, hour: 0 }), label: (o) => isoDate(o * n) };
    case 'w':
      return {
        name,
        ordinal: (at) => Math.floor(weekNumber(at.day) / n),
        start: (o) => ({ day: o * n * 7 - 3, hour: 0 }),
        label: (o) => isoWeekLabel(o * n * 7 - 3),
      };
    case 'M':
      return {
        name,
        ordinal: (at) => {
          const c = civil(at.day);
          return Math.floor((c.year * 12 + c.month - 1) / n);
        },
        start: (o) => ({ day: dayNumber(Math.floor((o * n) / 12), ((o * n) % 12) + 1, 1), hour: 0 }),
        label: (o) => `${pad(Math.floor((o * n) / 12), 4)}-${pad(((o * n) % 12) + 1)}`,
      };
    case 'y':
      return {
        name,
        ordinal: (at) => Math.floor(civil(at.day).year / n),
        start: (o) => ({ day: dayNumber(o * n, 1, 1), hour: 0 }),
        label: (o) => pad(o * n, 4),
      };
  }
}

/** The period of `interval` that holds `at` in `timeZone`, as its reason label ("daily 2026-11-20"). */
export function periodLabel(at: Date, interval: RetentionInterval, timeZone: string): string {
  const period = periodOf(checkInterval(interval));
  return `${period.name} ${period.label(period.ordinal(localHour(zoneOf(timeZone), at.getTime())))}`;
}

function checkInterval(interval: RetentionInterval): RetentionInterval {
  return parseInterval(`${interval.count}${interval.unit}`, (why) => {
    throw new AgentError('E_CONFIG_INVALID', `retention rule ${show(interval)}: ${why}`, { details: { interval } });
  });
}

// --- Selection -------------------------------------------------------------------------------

export interface RetentionCandidate {
  readonly id: string;
  readonly createdAt: Date;
}

export interface RetentionDecision {
  /** The ids to keep; every other candidate may be pruned. */
  keep: Set<string>;
  /** Why each kept id is kept, finest rule first: ["daily 2026-11-20", "weekly 2026-W47", "monthly 2026-11"]. */
  reasons: Map<string, string[]>;
  /** Kept ids created after `now` (clock skew), to report. */
  future: string[];
}

/** Which of `backups` the rules keep at `now`, periods in `timeZone` (semantics: top of this file). */
export function selectRetained(
  backups: readonly RetentionCandidate[],
  rules: readonly RetentionRule[],
  now: Date,
  timeZone: string,
): RetentionDecision {
  const nowMs = now.getTime();
  if (!Number.isFinite(nowMs)) throw new AgentError('E_INTERNAL', 'retention: now is not a valid date');
  const zone = zoneOf(timeZone);
  const ordered = [...rules]
    .map((r) => {
      checkInterval(r.interval);
      if (!Number.isSafeInteger(r.keep) || r.keep < 1) {
        throw new AgentError('E_CONFIG_INVALID', `retention rule ${show(r)}: keep must be a whole number of at least 1`, { details: { rule: r } });
      }
      return r;
    })
    .sort((a, b) => a.interval.count * UNIT_HOURS[a.interval.unit] - b.interval.count * UNIT_HOURS[b.interval.unit]);

  const keep = new Set<string>();
  const reasons = new Map<string, string[]>();
  const future: string[] = [];
  const add = (id: string, reason: string): void => {
    keep.add(id);
    const list = reasons.get(id);
    if (list === undefined) reasons.set(id, [reason]);
    else list.push(reason);
  };

  const dated: { id: string; ms: number; at: LocalHour }[] = [];
  for (const backup of backups) {
    const ms = backup.createdAt.getTime();
    if (!Number.isFinite(ms)) {
      add(backup.id, 'undated: no valid creation time');
    } else if (ms > nowMs) {
      add(backup.id, `future: created ${backup.createdAt.toISOString()}, after now (clock skew)`);
      future.push(backup.id);
    } else {
      dated.push({ id: backup.id, ms, at: localHour(zone, ms) });
    }
  }
  dated.sort((a, b) => b.ms - a.ms || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));

  let boundary = localHour(zone, nowMs);
  for (const r of ordered) {
    const period = periodOf(r.interval);
    const oldest = period.ordinal(boundary) - r.keep;
    const seen = new Set<number>();
    let kept = 0;
    for (const backup of dated) {
      if (kept >= r.keep) break;
      const ordinal = period.ordinal(backup.at);
      if (ordinal < oldest || seen.has(ordinal)) continue;
      seen.add(ordinal);
      const reason = `${period.name} ${period.label(ordinal)}`;
      if (keep.has(backup.id)) {
        reasons.get(backup.id)!.push(reason);
      } else {
        add(backup.id, reason);
        kept++;
      }
    }
    boundary = period.start(oldest);
  }

  const newest = dated[0];
  if (newest !== undefined && !keep.has(newest.id)) add(newest.id, 'newest: the last backup is always kept');
  return { keep, reasons, future };
}
