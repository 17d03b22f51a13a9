import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, readdir, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { createCgroup, type TestCgroup } from './support/cgroup.ts';
import { daemonSection, sleep, startDaemon, TestClient, waitFor, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';
import { createTestBucket, multipartUploads, s3Client } from './support/s3.ts';
import { s3TestServer } from './support/servers.ts';

interface Job {
  id: string;
  state: string;
  backupId?: string;
  error?: { code: string; message: string };
}

const ROOT = path.resolve(import.meta.dirname, '..');

describe('the daemon process: crash recovery, SIGTERM, SIGHUP, readiness, logs (real RGW, real cgroups)', () => {
  let sandbox: Sandbox;
  let tokens: Tokens;
  let bucket: string;
  let cgroup: TestCgroup | undefined;
  const daemons: RunningDaemon[] = [];
  /** Every daemon's stdout in this file, for the secrets check at the end. */
  const allOutput: string[] = [];
  const config = (daemon: Record<string, unknown> = {}, freeze?: string) => ({
    defaultStore: 's3',
    stores: { s3: s3StoreConfig(bucket, { partsInFlight: 1 }) },
    daemon: daemonSection(tokens, { heartbeat: '2s', ...daemon }),
    environments: {
      big: { ...filesEnv({ uploads: path.join(sandbox.dir, 'big') }), ...(freeze ? { freeze: { cgroups: [freeze], deadline: '5m' } } : {}) },
      quick: filesEnv({ uploads: path.join(sandbox.dir, 'quick') }, 'local'),
    },
  });
  const withLocalStore = (c: ReturnType<typeof config>) => ({ ...c, stores: { ...c.stores, local: { type: 'fs', path: path.join(sandbox.dir, 'store') } } });
  const start = async (env?: Record<string, string>) => {
    const daemon = await startDaemon(sandbox.configPath, env ? { env } : {});
    daemons.push(daemon);
    return daemon;
  };
  // Backup objects only: the environment's owner record (issue #11) is not one.
  const objects = async () => ((await s3Client().send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map((o) => o.Key).filter((key) => !key?.includes('/owners/'));
  const jobRecord = async (id: string) => JSON.parse(await readFile(path.join(sandbox.stateDir, 'jobs', `${id}.json`), 'utf8')) as Job;

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    bucket = await createTestBucket();
    const big = path.join(sandbox.dir, 'big');
    await mkdir(big);
    await mkdir(path.join(sandbox.dir, 'quick'));
    await writeFile(path.join(sandbox.dir, 'quick', 'a.txt'), 'quick');
    // Tar order is by name: 48 MiB of incompressible data become multipart parts first, then a
    // long sparse file keeps the upload open (and, with no snapshot on ext4, the freeze on).
    await writeFile(path.join(big, 'a-random.bin'), randomBytes(48 * 1024 * 1024));
    await writeFile(path.join(big, 'b-sparse.bin'), '');
    await truncate(path.join(big, 'b-sparse.bin'), 8 * 1024 ** 3);
  });
  afterEach(async () => {
    for (const daemon of daemons.splice(0)) {
      daemon.child.kill('SIGKILL');
      await daemon.exited;
      allOutput.push(daemon.stdout());
    }
    await cgroup?.remove();
    cgroup = undefined;
  });
  afterAll(async () => {
    await sandbox.cleanup();
  });

  /** Starts a backup of `big` and waits until its writers are frozen and a multipart upload is open. */
  async function startFrozenUpload(daemon: RunningDaemon): Promise<{ client: TestClient; jobId: string; backupId: string }> {
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const ticket = await client.call<{ jobId: string; backupId: string }>('backup.create', { env: 'big' });
    await waitFor('frozen writers and an open multipart upload', async () => (await cgroup!.isFrozen()) && (await multipartUploads(bucket)).length > 0, 60_000);
    return { client, jobId: ticket.jobId, backupId: ticket.backupId };
  }

  it('SIGKILL mid-upload while frozen: its freeze guard thaws at once; the restarted daemon aborts the upload, marks the job failed (interrupted)', async () => {
    cgroup = await createCgroup('v2');
    cgroup.spawn('sleep', ['600']);
    await sandbox.writeConfig(withLocalStore(config({}, cgroup.path)));
    const daemon = await start();
    const { jobId, backupId } = await startFrozenUpload(daemon);
    daemon.child.kill('SIGKILL');
    expect((await daemon.exited).signal).toBe('SIGKILL');
    // The freeze guard saw its pipe close: the writers are thawed within a second of the kill.
    await waitFor('the guard to thaw', async () => !(await cgroup!.isFrozen()), 1_000);
    // What only a restart cleans up: the upload and the job record.
    expect((await multipartUploads(bucket)).length).toBeGreaterThan(0);
    expect((await jobRecord(jobId)).state).toBe('running');

    const restarted = await start();
    const recovery = restarted.logs().find((l) => l.msg.startsWith('recovered from an earlier run'));
    expect(recovery).toMatchObject({ thawed: 0, interrupted: [jobId] });
    expect(await cgroup.isFrozen()).toBe(false);
    expect(await multipartUploads(bucket)).toEqual([]);
    expect(await objects()).toEqual([]);
    const client = await TestClient.connect(restarted.url, tokens.viewer);
    const job = await client.call<Job>('job.get', { jobId });
    expect(job).toMatchObject({ state: 'failed', backupId, error: { code: 'E_INTERRUPTED' } });
    expect(job.error!.message).toContain('ended while this job was running');
    expect(await client.call('backup.list', { env: 'big' })).toEqual([]);
    expect(await readdir(path.join(sandbox.stateDir, 'frozen'))).toEqual([]);
    await client.close();
  });

  it('SIGTERM mid-job: no new work, the grace period, then a clean cancel: exit 0, nothing frozen, no upload or object left', async () => {
    cgroup = await createCgroup('v1');
    cgroup.spawn('sleep', ['600']);
    await sandbox.writeConfig(withLocalStore(config({ shutdownGrace: '2s' }, cgroup.path)));
    const daemon = await start();
    const { client, jobId } = await startFrozenUpload(daemon);
    const queued = await client.call<{ jobId: string; state: string }>('backup.create', { env: 'big' });
    expect(queued.state).toBe('queued');
    const sent = Date.now();
    daemon.child.kill('SIGTERM');
    await daemon.waitForLog('the stop', (l) => l.msg.startsWith('stopping: no new work'));
    // While it drains: reads still work, new work is refused, /healthz says so.
    expect(await client.request('backup.create', { env: 'quick' })).toMatchObject({ error: { data: { code: 'E_SHUTTING_DOWN' } } });
    expect((await client.call<Job>('job.get', { jobId })).state).toBe('running');
    expect((await fetch(`${daemon.http}/healthz`)).status).toBe(503);
    const { exitCode } = await daemon.exited;
    expect(exitCode).toBe(0);
    expect(Date.now() - sent).toBeGreaterThanOrEqual(2000);
    expect(await cgroup.isFrozen()).toBe(false);
    expect(await multipartUploads(bucket)).toEqual([]);
    expect(await objects()).toEqual([]);
    expect(await jobRecord(jobId)).toMatchObject({ state: 'cancelled', error: { code: 'E_CANCELLED' } });
    expect((await jobRecord(jobId)).error!.message).toContain('grace period');
    expect(await jobRecord(queued.jobId)).toMatchObject({ state: 'cancelled' });
    expect(daemon.logs().map((l) => l.msg)).toEqual(expect.arrayContaining(['grace period over: cancelling the running jobs (thaw, abort uploads, no manifest)', 'daemon stopped']));
    expect(await readdir(path.join(sandbox.stateDir, 'frozen'))).toEqual([]);
  });

  it('SIGTERM with a job that ends within the grace period: the job completes, then the daemon exits 0', async () => {
    await sandbox.writeConfig(withLocalStore(config({ shutdownGrace: '60s' })));
    const daemon = await start();
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const ticket = await client.call<{ jobId: string }>('backup.create', { env: 'quick' });
    daemon.child.kill('SIGTERM');
    expect((await daemon.exited).exitCode).toBe(0);
    expect(await jobRecord(ticket.jobId)).toMatchObject({ state: 'succeeded' });
  });

  it('SIGHUP reloads the config; a broken one is rejected with a log line and the running config stays', async () => {
    await sandbox.writeConfig(withLocalStore(config()));
    const daemon = await start();
    const good = await readFile(sandbox.configPath, 'utf8');
    const client = await TestClient.connect(daemon.url, tokens.admin);
    expect((await client.call<{ name: string }[]>('env.list')).map((e) => e.name)).toEqual(['big', 'quick']);

    await writeFile(sandbox.configPath, `${good}\nenvironments: [this is: not valid`);
    daemon.child.kill('SIGHUP');
    const rejected = await daemon.waitForLog('the rejection', (l) => l.msg.includes('the new config is rejected'));
    expect(rejected).toMatchObject({ level: 50, code: 'E_CONFIG_INVALID' });
    await writeFile(sandbox.configPath, good.replace(tokens.adminFile, path.join(sandbox.dir, 'missing.token')));
    daemon.child.kill('SIGHUP');
    await daemon.waitForLog('the second rejection', (l) => l.msg.includes('the new config is rejected') && l.code === 'E_SECRET_UNAVAILABLE');
    // Still up, with the old config and the old tokens.
    expect((await client.call<{ name: string }[]>('env.list')).map((e) => e.name)).toEqual(['big', 'quick']);
    const fresh = await TestClient.connect(daemon.url, tokens.admin);
    expect(await fresh.call<{ jobId: string }>('backup.create', { env: 'quick' })).toHaveProperty('jobId');
    await fresh.close();

    // A good new config takes effect: a new environment, and the viewer token no longer works.
    const next = withLocalStore(config());
    (next.environments as Record<string, unknown>).added = filesEnv({ uploads: path.join(sandbox.dir, 'quick') }, 'local');
    (next.daemon as { tokens: unknown[] }).tokens = [{ file: tokens.adminFile, role: 'admin' }];
    await sandbox.writeConfig(next);
    daemon.child.kill('SIGHUP');
    await daemon.waitForLog('the reload', (l) => l.msg === 'SIGHUP: config reloaded');
    expect((await client.call<{ name: string }[]>('env.list')).map((e) => e.name)).toEqual(['big', 'quick', 'added']);
    await expect(TestClient.connect(daemon.url, tokens.viewer)).rejects.toMatchObject({ status: 401 });
    await client.close();
  });

  it('tells systemd it is ready (Type=notify) and stopping, through systemd-notify', async () => {
    const bin = path.join(sandbox.dir, 'bin');
    const record = path.join(sandbox.dir, 'notify.log');
    await mkdir(bin, { recursive: true });
    await writeFile(path.join(bin, 'systemd-notify'), `#!/bin/sh\necho "$NOTIFY_SOCKET $*" >> ${record}\n`);
    await chmod(path.join(bin, 'systemd-notify'), 0o755);
    await sandbox.writeConfig(withLocalStore(config()));
    const daemon = await start({ PATH: `${bin}:${process.env.PATH}`, NOTIFY_SOCKET: '/run/systemd/notify-test' });
    const lines = (await waitFor('systemd-notify to be called', () => readFile(record, 'utf8'))).trim().split('\n');
    expect(lines).toEqual([expect.stringMatching(/^\/run\/systemd\/notify-test --ready --status=listening on ws:\/\/127\.0\.0\.1:\d+\/v1$/)]);
    daemon.child.kill('SIGTERM');
    expect((await daemon.exited).exitCode).toBe(0);
    expect((await readFile(record, 'utf8')).trim().split('\n')[1]).toMatch(/STOPPING=1/);
  });

  it('systemd/storage-agent.service passes systemd-analyze verify', async () => {
    if (!(await execa('sh', ['-c', 'command -v systemd-analyze'], { reject: false })).stdout) {
      await execa('apt-get', ['update', '-qq'], { reject: false });
      const install = await execa('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'systemd'], { reject: false, env: { DEBIAN_FRONTEND: 'noninteractive' } });
      if (install.exitCode !== 0) {
        console.warn(`skipped: systemd-analyze is missing and Debian's systemd package could not be installed: ${install.stderr.split('\n')[0]}`);
        return;
      }
    }
    const unit = await readFile(path.join(ROOT, 'systemd/storage-agent.service'), 'utf8');
    const execStart = /^ExecStart=(\S+)/m.exec(unit)![1]!;
    expect(execStart).toBe('/usr/local/bin/storage-agent');
    // verify checks that ExecStart's program exists: point it at this checkout's launcher,
    // every other line as shipped.
    const dir = path.join(sandbox.dir, 'unit');
    await mkdir(dir, { recursive: true });
    const launcher = path.join(dir, 'storage-agent');
    await writeFile(launcher, `#!/bin/sh\nexec ${process.execPath} ${path.join(ROOT, 'src/agent/main.ts')} "$@"\n`);
    await chmod(launcher, 0o755);
    await writeFile(path.join(dir, 'storage-agent.service'), unit.replace(`ExecStart=${execStart}`, `ExecStart=${launcher}`));
    const result = await execa('systemd-analyze', ['verify', '--man=no', path.join(dir, 'storage-agent.service')], { reject: false });
    expect(result.stderr).toBe('');
    expect(result.exitCode).toBe(0);
    for (const directive of ['Type=notify', 'NoNewPrivileges=yes', 'ProtectSystem=strict', 'PrivateTmp=yes', 'Restart=on-failure', 'StateDirectory=storage-agent', 'ConfigurationDirectory=storage-agent']) {
      expect(unit).toContain(directive);
    }
    const stopTimeout = Number(/^TimeoutStopSec=(\d+)/m.exec(unit)![1]);
    expect(stopTimeout).toBeGreaterThanOrEqual(60 + 30); // the default grace period + cancel cleanup
    expect(unit).toMatch(/^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
  });

  it("logs are pino JSON lines, one per job phase; no token or S3 key ever appears in them", async () => {
    await sandbox.writeConfig(withLocalStore(config()));
    const daemon = await start();
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const ticket = await client.call<{ jobId: string }>('backup.create', { env: 'quick' });
    await client.call('job.subscribe', { jobId: ticket.jobId });
    await client.waitForNotification((n) => n.method === 'job.finished');
    await TestClient.connect(daemon.url, `${tokens.admin}-wrong`).catch(() => {});
    await client.close();
    daemon.child.kill('SIGTERM');
    await daemon.exited;
    const lines = daemon.logs();
    const phases = lines.filter((l) => l.jobId === ticket.jobId && l.phase !== undefined).map((l) => [l.phase, l.msg]);
    expect(phases).toEqual([
      ['queued', 'job queued'],
      ['started', 'job started'],
      ['prepare', 'job phase prepare'],
      ['start', 'backup started'],
      ['capture', 'job phase capture'],
      ['manifest', 'job phase manifest'],
      ['done', 'backup completed'],
      ['finished', 'job succeeded'],
    ]);
    // Every daemon of this file, the S3 ones included (they also logged errors and recoveries).
    const everything = [...allOutput, daemon.stdout()].join('');
    expect(everything.split('\n').filter(Boolean).every((line) => typeof JSON.parse(line).msg === 'string')).toBe(true);
    const s3 = s3TestServer();
    for (const secret of [tokens.admin, tokens.viewer, s3.secretAccessKey, s3.accessKeyId]) {
      expect(everything).not.toContain(secret);
    }
  });
});
