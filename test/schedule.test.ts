import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BackupSummary } from '../src/snapshot/pipeline/catalog.ts';
import type { AgentStatus, LocalAgent } from '../src/agent/jobs/api.ts';
import type { JobRecord } from '../src/jobs-wire.ts';
import { parseConfig, type Config } from '../src/agent/config.ts';
import { nextRun, parseSchedule } from '../src/agent/schedule.ts';
import { Scheduler, scheduleStates, spreadOffset } from '../src/agent/scheduler.ts';
import { fullTmpfs } from './support/full-disk.ts';
import { cliJson, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, waitFor, writeTokens, type RunningDaemon } from './support/daemon.ts';

describe('schedule expressions', () => {
  it('every: from the last run; never run: due now', () => {
    const s = parseSchedule({ every: '6h' });
    const now = new Date('2026-11-22T10:00:00Z');
    expect(nextRun(s, undefined, now, 'UTC')).toEqual(now);
    expect(nextRun(s, new Date('2026-11-22T09:00:00Z'), now, 'UTC').toISOString()).toBe('2026-11-22T15:00:00.000Z');
  });

  it('cron in the environment time zone', () => {
    const s = parseSchedule({ cron: '0 */6 * * *' });
    expect(nextRun(s, undefined, new Date('2026-11-22T10:00:00Z'), 'UTC').toISOString()).toBe('2026-11-22T12:00:00.000Z');
    // 02:30 local in Berlin (UTC+1 in November) is 01:30 UTC.
    expect(nextRun(parseSchedule({ cron: '30 2 * * *' }), undefined, new Date('2026-11-22T10:00:00Z'), 'Europe/Berlin').toISOString()).toBe('2026-11-23T01:30:00.000Z');
    // Mondays only.
    expect(nextRun(parseSchedule({ cron: '0 0 * * 1' }), undefined, new Date('2026-11-22T10:00:00Z'), 'UTC').toISOString()).toBe('2026-11-23T00:00:00.000Z');
  });

  it('cron names, nicknames and DST (croner): MON-FRI, JAN, @daily; a local time skipped or repeated by DST runs once', () => {
    const from = new Date('2026-11-22T10:00:00Z'); // a Sunday
    expect(nextRun(parseSchedule({ cron: '0 3 * * MON-FRI' }), undefined, from, 'UTC').toISOString()).toBe('2026-11-23T03:00:00.000Z');
    expect(nextRun(parseSchedule({ cron: '0 0 1 JAN *' }), undefined, from, 'UTC').toISOString()).toBe('2027-01-01T00:00:00.000Z');
    expect(nextRun(parseSchedule({ cron: '@daily' }), undefined, from, 'Europe/Berlin').toISOString()).toBe('2026-11-22T23:00:00.000Z');
    // Berlin, 2027-03-28: 02:00–03:00 does not exist. 02:30 comes once, that day, not never and not twice.
    const spring = nextRun(parseSchedule({ cron: '30 2 * * *' }), undefined, new Date('2027-03-27T12:00:00Z'), 'Europe/Berlin');
    expect(spring.getTime()).toBeGreaterThan(Date.parse('2027-03-27T12:00:00Z'));
    expect(spring.getTime()).toBeLessThan(Date.parse('2027-03-28T12:00:00Z'));
    // 2026-10-25: 02:30 happens twice (CEST, then CET); the next run after the first is a day later, not an hour.
    const first = nextRun(parseSchedule({ cron: '30 2 * * *' }), undefined, new Date('2026-10-24T12:00:00Z'), 'Europe/Berlin');
    const second = nextRun(parseSchedule({ cron: '30 2 * * *' }), first, new Date(first.getTime() + 1000), 'Europe/Berlin');
    expect(second.getTime() - first.getTime()).toBeGreaterThan(20 * 3_600_000);
  });

  it('rejects bad schedules', () => {
    expect(() => parseSchedule({})).toThrow(/exactly one of every/);
    expect(() => parseSchedule({ every: '6h', cron: '* * * * *' })).toThrow(/exactly one/);
    expect(() => parseSchedule({ cron: '61 * * * *' })).toThrow(/minute/);
    expect(() => parseSchedule({ cron: '* * *' })).toThrow(/5 fields/);
  });
});

describe('schedules spread across a fleet (issue #11)', () => {
  it('each node and environment has its own fixed offset within the window, and 1,000 nodes cover it evenly', () => {
    const window = 15 * 60_000;
    const offsets = Array.from({ length: 1000 }, (_, i) => spreadOffset(`node-${i}`, 'shop', window));
    expect(offsets.every((o) => Number.isInteger(o) && o >= 0 && o <= window)).toBe(true);
    expect(spreadOffset('node-7', 'shop', window)).toBe(offsets[7]); // steady: the same every run
    expect(spreadOffset('node-7', 'blog', window)).not.toBe(offsets[7]);
    const tenths = Array.from({ length: 10 }, (_, d) => offsets.filter((o) => Math.min(9, Math.floor((o / window) * 10)) === d).length);
    for (const count of tenths) expect(count, tenths.join(',')).toBeGreaterThan(60);
    expect(spreadOffset('node-7', 'shop', 0)).toBe(0); // jitter: 0s keeps the exact times
  });
});

describe('retention and schedule config', () => {
  const env = (extra: string) => `environments:\n  shop:\n    services: { uploads: { kind: files, path: /srv/x } }\n${extra}`;
  it('defaults: essential, UTC, 4 manual, no schedule, 3d safety expiry', () => {
    const shop = parseConfig(env(''), 'c.yaml').environments.shop!;
    expect(shop).toMatchObject({ timeZone: 'UTC', manualLimit: 4, safetyKeepFor: 3 * 86_400_000 });
    expect(shop.retention).toEqual([{ interval: { count: 1, unit: 'd' }, keep: 2 }]);
    expect(shop.schedule).toBeUndefined();
  });
  it('names the bad field', () => {
    expect(() => parseConfig(env('    timeZone: Mars/Olympus\n'), 'c.yaml')).toThrow(/environments\.shop\.timeZone: must be an IANA time zone/);
    expect(() => parseConfig(env('    retention: platinum\n'), 'c.yaml')).toThrow(/environments\.shop\.retention: unknown schedule tier "platinum"/);
    expect(() => parseConfig(env('    safetyKeepFor: 60000\n'), 'c.yaml')).toThrow(/environments\.shop\.safetyKeepFor: must be a duration with its unit, such as "60000s" or "60000ms": a bare number is ambiguous/);
    expect(() => parseConfig(env('    schedule: { every: 21600 }\n'), 'c.yaml')).toThrow(/environments\.shop\.schedule\.every/);
    expect(() => parseConfig(env('    schedule: { cron: "99 * * * *" }\n'), 'c.yaml')).toThrow(/environments\.shop\.schedule: .*minute/);
    expect(() => parseConfig(env('    manualLimit: 0\n'), 'c.yaml')).toThrow(/environments\.shop\.manualLimit/);
  });
  it('accepts rules, a zone and a schedule', () => {
    const shop = parseConfig(env('    retention: [{interval: 6h, count: 4}, {interval: 1d, count: 7}]\n    timeZone: Europe/Berlin\n    schedule: { every: 6h, jitter: 5m }\n'), 'c.yaml').environments.shop!;
    expect(shop.retention).toHaveLength(2);
    expect(shop.schedule).toMatchObject({ every: '6h', jitter: 300_000, live: false });
  });
});

describe('schedule.json: own keys only, and a full state directory', () => {
  let dir: string;
  let stateDir: string;
  const schedulers: Scheduler[] = [];
  const DAY = 86_400_000;
  // Each environment ran a minute ago, so no run comes due during a test: the agent is never asked.
  const ranAt = new Date(Date.now() - 60_000).toISOString();
  const agent = {
    submit: () => Promise.reject(new Error('no run is due in these tests')),
  } as unknown as LocalAgent;

  function configure(envs: readonly string[]): Config {
    return parseConfig(
      `stateDir: ${stateDir}
environments:
${envs.map((env) => `  ${env}: { schedule: { every: 1d, jitter: 0s }, services: { db: { kind: files, path: ${dir}/${env} } } }`).join('\n')}
`,
      'test',
    );
  }

  function scheduler(logs: Record<string, unknown>[] = []): Scheduler {
    const logger = pino({ level: 'warn' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    const created = new Scheduler({ agent, logger, stateDir });
    schedulers.push(created);
    return created;
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'sa-schedule-'));
  });
  afterEach(async () => {
    for (const s of schedulers.splice(0)) s.stop();
    await rm(stateDir, { recursive: true, force: true });
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("an environment named 'constructor' has its own runs; one schedule.json does not record has none", async () => {
    stateDir = path.join(dir, 'state-names');
    await mkdir(stateDir, { recursive: true });
    await writeFile(path.join(stateDir, 'schedule.json'), JSON.stringify({ shop: { lastRunAt: ranAt } }));
    // What `status` shows outside the daemon: 'constructor' is not in the file.
    expect(await scheduleStates(configure(['constructor', 'shop']))).toEqual([
      { env: 'constructor', schedule: 'every 1d', lastRunAt: null, nextRunAt: null },
      { env: 'shop', schedule: 'every 1d', lastRunAt: ranAt, nextRunAt: null },
    ]);

    await writeFile(path.join(stateDir, 'schedule.json'), JSON.stringify({ constructor: { lastRunAt: ranAt }, shop: { lastRunAt: ranAt } }));
    const config = configure(['constructor', 'shop']);
    const first = scheduler();
    await first.start(config);
    const nextRunAt = new Date(Date.parse(ranAt) + DAY).toISOString();
    expect(first.status()).toEqual([
      { env: 'constructor', schedule: 'every 1d', lastRunAt: ranAt, nextRunAt },
      { env: 'shop', schedule: 'every 1d', lastRunAt: ranAt, nextRunAt },
    ]);
    await first.reload(config); // rebuilds the saved runs from memory
    expect(first.status().map((s) => s.lastRunAt)).toEqual([ranAt, ranAt]);
    first.stop();

    // Written as an own key, read back by a restarted daemon and by `status`.
    const saved = JSON.parse(await readFile(path.join(stateDir, 'schedule.json'), 'utf8')) as Record<string, unknown>;
    expect(Object.getOwnPropertyDescriptor(saved, 'constructor')?.value).toEqual({ lastRunAt: ranAt, nextRunAt });
    await scheduler().start(config);
    expect(await scheduleStates(config)).toEqual([
      { env: 'constructor', schedule: 'every 1d', lastRunAt: ranAt, nextRunAt },
      { env: 'shop', schedule: 'every 1d', lastRunAt: ranAt, nextRunAt },
    ]);
  });

  it('without jitter, each run comes a tenth of the period late at most (15 min at most): every 1d → within 15 min of its due time', async () => {
    stateDir = path.join(dir, 'state-spread');
    await mkdir(stateDir, { recursive: true });
    await writeFile(path.join(stateDir, 'schedule.json'), JSON.stringify({ shop: { lastRunAt: ranAt } }));
    const config = parseConfig(`stateDir: ${stateDir}\nnodeId: node-7\nenvironments:\n  shop: { schedule: { every: 1d }, services: { db: { kind: files, path: ${dir}/shop } } }\n`, 'test');
    const running = scheduler();
    await running.start(config);
    const late = Date.parse(running.status()[0]!.nextRunAt!) - (Date.parse(ranAt) + DAY);
    expect(late).toBe(spreadOffset('node-7', 'shop', 15 * 60_000));
  });

  it('a hand-edited schedule.json with other shapes gives no runs instead of bad dates', async () => {
    stateDir = path.join(dir, 'state-shapes');
    await mkdir(stateDir, { recursive: true });
    await writeFile(path.join(stateDir, 'schedule.json'), JSON.stringify({ shop: { lastRunAt: 5, nextRunAt: ['x'] }, blog: 'yesterday' }));
    expect(await scheduleStates(configure(['shop', 'blog']))).toEqual([
      { env: 'shop', schedule: 'every 1d', lastRunAt: null, nextRunAt: null },
      { env: 'blog', schedule: 'every 1d', lastRunAt: null, nextRunAt: null },
    ]);
  });

  it('a full state directory: the write is logged as E_NO_SPACE naming it, no schedule.json.tmp is left, the schedule runs on', async () => {
    stateDir = path.join(dir, 'state-full');
    const before = JSON.stringify({ shop: { lastRunAt: ranAt } });
    const unmount = await fullTmpfs(stateDir, () => writeFile(path.join(stateDir, 'schedule.json'), before));
    try {
      const logs: Record<string, unknown>[] = [];
      const full = scheduler(logs);
      await full.start(configure(['shop']));
      await full.reload(configure(['shop']));
      expect(logs).toHaveLength(2);
      for (const log of logs) {
        expect(log).toMatchObject({ msg: 'could not write schedule.json', code: 'E_NO_SPACE' });
        expect(log.err).toBe(
          `the state directory ${stateDir} is out of space (ENOSPC): could not write ${path.join(stateDir, 'schedule.json')}; free space on its file system, or point stateDir in the config at a larger one`,
        );
      }
      expect((await readdir(stateDir)).sort()).toEqual(['filler', 'schedule.json']);
      expect(await readFile(path.join(stateDir, 'schedule.json'), 'utf8')).toBe(before);
      expect(full.status()).toEqual([{ env: 'shop', schedule: 'every 1d', lastRunAt: ranAt, nextRunAt: new Date(Date.parse(ranAt) + DAY).toISOString() }]);
    } finally {
      for (const s of schedulers.splice(0)) s.stop();
      await unmount();
    }
  });
});

describe('the daemon runs scheduled backups as jobs, prunes after each, and takes a missed run once', () => {
  let sandbox: Sandbox;
  let daemon: RunningDaemon | undefined;
  const args = (...rest: string[]) => ['--config', sandbox.configPath, ...rest];

  beforeAll(async () => {
    sandbox = await createSandbox();
    await mkdir(path.join(sandbox.dir, 'mount'));
    await writeFile(path.join(sandbox.dir, 'mount', 'f.txt'), 'data');
  });
  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
  });
  afterAll(() => sandbox.cleanup());

  it('a 2-second schedule: backups happen, never overlap, prune keeps the count; status shows the next run', async () => {
    const tokens = await writeTokens(sandbox);
    await sandbox.writeConfig({
      daemon: daemonSection(tokens),
      environments: {
        // 1h × 1: one scheduled backup survives each prune (the newest).
        busy: { ...filesEnv({ uploads: path.join(sandbox.dir, 'mount') }), schedule: { every: '2s', jitter: '200ms' }, retention: [{ interval: '1h', count: 1 }] },
        idle: filesEnv({ uploads: path.join(sandbox.dir, 'mount') }),
      },
    });
    daemon = await startDaemon(sandbox.configPath);
    const jobsOf = () => cliJson<JobRecord[]>(args('jobs', 'list', '--env', 'busy', '--limit', '1000'));
    const done = await waitFor(
      'four scheduled backups and their prunes',
      async () => {
        const jobs = await jobsOf();
        const creates = jobs.filter((j) => j.kind === 'backup.create' && j.state === 'succeeded');
        const prunes = jobs.filter((j) => j.kind === 'backup.prune' && j.state === 'succeeded');
        return creates.length >= 4 && prunes.length >= 4 && jobs;
      },
      60_000,
    );
    const status = await cliJson<AgentStatus>(args('status'));
    const busy = status.schedules.find((s) => s.env === 'busy')!;
    expect(busy.schedule).toBe('every 2s');
    expect(new Date(busy.nextRunAt!).getTime()).toBeGreaterThan(Date.now() - 5_000);
    expect(status.schedules.find((s) => s.env === 'idle')).toBeUndefined();
    // backup.prune over the protocol (--remote), as a job of the daemon.
    const remote = await cliJson<{ env: string; dryRun: boolean; deleted: unknown[]; kept: unknown[] }>(
      args('--remote', daemon.url, '--token-file', tokens.adminFile, 'backup', 'prune', 'busy', '--dry-run'),
    );
    expect(remote).toMatchObject({ env: 'busy', dryRun: true });
    expect(remote.kept.length).toBeGreaterThanOrEqual(1);
    await daemon.stop();
    daemon = undefined;

    // Never two jobs of the environment at once: their running intervals do not overlap.
    const jobs = (await jobsOf()).filter((j) => j.startedAt && j.finishedAt).sort((a, b) => (a.startedAt! < b.startedAt! ? -1 : 1));
    for (let i = 1; i < jobs.length; i++) expect(jobs[i]!.startedAt! >= jobs[i - 1]!.finishedAt!).toBe(true);
    expect(done.filter((j) => j.kind === 'backup.create').every((j) => (j.spec as { trigger?: string }).trigger === 'scheduled')).toBe(true);

    // Prune ran after the last backup: one scheduled backup is left.
    const backups = await cliJson<BackupSummary[]>(args('backup', 'list', 'busy'));
    const scheduled = backups.filter((b) => b.manifest?.trigger === 'scheduled');
    expect(scheduled.length).toBeGreaterThanOrEqual(1);
    expect(scheduled.length).toBeLessThanOrEqual(2); // a backup may have ended just before its prune
    expect(backups.length).toBeLessThan(done.filter((j) => j.kind === 'backup.create').length);
  }, 90_000);

  it('a run missed while the daemon was down is taken once at start, not replayed', async () => {
    const tokens = await writeTokens(sandbox);
    await sandbox.writeConfig({
      daemon: daemonSection(tokens),
      environments: {
        hourly: { ...filesEnv({ uploads: path.join(sandbox.dir, 'mount') }), schedule: { every: '1h', jitter: '0s' } },
      },
    });
    // The last run was 5 hours ago: 4 runs were missed.
    const fiveHoursAgo = new Date(Date.now() - 5 * 3_600_000).toISOString();
    await mkdir(sandbox.stateDir, { recursive: true });
    await writeFile(path.join(sandbox.stateDir, 'schedule.json'), JSON.stringify({ hourly: { lastRunAt: fiveHoursAgo } }));
    daemon = await startDaemon(sandbox.configPath);
    await daemon.waitForLog('the missed run', (l) => l.msg.startsWith('scheduled backup missed'));
    await waitFor('the missed backup and its prune', async () => {
      const jobs = await cliJson<JobRecord[]>(args('jobs', 'list', '--env', 'hourly'));
      return jobs.some((j) => j.kind === 'backup.prune' && j.state === 'succeeded');
    });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const jobs = await cliJson<JobRecord[]>(args('jobs', 'list', '--env', 'hourly'));
    expect(jobs.filter((j) => j.kind === 'backup.create')).toHaveLength(1);
    const state = JSON.parse(await readFile(path.join(sandbox.stateDir, 'schedule.json'), 'utf8')) as Record<string, { lastRunAt: string; nextRunAt: string }>;
    expect(new Date(state.hourly!.lastRunAt).getTime()).toBeGreaterThan(Date.now() - 60_000);
    expect(new Date(state.hourly!.nextRunAt).getTime() - new Date(state.hourly!.lastRunAt).getTime()).toBe(3_600_000);
  }, 60_000);
});
