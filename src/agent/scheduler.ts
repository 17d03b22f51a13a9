import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { toAgentError } from '../errors.ts';
import { writeStateFile } from '../state-file.ts';
import type { Config } from './config.ts';
import type { LocalAgent } from './jobs/api.ts';
import { nodeIdOf } from './node-id.ts';
import { nextRun, parseSchedule, type Schedule } from './schedule.ts';

/**
 * The daemon's automated backups (issue #5). Only environments with `schedule:` in the config
 * get them (a tier names what prune keeps, not when backups run: docs/decisions.md).
 *
 * Each run is a `backup.create` job with trigger 'scheduled' through the same job engine as
 * every other operation (so the per-environment lock and the node's slots apply), followed,
 * when it succeeded, by a `backup.prune` job. A run that comes due while the previous run of
 * the same environment is still queued or running is skipped, never stacked. Each run starts
 * at its due time plus this node's offset within `jitter` (spreadOffset: fixed per node and
 * environment, so a fleet whose schedules share one cron minute spreads evenly over the window
 * instead of stampeding the store; issue #11). Without `jitter`, the window is a tenth of the
 * schedule's period, at most 15 minutes.
 *
 * `<stateDir>/schedule.json` holds each environment's last run (the time it was started) and
 * next run. At start, a run whose due time passed while the daemon was down is taken once, at
 * once (plus jitter); the schedule then continues from that run: missed runs are not replayed.
 */
export interface ScheduleState {
  env: string;
  /** "every 6h" or "cron 0 *\/6 * * * (Europe/Berlin)". */
  schedule: string;
  lastRunAt: string | null;
  nextRunAt: string | null;
  /** The job of the run in progress. */
  jobId?: string;
}

interface SavedRun {
  lastRunAt?: string;
  nextRunAt?: string;
}
/** schedule.json by environment: a Map, so an environment named 'constructor' finds its own run or none. */
type StateFile = Map<string, SavedRun>;

const STATE_FILE = 'schedule.json';
/** setTimeout's limit; longer waits re-arm. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Entry {
  env: string;
  schedule: Schedule;
  timeZone: string;
  /** This node's fixed delay after each due time (spreadOffset). */
  jitterMs: number;
  live: boolean;
  lastRunAt?: Date;
  nextRunAt?: Date;
  timer?: NodeJS.Timeout;
  jobId?: string;
}

export class Scheduler {
  readonly #agent: LocalAgent;
  readonly #logger: Logger;
  readonly #stateDir: string;
  readonly #entries = new Map<string, Entry>();
  #stopped = false;
  #saving: Promise<void> = Promise.resolve();

  constructor(options: { agent: LocalAgent; logger: Logger; stateDir: string }) {
    this.#agent = options.agent;
    this.#logger = options.logger.child({ component: 'scheduler' });
    this.#stateDir = options.stateDir;
  }

  async start(config: Config): Promise<void> {
    const saved = await readStateFile(this.#stateDir);
    this.#apply(config, saved);
    await this.#save();
  }

  /** SIGHUP: schedules follow the new config; last runs are kept. */
  async reload(config: Config): Promise<void> {
    const saved: StateFile = new Map();
    for (const entry of this.#entries.values()) {
      if (entry.lastRunAt) saved.set(entry.env, { lastRunAt: entry.lastRunAt.toISOString() });
      clearTimeout(entry.timer);
    }
    const running = new Map([...this.#entries].map(([env, e]) => [env, e.jobId]));
    this.#entries.clear();
    this.#apply(config, saved);
    for (const [env, jobId] of running) {
      const entry = this.#entries.get(env);
      if (entry && jobId) entry.jobId = jobId;
    }
    await this.#save();
  }

  stop(): void {
    this.#stopped = true;
    for (const entry of this.#entries.values()) clearTimeout(entry.timer);
  }

  status(): ScheduleState[] {
    return [...this.#entries.values()].map(stateOf);
  }

  #apply(config: Config, saved: StateFile): void {
    const now = new Date();
    for (const [env, settings] of Object.entries(config.environments)) {
      if (!settings.schedule) continue;
      const lastRunAt = saved.get(env)?.lastRunAt;
      const last = lastRunAt ? new Date(lastRunAt) : undefined;
      const entry: Entry = {
        env,
        schedule: parseSchedule(settings.schedule),
        timeZone: settings.timeZone,
        jitterMs: 0,
        live: settings.schedule.live,
        ...(last && Number.isFinite(last.getTime()) ? { lastRunAt: last } : {}),
      };
      entry.jitterMs = spreadOffset(nodeIdOf(config), env, settings.schedule.jitter ?? defaultJitter(entry.schedule, now, entry.timeZone));
      this.#entries.set(env, entry);
      const due = nextRun(entry.schedule, entry.lastRunAt, now, entry.timeZone);
      if (entry.lastRunAt && due.getTime() < now.getTime()) {
        this.#logger.info({ env, lastRunAt: entry.lastRunAt.toISOString(), dueAt: due.toISOString() }, 'scheduled backup missed while the agent was down: taken once now');
      }
      this.#arm(entry, due.getTime() < now.getTime() ? now : due);
    }
  }

  #arm(entry: Entry, due: Date): void {
    clearTimeout(entry.timer);
    if (this.#stopped) return;
    const at = due.getTime() + entry.jitterMs;
    entry.nextRunAt = new Date(at);
    const wait = () => {
      const left = at - Date.now();
      entry.timer = setTimeout(left > MAX_TIMER_MS ? wait : () => void this.#fire(entry), Math.min(Math.max(left, 0), MAX_TIMER_MS));
      entry.timer.unref();
    };
    wait();
  }

  async #fire(entry: Entry): Promise<void> {
    if (this.#stopped || this.#entries.get(entry.env) !== entry) return;
    const now = new Date();
    const log = this.#logger.child({ env: entry.env });
    if (entry.jobId) {
      log.warn({ jobId: entry.jobId }, 'scheduled backup skipped: the previous scheduled run is still queued or running');
      this.#arm(entry, nextRun(entry.schedule, now, now, entry.timeZone));
      await this.#save();
      return;
    }
    entry.lastRunAt = now;
    this.#arm(entry, nextRun(entry.schedule, now, now, entry.timeZone));
    let jobId: string | undefined;
    try {
      const ticket = await this.#agent.submit({ kind: 'backup.create', env: entry.env, trigger: 'scheduled', ...(entry.live ? { live: true } : {}) });
      jobId = ticket.jobId;
      entry.jobId = jobId;
      await this.#save();
      log.info({ jobId, backupId: ticket.backupId, nextRunAt: entry.nextRunAt?.toISOString() }, 'scheduled backup queued');
      const job = await this.#agent.engine.wait(jobId);
      if (job.state !== 'succeeded') {
        log.error({ jobId, state: job.state, code: job.error?.code, err: job.error?.message }, 'scheduled backup did not succeed; no prune this time');
        return;
      }
      const prune = await this.#agent.submit({ kind: 'backup.prune', env: entry.env });
      entry.jobId = prune.jobId;
      const pruned = await this.#agent.engine.wait(prune.jobId);
      if (pruned.state !== 'succeeded') log.error({ jobId: prune.jobId, code: pruned.error?.code, err: pruned.error?.message }, 'prune after the scheduled backup failed');
    } catch (error) {
      const failure = toAgentError(error);
      log.error({ code: failure.code, err: failure.message }, 'scheduled backup could not be queued');
    } finally {
      delete entry.jobId;
      const current = this.#entries.get(entry.env); // a reload may have replaced the entry
      if (current) delete current.jobId;
      await this.#save();
    }
  }

  /**
   * Writes schedule.json (atomically; `status` of the CLI reads it too). A failed write is
   * logged, not thrown: the schedule runs on from memory. It removes its temp file (on a full
   * state directory the create succeeds and the write does not).
   */
  #save(): Promise<void> {
    // fromEntries defines own keys, whatever the environment is called.
    const body: Record<string, SavedRun> = Object.fromEntries(
      [...this.#entries.values()].map((entry) => [
        entry.env,
        {
          ...(entry.lastRunAt ? { lastRunAt: entry.lastRunAt.toISOString() } : {}),
          ...(entry.nextRunAt ? { nextRunAt: entry.nextRunAt.toISOString() } : {}),
        },
      ]),
    );
    this.#saving = this.#saving.then(async () => {
      try {
        await writeStateFile(this.#stateDir, path.join(this.#stateDir, STATE_FILE), JSON.stringify(body, null, 2));
      } catch (error) {
        const failure = toAgentError(error);
        this.#logger.warn({ code: failure.code, err: failure.message }, 'could not write schedule.json');
      }
    });
    return this.#saving;
  }
}

function stateOf(entry: Entry): ScheduleState {
  return {
    env: entry.env,
    schedule: describeSchedule(entry.schedule, entry.timeZone),
    lastRunAt: entry.lastRunAt?.toISOString() ?? null,
    nextRunAt: entry.nextRunAt?.toISOString() ?? null,
    ...(entry.jobId ? { jobId: entry.jobId } : {}),
  };
}

export function describeSchedule(schedule: Schedule, timeZone: string): string {
  if (schedule.kind === 'cron') return `cron ${schedule.expression} (${timeZone})`;
  const ms = schedule.everyMs;
  const [unit, size] = ([['d', 86_400_000], ['h', 3_600_000], ['m', 60_000]] as const).find(([, n]) => ms % n === 0) ?? ['s', 1000];
  return `every ${ms / size}${unit}`;
}

/** The runs schedule.json records; a missing or unreadable file records none. */
async function readStateFile(stateDir: string): Promise<StateFile> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path.join(stateDir, STATE_FILE), 'utf8'));
  } catch {
    return new Map();
  }
  const saved: StateFile = new Map();
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) return saved;
  // Own entries only, and only their string times: a hand-edited file must not hand `status`
  // or Date anything else.
  for (const [env, run] of Object.entries(parsed)) {
    if (!run || typeof run !== 'object') continue;
    const { lastRunAt, nextRunAt } = run as Record<string, unknown>;
    saved.set(env, {
      ...(typeof lastRunAt === 'string' ? { lastRunAt } : {}),
      ...(typeof nextRunAt === 'string' ? { nextRunAt } : {}),
    });
  }
  return saved;
}

/**
 * The schedules of the config with the runs schedule.json records (what `status` shows in a
 * process other than the daemon: the next run is the daemon's, when it runs).
 */
export async function scheduleStates(config: Config): Promise<ScheduleState[]> {
  const saved = await readStateFile(config.stateDir);
  return Object.entries(config.environments)
    .filter(([, env]) => env.schedule)
    .map(([env, settings]) => ({
      env,
      schedule: describeSchedule(parseSchedule(settings.schedule!), settings.timeZone),
      lastRunAt: saved.get(env)?.lastRunAt ?? null,
      nextRunAt: saved.get(env)?.nextRunAt ?? null,
    }));
}

const MAX_DEFAULT_JITTER_MS = 15 * 60_000;

/** A tenth of the schedule's period (the gap between its next two runs), at most 15 minutes. */
function defaultJitter(schedule: Schedule, now: Date, timeZone: string): number {
  const first = nextRun(schedule, undefined, now, timeZone);
  const second = nextRun(schedule, first, first, timeZone);
  return Math.min(MAX_DEFAULT_JITTER_MS, Math.floor((second.getTime() - first.getTime()) / 10));
}

/**
 * Where in [0, windowMs] this node's runs of `env` fall: a hash of the node id and the
 * environment, so every node of a fleet keeps a steady time of its own and the fleet covers
 * the window evenly (random delays would also spread, but bunch by chance and move each run).
 */
export function spreadOffset(nodeId: string, env: string, windowMs: number): number {
  const hash = createHash('sha256').update(`${nodeId}\0${env}`).digest().readUInt32BE(0);
  return Math.floor((hash / 2 ** 32) * (windowMs + 1));
}
