import { describe, expect, it } from 'vitest';
import {
  describeRules,
  parseRules,
  periodLabel,
  retainedCount,
  selectRetained,
  TIERS,
} from '../src/agent/retention.ts';
import type { RetentionCandidate, RetentionDecision, RetentionRule } from '../src/agent/retention.ts';
import { AgentError } from '../src/errors.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

// --- Helpers: local wall-clock time, computed independently of the module under test ---------

const partsFormatters = new Map<string, Intl.DateTimeFormat>();
/** The local wall-clock time of `ms` in `tz`, as milliseconds of a UTC clock showing it. */
function wallClock(tz: string, ms: number): number {
  let f = partsFormatters.get(tz);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
      hour: 'numeric', minute: 'numeric', second: 'numeric', fractionalSecondDigits: 3,
    });
    partsFormatters.set(tz, f);
  }
  const p = Object.fromEntries(f.formatToParts(ms).map((x) => [x.type, Number(x.value)])) as Record<string, number>;
  return Date.UTC(p.year!, p.month! - 1, p.day!, p.hour!, p.minute!, p.second!, p.fractionalSecond!);
}

/** The instant at which the wall clock in `tz` shows `local` ("2026-11-20T00:00:00.000"). */
function at(tz: string, local: string): Date {
  const wall = Date.parse(`${local}Z`);
  let guess = wall;
  for (let i = 0; i < 3; i++) guess = wall - (wallClock(tz, guess) - guess);
  if (wallClock(tz, guess) !== wall) throw new Error(`${local} does not exist in ${tz}`);
  return new Date(guess);
}

const utc = (iso: string): Date => new Date(`${iso}Z`);
const localDayIndex = (tz: string, d: Date): number => Math.floor(wallClock(tz, d.getTime()) / DAY);

/** Label → consecutive number, per rule kind, to check spacing. */
function labelOrdinal(label: string): number {
  let m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2})$/.exec(label);
  if (m) return (Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!) / DAY) * 4 + +m[4]! / 6;
  m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(label);
  if (m) return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!) / DAY;
  m = /^(\d{4})-W(\d{2})$/.exec(label);
  if (m) {
    const jan4 = Date.UTC(+m[1]!, 0, 4) / DAY;
    const monday1 = jan4 - ((new Date(jan4 * DAY).getUTCDay() + 6) % 7);
    return (monday1 + (+m[2]! - 1) * 7 + 3) / 7;
  }
  m = /^(\d{4})-(\d{2})$/.exec(label);
  if (m) return +m[1]! * 12 + +m[2]! - 1;
  throw new Error(`unexpected label ${label}`);
}

const rules = (...specs: string[]): RetentionRule[] =>
  parseRules(specs.map((s) => {
    const [interval, count] = s.split('×');
    return { interval, count: Number(count) };
  }));

const backups = (dates: Date[]): RetentionCandidate[] =>
  dates.map((createdAt, i) => ({ id: `b${String(i).padStart(5, '0')}-${createdAt.toISOString()}`, createdAt }));

const keptDates = (decision: RetentionDecision, candidates: readonly RetentionCandidate[]): string[] =>
  candidates.filter((c) => decision.keep.has(c.id)).map((c) => c.createdAt.toISOString()).sort();

/** Reasons split into rule name and label: "6-hourly 2026-11-20T18" → ["6-hourly", "2026-11-20T18"]. */
const split = (reason: string): [string, string] => {
  const space = reason.indexOf(' ');
  return [reason.slice(0, space), reason.slice(space + 1)];
};

function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function expectConfigError(fn: () => unknown, ...fragments: string[]): AgentError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(AgentError);
  const error = caught as AgentError;
  expect(error.code).toBe('E_CONFIG_INVALID');
  for (const fragment of fragments) expect(error.message).toContain(fragment);
  return error;
}

// --- Simulation ---------------------------------------------------------------------------------

interface Step {
  now: Date;
  index: number;
  kept: RetentionCandidate[];
  decision: RetentionDecision;
}

/**
 * The daemon's loop: a backup at each of `times`, then a prune that deletes what the rules do
 * not keep — a pruned backup never comes back. After every prune it checks the invariants:
 * - never more than the rules' count;
 * - every period named in a reason is kept by that period's newest backup ever created (the
 *   newest of each available period, and never one deleted earlier);
 * - per rule, the periods named are distinct;
 * - pruning again at the same time keeps everything (the decision is stable).
 */
function simulate(rulesUnderTest: readonly RetentionRule[], tz: string, times: readonly Date[], onStep: (step: Step) => void): void {
  const max = retainedCount(rulesUnderTest);
  const newestOf = new Map<string, string>(); // "daily 2026-11-20" → id of its newest backup created
  let kept: RetentionCandidate[] = [];
  times.forEach((createdAt, index) => {
    const backup = { id: `b${String(index).padStart(6, '0')}`, createdAt };
    for (const r of rulesUnderTest) newestOf.set(periodLabel(createdAt, r.interval, tz), backup.id);
    kept.push(backup);
    const decision = selectRetained(kept, rulesUnderTest, createdAt, tz);
    kept = kept.filter((k) => decision.keep.has(k.id));

    expect(kept.length).toBeLessThanOrEqual(max);
    const perRule = new Map<string, string[]>();
    for (const k of kept) {
      for (const reason of decision.reasons.get(k.id)!) {
        if (reason.startsWith('newest:')) continue;
        if (newestOf.get(reason) !== k.id) throw new Error(`${createdAt.toISOString()}: ${k.id} is kept for "${reason}" but is not its newest backup`);
        const [name, label] = split(reason);
        const list = perRule.get(name);
        if (list) list.push(label);
        else perRule.set(name, [label]);
      }
    }
    for (const [name, labels] of perRule) expect(new Set(labels).size, `${name} periods are distinct`).toBe(labels.length);
    if (index % 7 === 0) {
      const again = selectRetained(kept, rulesUnderTest, createdAt, tz);
      expect(again.keep.size).toBe(kept.length);
    }
    onStep({ now: createdAt, index, kept, decision });
  });
}

/** Backups every `everyHours` from `from` until `until`, each moved by up to `jitterMinutes`. */
function schedule(from: Date, until: Date, everyHours: number, jitterMinutes: number, seed = 1, skip?: (d: Date) => boolean): Date[] {
  const random = mulberry32(seed);
  const out: Date[] = [];
  for (let t = from.getTime(); t < until.getTime(); t += everyHours * HOUR) {
    const d = new Date(t + Math.floor(random() * jitterMinutes) * 60_000);
    if (!skip?.(d)) out.push(d);
  }
  return out;
}

/**
 * Steady state: exactly `keep` backups held by each rule (its first reason), and per rule the
 * periods named (held, or covered by a finer rule's backup) are consecutive up to now's period.
 */
function expectSteadyState(step: Step, rulesUnderTest: readonly RetentionRule[], tz: string): void {
  const primaries = new Map<string, number>();
  const labels = new Map<string, number[]>();
  for (const k of step.kept) {
    const reasons = step.decision.reasons.get(k.id)!;
    const [first] = split(reasons[0]!);
    primaries.set(first, (primaries.get(first) ?? 0) + 1);
    for (const reason of reasons) {
      const [name, label] = split(reason);
      const list = labels.get(name);
      if (list) list.push(labelOrdinal(label));
      else labels.set(name, [labelOrdinal(label)]);
    }
  }
  for (const r of rulesUnderTest) {
    const [name, nowLabel] = split(periodLabel(step.now, r.interval, tz));
    expect(primaries.get(name), `${step.now.toISOString()}: backups held by ${name}`).toBe(r.keep);
    const ordinals = labels.get(name)!.sort((a, b) => b - a);
    const newest = labelOrdinal(nowLabel);
    expect(ordinals, `${step.now.toISOString()}: ${name} periods are consecutive up to now's`).toEqual(ordinals.map((_, i) => newest - i));
  }
  expect(step.kept.length).toBe(retainedCount(rulesUnderTest));
}

// --- Tests --------------------------------------------------------------------------------------

describe('the test helpers', () => {
  it('convert local wall-clock times, including on DST days', () => {
    expect(at('Europe/Berlin', '2026-03-29T00:00:00.000').toISOString()).toBe('2026-03-28T23:00:00.000Z');
    expect(at('Europe/Berlin', '2026-03-30T00:00:00.000').toISOString()).toBe('2026-03-29T22:00:00.000Z');
    expect(at('America/New_York', '2026-11-01T00:00:00.000').toISOString()).toBe('2026-11-01T04:00:00.000Z');
    expect(at('America/New_York', '2026-11-02T00:00:00.000').toISOString()).toBe('2026-11-02T05:00:00.000Z');
    expect(at('Pacific/Auckland', '2026-06-02T00:00:00.000').toISOString()).toBe('2026-06-01T12:00:00.000Z');
  });
});

describe('tiers and parseRules', () => {
  it('defines the seeds’ tiers with exactly 2, 21 and 44 backups', () => {
    expect(retainedCount(TIERS.essential)).toBe(2);
    expect(retainedCount(TIERS.advanced)).toBe(21);
    expect(retainedCount(TIERS.premium)).toBe(44);
    expect(describeRules(TIERS.essential)).toBe('1d×2');
    expect(describeRules(TIERS.advanced)).toBe('1d×6 + 1w×3 + 1M×12');
    expect(describeRules(TIERS.premium)).toBe('6h×4 + 1d×29 + 1M×11');
  });

  it('reads a tier name as a copy of its rules', () => {
    for (const tier of ['essential', 'advanced', 'premium'] as const) {
      const parsed = parseRules(tier);
      expect(parsed).toEqual(TIERS[tier]);
      expect(parsed).not.toBe(TIERS[tier]);
    }
    expect(Object.isFrozen(TIERS.premium)).toBe(true);
    expect(Object.isFrozen(TIERS.premium[0])).toBe(true);
  });

  it('reads explicit rules [{interval: 1d, count: 7}, {interval: 1w, count: 4}]', () => {
    expect(parseRules([{ interval: '1d', count: 7 }, { interval: '1w', count: 4 }])).toEqual([
      { interval: { count: 1, unit: 'd' }, keep: 7 },
      { interval: { count: 1, unit: 'w' }, keep: 4 },
    ]);
    expect(parseRules([{ interval: '6h', count: 4 }, { interval: '3M', count: 4 }, { interval: '2y', count: 5 }, { interval: '24h', count: 1 }, { interval: '1d', count: 1 }]).map((r) => `${r.interval.count}${r.interval.unit}×${r.keep}`))
      .toEqual(['6h×4', '3M×4', '2y×5', '24h×1', '1d×1']);
  });

  it.each([
    [{ interval: '1d', count: 0 }, 'count must be a whole number of at least 1'],
    [{ interval: '1d', count: -3 }, 'count must be a whole number of at least 1'],
    [{ interval: '1d', count: 1.5 }, 'count must be a whole number of at least 1, not 1.5'],
    [{ interval: '1d', count: '7' }, 'count must be a whole number of at least 1, not "7"'],
    [{ interval: '1d' }, 'count is missing'],
    [{ interval: '0d', count: 7 }, 'interval "0d" must be at least 1d'],
    [{ interval: '1x', count: 7 }, 'unknown unit "x"'],
    [{ interval: '1m', count: 7 }, 'minutes are not a retention period'],
    [{ interval: '1', count: 7 }, 'unknown unit ""'],
    [{ interval: 'd', count: 7 }, 'is not a count and a unit'],
    [{ interval: '1.5d', count: 7 }, 'must be a whole number of d'],
    [{ interval: 1, count: 7 }, 'interval must be a string such as "1d", not 1'],
    [{ count: 7 }, 'interval is missing'],
    [{ interval: '5h', count: 7 }, 'hour blocks must divide the day'],
    [{ interval: '5M', count: 2 }, 'month blocks must divide the year'],
    [{ interval: '1d', count: 7, keep: 3 }, 'unknown key "keep"'],
    ['1d', 'must be an object {interval, count}'],
    [null, 'must be an object {interval, count}'],
  ])('rejects the bad rule %j with E_CONFIG_INVALID naming it', (bad, why) => {
    const error = expectConfigError(
      () => parseRules([{ interval: '1w', count: 4 }, bad], 'environments.shop.retention'),
      'environments.shop.retention: rule 2 ',
      JSON.stringify(bad),
      why,
    );
    expect(error.details).toMatchObject({ rule: 2 });
    expect(error.exitCode).toBe(3);
  });

  it('rejects an interval given twice, naming both rules', () => {
    expectConfigError(() => parseRules([{ interval: '1d', count: 7 }, { interval: '1d', count: 3 }]), 'rule 2', 'repeats interval 1d of rule 1');
  });

  it('rejects an unknown tier, an empty list and other shapes', () => {
    expectConfigError(() => parseRules('gold'), 'unknown schedule tier "gold"', 'essential, advanced, premium');
    expectConfigError(() => parseRules('toString'), 'unknown schedule tier');
    expectConfigError(() => parseRules([]), 'at least one');
    expectConfigError(() => parseRules(7), 'a list of {interval, count} rules');
    expectConfigError(() => parseRules(undefined), 'a list of {interval, count} rules');
    expectConfigError(() => parseRules({ interval: '1d', count: 7 }), 'a list of {interval, count} rules');
  });

  it('rejects invalid rules and time zones given straight to selectRetained', () => {
    const now = utc('2026-11-20T12:00:00');
    expectConfigError(() => selectRetained([], [{ interval: { count: 0, unit: 'd' }, keep: 1 }], now, 'UTC'), '"count":0');
    expectConfigError(() => selectRetained([], [{ interval: { count: 1, unit: 'd' }, keep: 0 }], now, 'UTC'), 'keep must be');
    expectConfigError(() => selectRetained([], TIERS.essential, now, 'Mars/Olympus_Mons'), '"Mars/Olympus_Mons" is not an IANA time zone');
  });
});

describe('periods at their edges', () => {
  const tz = 'Europe/Berlin';
  const label = (local: string, interval: string): string => {
    const [rule] = rules(`${interval}×1`);
    return periodLabel(at(tz, local), rule!.interval, tz);
  };

  it('puts 23:59:59.999 and 00:00:00.000 local in different hours, days, weeks, months and years', () => {
    expect(label('2026-11-20T05:59:59.999', '6h')).toBe('6-hourly 2026-11-20T00');
    expect(label('2026-11-20T06:00:00.000', '6h')).toBe('6-hourly 2026-11-20T06');
    expect(label('2026-11-19T23:59:59.999', '1d')).toBe('daily 2026-11-19');
    expect(label('2026-11-20T00:00:00.000', '1d')).toBe('daily 2026-11-20');
    expect(label('2026-11-22T23:59:59.999', '1w')).toBe('weekly 2026-W47'); // Sunday
    expect(label('2026-11-23T00:00:00.000', '1w')).toBe('weekly 2026-W48'); // Monday
    expect(label('2026-01-31T23:59:59.999', '1M')).toBe('monthly 2026-01');
    expect(label('2026-02-01T00:00:00.000', '1M')).toBe('monthly 2026-02');
    expect(label('2026-12-31T23:59:59.999', '1y')).toBe('yearly 2026');
    expect(label('2027-01-01T00:00:00.000', '1y')).toBe('yearly 2027');
  });

  it('numbers ISO weeks across year ends (2026 has a week 53) and multi-unit blocks from their anchors', () => {
    expect(label('2026-12-31T12:00:00.000', '1w')).toBe('weekly 2026-W53');
    expect(label('2027-01-03T23:59:59.999', '1w')).toBe('weekly 2026-W53');
    expect(label('2027-01-04T00:00:00.000', '1w')).toBe('weekly 2027-W01');
    expect(label('2024-12-30T00:00:00.000', '1w')).toBe('weekly 2025-W01');
    expect(label('2026-05-17T10:00:00.000', '3M')).toBe('3M 2026-04');
    expect(label('2026-05-17T10:00:00.000', '2y')).toBe('2y 2026');
    expect(label('2027-05-17T10:00:00.000', '2y')).toBe('2y 2026');
    expect(label('2026-05-17T10:00:00.000', '12h')).toBe('12-hourly 2026-05-17T00');
  });

  it('keeps the backups at 23:59:59.999 and 00:00:00.000 as the newest of two different days', () => {
    const candidates = backups([
      at(tz, '2026-11-19T12:00:00.000'),
      at(tz, '2026-11-19T23:59:59.999'),
      at(tz, '2026-11-20T00:00:00.000'),
    ]);
    const decision = selectRetained(candidates, rules('1d×2'), at(tz, '2026-11-20T00:00:00.000'), tz);
    expect(keptDates(decision, candidates)).toEqual([at(tz, '2026-11-19T23:59:59.999').toISOString(), at(tz, '2026-11-20T00:00:00.000').toISOString()]);
    expect([...decision.reasons.values()]).toEqual([['daily 2026-11-20'], ['daily 2026-11-19']]); // newest first
  });

  // Hourly backups through a whole DST day, on the real clock (UTC steps of one hour).
  it.each([
    ['Europe/Berlin', '2026-03-29', 23, { T00: 5, T06: 6, T12: 6, T18: 6 }],
    ['Europe/Berlin', '2026-10-25', 25, { T00: 7, T06: 6, T12: 6, T18: 6 }],
    ['America/New_York', '2026-03-08', 23, { T00: 5, T06: 6, T12: 6, T18: 6 }],
    ['America/New_York', '2026-11-01', 25, { T00: 7, T06: 6, T12: 6, T18: 6 }],
  ] as const)('%s %s has %i hours: one day, four 6-hour blocks on the wall clock', (zone, date, hours, perBlock) => {
    const midnight = at(zone, `${date}T00:00:00.000`).getTime();
    const nextMidnight = at(zone, `${new Date(Date.parse(date) + DAY).toISOString().slice(0, 10)}T00:00:00.000`).getTime();
    expect((nextMidnight - midnight) / HOUR).toBe(hours);
    const dates = Array.from({ length: hours }, (_, i) => new Date(midnight + i * HOUR));
    const candidates = backups(dates);
    const now = new Date(nextMidnight - 1);
    const [sixHourly, daily, hourly] = [rules('6h×4')[0]!, rules('1d×1')[0]!, rules('1h×30')[0]!];

    expect(new Set(dates.map((d) => periodLabel(d, daily.interval, zone)))).toEqual(new Set([`daily ${date}`]));
    expect(periodLabel(new Date(nextMidnight), daily.interval, zone)).not.toBe(`daily ${date}`);
    const blocks: Record<string, number> = {};
    for (const d of dates) {
      const block = periodLabel(d, sixHourly.interval, zone).slice(-3);
      blocks[block] = (blocks[block] ?? 0) + 1;
    }
    expect(blocks).toEqual(perBlock);

    const byDay = selectRetained(candidates, [daily], now, zone);
    expect(keptDates(byDay, candidates)).toEqual([dates.at(-1)!.toISOString()]);
    const byBlock = selectRetained(candidates, [sixHourly], now, zone);
    expect([...byBlock.reasons.values()].flat().sort()).toEqual(['T00', 'T06', 'T12', 'T18'].map((h) => `6-hourly ${date}${h}`));
    // The newest of the shortened/lengthened first block is its last hour, 05:xx local.
    const firstBlock = candidates.find((c) => byBlock.reasons.get(c.id)?.[0]?.endsWith('T00'))!;
    expect(new Date(wallClock(zone, firstBlock.createdAt.getTime())).toISOString().slice(11, 13)).toBe('05');
    // Hour buckets follow the wall clock: the skipped hour has none; the repeated one is one bucket.
    const byHour = selectRetained(candidates, [hourly], now, zone);
    expect(byHour.keep.size).toBe(hours === 23 ? 23 : 24);
  });

  it('buckets the same UTC instants into different days in UTC and Pacific/Auckland', () => {
    const candidates = backups([utc('2026-06-01T10:00:00'), utc('2026-06-01T13:00:00')]);
    const now = utc('2026-06-01T14:00:00');
    const [daily] = rules('1d×2');
    // UTC: both on June 1 → only the newer is kept.
    expect(keptDates(selectRetained(candidates, [daily!], now, 'UTC'), candidates)).toEqual(['2026-06-01T13:00:00.000Z']);
    // Auckland (UTC+12 in June): 22:00 on June 1 and 01:00 on June 2 → both are kept.
    const auckland = selectRetained(candidates, [daily!], now, 'Pacific/Auckland');
    expect(keptDates(auckland, candidates)).toEqual(['2026-06-01T10:00:00.000Z', '2026-06-01T13:00:00.000Z']);
    expect([...auckland.reasons.values()].flat()).toEqual(['daily 2026-06-02', 'daily 2026-06-01']);
    // Half-hour offsets: India (UTC+5:30) starts June 2 at 18:30 UTC.
    expect(periodLabel(utc('2026-06-01T18:29:59.999'), daily!.interval, 'Asia/Kolkata')).toBe('daily 2026-06-01');
    expect(periodLabel(utc('2026-06-01T18:30:00'), daily!.interval, 'Asia/Kolkata')).toBe('daily 2026-06-02');
  });
});

describe('selectRetained', () => {
  const tz = 'UTC';
  const daily60 = backups(Array.from({ length: 60 }, (_, i) => new Date(utc('2026-09-20T02:00:00').getTime() + i * DAY))); // Sep 20 … Nov 18

  it('keeps the newest backup of each period, and nothing for an empty history', () => {
    const candidates = backups(['16', '17', '18', '19', '20'].flatMap((d) => [utc(`2026-11-${d}T10:00:00`), utc(`2026-11-${d}T20:00:00`)]));
    const decision = selectRetained(candidates, rules('1d×3'), utc('2026-11-20T21:00:00'), tz);
    expect(keptDates(decision, candidates)).toEqual(['2026-11-18T20:00:00.000Z', '2026-11-19T20:00:00.000Z', '2026-11-20T20:00:00.000Z']);
    expect(decision.future).toEqual([]);
    expect(selectRetained([], TIERS.premium, utc('2026-11-20T21:00:00'), tz)).toEqual({ keep: new Set(), reasons: new Map(), future: [] });
  });

  it('cascades finest first: a backup held by a finer rule takes no coarser slot, but carries its reasons', () => {
    // Wednesday 2026-11-18, 60 days of daily backups, the advanced tier.
    const decision = selectRetained(daily60, TIERS.advanced, utc('2026-11-18T03:00:00'), tz);
    const reasonsByDate = Object.fromEntries(daily60.filter((c) => decision.keep.has(c.id)).map((c) => [c.createdAt.toISOString().slice(0, 10), decision.reasons.get(c.id)]));
    expect(reasonsByDate).toEqual({
      '2026-11-18': ['daily 2026-11-18', 'weekly 2026-W47', 'monthly 2026-11'],
      '2026-11-17': ['daily 2026-11-17'],
      '2026-11-16': ['daily 2026-11-16'],
      '2026-11-15': ['daily 2026-11-15', 'weekly 2026-W46'], // Sunday: the newest of week 46
      '2026-11-14': ['daily 2026-11-14'],
      '2026-11-13': ['daily 2026-11-13'],
      '2026-11-08': ['weekly 2026-W45'],
      '2026-11-01': ['weekly 2026-W44'],
      '2026-10-25': ['weekly 2026-W43'],
      '2026-10-31': ['monthly 2026-10'], // a Saturday: not the newest of its week, kept as a monthly
      '2026-09-30': ['monthly 2026-09'],
    });
    expect(decision.keep.size).toBe(6 + 3 + 2); // only two earlier months of history so far
  });

  it('applies explicit rules [1d×7, 1w×4] the same in any order', () => {
    const now = utc('2026-11-18T03:00:00');
    const decision = selectRetained(daily60, rules('1d×7', '1w×4'), now, tz);
    expect(keptDates(decision, daily60).map((d) => d.slice(0, 10))).toEqual([
      '2026-10-18', '2026-10-25', '2026-11-01', '2026-11-08', // weeklies: the Sundays of W42–W45
      '2026-11-12', '2026-11-13', '2026-11-14', '2026-11-15', '2026-11-16', '2026-11-17', '2026-11-18',
    ]);
    const reversed = selectRetained(daily60, rules('1w×4', '1d×7'), now, tz);
    expect(reversed).toEqual(decision);
  });

  it('looks back a horizon of `keep` periods (plus now’s): a prune before today’s backup still keeps two', () => {
    const candidates = backups(Array.from({ length: 10 }, (_, i) => new Date(utc('2026-11-11T02:00:00').getTime() + i * DAY))); // Nov 11 … 20
    const essential = TIERS.essential;
    expect(keptDates(selectRetained(candidates, essential, utc('2026-11-21T01:00:00'), tz), candidates)).toEqual(['2026-11-19T02:00:00.000Z', '2026-11-20T02:00:00.000Z']);
    expect(keptDates(selectRetained(candidates, essential, utc('2026-11-22T01:00:00'), tz), candidates)).toEqual(['2026-11-20T02:00:00.000Z']);
  });

  it('after a gap keeps the newest of each available period in the horizon, never older ones', () => {
    // Daily backups on Nov 1–10, an outage, then Nov 19 and 20.
    const dates = [...Array.from({ length: 10 }, (_, i) => new Date(utc('2026-11-01T02:00:00').getTime() + i * DAY)), utc('2026-11-19T02:00:00'), utc('2026-11-20T02:00:00')];
    const candidates = backups(dates);
    const decision = selectRetained(candidates, rules('1d×7'), utc('2026-11-20T03:00:00'), tz);
    expect(keptDates(decision, candidates)).toEqual(['2026-11-19T02:00:00.000Z', '2026-11-20T02:00:00.000Z']);
    // A weekly rule keeps the newest of each earlier week within its own horizon (W44–W46).
    const withWeekly = selectRetained(candidates, rules('1d×7', '1w×4'), utc('2026-11-20T03:00:00'), tz);
    expect(keptDates(withWeekly, candidates)).toEqual(['2026-11-01T02:00:00.000Z', '2026-11-08T02:00:00.000Z', '2026-11-10T02:00:00.000Z', '2026-11-19T02:00:00.000Z', '2026-11-20T02:00:00.000Z']);
  });

  it('always keeps the newest backup, even older than every horizon', () => {
    const candidates = backups([utc('2026-09-01T02:00:00'), utc('2026-09-02T02:00:00')]);
    const decision = selectRetained(candidates, TIERS.essential, utc('2026-11-20T03:00:00'), tz);
    expect(keptDates(decision, candidates)).toEqual(['2026-09-02T02:00:00.000Z']);
    expect([...decision.reasons.values()]).toEqual([['newest: the last backup is always kept']]);
  });

  it('keeps and reports backups from the future (clock skew) without letting them take a period', () => {
    const candidates = backups([utc('2026-11-19T02:00:00'), utc('2026-11-20T02:00:00'), utc('2026-11-20T05:00:00'), utc('2026-11-23T02:00:00')]);
    const decision = selectRetained(candidates, rules('1d×2'), utc('2026-11-20T04:00:00'), tz);
    expect(keptDates(decision, candidates)).toEqual(['2026-11-19T02:00:00.000Z', '2026-11-20T02:00:00.000Z', '2026-11-20T05:00:00.000Z', '2026-11-23T02:00:00.000Z']);
    expect(decision.future).toEqual([candidates[2]!.id, candidates[3]!.id]);
    expect(decision.reasons.get(candidates[3]!.id)).toEqual(['future: created 2026-11-23T02:00:00.000Z, after now (clock skew)']);
  });

  it('keeps a backup whose creation time is not a date, and orders equal times by id', () => {
    const candidates = [
      { id: 'broken', createdAt: new Date(Number.NaN) },
      { id: 'a', createdAt: utc('2026-11-20T02:00:00') },
      { id: 'b', createdAt: utc('2026-11-20T02:00:00') },
    ];
    const decision = selectRetained(candidates, rules('1d×2'), utc('2026-11-20T04:00:00'), tz);
    expect([...decision.keep].sort()).toEqual(['b', 'broken']);
    expect(decision.reasons.get('broken')).toEqual(['undated: no valid creation time']);
  });
});

describe('a year of scheduled backups, pruned after each', () => {
  const from = utc('2025-10-01T00:00:00');
  const until = utc('2027-03-01T00:00:00');

  /** Runs the simulation and asserts: the count only grows until it is exact, then stays exact. */
  function run(tier: readonly RetentionRule[], tz: string, times: Date[], steadyBy: Date, extra?: (step: Step) => void): void {
    let steadySince: Date | undefined;
    let previous = 0;
    let checked = 0;
    simulate(tier, tz, times, (step) => {
      if (steadySince === undefined) {
        expect(step.kept.length, `${step.now.toISOString()}: the count grows until steady`).toBeGreaterThanOrEqual(previous);
        if (step.kept.length === retainedCount(tier)) steadySince = step.now;
      }
      if (steadySince !== undefined) {
        expectSteadyState(step, tier, tz);
        checked++;
      }
      previous = step.kept.length;
      extra?.(step);
    });
    expect(steadySince!.getTime()).toBeLessThanOrEqual(steadyBy.getTime());
    expect(checked).toBeGreaterThan(50);
  }

  it('essential, daily backups (UTC): exactly the newest of today and of yesterday', () => {
    const times = schedule(from, until, 24, 90);
    run(TIERS.essential, 'UTC', times, utc('2025-10-03T00:00:00'), (step) => {
      if (step.index === 0) return;
      expect(step.kept.map((k) => k.createdAt)).toEqual([times[step.index - 1], times[step.index]]);
    });
  });

  it('essential, 6-hourly backups (Europe/Berlin): exactly 2, the newest and yesterday’s last', () => {
    const tz = 'Europe/Berlin';
    const times = schedule(from, until, 6, 30, 2);
    run(TIERS.essential, tz, times, utc('2025-10-03T00:00:00'), (step) => {
      if (step.kept.length < 2) return;
      const [older, newest] = step.kept;
      expect(newest!.createdAt).toBe(step.now);
      expect(localDayIndex(tz, older!.createdAt)).toBe(localDayIndex(tz, step.now) - 1);
      const next = times[Number(older!.id.slice(1)) + 1]!;
      expect(localDayIndex(tz, next)).toBe(localDayIndex(tz, step.now)); // the last backup of yesterday
    });
  });

  it('advanced, daily backups (Europe/Berlin): exactly 21 = 6 daily + 3 weekly + 12 monthly', () => {
    run(TIERS.advanced, 'Europe/Berlin', schedule(from, until, 24, 120, 3), utc('2026-12-10T00:00:00'));
  });

  it('advanced, 6-hourly backups (America/New_York): exactly 21', () => {
    run(TIERS.advanced, 'America/New_York', schedule(from, until, 6, 20, 4), utc('2026-12-10T00:00:00'));
  });

  it('premium, 6-hourly backups (America/New_York): exactly 44 = 4 six-hourly + 29 daily + 11 monthly, 30 days of dailies', () => {
    const tz = 'America/New_York';
    run(TIERS.premium, tz, schedule(from, until, 6, 20, 5), utc('2026-10-15T00:00:00'), (step) => {
      if (step.kept.length !== 44) return;
      // The 6-hourly rule holds today's newest (and yesterday's last, until today's 18:00
      // block): the 29 dailies are the days before those — 30 days counting today, or 31.
      const reasons = step.kept.map((k) => step.decision.reasons.get(k.id)!);
      const dailyDays = new Set(reasons.flat().filter((r) => r.startsWith('daily ')));
      const sixHourlyDays = new Set(reasons.filter((r) => r[0]!.startsWith('6-hourly ')).map((r) => r[0]!.slice(9, 19)));
      expect(dailyDays.size).toBe(29 + sixHourlyDays.size);
      const [, , newestBlock] = /^(6-hourly \d{4}-\d{2}-\d{2}T)(\d{2})$/.exec(periodLabel(step.now, TIERS.premium[0]!.interval, tz))!;
      expect(sixHourlyDays.size).toBe(newestBlock === '18' ? 1 : 2);
    });
  });

  it('premium, 6-hourly backups (Pacific/Auckland, DST in April and September): exactly 44', () => {
    run(TIERS.premium, 'Pacific/Auckland', schedule(from, until, 6, 20, 6), utc('2026-10-15T00:00:00'));
  });

  it('irregular: missed days, a week-long outage and backups at random hours never exceed 21, and recover', () => {
    const tz = 'Europe/Berlin';
    const random = mulberry32(7);
    const outage = [at(tz, '2026-06-08T00:00:00.000').getTime(), at(tz, '2026-06-15T00:00:00.000').getTime()]; // ISO week 24
    const times = schedule(from, until, 24, 23 * 60, 8, (d) => {
      const t = d.getTime();
      if (t >= outage[0]! && t < outage[1]!) return true;
      return t < utc('2026-10-01T00:00:00').getTime() && random() < 0.2; // one day in five missed until October
    });
    let dipped = false;
    let afterOutage = false;
    let steadyAtEnd = 0;
    simulate(TIERS.advanced, tz, times, (step) => {
      const t = step.now.getTime();
      // Right after the outage: the daily rule holds only the day since, not older ones.
      if (t >= outage[1]! && !afterOutage) {
        afterOutage = true;
        const dailies = step.kept.filter((k) => step.decision.reasons.get(k.id)![0]!.startsWith('daily '));
        expect(dailies.map((k) => k.createdAt)).toEqual([step.now]);
        expect(step.kept.length).toBeLessThan(21);
        dipped = true;
      }
      // Six weeks after the last irregularity, the policy is back to exactly 21.
      if (t > utc('2026-11-15T00:00:00').getTime()) {
        expectSteadyState(step, TIERS.advanced, tz);
        steadyAtEnd++;
      }
    });
    expect(dipped).toBe(true);
    expect(steadyAtEnd).toBeGreaterThan(50);
  });
});
