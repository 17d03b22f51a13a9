import type { Logger } from 'pino';
import type { BinlogStreamView } from '../binlog-streams.ts';
import { collectDefaultMetrics, Counter, Gauge, Registry, type Metric } from 'prom-client';
import { currentProcess, isAlive } from '../../liveness.ts';
import type { Manifest } from '../../snapshot/manifest.ts';
import { onOrphanUploadsAborted, onStoreRequestFailure } from '../../transport/stores/store-telemetry.ts';
import { effectiveStores } from '../config.ts';
import type { JobEngine } from './engine.ts';
import { JobTally, type Labels, type TallyWriter } from './tally.ts';
import { JOB_KINDS, type JobRecord } from '../../jobs-wire.ts';

/** Metrics folded in from the job records (tally.ts): they count every process's jobs and survive restarts. */
const TALLIED = {
  finished: 'storage_agent_jobs_finished_total',
  failures: 'storage_agent_job_failures_total',
  lastSuccess: 'storage_agent_last_success_timestamp_seconds',
  lastFailure: 'storage_agent_last_failure_timestamp_seconds',
  jobDuration: 'storage_agent_job_duration_seconds',
  elementDuration: 'storage_agent_element_duration_seconds',
  queueWait: 'storage_agent_queue_wait_seconds',
  pause: 'storage_agent_pause_seconds',
  rawBytes: 'storage_agent_backup_raw_bytes_total',
  storedBytes: 'storage_agent_backup_stored_bytes_total',
  restoredBytes: 'storage_agent_restored_bytes_total',
  orphans: 'storage_agent_orphan_uploads_aborted_total',
} as const;

/** From a second (a delete, a small verify) to half a day (a multi-TiB mount over a slow link). */
const JOB_SECONDS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200];
const QUEUE_SECONDS = [0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 1800, 3600];
/** The write pause: sub-second is the promise, 1 s is where an alert starts. */
const PAUSE_SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

const BUCKETS = new Map<string, readonly number[]>([
  [TALLIED.jobDuration, JOB_SECONDS],
  [TALLIED.elementDuration, JOB_SECONDS],
  [TALLIED.queueWait, QUEUE_SECONDS],
  [TALLIED.pause, PAUSE_SECONDS],
]);

/**
 * The daemon's Prometheus metrics (served at /metrics, to token holders unless
 * daemon.metrics.requireToken is false: they name environments). What jobs did comes from the
 * node's job records, CLI runs' as well as the daemon's, through a tally that survives restarts
 * and the pruning of old records (tally.ts): jobs by kind and outcome, failures by code, the
 * last success and failure per environment, durations, queue waits, the write pause, bytes
 * read, stored and restored, orphan uploads aborted. What runs now is read at each scrape:
 * jobs queued and running on the node. Plus the store's request failures (per attempt, since
 * this start) and prom-client's process metrics (RSS, CPU, event loop lag). Docs: docs/protocol.md "Metrics".
 */
export function createMetrics(engine: JobEngine, logger: Logger, binlogStreams: () => BinlogStreamView[] = () => []): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'storage_agent_' });
  const tally = new JobTally({ stateDir: engine.config.stateDir, store: engine.store, logger, histograms: BUCKETS, fold: foldJob });
  // The daemon's own jobs are folded in as they end, before its history pruning can remove them;
  // other processes' at the next scrape (or the next end of one of the daemon's).
  engine.onEvent(({ type }) => {
    if (type === 'finished') tally.jobFinished();
  });
  // The daemon's own sweeps (at its start and before each of its backups); created before its
  // start-up recovery runs, so that sweep counts too.
  onOrphanUploadsAborted(({ store, count }) => tally.addNow(TALLIED.orphans, { store }, count));

  // A removed environment's or store's series go with it from the config (a reload): an alert
  // on an environment no longer here would never resolve. The tally keeps them, should it return.
  const visible = (labels: Labels): boolean =>
    (labels.env === undefined || Object.hasOwn(engine.config.environments, labels.env)) &&
    (labels.store === undefined || Object.hasOwn(effectiveStores(engine.config), labels.store));

  const counter = (name: string, help: string, zeros: () => Labels[] = () => []) =>
    register(registry, name, help, 'counter', async () => {
      await tally.refresh();
      const series = tally.counters(name);
      const seen = new Set(series.map((s) => JSON.stringify(s.labels)));
      // Present from the start at 0: increase() misses a series whose first sample is already 1.
      const zero = zeros().filter((labels) => !seen.has(JSON.stringify(labels))).map((labels) => ({ labels, value: 0 }));
      return [...series, ...zero].filter((s) => visible(s.labels));
    });
  const latest = (name: string, help: string) =>
    register(registry, name, help, 'gauge', async () => {
      await tally.refresh();
      return tally.latestValues(name).filter((s) => visible(s.labels));
    });
  const histogram = (name: string, help: string) =>
    register(registry, name, help, 'histogram', async () => {
      await tally.refresh();
      const { bounds, series } = tally.histogram(name);
      return series.filter((s) => visible(s.labels)).flatMap(({ labels, counts, sum }) => {
        let cumulative = 0;
        const buckets = [...bounds, Number.POSITIVE_INFINITY].map((bound, i) => {
          cumulative += counts[i] ?? 0;
          return { metricName: `${name}_bucket`, labels: { ...labels, le: bound === Number.POSITIVE_INFINITY ? '+Inf' : String(bound) }, value: cumulative };
        });
        return [...buckets, { metricName: `${name}_sum`, labels, value: sum }, { metricName: `${name}_count`, labels, value: cumulative }];
      });
    });

  counter(TALLIED.finished, 'Jobs that ended, by kind and final status (every agent process on the node)');
  counter(TALLIED.failures, 'Failed jobs by kind and error code (E_CAPTURE_FAILED, E_STORE_UNAVAILABLE, …)');
  latest(TALLIED.lastSuccess, 'When a job of this kind last succeeded for the environment (Unix time)');
  latest(TALLIED.lastFailure, 'When a job of this kind last failed for the environment (Unix time)');
  histogram(TALLIED.jobDuration, 'Job run time, started to finished, by kind and final status (interrupted jobs excluded)');
  histogram(TALLIED.elementDuration, 'Time to capture and store one element of a backup, by element kind (files, mysql, redis)');
  histogram(TALLIED.queueWait, 'Time jobs waited queued before they started (environment busy, slots taken, host floors), by kind');
  histogram(TALLIED.pause, 'Write pause of consistent backups (freeze to thaw), by environment');
  counter(TALLIED.rawBytes, 'Bytes read by successful backups (before compression), by environment');
  counter(TALLIED.storedBytes, 'Bytes stored by successful backups (compressed), by environment');
  counter(TALLIED.restoredBytes, 'Raw bytes restored by successful restores, by target environment');
  counter(TALLIED.orphans, "Incomplete uploads aborted by the daemon's sweeps (left by a crash or an outage), by store", () =>
    Object.keys(effectiveStores(engine.config)).map((store) => ({ store })),
  );

  /** Jobs queued or running now in any agent process on the node: this one's from the engine, the others' from their records. */
  const openJobs = async (): Promise<JobRecord[]> => {
    const self = currentProcess().pid;
    const others = (await tally.refresh()).filter((record) => record.owner.pid !== self && isAlive(record.owner));
    return [...others, ...engine.active()];
  };
  new Gauge({
    name: 'storage_agent_jobs',
    help: 'Jobs now queued or running on the node (every agent process), by kind',
    labelNames: ['kind', 'status'],
    registers: [registry],
    async collect() {
      const open = await openJobs();
      this.reset();
      for (const kind of JOB_KINDS) for (const status of ['queued', 'running']) this.set({ kind, status }, 0);
      for (const job of open) this.inc({ kind: job.kind, status: job.state });
    },
  });
  new Gauge({
    name: 'storage_agent_binlog_lag_seconds',
    help: 'How far the stored binlog of a mysql service with pitr: may be behind its server (docs/pitr.md), by env and service',
    labelNames: ['env', 'service'],
    registers: [registry],
    collect() {
      this.reset();
      for (const stream of binlogStreams()) this.set({ env: stream.env, service: stream.service }, stream.lagMs / 1000);
    },
  });
  new Gauge({
    name: 'storage_agent_queue_length',
    help: 'Jobs waiting to start on the node (every agent process)',
    registers: [registry],
    async collect() {
      this.set((await openJobs()).filter((job) => job.state === 'queued').length);
    },
  });
  new Gauge({
    name: 'storage_agent_queue_oldest_wait_seconds',
    help: 'How long the longest-waiting queued job has waited (0: none queued)',
    registers: [registry],
    async collect() {
      const queued = (await openJobs()).filter((job) => job.state === 'queued').map((job) => Date.parse(job.createdAt));
      this.set(queued.length > 0 ? Math.max(0, (Date.now() - Math.min(...queued)) / 1000) : 0);
    },
  });

  // Store requests, per attempt (src/transport/stores/store-telemetry.ts): a store that needs retries
  // shows here long before a backup fails.
  const storeFailures = new Counter({
    name: 'storage_agent_store_request_failures_total',
    help: 'Failed store request attempts (S3 calls), retried or not, by store, operation and error code (SlowDown, ECONNRESET, TimeoutError)',
    labelNames: ['store', 'operation', 'code'],
    registers: [registry],
  });
  const storeRetries = new Counter({
    name: 'storage_agent_store_retries_total',
    help: 'Store requests tried again after a failed attempt, by store and operation',
    labelNames: ['store', 'operation'],
    registers: [registry],
  });
  const storeTimeouts = new Counter({
    name: 'storage_agent_store_timeouts_total',
    help: 'Store request attempts that timed out (connectTimeout, requestTimeout), by store and operation',
    labelNames: ['store', 'operation'],
    registers: [registry],
  });
  onStoreRequestFailure(({ store, operation, code, timeout, willRetry }) => {
    storeFailures.inc({ store, operation, code });
    if (willRetry) storeRetries.inc({ store, operation });
    if (timeout) storeTimeouts.inc({ store, operation });
  });

  return registry;
}

/** What one finished job record is worth to the metrics: called once per record (tally.ts). */
function foldJob(record: JobRecord, tally: TallyWriter): void {
  const { kind, env, state } = record;
  tally.add(TALLIED.finished, { kind, status: state });
  const created = epochSeconds(record.createdAt);
  const started = epochSeconds(record.startedAt);
  const ended = epochSeconds(record.finishedAt);
  if (state === 'failed') {
    tally.add(TALLIED.failures, { kind, code: record.error?.code ?? 'E_INTERNAL' });
    if (ended !== undefined) tally.latest(TALLIED.lastFailure, { env, kind }, ended);
  }
  if (state === 'succeeded' && ended !== undefined) tally.latest(TALLIED.lastSuccess, { env, kind }, ended);
  if (started !== undefined) {
    if (created !== undefined) tally.observe(TALLIED.queueWait, { kind }, Math.max(0, started - created));
    // An interrupted job "ended" when the next agent start noticed, not when its work stopped.
    if (ended !== undefined && record.error?.code !== 'E_INTERRUPTED') tally.observe(TALLIED.jobDuration, { kind, status: state }, Math.max(0, ended - started));
  }
  if (state !== 'succeeded') return;
  if (kind === 'backup.create') foldBackup(env, record.result as Partial<Manifest> | undefined, tally);
  if (kind === 'backup.restore') {
    // The restore's progress: raw bytes per element, the whole element once it is staged.
    const bytes = Object.values(record.progress?.elements ?? {}).reduce((sum, e) => sum + (e.totalBytes ?? e.bytes), 0);
    tally.add(TALLIED.restoredBytes, { env }, bytes);
  }
}

function foldBackup(env: string, manifest: Partial<Manifest> | undefined, tally: TallyWriter): void {
  for (const element of manifest?.elements ?? []) {
    tally.add(TALLIED.rawBytes, { env }, element.rawBytes);
    tally.add(TALLIED.storedBytes, { env }, element.storedBytes);
    tally.observe(TALLIED.elementDuration, { kind: element.kind, operation: 'backup' }, element.durationMs / 1000);
  }
  if (typeof manifest?.pauseMs === 'number') tally.observe(TALLIED.pause, { env }, manifest.pauseMs / 1000);
}

function epochSeconds(iso: string | undefined): number | undefined {
  const ms = iso === undefined ? NaN : Date.parse(iso);
  return Number.isFinite(ms) ? ms / 1000 : undefined;
}

type MetricType = 'counter' | 'gauge' | 'histogram';
interface Sample {
  labels: Labels;
  value: number;
  metricName?: string;
}

/**
 * A metric rendered from the tally at each scrape. prom-client has no way to set a histogram's
 * buckets (only to observe), so the registry gets an object of the shape it renders: the
 * name, help, type and the samples its get() returns.
 */
function register(registry: Registry, name: string, help: string, type: MetricType, samples: () => Promise<Sample[]>): void {
  const metric = {
    name,
    help,
    type,
    aggregator: 'sum',
    async get() {
      return { name, help, type, aggregator: 'sum', values: await samples() };
    },
    reset() {},
  };
  registry.registerMetric(metric as unknown as Metric);
}
