import type { Logger } from 'pino';
import { AgentError, toAgentError } from '../../errors.ts';
import { newBackupId } from '../../snapshot/backup-id.ts';
import { isFinished, type JobEvent, type JobKind, type JobRecord, type JobRequest, type JobSpec, type JobState } from '../../jobs-wire.ts';
import type { ProgressEvent } from '../../progress.ts';
import type { Config } from '../config.ts';
import { admissionProblem, hostResources } from './host.ts';
import { currentProcess, isAlive } from '../../liveness.ts';
import { RestoreJournal } from '../../snapshot/pipeline/restore-journal.ts';
import { recoverRestoresOf } from '../restore-recovery.ts';
import { environmentLockFile, tryLock, tryLockSlot, type LockHolder } from './lock.ts';
import { ProgressTracker } from './progress.ts';
import { runOperation, validateRequest } from './runners.ts';
import { JobStore } from './store.ts';

export type JobListener = (event: JobEvent) => void;

export interface JobFilter {
  env?: string;
  state?: JobState;
  kind?: JobKind;
  /** Newest first, at most this many. */
  limit?: number;
}

export interface EngineOptions {
  config: Config;
  logger: Logger;
  program: 'daemon' | 'cli';
  /** How often to look again at what other processes hold, cancel requests and host floors. */
  pollMs?: number;
  /** Runs a job's operation (tests and benchmarks may substitute their own). */
  run?: typeof runOperation;
}

interface LiveJob {
  record: JobRecord;
  controller: AbortController;
  tracker: ProgressTracker;
  /** The original error, for in-process callers (keeps details and cause). */
  failure?: AgentError;
  waiters: ((record: JobRecord) => void)[];
  resourcesWaitSince?: number;
  lastProgressEmit: number;
  lastProgressSave: number;
  release?: () => Promise<void>;
}

const PROGRESS_EMIT_MS = 250;
const PROGRESS_SAVE_MS = 2_000;
/** Finished jobs of this process kept in memory (the records stay on disk up to jobs.history). */
const FINISHED_IN_MEMORY = 200;
/** The history (jobs.history records on disk) is trimmed after this many jobs end. */
const PRUNE_EVERY = 20;

/**
 * The job engine, one per agent process (the daemon's, or a CLI run's): every operation is a
 * job, queued in order and started when
 *   - no earlier job of this agent for the same environment is queued or running,
 *   - the environment's lock is free (shared by all agent processes on the node: an SRE's CLI
 *     run and a daemon job never overlap),
 *   - one of the node's `jobs.concurrency` slots is free (shared the same way), and
 *   - free disk and memory are above the configured floors (admission control).
 * A queued job shows its position and why it waits. Nothing is dropped: a job ends succeeded,
 * failed or cancelled, and its record says so; jobs of a process that died are marked failed
 * (interrupted) by the next agent start (recovery.ts).
 */
export class JobEngine {
  #config: Config;
  readonly #logger: Logger;
  readonly #program: 'daemon' | 'cli';
  readonly #store: JobStore;
  readonly #pollMs: number;
  readonly #run: typeof runOperation;
  readonly #jobs = new Map<string, LiveJob>();
  readonly #queue: LiveJob[] = [];
  readonly #running = new Map<string, LiveJob>();
  readonly #requestIds = new Map<string, string>();
  readonly #listeners = new Set<JobListener>();
  /** Set by stopAccepting: new jobs are refused, and this is why queued ones end cancelled. */
  #stopReason: string | undefined;
  /** Jobs whose first record is being written: a retry with the same requestId waits for it. */
  readonly #recording = new Map<string, Promise<void>>();
  #pumping: Promise<void> | undefined;
  #pumpAgain = false;
  #timer: NodeJS.Timeout | undefined;
  #idleWaiters: (() => void)[] = [];
  /** Jobs between leaving `running` and having their final record written. */
  #finishing = 0;

  constructor(options: EngineOptions) {
    this.#config = options.config;
    this.#logger = options.logger;
    this.#program = options.program;
    this.#store = new JobStore(options.config.stateDir);
    this.#pollMs = options.pollMs ?? 500;
    this.#run = options.run ?? runOperation;
  }

  /** Learns the request ids of earlier jobs, so a retried request finds its job after a restart. */
  async init(): Promise<void> {
    for (const record of await this.#store.all()) {
      if (record.requestId) this.#requestIds.set(record.requestId, record.id);
    }
  }

  get config(): Config {
    return this.#config;
  }

  get store(): JobStore {
    return this.#store;
  }

  get accepting(): boolean {
    return this.#stopReason === undefined;
  }

  /** New jobs run under the new config; running ones keep the one they started with. */
  reload(config: Config): void {
    this.#config = config;
    void this.#pump();
  }

  onEvent(listener: JobListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Queues a job; resolves once it is recorded. The same `requestId` returns the same job (a
   * retried call after a dropped connection), unless it was used for a different request.
   */
  async submit(request: JobRequest, options: { requestId?: string } = {}): Promise<JobRecord> {
    const { requestId } = options;
    if (requestId !== undefined) {
      const existing = this.#requestIds.get(requestId);
      if (existing !== undefined) {
        await this.#recording.get(existing);
        const record = await this.get(existing);
        if (record) {
          if (!sameRequest(record.spec, request)) {
            throw new AgentError('E_REQUEST_CONFLICT', `requestId ${requestId} was already used for a different request (job ${record.id})`, {
              details: { requestId, jobId: record.id },
            });
          }
          return record;
        }
      }
    }
    if (this.#stopReason !== undefined) throw new AgentError('E_SHUTTING_DOWN', 'the agent is shutting down and takes no new jobs; retry when it is back');
    const checked = validateRequest(this.#config, request);
    const backupId = checked.kind === 'backup.create' ? newBackupId() : undefined;
    const spec: JobSpec = checked.kind === 'backup.create' ? { ...checked, backupId: backupId! } : checked;
    const id = `job-${newBackupId()}`;
    const record: JobRecord = {
      id,
      kind: spec.kind,
      env: lockedEnvironment(spec),
      spec,
      ...(backupId ? { backupId } : {}),
      ...(requestId !== undefined ? { requestId } : {}),
      state: 'queued',
      createdAt: new Date().toISOString(),
      owner: { ...currentProcess(), program: this.#program },
    };
    const job: LiveJob = { record, controller: new AbortController(), tracker: new ProgressTracker(), waiters: [], lastProgressEmit: 0, lastProgressSave: 0 };
    // Recorded before it is queued: a job whose record could not be written (E_NO_SPACE) is one
    // the caller was told failed, so it must not be listed, nor be started by a later pump.
    if (requestId !== undefined) this.#requestIds.set(requestId, id);
    const recorded = this.#store.save(record);
    this.#recording.set(id, recorded.catch(() => {}));
    try {
      await recorded;
    } catch (error) {
      if (requestId !== undefined && this.#requestIds.get(requestId) === id) this.#requestIds.delete(requestId);
      throw error;
    } finally {
      this.#recording.delete(id);
    }
    this.#jobs.set(id, job);
    this.#queue.push(job);
    this.#log(job).info({ phase: 'queued', ...(backupId ? { backupId } : {}) }, 'job queued');
    if (this.#stopReason !== undefined) {
      // stopAccepting ran while the record was written, and cancelled a queue without this job.
      return this.cancel(id, this.#stopReason);
    }
    this.#ensureTimer();
    await this.#pump();
    return this.#snapshot(job);
  }

  /** A job of this process (live) or of any agent process (its record). */
  async get(id: string): Promise<JobRecord | undefined> {
    const live = this.#jobs.get(id);
    return live ? this.#snapshot(live) : this.#store.load(id);
  }

  async require(id: string): Promise<JobRecord> {
    const record = await this.get(id);
    if (!record) throw new AgentError('E_JOB_NOT_FOUND', `no job ${JSON.stringify(id)} on this node; see 'jobs list'`, { details: { jobId: id } });
    return record;
  }

  /** Jobs of every agent process on the node, newest first. */
  async list(filter: JobFilter = {}): Promise<JobRecord[]> {
    const byId = new Map<string, JobRecord>();
    for (const record of await this.#store.all()) byId.set(record.id, record);
    for (const job of this.#jobs.values()) byId.set(job.record.id, this.#snapshot(job));
    return [...byId.values()]
      .filter((r) => (filter.env === undefined || r.env === filter.env) && (filter.state === undefined || r.state === filter.state) && (filter.kind === undefined || r.kind === filter.kind))
      .sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0))
      .slice(0, filter.limit ?? 100);
  }

  /** Own jobs queued and running, in queue order. */
  active(): JobRecord[] {
    return [...this.#running.values(), ...this.#queue].map((job) => this.#snapshot(job));
  }

  summary(): { queued: number; running: number; concurrency: number; accepting: boolean } {
    return { queued: this.#queue.length, running: this.#running.size, concurrency: this.#config.jobs.concurrency, accepting: this.accepting };
  }

  /**
   * Cancels a job: a queued one at once; a running one through its AbortSignal (child
   * processes killed, uploads aborted, writers thawed, no manifest); a job another agent
   * process owns through a cancel request that process acts on. A finished job is returned as is.
   */
  async cancel(id: string, reason = 'cancelled by request'): Promise<JobRecord> {
    const job = this.#jobs.get(id);
    if (!job) {
      const record = await this.require(id);
      if (isFinished(record.state)) return record;
      if (!isAlive(record.owner)) return record; // the next agent start marks it interrupted
      await this.#store.requestCancel(id);
      return { ...record, cancelRequested: true };
    }
    if (isFinished(job.record.state)) return this.#snapshot(job);
    job.record.cancelRequested = true;
    const failure = new AgentError('E_CANCELLED', reason);
    if (job.record.state === 'queued') {
      this.#dequeue(job);
      await this.#finish(job, 'cancelled', undefined, failure);
      void this.#pump();
    } else {
      this.#log(job).info({ phase: 'cancelling', reason }, 'job cancel requested');
      job.controller.abort(failure);
      this.#emit('changed', job);
    }
    return this.#snapshot(job);
  }

  /** Resolves with the job's final record. Jobs of other processes are followed on disk. */
  async wait(id: string): Promise<JobRecord> {
    const job = this.#jobs.get(id);
    if (job) {
      if (isFinished(job.record.state)) return this.#snapshot(job);
      return new Promise((resolve) => job.waiters.push(resolve));
    }
    for (;;) {
      const record = await this.require(id);
      if (isFinished(record.state)) return record;
      if (!isAlive(record.owner)) {
        throw new AgentError('E_INTERRUPTED', `job ${id} was ${record.state} in an agent process (pid ${record.owner.pid}) that is gone; the next agent start marks it failed`);
      }
      await sleep(this.#pollMs);
    }
  }

  /**
   * Follows one job: `listener` gets its events until it finishes (own jobs: as they happen;
   * jobs of other processes: polled from their records). Returns the unsubscribe function.
   */
  watch(id: string, listener: JobListener): () => void {
    if (this.#jobs.has(id)) {
      const off = this.onEvent((event) => {
        if (event.job.id !== id) return;
        listener(event);
        if (event.type === 'finished') off();
      });
      return off;
    }
    let stopped = false;
    let last = '';
    void (async () => {
      while (!stopped) {
        const record = await this.#store.load(id);
        if (!record) return;
        const finished = isFinished(record.state);
        const text = JSON.stringify([record.state, record.progress?.updatedAt, record.waitingFor]);
        if (text !== last || finished) {
          last = text;
          listener({ type: finished ? 'finished' : record.progress ? 'progress' : 'changed', job: record });
        }
        if (finished || !isAlive(record.owner)) return;
        await sleep(this.#pollMs);
      }
    })();
    return () => {
      stopped = true;
    };
  }

  /** The original error of a failed job of this process. */
  failureOf(id: string): AgentError | undefined {
    return this.#jobs.get(id)?.failure;
  }

  /** Stops taking new work; queued jobs are cancelled (SIGTERM). Running ones go on. */
  async stopAccepting(reason: string): Promise<void> {
    this.#stopReason = reason;
    for (const job of [...this.#queue]) await this.cancel(job.record.id, reason);
  }

  /** Cancels every running and queued job of this process. */
  async cancelAll(reason: string): Promise<void> {
    for (const job of [...this.#queue, ...this.#running.values()]) await this.cancel(job.record.id, reason);
  }

  /** Resolves when this process has no queued or running job. */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#store.flush();
  }

  // ---------------------------------------------------------------- scheduling

  /**
   * Runs the scheduler until nothing changes. A call while it runs makes it go round once more
   * and resolves with that round, so a caller (submit) sees its job placed in the queue.
   */
  #pump(): Promise<void> {
    if (this.#pumping) {
      this.#pumpAgain = true;
      return this.#pumping;
    }
    this.#pumping = (async () => {
      try {
        do {
          this.#pumpAgain = false;
          await this.#pumpOnce();
        } while (this.#pumpAgain);
      } catch (error) {
        this.#logger.error({ err: toAgentError(error).message }, 'job scheduling failed; retrying');
      } finally {
        this.#pumping = undefined;
      }
    })();
    return this.#pumping;
  }

  async #pumpOnce(): Promise<void> {
    const config = this.#config;
    const concurrency = config.jobs.concurrency;
    const behind = new Set<string>();
    let hostChecked = false;
    let hostProblem: string | undefined;
    let position = 0;
    for (const job of [...this.#queue]) {
      if (job.record.state !== 'queued') continue;
      position++;
      const env = job.record.env;
      let waiting: string | undefined;
      const runningHere = this.#running.get(env);
      if (behind.has(env)) {
        waiting = `behind an earlier job for environment ${env}`;
      } else if (runningHere) {
        waiting = `environment ${env} is busy with job ${runningHere.record.id} (${runningHere.record.kind})`;
      } else if (this.#running.size >= concurrency) {
        waiting = `all ${concurrency} job slots are busy (jobs.concurrency)`;
      } else {
        if (!hostChecked) {
          hostProblem = admissionProblem(await hostResources(config.stateDir), config.jobs);
          hostChecked = true;
        }
        if (hostProblem) {
          job.resourcesWaitSince ??= Date.now();
          if (job.record.state !== 'queued') continue;
          if (Date.now() - job.resourcesWaitSince > config.jobs.admissionTimeout) {
            this.#dequeue(job);
            position--;
            const failure = new AgentError('E_HOST_RESOURCES', `job ${job.record.id} could not start within ${Math.round(config.jobs.admissionTimeout / 1000)} s: ${hostProblem}`);
            await this.#finish(job, 'failed', undefined, failure);
            continue;
          }
          waiting = hostProblem;
        } else {
          job.resourcesWaitSince = undefined;
          waiting = await this.#tryStart(job, concurrency);
          if (waiting === undefined || job.record.state !== 'queued') {
            position--;
            continue;
          }
        }
      }
      behind.add(env);
      if (job.record.position !== position || job.record.waitingFor !== waiting) {
        const reasonChanged = job.record.waitingFor !== waiting;
        job.record.position = position;
        job.record.waitingFor = waiting;
        if (reasonChanged) {
          // On disk when the reason changes; the position moves with every job ahead.
          this.#log(job).info({ phase: 'waiting', position, waitingFor: waiting }, 'job waiting');
          void this.#store.save(job.record).catch(() => {});
        }
        this.#emit('changed', job);
      }
    }
  }

  /** Takes the environment's lock and a slot and starts the job; or says what it waits for. */
  async #tryStart(job: LiveJob, concurrency: number): Promise<string | undefined> {
    const { record } = job;
    const holder: LockHolder = { ...currentProcess(), program: this.#program, jobId: record.id, kind: record.kind, since: new Date().toISOString() };
    const envLock = await tryLock(environmentLockFile(this.#config.stateDir, record.env), holder);
    if (!envLock.held) {
      const other = envLock.holder;
      return other
        ? `environment ${record.env} is busy: job ${other.jobId} (${other.kind}) of the ${other.program === 'daemon' ? 'daemon' : 'CLI'} (pid ${other.pid}) holds it`
        : `environment ${record.env} is locked by another agent process`;
    }
    const slot = await tryLockSlot(this.#config.stateDir, concurrency, holder);
    if (!slot.held) {
      await envLock.release();
      const jobs = (slot.holders ?? []).map((h) => `${h.jobId} (pid ${h.pid})`).join(', ');
      return `all ${concurrency} job slots of this node are busy${jobs ? `: ${jobs}` : ''}`;
    }
    job.release = async () => {
      await slot.release().catch(() => {});
      await envLock.release().catch(() => {});
    };
    if (record.state !== 'queued') {
      // cancelled while the locks were being taken
      await job.release();
      job.release = undefined;
      return 'cancelled';
    }
    this.#start(job);
    return undefined;
  }

  #start(job: LiveJob): void {
    const { record } = job;
    this.#dequeue(job);
    this.#running.set(record.env, job);
    record.state = 'running';
    record.startedAt = new Date().toISOString();
    delete record.position;
    delete record.waitingFor;
    const logger = this.#logger.child({ jobId: record.id, kind: record.kind });
    logger.info({ phase: 'started', env: record.env }, 'job started');
    void this.#store.save(record).catch(() => {});
    this.#emit('changed', job);
    const ctx = { config: this.#config, logger, signal: job.controller.signal, jobId: job.record.id, onProgress: (event: ProgressEvent) => this.#onProgress(job, event) };
    // Errors thrown synchronously by the operation become its failure too.
    // What a killed restore of this environment left is finished (or undone) first, under the
    // lock this job now holds: no job ever sees a target part old, part new. (Without any
    // restore journaled, the job starts at once.)
    const recovering = RestoreJournal.anyJournaled(this.#config.stateDir) ? recoverRestoresOf(this.#config, record.env, logger, job.controller.signal) : undefined;
    void (recovering ?? Promise.resolve())
      .then(() => this.#run(ctx, record.spec))
      .then(
        (result) => this.#finish(job, 'succeeded', result),
        (error: unknown) => {
          let failure = toAgentError(error);
          // A cancel says why (by request, at shutdown…), whatever error the abort surfaced as.
          const reason: unknown = job.controller.signal.reason;
          if (failure.code === 'E_CANCELLED' && reason instanceof AgentError) failure = reason;
          return this.#finish(job, failure.code === 'E_CANCELLED' ? 'cancelled' : 'failed', undefined, failure);
        },
      )
      .catch((error: unknown) => this.#logger.error({ jobId: record.id, err: toAgentError(error).message }, 'could not record the end of a job'));
  }

  #dequeue(job: LiveJob): void {
    const index = this.#queue.indexOf(job);
    if (index >= 0) this.#queue.splice(index, 1);
  }

  #onProgress(job: LiveJob, event: ProgressEvent): void {
    const now = Date.now();
    const changed = job.tracker.update(event, now);
    job.record.progress = job.tracker.snapshot();
    if (changed) this.#log(job).info({ phase: event.phase, ...(event.element ? { element: event.element } : {}) }, `job phase ${event.phase}`);
    if (changed || now - job.lastProgressEmit >= PROGRESS_EMIT_MS) {
      job.lastProgressEmit = now;
      this.#emit('progress', job);
    }
    if (changed || now - job.lastProgressSave >= PROGRESS_SAVE_MS) {
      job.lastProgressSave = now;
      void this.#store.save(job.record).catch(() => {});
    }
  }

  async #finish(job: LiveJob, state: JobState, result: unknown, failure?: AgentError): Promise<void> {
    const { record } = job;
    if (isFinished(record.state)) return;
    const wasRunning = this.#running.get(record.env) === job;
    if (wasRunning) this.#running.delete(record.env);
    // Idle only once every finished job's final state is on disk.
    this.#finishing++;
    try {
      await this.#record(job, state, result, failure);
    } finally {
      this.#finishing--;
    }
    if (this.#isIdle()) {
      for (const resolve of this.#idleWaiters.splice(0)) resolve();
    }
    if (wasRunning) void this.#pump();
  }

  #isIdle(): boolean {
    return this.#queue.length === 0 && this.#running.size === 0 && this.#finishing === 0;
  }

  async #record(job: LiveJob, state: JobState, result: unknown, failure?: AgentError): Promise<void> {
    const { record } = job;
    await job.release?.();
    job.release = undefined;
    record.state = state;
    record.finishedAt = new Date().toISOString();
    delete record.position;
    delete record.waitingFor;
    if (result !== undefined) record.result = result;
    if (failure) {
      job.failure = failure;
      record.error = { code: failure.code, message: failure.message, ...(failure.details ? { details: failure.details } : {}) };
    }
    const durationMs = Date.parse(record.finishedAt) - Date.parse(record.startedAt ?? record.createdAt);
    const log = this.#log(job);
    if (state === 'succeeded') {
      // What an operator reads off the success line: how much, how long, how fast.
      const bytes = record.progress?.bytes;
      const rate = bytes !== undefined && durationMs > 0 ? Math.round((bytes / durationMs) * 1000) : undefined;
      log.info({ phase: 'finished', state, durationMs, ...(bytes !== undefined ? { bytes, bytesPerSecond: rate } : {}) }, 'job succeeded');
    }
    else if (state === 'cancelled') log.warn({ phase: 'finished', state, durationMs, code: failure?.code, err: failure?.message }, 'job cancelled');
    else log.error({ phase: 'finished', state, durationMs, code: failure?.code, err: failure?.message }, 'job failed');
    await this.#store.save(record).catch((error: unknown) => log.error({ err: toAgentError(error).message }, 'could not write the job record'));
    await this.#store.clearCancelRequest(record.id).catch(() => {});
    this.#emit('finished', job);
    for (const resolve of job.waiters.splice(0)) resolve(this.#snapshot(job));
    this.#forgetOldJobs();
  }

  // ---------------------------------------------------------------- housekeeping

  #ensureTimer(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.#tick(), this.#pollMs);
  }

  async #tick(): Promise<void> {
    if (this.#queue.length === 0 && this.#running.size === 0) {
      clearInterval(this.#timer);
      this.#timer = undefined;
      return;
    }
    for (const id of await this.#store.cancelRequests()) {
      const job = this.#jobs.get(id);
      if (job && !isFinished(job.record.state) && !job.record.cancelRequested) {
        await this.cancel(id, 'cancelled by request (jobs cancel)');
      }
    }
    if (this.#queue.length > 0) await this.#pump();
  }

  #forgetOldJobs(): void {
    const finished = [...this.#jobs.values()].filter((j) => isFinished(j.record.state));
    for (const job of finished.slice(0, Math.max(0, finished.length - FINISHED_IN_MEMORY))) this.#jobs.delete(job.record.id);
    // Reading every record is not free: prune the history every few finished jobs.
    if (++this.#finishedSincePrune >= PRUNE_EVERY) {
      this.#finishedSincePrune = 0;
      void this.#pruneHistory();
    }
  }

  #finishedSincePrune = PRUNE_EVERY - 1;
  #pruning = false;
  async #pruneHistory(): Promise<void> {
    if (this.#pruning) return;
    this.#pruning = true;
    try {
      const records = await this.#store.all();
      const finished = records.filter((r) => isFinished(r.state));
      for (const record of finished.slice(0, Math.max(0, finished.length - this.#config.jobs.history))) {
        if (record.requestId && this.#requestIds.get(record.requestId) === record.id) this.#requestIds.delete(record.requestId);
        await this.#store.remove(record.id);
      }
    } catch {
      // next time
    } finally {
      this.#pruning = false;
    }
  }

  #emit(type: JobEvent['type'], job: LiveJob): void {
    if (this.#listeners.size === 0) return;
    const event = { type, job: this.#snapshot(job) };
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch (error) {
        this.#logger.error({ err: toAgentError(error).message }, 'a job listener failed');
      }
    }
  }

  #snapshot(job: LiveJob): JobRecord {
    return structuredClone(job.record);
  }

  #log(job: LiveJob): Logger {
    return this.#logger.child({ jobId: job.record.id, kind: job.record.kind, env: job.record.env });
  }
}

function sameRequest(spec: JobSpec, request: JobRequest): boolean {
  const { backupId: _ignored, ...rest } = spec as JobSpec & { backupId?: string };
  return canonical(rest) === canonical(request);
}

function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : 1)))
      : v,
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The environment a job locks: a restore changes its target. */
function lockedEnvironment(spec: JobRequest): string {
  return spec.kind === 'backup.restore' ? (spec.target ?? spec.env) : spec.env;
}
