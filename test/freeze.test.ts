import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { execa } from 'execa';
import { cli, cliJson, createSandbox, killCliAt, s3StoreConfig, startCli, type Sandbox } from './support/cli.ts';
import { createCgroup, loopMount, type TestCgroup } from './support/cgroup.ts';
import { daemonSection, startDaemon, TestClient, waitFor, writeTokens, type LogLine, type RunningDaemon } from './support/daemon.ts';
import { createTestBucket } from './support/s3.ts';
import { startFaultProxy } from './support/s3-fault-proxy.ts';
import { s3TestServer } from './support/servers.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A writer in the cgroup appending a counter to a file on the mount, every few ms. */
function startWriter(cgroup: TestCgroup, file: string) {
  return cgroup.spawn('sh', ['-c', `n=0; while true; do n=$((n+1)); echo $n >> ${file}; sleep 0.002; done`]);
}

/** A TCP proxy to `target`; cut() drops every connection and refuses new ones (an outage). */
async function startProxy(target: URL): Promise<{ url: string; cut(): void; close(): void }> {
  const sockets = new Set<net.Socket>();
  let up = true;
  const server = net.createServer((client) => {
    if (!up) return client.destroy();
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => {}).on('close', () => sockets.delete(socket));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const cut = () => {
    up = false;
    for (const socket of sockets) socket.destroy();
  };
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, cut, close: () => (cut(), server.close()) };
}

function logLines(text: string): LogLine[] {
  return text.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as LogLine);
}

async function lines(file: string): Promise<number> {
  return (await readFile(file, 'utf8')).split('\n').filter(Boolean).length;
}

describe('consistent backups freeze the writers for a short, measured pause and always thaw', () => {
  let sandbox: Sandbox;
  const unmounts: (() => Promise<void>)[] = [];
  const cgroups: TestCgroup[] = [];
  const mounts: Record<string, string> = {};

  beforeAll(async () => {
    sandbox = await createSandbox();
    for (const type of ['btrfs', 'xfs', 'ext4'] as const) {
      mounts[type] = path.join(sandbox.dir, type);
      unmounts.push(await loopMount(type, path.join(sandbox.dir, `${type}.img`), mounts[type]!));
    }
    // Enough data that reading it takes far longer than a snapshot.
    for (const mount of Object.values(mounts)) {
      await mkdir(path.join(mount, 'data'));
      for (let i = 0; i < 4; i++) await writeFile(path.join(mount, 'data', `blob-${i}.bin`), randomBytes(24 * 1024 * 1024));
    }
  });
  afterEach(async () => {
    await Promise.all(cgroups.splice(0).map((c) => c.remove()));
  });
  afterAll(async () => {
    for (const unmount of unmounts) await unmount();
    await sandbox.cleanup();
  });

  async function configure(freeze: Record<string, unknown>, mount: string): Promise<string[]> {
    await sandbox.writeConfig({ environments: { app: { freeze, services: { uploads: { kind: 'files', path: mount } } } } });
    return ['--config', sandbox.configPath];
  }

  it.each([
    ['btrfs', 'v2', 'btrfs-subvolume'],
    ['xfs', 'v1', 'reflink'],
  ] as const)('%s mount, cgroup %s: snapshot inside the freeze (%s), pause under 1 s, writer runs on', async (fsType, version, method) => {
    const cgroup = await createCgroup(version);
    cgroups.push(cgroup);
    const log = path.join(mounts[fsType]!, 'writer.log');
    startWriter(cgroup, log);
    await sleep(200);
    const args = await configure({ cgroups: [cgroup.path] }, mounts[fsType]!);
    const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'app']);
    expect(manifest.mode).toBe('consistent');
    expect(manifest.pauseMs).toBeGreaterThan(0);
    expect(manifest.pauseMs).toBeLessThan(1000);
    expect(manifest.elements[0]!.facts.snapshot).toBe(method);
    expect(manifest.elements[0]!.readInsideFreeze).toBeUndefined(); // read after the thaw
    expect(await cgroup.isFrozen()).toBe(false);
    const before = await lines(log);
    await sleep(200);
    expect(await lines(log)).toBeGreaterThan(before); // thawed: the writer goes on
    expect(await readdir(mounts[fsType]!)).not.toContain('.storage-agent-snapshots'); // released
    expect(await readdir(path.join(sandbox.stateDir, 'frozen'))).toEqual([]);
  });

  it('ext4 with fsfreeze: the tar runs inside the freeze and the pause it costs is reported', async () => {
    const cgroup = await createCgroup('v2');
    cgroups.push(cgroup);
    const log = path.join(mounts.ext4!, 'writer.log');
    startWriter(cgroup, log);
    await sleep(200);
    const args = await configure({ cgroups: [cgroup.path], filesystems: [mounts.ext4!] }, mounts.ext4!);
    const created = await cli([...args, '--log-level', 'info', '--json', 'backup', 'create', 'app']);
    expect(created.exitCode, created.stderr).toBe(0);
    const manifest = JSON.parse(created.stdout) as Manifest;
    expect(manifest.elements[0]!.facts.snapshot).toBeNull();
    // The pause's cause is on record: the element was read while the writers were frozen, and the log says for how long.
    expect(manifest.elements[0]!.readInsideFreeze).toBe(true);
    const readLine = logLines(created.stderr).find((l) => l.msg === 'the pause includes reading elements that could not be snapshotted');
    const readMs = (readLine?.readMs as Record<string, number> | undefined)?.uploads;
    expect(readMs).toBeGreaterThan(0);
    expect(manifest.pauseMs).toBeGreaterThanOrEqual(readMs!);
    // And the human output says why the pause is what it is.
    const human = await cli([...args, 'backup', 'create', 'app']);
    expect(human.stdout).toMatch(/writes paused [\d.]+ ms, uploads read inside the pause \(no snapshot of its filesystem\)/);
    // The restored log is one consistent point: complete lines, numbered 1..n without gaps.
    const restoredLog = await restoredFile(args, manifest.id, 'writer.log');
    const numbers = restoredLog.trimEnd().split('\n').map(Number);
    expect(numbers).toEqual(numbers.map((_, i) => i + 1));
    await writeFile(path.join(mounts.ext4!, 'after.txt'), 'the filesystem is thawed');
    expect(await cgroup.isFrozen()).toBe(false);
  });

  it('ext4 read inside the freeze: the writers wait for the tree to be read, not for the store to finish (a CompleteMultipartUpload stalled 3 s is after the thaw)', async () => {
    const cgroup = await createCgroup('v2');
    cgroups.push(cgroup);
    startWriter(cgroup, path.join(mounts.ext4!, 'stalled-store.log'));
    const proxy = await startFaultProxy(s3TestServer().endpoint);
    try {
      const bucket = await createTestBucket();
      proxy.inject({ operation: 'CompleteMultipartUpload', fault: { type: 'stall', ms: 3_000 } });
      const stores = { stores: { s3: s3StoreConfig(bucket, { endpoint: proxy.url }) }, defaultStore: 's3' };
      await sandbox.writeConfig({
        ...stores,
        environments: { app: { freeze: { cgroups: [cgroup.path], filesystems: [mounts.ext4!] }, services: { uploads: { kind: 'files', path: mounts.ext4! } } } },
      });
      const args = ['--config', sandbox.configPath];
      const started = performance.now();
      const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'app']);
      expect(performance.now() - started).toBeGreaterThan(3_000);
      expect(proxy.counts().CompleteMultipartUpload).toBeGreaterThanOrEqual(1);
      expect(manifest.elements[0]!.readInsideFreeze).toBe(true);
      expect(manifest.elements[0]!.durationMs).toBeGreaterThan(3_000);
      expect(manifest.pauseMs).toBeLessThan(3_000);
      // Still one consistent point: the restored log is numbered 1..n without a gap.
      const numbers = (await restoredFile(args, manifest.id, 'stalled-store.log', stores)).trimEnd().split('\n').map(Number);
      expect(numbers).toEqual(numbers.map((_, i) => i + 1));
      expect(await cgroup.isFrozen()).toBe(false);
    } finally {
      await proxy.close();
    }
  });

  it('a freeze past its deadline thaws, fails with E_FREEZE_TIMEOUT (exit 7) and leaves no backup', async () => {
    const cgroup = await createCgroup('v1');
    cgroups.push(cgroup);
    startWriter(cgroup, path.join(mounts.ext4!, 'writer.log'));
    const args = await configure({ cgroups: [cgroup.path], filesystems: [mounts.ext4!], deadline: '30ms' }, mounts.ext4!);
    const before = await cliJson<{ id: string }[]>([...args, 'backup', 'list', 'app']);
    const result = await cli([...args, 'backup', 'create', 'app']);
    expect(result.exitCode, result.stderr).toBe(7);
    expect(result.stderr).toContain('E_FREEZE_TIMEOUT');
    expect(await cgroup.isFrozen()).toBe(false);
    await writeFile(path.join(mounts.ext4!, 'after-deadline.txt'), 'writable');
    expect(await cliJson([...args, 'backup', 'list', 'app'])).toEqual(before);
  });

  it('a store outage inside the freeze: the deadline thaws and fails the backup at once (E_FREEZE_TIMEOUT), not after the store\'s retries', async () => {
    const cgroup = await createCgroup('v2');
    cgroups.push(cgroup);
    startWriter(cgroup, path.join(mounts.ext4!, 'writer.log'));
    // The store is reached through a proxy the test cuts: an outage of this test's own.
    const proxy = await startProxy(new URL(s3TestServer().endpoint));
    try {
      const bucket = await createTestBucket();
      // Backoff 1, 2, 4, 8, 16 s: a request keeps retrying for ~30 s before the store gives up.
      const store = s3StoreConfig(bucket, { endpoint: proxy.url, maxAttempts: 6 });
      await sandbox.writeConfig({
        stores: { s3: store },
        defaultStore: 's3',
        environments: { app: { freeze: { cgroups: [cgroup.path], filesystems: [mounts.ext4!], deadline: '2s' }, services: { uploads: { kind: 'files', path: mounts.ext4! } } } },
      });
      const started = performance.now();
      const backup = startCli(['--config', sandbox.configPath, 'backup', 'create', 'app']);
      let stderr = '';
      backup.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      await waitFor('the freeze', () => cgroup.isFrozen());
      proxy.cut();
      const failedAfter = await waitFor('the backup to fail', () => stderr.includes('error [E_FREEZE_TIMEOUT]') && performance.now() - started);
      expect(await cgroup.isFrozen()).toBe(false);
      await writeFile(path.join(mounts.ext4!, 'after-outage.txt'), 'writable');
      // The deadline (2 s), the agent's start, and at most 2 s waiting for the failed backup's
      // objects to be deleted; the store's own retries would go on for ~30 s.
      expect(failedAfter).toBeLessThan(8_000);
      expect(stderr).toContain('the store is slow to delete the objects of the failed backup');
      // The store client's retries of that delete go on in the background: they get a short
      // grace, then the CLI exits with the outcome it printed instead of holding the terminal.
      const exited = await backup;
      expect(exited.exitCode).toBe(7);
      expect(performance.now() - started - failedAfter).toBeLessThan(5_000);
    } finally {
      proxy.close();
    }
  });

  it('a store outage inside the freeze of a daemon job: the deadline thaws and fails the job within seconds (E_FREEZE_TIMEOUT); the daemon keeps running and answers', async () => {
    const cgroup = await createCgroup('v2');
    cgroups.push(cgroup);
    const log = path.join(mounts.ext4!, 'daemon-outage-writer.log');
    startWriter(cgroup, log);
    const proxy = await startProxy(new URL(s3TestServer().endpoint));
    let daemon: RunningDaemon | undefined;
    try {
      const tokens = await writeTokens(sandbox);
      const bucket = await createTestBucket();
      // Backoff 1, 2, 4, 8, 16 s: a request keeps retrying for ~30 s before the store gives up.
      const store = s3StoreConfig(bucket, { endpoint: proxy.url, maxAttempts: 6 });
      await sandbox.writeConfig({
        stores: { s3: store },
        defaultStore: 's3',
        daemon: daemonSection(tokens),
        environments: { app: { freeze: { cgroups: [cgroup.path], filesystems: [mounts.ext4!], deadline: '2s' }, services: { uploads: { kind: 'files', path: mounts.ext4! } } } },
      });
      daemon = await startDaemon(sandbox.configPath);
      const client = await TestClient.connect(daemon.url, tokens.admin);
      const ticket = await client.call<{ jobId: string; backupId: string }>('backup.create', { env: 'app' });
      await client.call('job.subscribe', { jobId: ticket.jobId });
      await waitFor('the freeze', () => cgroup.isFrozen());
      const frozenAt = performance.now();
      proxy.cut();
      const thawed = waitFor('the thaw', async () => !(await cgroup.isFrozen()) && performance.now() - frozenAt, 30_000);
      const finished = await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === ticket.jobId, 30_000);
      const failedAfter = performance.now() - frozenAt;
      expect(finished.params, JSON.stringify(finished.params)).toMatchObject({ state: 'failed', error: { code: 'E_FREEZE_TIMEOUT' } });
      // Thawed at the deadline (2 s from the freeze), not once the job has ended.
      const thawedAfter = await thawed;
      expect(thawedAfter, `thawed ${thawedAfter} ms after the freeze`).toBeLessThan(2_000 + 750);
      // The job's end: the deadline and at most 2 s waiting for the failed backup's objects to
      // be deleted; the store's own retries would go on for ~30 s.
      expect(failedAfter, `failed ${failedAfter} ms after the freeze`).toBeLessThan(6_000);
      expect(await cgroup.isFrozen()).toBe(false);
      const before = await lines(log);
      await waitFor('the writer to write again', async () => (await lines(log)) > before, 1_000);
      await writeFile(path.join(mounts.ext4!, 'after-daemon-outage.txt'), 'writable');
      expect(await readdir(path.join(sandbox.stateDir, 'frozen'))).toEqual([]);
      // The daemon lives on and answers, on this connection and on a new one.
      expect(daemon.child.exitCode ?? null).toBeNull();
      expect(await client.call<{ state: string }>('job.get', { jobId: ticket.jobId })).toMatchObject({ state: 'failed', error: { code: 'E_FREEZE_TIMEOUT' } });
      await client.close();
      const again = await TestClient.connect(daemon.url, tokens.viewer);
      expect(await again.call('agent.status')).toMatchObject({ agent: { program: 'daemon' } });
      await again.close();
      expect(daemon.child.exitCode ?? null).toBeNull();
    } finally {
      proxy.close();
      await daemon?.stop();
    }
  });

  it('an agent and its freeze guard both killed (SIGKILL) while frozen, no daemon: the next start thaws the cgroup and the filesystem', async () => {
    const cgroup = await createCgroup('v1');
    cgroups.push(cgroup);
    startWriter(cgroup, path.join(mounts.ext4!, 'writer.log'));
    const args = await configure({ cgroups: [cgroup.path], filesystems: [mounts.ext4!], deadline: '5m' }, mounts.ext4!);
    const pauseFile = path.join(sandbox.dir, 'paused');
    const backup = startCli([...args, '--log-level', 'info', 'backup', 'create', 'app'], { env: { STORAGE_AGENT_PAUSE_AT: 'freeze:frozen', STORAGE_AGENT_PAUSE_FILE: pauseFile } });
    let stderr = '';
    backup.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    await waitFor('the agent to pause', async () => (await readFile(pauseFile, 'utf8')).trim() !== '');
    expect(await cgroup.isFrozen()).toBe(true);
    const frozen = await waitFor('the frozen log line', () => logLines(stderr).find((l) => l.msg === 'writers frozen'));
    process.kill(frozen.guardPid as number, 'SIGKILL');
    backup.kill('SIGKILL');
    await backup;
    await sleep(300);
    expect(await cgroup.isFrozen()).toBe(true); // nobody thawed it: the agent and its guard are gone
    const next = await cli([...args, 'backup', 'list', 'app']);
    expect(next.exitCode, next.stderr).toBe(0);
    expect(await cgroup.isFrozen()).toBe(false);
    await writeFile(path.join(mounts.ext4!, 'after-crash.txt'), 'writable');
    expect((await stat(path.join(mounts.ext4!, 'after-crash.txt'))).size).toBe(8);
    expect(await readdir(path.join(sandbox.stateDir, 'frozen'))).toEqual([]);
  });

  it.each([
    ['btrfs', 'freeze:capturing'],
    ['btrfs', 'backup:stored'],
    ['xfs', 'freeze:thawing'],
    ['xfs', 'backup:stored'],
  ] as const)('a consistent backup of a %s mount killed at %s leaves its snapshot; the next command deletes it', async (fsType, phase) => {
    const mount = mounts[fsType]!;
    const holder = path.join(mount, '.storage-agent-snapshots');
    const cgroup = await createCgroup('v2');
    cgroups.push(cgroup);
    startWriter(cgroup, path.join(mount, 'writer.log'));
    const args = await configure({ cgroups: [cgroup.path], deadline: '5m' }, mount);
    await killCliAt(sandbox.dir, [...args, 'backup', 'create', 'app'], phase);
    expect(await readdir(holder)).toHaveLength(1); // what the kill left: the snapshot, in use until then
    const list = await cli([...args, 'backup', 'list', 'app']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(await readdir(mount)).not.toContain('.storage-agent-snapshots');
    if (fsType === 'btrfs') expect((await execa('btrfs', ['subvolume', 'list', mount])).stdout).not.toContain('.storage-agent-snapshots');
    expect(await cgroup.isFrozen()).toBe(false);
  });

  /** `name` as restored from backup `id` of app into a new environment (`stores`: where the backup is, when not the default fs store). */
  async function restoredFile(args: string[], id: string, name: string, stores: Record<string, unknown> = {}): Promise<string> {
    const target = path.join(sandbox.dir, `restored-${id}`);
    await sandbox.writeConfig({
      ...stores,
      environments: {
        app: { services: { uploads: { kind: 'files', path: mounts.ext4! } } },
        copy: { services: { uploads: { kind: 'files', path: target } } },
      },
    });
    const restore = await cli([...args, 'backup', 'restore', 'app', id, '--target', 'copy', '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    return readFile(path.join(target, name), 'utf8');
  }
});
