/**
 * /metrics from the job store (issue #12): CLI runs and daemon jobs count alike, a restart of
 * the daemon neither forgets nor double counts, the pruning of old job records takes nothing
 * back, and what runs now is seen node-wide (a CLI job running, a daemon job queued behind it).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { JobRecord } from '../src/jobs-wire.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { createCgroup, type TestCgroup } from './support/cgroup.ts';
import { cli, cliJson, createSandbox, startCli, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, TestClient, waitFor, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';

const MISSING_BACKUP = '20261122T034600123Z-k3j9x2ab';

/** The samples of an exposition, `name{labels}` → value, prom-client's label order as printed. */
function samples(text: string): Map<string, number> {
  const found = new Map<string, number>();
  for (const line of text.split('\n')) {
    const match = /^(storage_agent_[a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (match) found.set(match[1]!, Number(match[2]));
  }
  return found;
}

/** Only what the job records make: process metrics and this start's store requests move on their own. */
function fromRecords(all: Map<string, number>): Map<string, number> {
  return new Map([...all].filter(([series]) => !/^storage_agent_(process_|nodejs_|store_|jobs\{|queue_length|queue_oldest|binlog_lag)/.test(series)));
}

describe('/metrics from the job store', () => {
  let sandbox: Sandbox;
  let tokens: Tokens;
  let cgroup: TestCgroup;
  let daemon: RunningDaemon | undefined;
  let source: string;

  const scrape = async (): Promise<Map<string, number>> => {
    const answer = await fetch(`${daemon!.http}/metrics`, { headers: { Authorization: `Bearer ${tokens.viewer}` } });
    expect(answer.status).toBe(200);
    return samples(await answer.text());
  };
  const records = async (): Promise<JobRecord[]> => {
    const dir = path.join(sandbox.stateDir, 'jobs');
    const names = (await readdir(dir)).filter((name) => name.endsWith('.json'));
    return Promise.all(names.map(async (name) => JSON.parse(await readFile(path.join(dir, name), 'utf8')) as JobRecord));
  };
  const runJob = async (client: TestClient, method: string, params: Record<string, unknown>): Promise<JobRecord> => {
    const ticket = await client.call<{ jobId: string }>(method, params);
    await client.call('job.subscribe', { jobId: ticket.jobId });
    const done = await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === ticket.jobId);
    return done.params as unknown as JobRecord;
  };

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    cgroup = await createCgroup('v2');
    source = path.join(sandbox.dir, 'site');
    await mkdir(source);
    await writeFile(path.join(source, 'index.html'), 'hello');
    await sandbox.writeConfig({
      daemon: daemonSection(tokens),
      jobs: { history: 10 },
      environments: {
        // Consistent backups that freeze a (real, empty) cgroup: each has a pause.
        shop: { freeze: { cgroups: [cgroup.path] }, services: { site: { kind: 'files', path: source } } },
        broken: { services: { site: { kind: 'files', path: path.join(sandbox.dir, 'not-mounted') } } },
      },
    });
  });
  afterAll(async () => {
    await daemon?.stop();
    await cgroup?.remove();
    await sandbox?.cleanup();
  });

  it('counts CLI and daemon jobs alike, across restarts and pruning, once each', async () => {
    const config = ['--config', sandbox.configPath];
    // While no daemon runs: a CLI backup that succeeds, one that fails.
    await cliJson<Manifest>([...config, 'backup', 'create', 'shop']);
    const failed = await cli([...config, '--json', 'backup', 'create', 'broken']);
    expect(failed.exitCode).toBe(7);
    const captureCode = (JSON.parse(failed.stdout) as { error: { code: string } }).error.code;
    expect(captureCode).toBe('E_CAPTURE_FAILED');
    // An upload a crash left in the embedded store, old enough for the daemon's start-up sweep.
    const leftover = path.join(sandbox.stateDir, 'backups', '.incomplete', 'crashed-upload.tmp');
    await mkdir(path.dirname(leftover), { recursive: true });
    await writeFile(leftover, 'partial');
    const twoDaysAgo = new Date(Date.now() - 48 * 3600_000); // past orphanUploadAge (24h)
    await utimes(leftover, twoDaysAgo, twoDaysAgo);

    daemon = await startDaemon(sandbox.configPath);
    expect(existsSync(leftover)).toBe(false);
    const client = await TestClient.connect(daemon.url, tokens.admin);

    // A CLI backup held running (test seam) while a daemon backup of the same environment waits for it.
    const pauseFile = path.join(sandbox.dir, 'cli-paused');
    const held = startCli([...config, 'backup', 'create', 'shop'], { env: { STORAGE_AGENT_PAUSE_AT: 'backup:stored', STORAGE_AGENT_PAUSE_FILE: pauseFile } });
    await waitFor('the CLI backup to reach its pause', () => existsSync(pauseFile), 60_000);
    const queued = await client.call<{ jobId: string; state: string }>('backup.create', { env: 'shop' });
    expect(queued.state).toBe('queued');
    await client.call('job.subscribe', { jobId: queued.jobId });
    const now = await scrape();
    expect(now.get('storage_agent_jobs{kind="backup.create",status="running"}')).toBe(1);
    expect(now.get('storage_agent_jobs{kind="backup.create",status="queued"}')).toBe(1);
    expect(now.get('storage_agent_queue_length')).toBe(1);
    expect(now.get('storage_agent_queue_oldest_wait_seconds')).toBeGreaterThan(0);
    await rm(pauseFile);
    expect((await held).exitCode).toBe(0);
    await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === queued.jobId);
    const restore = await runJob(client, 'backup.restore', { env: 'shop', id: MISSING_BACKUP });
    expect(restore.error?.code).toBe('E_BACKUP_NOT_FOUND');

    const kept = await records();
    expect(kept).toHaveLength(5);
    const succeeded = kept.filter((r) => r.kind === 'backup.create' && r.state === 'succeeded');
    expect(succeeded.map((r) => r.owner.program).sort()).toEqual(['cli', 'cli', 'daemon']);
    const manifests = succeeded.map((r) => r.result as Manifest);
    const sum = (pick: (e: Manifest['elements'][number]) => number) => manifests.flatMap((m) => m.elements).reduce((total, e) => total + pick(e), 0);
    const lastEnd = (env: string, kind: string, state: string) =>
      Math.max(...kept.filter((r) => r.env === env && r.kind === kind && r.state === state).map((r) => Date.parse(r.finishedAt!) / 1000));

    const first = await scrape();
    expect(first.get('storage_agent_jobs_finished_total{kind="backup.create",status="succeeded"}')).toBe(3);
    expect(first.get('storage_agent_jobs_finished_total{kind="backup.create",status="failed"}')).toBe(1);
    expect(first.get('storage_agent_jobs_finished_total{kind="backup.restore",status="failed"}')).toBe(1);
    expect(first.get(`storage_agent_job_failures_total{kind="backup.create",code="${captureCode}"}`)).toBe(1);
    expect(first.get('storage_agent_job_failures_total{kind="backup.restore",code="E_BACKUP_NOT_FOUND"}')).toBe(1);
    expect(first.get('storage_agent_last_success_timestamp_seconds{env="shop",kind="backup.create"}')).toBe(lastEnd('shop', 'backup.create', 'succeeded'));
    expect(first.get('storage_agent_last_failure_timestamp_seconds{env="broken",kind="backup.create"}')).toBe(lastEnd('broken', 'backup.create', 'failed'));
    expect(first.get('storage_agent_last_failure_timestamp_seconds{env="shop",kind="backup.restore"}')).toBe(lastEnd('shop', 'backup.restore', 'failed'));
    expect(first.has('storage_agent_last_success_timestamp_seconds{env="shop",kind="backup.restore"}')).toBe(false);
    expect(first.get('storage_agent_backup_stored_bytes_total{env="shop"}')).toBe(sum((e) => e.storedBytes));
    expect(first.get('storage_agent_backup_raw_bytes_total{env="shop"}')).toBe(sum((e) => e.rawBytes));
    expect(first.get('storage_agent_job_duration_seconds_count{kind="backup.create",status="succeeded"}')).toBe(3);
    expect(first.get('storage_agent_element_duration_seconds_count{kind="files",operation="backup"}')).toBe(3);
    expect(first.get('storage_agent_element_duration_seconds_sum{kind="files",operation="backup"}')).toBeCloseTo(sum((e) => e.durationMs) / 1000, 6);
    expect(first.get('storage_agent_pause_seconds_count{env="shop"}')).toBe(3);
    expect(first.get('storage_agent_pause_seconds_sum{env="shop"}')).toBeCloseTo(manifests.reduce((total, m) => total + m.pauseMs! / 1000, 0), 6);
    // Every job that started waited; the daemon's backup waited for the CLI's the longest.
    expect(first.get('storage_agent_queue_wait_seconds_count{kind="backup.create"}')).toBe(4);
    expect(first.get('storage_agent_queue_wait_seconds_bucket{kind="backup.create",le="0.1"}')).toBeLessThan(4);
    expect(first.get('storage_agent_orphan_uploads_aborted_total{store="default"}')).toBe(1);
    expect(first.get('storage_agent_queue_length')).toBe(0);

    // 20 more jobs: the daemon's next prune (every 20 jobs) trims the history to its 10 newest records: the backups' are gone.
    await Promise.all(Array.from({ length: 20 }, () => runJob(client, 'backup.restore', { env: 'shop', id: MISSING_BACKUP })));
    await waitFor('the history to be pruned', async () => !(await records()).some((r) => r.state === 'succeeded'));
    const pruned = await scrape();
    expect(pruned.get('storage_agent_jobs_finished_total{kind="backup.restore",status="failed"}')).toBe(21);
    expect(pruned.get('storage_agent_job_failures_total{kind="backup.restore",code="E_BACKUP_NOT_FOUND"}')).toBe(21);
    for (const [series, value] of fromRecords(first)) {
      if (!series.includes('backup.restore')) expect({ series, value: pruned.get(series) }).toEqual({ series, value });
    }
    await client.close();

    // A restart: the same totals, nothing counted twice (the orphan sweep found nothing more).
    await daemon.stop();
    daemon = await startDaemon(sandbox.configPath);
    expect(fromRecords(await scrape())).toEqual(fromRecords(pruned));
  });
});
