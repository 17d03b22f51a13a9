/**
 * systemd/storage-agent.service (issue #12): it verifies, its exposure score does not rise,
 * and the daemon really works under its sandbox — run by a real systemd (booted in private
 * namespaces: test/support/systemd-boot.ts): a consistent backup that freezes a cgroup,
 * fsfreezes an ext4 mount, snapshots an XFS one by reflink and dumps MySQL and Redis, then a
 * restore of it all — files with owners, modes and setuid/setgid bits, the database, the
 * dataset — both through the protocol (the CLI's --remote). And a CLI-made state directory is
 * as private as the unit's.
 */
import { existsSync } from 'node:fs';
import { chmod, chown, copyFile, link, lstat, mkdir, readdir, readFile, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { createConnection, type Connection, type RowDataPacket } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, createSandbox, type Sandbox } from './support/cli.ts';
import { waitFor } from './support/daemon.ts';
import { mariadbServer } from './support/mysql.ts';
import { freePort, startRedis, type TestRedis } from './support/redis.ts';
import { bootSystemd, cannotBootSystemd, type SystemdBoot } from './support/systemd-boot.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const UNIT = path.join(ROOT, 'systemd/storage-agent.service');
/** What `systemd-analyze security` rated the unit when it was last hardened (5.1 before issue #12). */
const MEASURED_EXPOSURE = 3.0;
const hasAnalyze = existsSync('/usr/bin/systemd-analyze');

describe('systemd/storage-agent.service', () => {
  let sandbox: Sandbox;
  beforeAll(async () => {
    sandbox = await createSandbox();
  });
  afterAll(async () => {
    await sandbox?.cleanup();
  });

  it.skipIf(!hasAnalyze)('passes systemd-analyze verify', async () => {
    // verify wants ExecStart's binary to exist: a copy of the unit names one that does.
    const launcher = path.join(sandbox.dir, 'storage-agent');
    await writeFile(launcher, '#!/bin/sh\n', { mode: 0o755 });
    const copy = path.join(sandbox.dir, 'storage-agent.service');
    await writeFile(copy, (await readFile(UNIT, 'utf8')).replaceAll('/usr/local/bin/storage-agent', launcher));
    const result = await execa('systemd-analyze', ['verify', '--man=no', copy], { reject: false });
    // Unknown or misspelt settings are warnings (exit 0): any output fails too.
    expect({ exitCode: result.exitCode, output: `${String(result.stdout)}${String(result.stderr)}` }).toEqual({ exitCode: 0, output: '' });
  });

  it.skipIf(!hasAnalyze)(`is rated at most ${MEASURED_EXPOSURE.toFixed(1)} by systemd-analyze security`, async () => {
    const result = await execa('systemd-analyze', ['security', '--offline=yes', UNIT], { reject: false });
    const score = /Overall exposure level for storage-agent\.service: (\d+\.\d+)/.exec(String(result.stdout))?.[1];
    expect(score, String(result.stdout) + String(result.stderr)).toBeDefined();
    expect(Number(score)).toBeLessThanOrEqual(MEASURED_EXPOSURE);
  });

  describe.skipIf(cannotBootSystemd() !== undefined)(`under a real systemd${cannotBootSystemd() ? ` (skipped: ${cannotBootSystemd()})` : ''}`, () => {
    let boot: SystemdBoot;
    let port: number;
    let redis: TestRedis;
    let db: Connection;
    const database = `sa_systemd_${process.pid}`;
    const tokenFile = () => path.join(sandbox.dir, 'etc', 'admin.token');
    const remote = (...args: string[]) => cli(['--remote', `ws://127.0.0.1:${port}`, '--token-file', tokenFile(), '--json', ...args]);

    beforeAll(async () => {
      boot = await bootSystemd(sandbox.dir, { etc: '/etc/storage-agent', state: '/var/lib/storage-agent', cache: '/var/cache/storage-agent', bin: '/usr/local/bin' });
      port = await freePort();
      // The launcher the unit's ExecStart names: this checkout's agent on this checkout's Node.
      await writeFile(
        path.join(sandbox.dir, 'bin', 'storage-agent'),
        `#!/bin/sh\nexport PATH=${path.join(ROOT, 'node_modules/.bin')}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin\nexec node ${path.join(ROOT, 'src/agent/main.ts')} "$@"\n`,
        { mode: 0o755 },
      );
      // XFS (reflink) and ext4 mounts inside the boot (its /srv), owned by it: gone with it.
      for (const fs of ['ext4', 'xfs'] as const) {
        const image = path.join(sandbox.dir, `${fs}.img`);
        await execa('truncate', ['-s', '300M', image]);
        await execa(fs === 'xfs' ? 'mkfs.xfs' : 'mkfs.ext4', fs === 'xfs' ? ['-q', '-f', '-m', 'reflink=1', image] : ['-q', '-F', image]);
        const mounted = await boot.run('sh', ['-c', `mkdir -p /srv/${fs} && mount -o loop ${image} /srv/${fs}`]);
        expect(mounted.stderr).toBe('');
        await populate(boot.hostPath(`/srv/${fs}`));
      }
      // And a plain directory under /home (ProtectHome=read-only): its parent goes in ReadWritePaths=.
      await mkdir(boot.hostPath('/home/site/www'), { recursive: true });
      await populate(boot.hostPath('/home/site/www'));
      // MySQL and Redis on the host's loopback, which the boot shares.
      const mysql = mariadbServer();
      db = await createConnection({ host: mysql.host, port: mysql.port, user: mysql.user, password: mysql.password, multipleStatements: true });
      await db.query(`DROP DATABASE IF EXISTS ${database}; CREATE DATABASE ${database}; CREATE TABLE ${database}.orders (id INT PRIMARY KEY, what TEXT); INSERT INTO ${database}.orders VALUES (1, 'tea'), (2, 'cake')`);
      await writeFile(path.join(sandbox.dir, 'etc', 'db.password'), `${mysql.password}\n`, { mode: 0o600 });
      redis = await startRedis();
      await redis.client().mset('cart:1', 'tea', 'cart:2', 'cake');
      await writeFile(tokenFile(), `adm-${Date.now()}-systemd-test-token\n`, { mode: 0o600 });
      await writeFile(
        path.join(sandbox.dir, 'etc', 'config.yaml'),
        [
          'stateDir: /var/lib/storage-agent',
          'daemon:',
          `  listen: { host: 127.0.0.1, port: ${port} }`,
          '  tokens: [{ file: /etc/storage-agent/admin.token, role: admin }]',
          'environments:',
          '  app:',
          '    freeze: { cgroups: [/sys/fs/cgroup/writers], filesystems: [/srv/ext4] }',
          '    services:',
          '      site: { kind: files, path: /srv/ext4, keepSetuid: true }',
          '      media: { kind: files, path: /srv/xfs, keepSetuid: true }',
          '      home: { kind: files, path: /home/site/www, keepSetuid: true }',
          `      db: { kind: mysql, host: ${mysql.host}, port: ${mysql.port}, user: ${mysql.user}, password: { file: /etc/storage-agent/db.password }, databases: [${database}] }`,
          `      cache: { kind: redis, host: 127.0.0.1, port: ${redis.port} }`,
          '',
        ].join('\n'),
      );
      // The unit as shipped, less its ordering against targets this boot does not start
      // (network-online.target would bring up the host's networking).
      const unit = (await readFile(UNIT, 'utf8')).replace(/^(Wants|After)=.*\n/gm, '').replace('[Unit]\n', '[Unit]\nDefaultDependencies=no\n');
      await writeFile(path.join(boot.unitDir, 'storage-agent.service'), unit);
      await mkdir(path.join(boot.unitDir, 'storage-agent.service.d'));
      await writeFile(path.join(boot.unitDir, 'storage-agent.service.d', 'output.conf'), `[Service]\nStandardOutput=append:${path.join(sandbox.dir, 'daemon.log')}\nStandardError=inherit\n`);
      await boot.reload();
    }, 60_000);
    afterAll(async () => {
      await boot?.stop();
      await redis?.stop();
      await db?.query(`DROP DATABASE IF EXISTS ${database}`);
      await db?.end();
    });

    /** The host's pid of the unit's process whose pid inside the boot is `inBoot`. */
    const hostPidOf = async (inBoot: number): Promise<number> => {
      for (const pid of (await readFile(path.join(boot.cgroup, 'system.slice/storage-agent.service/cgroup.procs'), 'utf8')).split('\n').filter(Boolean)) {
        const nsPids = /^NSpid:\s+(.*)$/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1]?.split(/\s+/);
        if (Number(nsPids?.at(-1)) === inBoot) return Number(pid);
      }
      throw new Error(`no process of the unit has pid ${inBoot} in the boot`);
    };

    const start = async () => {
      const started = await boot.systemctl('restart', 'storage-agent');
      expect(started, await readFile(path.join(sandbox.dir, 'daemon.log'), 'utf8').catch(() => '')).toMatchObject({ exitCode: 0 });
      // Type=notify: active only once the daemon said it is ready.
      expect((await boot.systemctl('show', 'storage-agent', '-p', 'ActiveState', '-p', 'StatusText')).stdout).toContain(`StatusText=listening on ws://127.0.0.1:${port}/v1`);
    };

    it('backs up consistently (cgroup freeze, fsfreeze, XFS reflink, MySQL, Redis) and restores it all, with the sandbox in force', async () => {
      await start();
      // The sandbox is in force: seccomp filter, no new privileges, the six capabilities.
      const [mainPid] = (await readFile(path.join(boot.cgroup, 'system.slice/storage-agent.service/cgroup.procs'), 'utf8')).split('\n');
      const status = await readFile(`/proc/${mainPid}/status`, 'utf8');
      expect(status).toMatch(/^Seccomp:\s+2$/m);
      expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
      // CAP_CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID (bits 0-4) and SYS_ADMIN (21).
      expect(status).toMatch(/^CapEff:\s+000000000020001f$/m);

      // Writers in the cgroup the environment freezes, appending to the ext4 mount.
      await mkdir(path.join(boot.cgroup, 'writers'));
      boot.spawn('sh', ['-c', 'echo $$ > /sys/fs/cgroup/writers/cgroup.procs && while [ ! -e /srv/stop-writing ]; do date +%s%N >> /srv/ext4/writer.log; sleep 0.02; done']);
      await waitFor('the writer', () => existsSync(boot.hostPath('/srv/ext4/writer.log')));

      // Without the drop-in, the XFS mount is read-only to the agent: the backup says how to fix it.
      const refused = await remote('backup', 'create', 'app');
      expect(refused.exitCode).toBe(7);
      expect(JSON.parse(refused.stdout)).toMatchObject({ error: { code: 'E_CAPTURE_FAILED', message: expect.stringContaining('ReadWritePaths=-/srv/xfs') } });
      expect(await readFile(path.join(boot.cgroup, 'writers/cgroup.freeze'), 'utf8')).toBe('0\n');

      // Mount points stage restores inside themselves; a plain directory beside itself, in its parent.
      // The agent reads Redis's RDB where Redis writes it: this test Redis's dir is under /tmp,
      // which PrivateTmp= hides (a packaged Redis writes to /var/lib/redis, read-only and visible).
      await writeFile(
        path.join(boot.unitDir, 'storage-agent.service.d', 'mounts.conf'),
        `[Service]\nReadWritePaths=-/srv/ext4 -/srv/xfs -/home/site\nBindReadOnlyPaths=${redis.dir}\n`,
      );
      await boot.reload();
      await start();
      const backup = await remote('backup', 'create', 'app');
      expect(backup.exitCode, backup.stderr).toBe(0);
      const manifest = JSON.parse(backup.stdout) as Manifest;
      expect(manifest.mode).toBe('consistent');
      expect(manifest.pauseMs).toBeGreaterThan(0);
      expect(manifest.elements.map((e) => e.name)).toEqual(['site', 'media', 'home', 'db', 'cache']);
      const [site, media] = manifest.elements;
      expect(site).toMatchObject({ name: 'site', readInsideFreeze: true }); // ext4: read under fsfreeze
      expect(media).toMatchObject({ name: 'media', facts: { snapshot: 'reflink' } });
      const log = await readFile(path.join(sandbox.dir, 'daemon.log'), 'utf8');
      expect(log).toMatch(/"targets":2,.*"msg":"writers frozen"/);
      await writeFile(boot.hostPath('/srv/stop-writing'), '');
      await waitFor('the writer to stop', async () => (await readFile(path.join(boot.cgroup, 'writers/cgroup.procs'), 'utf8')).trim() === '');

      const trees = () => Promise.all(['/srv/ext4', '/srv/xfs', '/home/site/www'].map((dir) => listing(boot.hostPath(dir))));
      const before = await trees();
      for (const dir of ['/srv/ext4', '/srv/xfs', '/home/site/www']) {
        const root = boot.hostPath(dir);
        await chown(path.join(root, 'shared/page.html'), 0, 0);
        await chmod(path.join(root, 'tool'), 0o755);
        await writeFile(path.join(root, 'stray'), 'not in the backup');
        await execa('rm', ['-rf', path.join(root, 'private')]);
      }
      await db.query(`DELETE FROM ${database}.orders`);
      await redis.client().flushall();
      const restored = await remote('backup', 'restore', 'app', manifest.id, '--yes', '--no-safety-backup');
      expect(restored.exitCode, restored.stderr).toBe(0);
      expect(await trees()).toEqual(before);
      const [orders] = await db.query<RowDataPacket[]>(`SELECT id, what FROM ${database}.orders ORDER BY id`);
      expect(orders.map((row) => [row.id, row.what])).toEqual([[1, 'tea'], [2, 'cake']]);
      expect(await redis.client().mget('cart:1', 'cart:2')).toEqual(['tea', 'cake']);

      // SIGTERM through systemctl stop: a clean exit.
      expect((await boot.systemctl('stop', 'storage-agent')).exitCode).toBe(0);
      expect((await boot.systemctl('show', 'storage-agent', '-p', 'Result', '-p', 'ExecMainStatus')).stdout.split('\n').sort()).toEqual(['ExecMainStatus=0', 'Result=success']);
    }, 90_000);

    it('a daemon SIGKILLed while the writers are frozen: systemd kills its freeze guard with it, and the unit\'s ExecStopPost thaws within 1 s (not at the restart, RestartSec later)', async () => {
      const paused = path.join(sandbox.dir, 'state', 'paused-at-freeze');
      await writeFile(
        path.join(boot.unitDir, 'storage-agent.service.d', 'pause.conf'),
        '[Service]\nEnvironment=STORAGE_AGENT_PAUSE_AT=freeze:frozen STORAGE_AGENT_PAUSE_FILE=/var/lib/storage-agent/paused-at-freeze\n',
      );
      await boot.reload();
      await start();
      boot.spawn('sh', ['-c', 'echo $$ > /sys/fs/cgroup/writers/cgroup.procs && while [ ! -e /srv/stop-writing-2 ]; do date +%s%N >> /srv/ext4/writer-2.log; sleep 0.02; done']);
      await waitFor('the writer', () => existsSync(boot.hostPath('/srv/ext4/writer-2.log')));
      const backup = remote('backup', 'create', 'app');
      try {
        // The pid the daemon wrote is its pid in the boot's namespace: the host's is the one whose NSpid ends with it.
        const inBoot = await waitFor('the daemon frozen at freeze:frozen', async () => existsSync(paused) && (await readFile(paused, 'utf8')).trim());
        const pid = await hostPidOf(Number(inBoot));
        const freezeFile = path.join(boot.cgroup, 'writers/cgroup.freeze');
        expect(await readFile(freezeFile, 'utf8')).toBe('1\n');
        const killedAt = performance.now();
        process.kill(pid, 'SIGKILL');
        await waitFor('the writers thawed', async () => (await readFile(freezeFile, 'utf8')) === '0\n', 10_000);
        const thawedAfter = performance.now() - killedAt;
        expect(thawedAfter).toBeLessThan(1_000);
        // The ext4 mount too: the writer appends again.
        const lines = async () => (await readFile(boot.hostPath('/srv/ext4/writer-2.log'), 'utf8')).split('\n').length;
        const before = await lines();
        await waitFor('the writer to write again', async () => (await lines()) > before, 5_000);
        expect(await readFile(path.join(sandbox.dir, 'daemon.log'), 'utf8')).toMatch(/thawed what a freeze left frozen/);
      } finally {
        await backup;
        await writeFile(boot.hostPath('/srv/stop-writing-2'), '');
        await execa('rm', ['-f', path.join(boot.unitDir, 'storage-agent.service.d', 'pause.conf'), paused]);
        await boot.reload();
        await boot.systemctl('stop', 'storage-agent');
      }
    }, 60_000);
  });
});

describe('the state directory', () => {
  it('a CLI run makes a missing one private (0700); one open to others is kept, with a warning', async () => {
    const sandbox = await createSandbox();
    try {
      await sandbox.writeConfig({ environments: {} });
      const first = await cli(['--config', sandbox.configPath, 'jobs', 'list']);
      expect(first.exitCode, first.stderr).toBe(0);
      expect((await stat(sandbox.stateDir)).mode & 0o777).toBe(0o700);
      expect(first.stderr).not.toContain('accessible by group or others');
      await chmod(sandbox.stateDir, 0o755);
      const again = await cli(['--config', sandbox.configPath, 'jobs', 'list']);
      expect(again.exitCode).toBe(0);
      expect(again.stderr).toContain(`the state directory ${sandbox.stateDir} is accessible by group or others (mode 0755)`);
      expect((await stat(sandbox.stateDir)).mode & 0o777).toBe(0o755);
    } finally {
      await sandbox.cleanup();
    }
  });
});

/** Files with owners, modes, setuid/setgid bits, an old mtime, a symlink and a hard link. */
async function populate(root: string): Promise<void> {
  await mkdir(path.join(root, 'shared'));
  await writeFile(path.join(root, 'shared/page.html'), `hello from ${root}\n`);
  await chown(path.join(root, 'shared/page.html'), 1234, 5678);
  await chmod(path.join(root, 'shared/page.html'), 0o640);
  await utimes(path.join(root, 'shared/page.html'), new Date('2020-01-02T03:04:05Z'), new Date('2020-01-02T03:04:05Z'));
  await chown(path.join(root, 'shared'), 1234, 5678);
  await chmod(path.join(root, 'shared'), 0o2775);
  await mkdir(path.join(root, 'private'));
  await writeFile(path.join(root, 'private/key'), 'secret\n', { mode: 0o600 });
  await chown(path.join(root, 'private'), 4321, 4321);
  await chmod(path.join(root, 'private'), 0o700);
  await copyFile('/bin/true', path.join(root, 'tool'));
  await chmod(path.join(root, 'tool'), 0o4755);
  await symlink('shared/page.html', path.join(root, 'link'));
  await link(path.join(root, 'shared/page.html'), path.join(root, 'hardlink'));
}

/** Every entry of a tree but the agent's and the writer's: type, owner, mode, size, mtime (tar keeps seconds). */
async function listing(root: string): Promise<string[]> {
  const lines: string[] = [];
  const walk = async (dir: string) => {
    for (const name of (await readdir(dir)).sort()) {
      if (name.startsWith('.storage-agent-') || name === 'lost+found' || name === 'writer.log') continue;
      const file = path.join(dir, name);
      const info = await lstat(file);
      const type = info.isSymbolicLink() ? 'l' : info.isDirectory() ? 'd' : 'f';
      lines.push(`${path.relative(root, file)} ${type} ${info.uid}:${info.gid} ${(info.mode & 0o7777).toString(8)} ${type === 'd' ? '' : info.size} ${Math.floor(info.mtimeMs / 1000)}`);
      if (type === 'd') await walk(file);
    }
  };
  await walk(root);
  return lines;
}
