import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Manifest } from '../../snapshot/manifest.ts';
import { onStoreRequestFailure } from '../../transport/store-telemetry.ts';
import type { RestoreSummary } from '../restore.ts';
import type { JobEngine } from './engine.ts';
import { JOB_KINDS, type JobRecord } from './types.ts';

/**
 * The daemon's Prometheus metrics (served at /metrics, to token holders unless
 * daemon.metrics.requireToken is false: they name environments): jobs by kind and status, bytes
 * uploaded and restored, the write pause of consistent backups, the last success per
 * environment, the queue; plus prom-client's process metrics (RSS, CPU, event loop lag).
 */
export function createMetrics(engine: JobEngine): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'storage_agent_' });

  const finished = new Counter({
    name: 'storage_agent_jobs_finished_total',
    help: 'Jobs that ended, by kind and final status',
    labelNames: ['kind', 'status'],
    registers: [registry],
  });
  new Gauge({
    name: 'storage_agent_jobs',
    help: "This agent's jobs now queued or running, by kind",
    labelNames: ['kind', 'status'],
    registers: [registry],
    collect() {
      this.reset();
      for (const kind of JOB_KINDS) for (const status of ['queued', 'running']) this.set({ kind, status }, 0);
      for (const job of engine.active()) this.inc({ kind: job.kind, status: job.state });
    },
  });
  new Gauge({
    name: 'storage_agent_queue_length',
    help: 'Jobs waiting to start',
    registers: [registry],
    collect() {
      this.set(engine.summary().queued);
    },
  });
  const uploaded = new Counter({
    name: 'storage_agent_uploaded_bytes_total',
    help: 'Bytes stored by successful backups (compressed), by environment',
    labelNames: ['env'],
    registers: [registry],
  });
  const restored = new Counter({
    name: 'storage_agent_restored_bytes_total',
    help: 'Raw bytes restored by successful restores, by target environment',
    labelNames: ['env'],
    registers: [registry],
  });
  const pause = new Histogram({
    name: 'storage_agent_pause_seconds',
    help: 'Write pause of consistent backups (freeze to thaw)',
    labelNames: ['env'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const lastSuccess = new Gauge({
    name: 'storage_agent_last_success_timestamp_seconds',
    help: 'When a job of this kind last succeeded for the environment (Unix time)',
    labelNames: ['env', 'kind'],
    registers: [registry],
  });

  // Store requests, per attempt (src/transport/store-telemetry.ts): a store that needs retries
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

  engine.onEvent(({ type, job }) => {
    if (type !== 'finished') return;
    finished.inc({ kind: job.kind, status: job.state });
    if (job.state !== 'succeeded') return;
    lastSuccess.set({ env: job.env, kind: job.kind }, Date.parse(job.finishedAt ?? new Date().toISOString()) / 1000);
    if (job.kind === 'backup.create') recordBackup(job);
    if (job.kind === 'backup.restore') recordRestore(job);
  });

  function recordBackup(job: JobRecord): void {
    const manifest = job.result as Manifest | undefined;
    if (!manifest?.elements) return;
    uploaded.inc({ env: job.env }, manifest.elements.reduce((sum, e) => sum + e.storedBytes, 0));
    if (manifest.pauseMs !== null) pause.observe({ env: job.env }, manifest.pauseMs / 1000);
  }

  function recordRestore(job: JobRecord): void {
    const summary = job.result as RestoreSummary | undefined;
    const bytes = Object.values(job.progress?.elements ?? {}).reduce((sum, e) => sum + (e.totalBytes ?? e.bytes), 0);
    if (summary) restored.inc({ env: job.env }, bytes);
  }

  return registry;
}
