import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, filesEnv, startCli, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, waitFor, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';

interface Job {
  id: string;
  state: string;
  kind: string;
  backupId?: string;
  startedAt?: string;
  finishedAt?: string;
  owner: { program: string; pid: number };
  error?: { code: string };
}

/** What two backups of the same data share: everything but ids, times and durations. */
function comparable(manifest: Manifest) {
  return {
    ...manifest,
    id: undefined,
    createdAt: undefined,
    completedAt: undefined,
    mac: undefined, // over the id and times, which differ
    elements: manifest.elements.map((e) => ({ ...e, durationMs: undefined, objects: e.objects.map((o) => ({ ...o, key: o.key.replace(manifest.id, 'ID') })) })),
  };
}

describe('the CLI with --remote drives the daemon: same commands, same results as in-process', () => {
  let sandbox: Sandbox;
  let tokens: Tokens;
  let daemon: RunningDaemon;
  const local = (...args: string[]) => ['--config', sandbox.configPath, ...args];
  const remote = (...args: string[]) => ['--config', sandbox.configPath, '--remote', daemon.url, '--token-file', tokens.adminFile, ...args];

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    const site = path.join(sandbox.dir, 'site');
    const slow = path.join(sandbox.dir, 'slow');
    await mkdir(path.join(site, 'css'), { recursive: true });
    await mkdir(slow);
    await writeFile(path.join(site, 'index.html'), '<h1>site</h1>'.repeat(1000));
    await writeFile(path.join(site, 'css', 'main.css'), 'body { color: red }');
    await writeFile(path.join(slow, 'sparse.bin'), '');
    await truncate(path.join(slow, 'sparse.bin'), 2 * 1024 ** 3);
    // A backup of "slow" must outlast a CLI's start-up (~0.4 s) by far, whatever the speed of
    // the pipeline: five elements of a 2 GiB sparse file take ~3 s once it is in the page cache.
    const slowServices = Object.fromEntries(['a', 'b', 'c', 'd', 'e'].map((name) => [`web-${name}`, slow]));
    await sandbox.writeConfig({ daemon: daemonSection(tokens), environments: { site: filesEnv({ web: site }), slow: filesEnv(slowServices) } });
    daemon = await startDaemon(sandbox.configPath);
  });
  afterAll(async () => {
    await daemon?.stop();
    await sandbox.cleanup();
  });

  it('backup create, list, show, verify, delete and jobs: the same output either way', async () => {
    const viaDaemon = await cliJson<Manifest>(remote('backup', 'create', 'site', '--code-ref', 'r1', '--keep-for', '30d'));
    const inProcess = await cliJson<Manifest>(local('backup', 'create', 'site', '--code-ref', 'r1', '--keep-for', '30d'));
    expect(comparable(viaDaemon)).toEqual({ ...comparable(inProcess), keepUntil: expect.any(String) });
    expect(viaDaemon.codeRef).toBe('r1');

    for (const args of [
      ['backup', 'list', 'site'],
      ['backup', 'show', 'site', viaDaemon.id],
      ['backup', 'verify', 'site', inProcess.id],
      ['jobs', 'list', '--env', 'site'],
    ]) {
      const [r, l] = [await cli(remote(...args)), await cli(local(...args))];
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout, args.join(' ')).toBe(l.stdout); // human output
      expect(await cliJson(remote(...args)), args.join(' ')).toEqual(await cliJson(local(...args))); // --json
    }
    const jobs = await cliJson<Job[]>(local('jobs', 'list', '--env', 'site'));
    // Newest first: each verify ran once per way and per output mode, alternating.
    expect(jobs.map((j) => [j.kind, j.state, j.owner.program])).toEqual([
      ['backup.verify', 'succeeded', 'cli'],
      ['backup.verify', 'succeeded', 'daemon'],
      ['backup.verify', 'succeeded', 'cli'],
      ['backup.verify', 'succeeded', 'daemon'],
      ['backup.create', 'succeeded', 'cli'],
      ['backup.create', 'succeeded', 'daemon'],
    ]);
    expect(await cliJson(remote('jobs', 'show', jobs[4]!.id))).toEqual(await cliJson(local('jobs', 'show', jobs[4]!.id)));

    const deleted = await cli(remote('backup', 'delete', 'site', viaDaemon.id, '--yes'));
    expect(deleted.exitCode, deleted.stderr).toBe(0);
    expect(deleted.stdout, deleted.stderr).toBe(`deleted backup ${viaDaemon.id} (2 objects)`);
    expect((await cliJson<{ id: string }[]>(local('backup', 'list', 'site'))).map((b) => b.id)).toEqual([inProcess.id]);
    const restored = await cliJson<{ target: string }>(remote('backup', 'restore', 'site', inProcess.id, '--yes'));
    expect(restored).toMatchObject({ id: inProcess.id, target: 'site', elements: [{ name: 'web' }] });
  });

  it('status shows the agent, the daemon, host facts and the queue, both ways', async () => {
    const [r, l] = [await cliJson<Record<string, any>>(remote('status')), await cliJson<Record<string, any>>(local('status'))];
    expect(r.agent).toMatchObject({ program: 'daemon', pid: daemon.child.pid, accepting: true });
    expect(l.agent).toMatchObject({ program: 'cli' });
    for (const status of [r, l]) {
      expect(status.daemon).toEqual({ running: true, pid: daemon.child.pid, url: daemon.url });
      expect(status.host.memory.available).toBeGreaterThan(0);
      expect(status.host.disk.size).toBeGreaterThan(0);
      expect(status.host.cpu.cores).toBeGreaterThan(0);
      expect(status.jobs).toMatchObject({ concurrency: 2 });
    }
    const human = await cli(remote('status'));
    // The node and its daemon first (issue #12): the answering process says little.
    expect(human.stdout).toMatch(/^node {4}node-[0-9a-f]{12} on \S+, storage-agent \S+\ndaemon {2}running, pid \d+, ws:\/\//);
    expect(human.stdout).toMatch(/\nmemory {2}.* available of /);
  });

  it('--no-wait returns the job id at once; jobs wait follows it (remote and in-process); in-process --no-wait is a usage error', async () => {
    const ticket = await cliJson<{ jobId: string; backupId: string; state: string }>(remote('backup', 'create', 'slow', '--no-wait'));
    expect(ticket.jobId).toMatch(/^job-/);
    expect(['queued', 'running']).toContain(ticket.state);
    const [viaDaemon, inProcess] = await Promise.all([cliJson<Job>(remote('jobs', 'wait', ticket.jobId)), cliJson<Job>(local('jobs', 'wait', ticket.jobId))]);
    expect(viaDaemon).toMatchObject({ id: ticket.jobId, state: 'succeeded', backupId: ticket.backupId });
    expect(inProcess).toEqual(viaDaemon);
    const noWait = await cli(local('backup', 'create', 'site', '--no-wait'));
    expect(noWait.exitCode).toBe(2);
    expect(noWait.stderr).toContain('--no-wait needs --remote');
  });

  it('an SRE in-process run never overlaps a daemon job of the same environment: it queues, says so, then runs', async () => {
    const ticket = await cliJson<{ jobId: string }>(remote('backup', 'create', 'slow', '--no-wait'));
    await waitFor('the daemon job to run', async () => (await cliJson<Job>(local('jobs', 'show', ticket.jobId))).state === 'running');
    const run = startCli(local('--json', 'backup', 'create', 'slow'));
    const result = await run;
    expect(result.exitCode, String(result.stderr)).toBe(0);
    expect(String(result.stderr)).toMatch(new RegExp(`job job-\\S+ queued \\(position 1\\): environment slow is busy: job ${ticket.jobId} \\(backup.create\\) of the daemon \\(pid ${daemon.child.pid}\\) holds it`));
    const manifest = JSON.parse(String(result.stdout)) as Manifest;
    const jobs = await cliJson<Job[]>(local('jobs', 'list', '--env', 'slow', '--limit', '2'));
    const [cliJob, daemonJob] = jobs;
    expect(cliJob).toMatchObject({ backupId: manifest.id, state: 'succeeded', owner: { program: 'cli' } });
    expect(daemonJob).toMatchObject({ id: ticket.jobId, state: 'succeeded', owner: { program: 'daemon' } });
    expect(Date.parse(cliJob!.startedAt!)).toBeGreaterThanOrEqual(Date.parse(daemonJob!.finishedAt!));
  });

  it('jobs cancel from an in-process CLI cancels a daemon job (through the state directory); jobs wait exits 9', async () => {
    const ticket = await cliJson<{ jobId: string }>(remote('backup', 'create', 'slow', '--no-wait'));
    const cancel = await cli(local('jobs', 'cancel', ticket.jobId));
    expect(cancel.exitCode, cancel.stderr).toBe(0);
    expect(cancel.stdout).toMatch(/cancel requested|cancelled/);
    const wait = await cli(remote('jobs', 'wait', ticket.jobId));
    expect(wait.exitCode).toBe(9);
    expect(wait.stdout).toContain(`job ${ticket.jobId} cancelled: E_CANCELLED`);
  });

  it('errors keep their codes and exit codes over the wire', async () => {
    const viewer = (...args: string[]) => ['--config', sandbox.configPath, '--remote', daemon.url, '--token-file', tokens.viewerFile, ...args];
    expect((await cli(viewer('backup', 'list', 'site'))).exitCode).toBe(0);
    const forbidden = await cli(viewer('backup', 'create', 'site'));
    expect(forbidden.exitCode).toBe(13);
    expect(forbidden.stderr).toContain('E_FORBIDDEN');
    const json = await cli(['--json', ...viewer('backup', 'delete', 'site', '20200101T000000000Z-aaaaaaaa', '--yes')]);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'E_FORBIDDEN' } });

    const wrong = path.join(sandbox.dir, 'wrong.token');
    await writeFile(wrong, 'this-is-not-the-token-you-are-looking-for', { mode: 0o600 });
    const unauthorized = await cli(['--remote', daemon.url, '--token-file', wrong, 'backup', 'list', 'site']);
    expect(unauthorized.exitCode).toBe(13);
    expect(unauthorized.stderr).toContain('E_UNAUTHORIZED');
    const down = await cli(['--remote', 'ws://127.0.0.1:1', '--token-file', tokens.adminFile, 'status']);
    expect(down.exitCode).toBe(14);
    expect(down.stderr).toContain('E_DAEMON_UNAVAILABLE');

    for (const [args, code, exit] of [
      [['backup', 'list', 'nosuchenv'], 'E_UNKNOWN_ENV', 4],
      [['backup', 'show', 'site', '20200101T000000000Z-aaaaaaaa'], 'E_BACKUP_NOT_FOUND', 4],
      [['backup', 'create', 'site', '--element', 'nope'], 'E_UNKNOWN_ELEMENT', 4],
      [['jobs', 'show', 'job-20200101T000000000Z-aaaaaaaa'], 'E_JOB_NOT_FOUND', 4],
    ] as const) {
      const [r, l] = [await cli(remote(...args)), await cli(local(...args))];
      expect([r.exitCode, l.exitCode], args.join(' ')).toEqual([exit, exit]);
      expect(r.stderr).toContain(code);
      expect(l.stderr).toContain(code);
    }
    expect((await cli(remote('backup', 'show', 'site', '../../etc'))).exitCode).toBe(2);
    const get = await cli(remote('backup', 'get', 'site', '20200101T000000000Z-aaaaaaaa', '--element', 'web', '--to', sandbox.dir));
    expect(get.exitCode).toBe(2);
    expect(get.stderr).toContain('drop --remote');
    expect((await cli(['--remote', daemon.url, 'status'])).stderr).toContain('--remote needs --token-file');
  });

  it('TLS: with daemon.tls the same listener speaks wss:// and https://', async () => {
    const dir = path.join(sandbox.dir, 'tls');
    await mkdir(dir);
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    await execa('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const config = path.join(dir, 'config.yaml');
    const original = await readFile(sandbox.configPath, 'utf8');
    await writeFile(
      config,
      stringify({ stateDir: path.join(dir, 'state'), daemon: daemonSection(tokens, { tls: { cert, key } }), environments: { site: filesEnv({ web: path.join(sandbox.dir, 'site') }) } }),
    );
    const secure = await startDaemon(config);
    try {
      const url = `wss://127.0.0.1:${secure.port}/v1`;
      const trusted = await cli(['--remote', url, '--token-file', tokens.adminFile, '--json', 'backup', 'create', 'site'], { env: { NODE_EXTRA_CA_CERTS: cert } });
      expect(trusted.exitCode, trusted.stderr).toBe(0);
      const untrusted = await cli(['--remote', url, '--token-file', tokens.adminFile, 'status']);
      expect(untrusted.exitCode).toBe(14);
      const plain = await cli(['--remote', `ws://127.0.0.1:${secure.port}/v1`, '--token-file', tokens.adminFile, 'status']);
      expect(plain.exitCode).toBe(14);
      const health = await execa('curl', ['-s', '--cacert', cert, `https://127.0.0.1:${secure.port}/healthz`]);
      expect(JSON.parse(health.stdout)).toMatchObject({ status: 'ok' });
    } finally {
      await secure.stop();
    }
    expect(await readFile(sandbox.configPath, 'utf8')).toBe(original);
  });
});
