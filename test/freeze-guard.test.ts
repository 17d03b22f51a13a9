import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Connection } from 'mysql2/promise';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createSandbox, startCli, type Sandbox } from './support/cli.ts';
import { createCgroup, loopMount, type TestCgroup } from './support/cgroup.ts';
import { daemonSection, sleep, startDaemon, TestClient, waitFor, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';
import { delayedFsfreeze, fsfreezeFreezing, writesWithin } from './support/fsfreeze.ts';
import { connect, createDatabase, mariadbServer, mysqlServiceConfig, type MariadbTestServer } from './support/mysql.ts';
import { startRedis, type TestRedis } from './support/redis.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/agent/main.ts');
const GUARD = path.resolve(import.meta.dirname, '../src/snapshot/freeze/guard.ts');

/**
 * The phases of a consistent backup a crash can hit, and whether the cgroup is frozen there.
 * The ext4 mount cannot be snapshotted, so its files are read inside the freeze ('capturing');
 * 'thawing' is after the first target (the filesystem, thawed in reverse order) is thawed.
 */
const PHASES = [
  ['freeze:journaled', false],
  ['freeze:frozen', true],
  ['freeze:capturing', true],
  ['freeze:thawing', true],
] as const;

/** Pids of this sandbox's freeze guards (found by their command line). */
async function guardPids(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    const args = cmdline.split('\0');
    if (args[1] === GUARD && args[2]?.startsWith(`${stateDir}/`)) pids.push(Number(name));
  }
  return pids;
}

async function lines(file: string): Promise<number> {
  return (await readFile(file, 'utf8').catch(() => '')).split('\n').filter(Boolean).length;
}

describe('a freeze is thawed within 1 s whoever dies, whenever (real cgroups, ext4 fsfreeze)', () => {
  let sandbox: Sandbox;
  let tokens: Tokens;
  let unmount: () => Promise<void>;
  let mount: string;
  let cgroup: TestCgroup;
  let log: string;
  let pauseFile: string;
  const daemons: RunningDaemon[] = [];

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    mount = path.join(sandbox.dir, 'ext4');
    unmount = await loopMount('ext4', path.join(sandbox.dir, 'ext4.img'), mount, '64M');
    await mkdir(path.join(mount, 'data'));
    await writeFile(path.join(mount, 'data', 'a.txt'), 'some data');
  });
  afterEach(async () => {
    for (const daemon of daemons.splice(0)) await daemon.stop();
    for (const pid of await guardPids(sandbox.stateDir)) process.kill(pid, 'SIGKILL');
    await cgroup?.remove();
    await execa('fsfreeze', ['--unfreeze', mount], { reject: false }); // only if a test failed
  });
  afterAll(async () => {
    await unmount();
    await sandbox.cleanup();
  });

  /** A cgroup with a writer appending to the ext4 mount (writers are frozen both ways), and the config naming it. */
  async function setUp(version: 'v1' | 'v2' = 'v2', deadline = '5m'): Promise<void> {
    cgroup = await createCgroup(version);
    log = path.join(mount, `writer-${Date.now()}.log`);
    cgroup.spawn('sh', ['-c', `while true; do echo x >> ${log}; sleep 0.002; done`]);
    await waitFor('the writer to write', async () => (await lines(log)) > 0);
    await sandbox.writeConfig({
      stores: { local: { type: 'fs', path: path.join(sandbox.dir, 'store') } },
      defaultStore: 'local',
      daemon: daemonSection(tokens),
      environments: {
        app: { freeze: { cgroups: [cgroup.path], filesystems: [mount], deadline }, services: { uploads: { kind: 'files', path: mount } } },
      },
    });
    pauseFile = path.join(sandbox.dir, `paused-${Date.now()}`);
  }

  const pausedAt = (phase: string) => ({ STORAGE_AGENT_PAUSE_AT: phase, STORAGE_AGENT_PAUSE_FILE: pauseFile });
  const pausedPid = () => waitFor('the agent to pause', async () => Number((await readFile(pauseFile, 'utf8')).trim()) || undefined);

  /** SIGKILLs `pids` at once; resolves with the ms until the writer writes again and the cgroup is thawed. */
  async function killAndTimeThaw(pids: number[]): Promise<number> {
    const before = await lines(log);
    const killed = performance.now();
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    await waitFor('the writers to be thawed', async () => !(await cgroup.isFrozen()) && (await lines(log)) > before, 5_000);
    return performance.now() - killed;
  }

  async function expectJournalEmpty(): Promise<void> {
    await waitFor('the freeze journal to be empty', async () => (await readdir(path.join(sandbox.stateDir, 'frozen'))).length === 0, 2_000);
  }

  describe.each([
    ['no daemon', false],
    ['a daemon running', true],
  ] as const)('a CLI backup SIGKILLed, %s: its guard thaws', (_, withDaemon) => {
    it.each(PHASES)('at %s', async (phase, frozen) => {
      await setUp();
      if (withDaemon) daemons.push(await startDaemon(sandbox.configPath));
      const backup = startCli(['--config', sandbox.configPath, 'backup', 'create', 'app'], { env: pausedAt(phase) });
      const pid = await pausedPid();
      expect(pid).toBe(backup.pid);
      expect(await cgroup.isFrozen()).toBe(frozen);
      expect(await guardPids(sandbox.stateDir)).toHaveLength(1);
      const ms = await killAndTimeThaw([pid]);
      expect(ms).toBeLessThan(1000);
      expect((await backup).signal).toBe('SIGKILL');
      await expectJournalEmpty();
      await waitFor('the guard to exit', async () => (await guardPids(sandbox.stateDir)).length === 0, 2_000);
    });
  });

  describe('a daemon SIGKILLed in the middle of its own backup job: its guard thaws', () => {
    it.each(PHASES)('at %s', async (phase, frozen) => {
      await setUp('v1');
      const daemon = await startDaemon(sandbox.configPath, { env: pausedAt(phase) });
      daemons.push(daemon);
      const client = await TestClient.connect(daemon.url, tokens.admin);
      await client.call('backup.create', { env: 'app' });
      expect(await pausedPid().catch((error: Error) => Promise.reject(new Error(`${error.message}; daemon said:\n${daemon.stdout()}`)))).toBe(daemon.child.pid);
      expect(await cgroup.isFrozen()).toBe(frozen);
      const ms = await killAndTimeThaw([daemon.child.pid!]);
      expect(ms).toBeLessThan(1000);
      await expectJournalEmpty();
      await client.close().catch(() => {});
    });
  });

  it('a CLI backup and its guard both SIGKILLed while frozen: the running daemon thaws within 1 s', async () => {
    await setUp();
    const daemon = await startDaemon(sandbox.configPath);
    daemons.push(daemon);
    const backup = startCli(['--config', sandbox.configPath, 'backup', 'create', 'app'], { env: pausedAt('freeze:capturing') });
    const pid = await pausedPid();
    const guards = await guardPids(sandbox.stateDir);
    expect(guards).toHaveLength(1);
    expect(await cgroup.isFrozen()).toBe(true);
    const ms = await killAndTimeThaw([pid, ...guards]);
    expect(ms).toBeLessThan(1000);
    await backup;
    const thawed = await daemon.waitForLog('the daemon to say it thawed', (l) => l.msg.startsWith('the daemon thawed what a freeze left frozen'));
    expect(thawed).toMatchObject({ env: 'app', pid, targets: 2, thawed: 2 });
    expect(thawed.msg).toContain(`its owner (pid ${pid}) is gone`);
    await expectJournalEmpty();
  });

  it('a daemon SIGKILLed with its guard and left a zombie: the next daemon start thaws (pid + start time, zombie = dead)', async () => {
    await setUp();
    // The daemon's parent is `sleep`, which never reaps it: once killed it stays a zombie.
    const out = path.join(sandbox.dir, 'zombie-daemon.log');
    await rm(path.join(sandbox.stateDir, 'daemon.json'), { force: true }); // a killed daemon's
    const parent = spawn('sh', ['-c', '"$@" > "$OUT" 2>&1 & echo $!; exec sleep 120', 'sh', process.execPath, MAIN, '--config', sandbox.configPath, 'daemon'], {
      env: { ...process.env, ...pausedAt('freeze:frozen'), OUT: out },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    try {
      const daemonPid = Number(await new Promise<string>((resolve) => parent.stdout!.once('data', (chunk: Buffer) => resolve(chunk.toString().trim()))));
      const url = await waitFor('the daemon to listen', async () => (JSON.parse(await readFile(path.join(sandbox.stateDir, 'daemon.json'), 'utf8')) as { url: string }).url);
      const client = await TestClient.connect(url, tokens.admin);
      await client.call('backup.create', { env: 'app' });
      expect(await pausedPid()).toBe(daemonPid);
      const guards = await guardPids(sandbox.stateDir);
      expect(guards).toHaveLength(1);
      for (const pid of [daemonPid, ...guards]) process.kill(pid, 'SIGKILL');
      await waitFor('a zombie', async () => (await readFile(`/proc/${daemonPid}/stat`, 'utf8')).split(') ')[1]!.startsWith('Z'));
      await client.close().catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await cgroup.isFrozen()).toBe(true); // nobody left: the guard died too

      const next = await startDaemon(sandbox.configPath);
      daemons.push(next);
      expect(await cgroup.isFrozen()).toBe(false);
      expect(next.logs().find((l) => l.msg === 'daemon listening')).toMatchObject({ recovered: { thawed: 2 } });
      await expectJournalEmpty();
    } finally {
      parent.kill('SIGKILL');
    }
  });

  it('a CLI backup SIGKILLed while its `fsfreeze --freeze` is still running: the freeze lands and is thawed anyway, within 1 s', async () => {
    await setUp();
    // fsfreeze --freeze takes 300 ms and cannot be stopped meanwhile (as while FIFREEZE runs).
    const slow = await delayedFsfreeze(sandbox.dir, 300);
    const backup = startCli(['--config', sandbox.configPath, 'backup', 'create', 'app'], { env: { PATH: `${slow.binDir}:${process.env.PATH}` } });
    try {
      await waitFor('the freeze of the filesystem to begin', async () => (await readFile(slow.started, 'utf8')).trim() !== '', 30_000);
      expect(await fsfreezeFreezing(mount)).not.toEqual([]);
      const killed = performance.now();
      backup.kill('SIGKILL');
      expect((await backup).signal).toBe('SIGKILL');
      await waitFor('no fsfreeze --freeze left', async () => (await fsfreezeFreezing(mount)).length === 0, 2_000);
      // Whatever the freeze did, the mount takes writes again (a write blocks while it is frozen).
      expect(await writesWithin(path.join(mount, `after-late-freeze-${Date.now()}`), Math.max(50, 1000 - (performance.now() - killed)))).toBe(true);
      expect(await cgroup.isFrozen()).toBe(false);
      expect(performance.now() - killed).toBeLessThan(1000);
      await expectJournalEmpty();
      await waitFor('the guard to exit', async () => (await guardPids(sandbox.stateDir)).length === 0, 2_000);
    } finally {
      // A mount left frozen would hang the writer's removal after the test.
      await execa('fsfreeze', ['--unfreeze', mount], { reject: false });
    }
  });
  /** The deadline (epoch ms) the one freeze journal entry names. */
  async function journaledDeadline(): Promise<number> {
    const dir = path.join(sandbox.stateDir, 'frozen');
    const [entry] = (await readdir(dir)).filter((name) => name.endsWith('.json'));
    return Date.parse((JSON.parse(await readFile(path.join(dir, entry!), 'utf8')) as { deadline: string }).deadline);
  }

  /** Resolves with the epoch ms at which the writer writes again and the cgroup is thawed. */
  async function thawedAt(timeoutMs: number): Promise<number> {
    const before = await lines(log);
    await waitFor('the writers to be thawed', async () => !(await cgroup.isFrozen()) && (await lines(log)) > before, timeoutMs);
    return Date.now();
  }

  describe('the deadline holds when the agent is alive but stuck (SIGSTOPped while frozen, deadline 2 s)', () => {
    it('its guard thaws by the deadline + 0.5 s', async () => {
      await setUp('v2', '2s');
      const backup = startCli(['--config', sandbox.configPath, 'backup', 'create', 'app'], { env: pausedAt('freeze:frozen') });
      const pid = await pausedPid();
      process.kill(pid, 'SIGSTOP');
      try {
        const deadline = await journaledDeadline();
        expect(deadline - Date.now()).toBeGreaterThan(500); // stopped well before it
        expect(await cgroup.isFrozen()).toBe(true);
        const at = await thawedAt(deadline - Date.now() + 3_000);
        expect(at - deadline, `thawed ${at - deadline} ms after the deadline`).toBeLessThan(500);
        expect(at - deadline).toBeGreaterThan(-100); // not before the deadline: the agent was stuck, not gone
        await expectJournalEmpty();
        await waitFor('the guard to exit', async () => (await guardPids(sandbox.stateDir)).length === 0, 2_000);
      } finally {
        process.kill(pid, 'SIGKILL');
        await backup;
      }
    });

    it('with its guard SIGKILLed too, the running daemon thaws by the deadline + 1.25 s', async () => {
      await setUp('v2', '2s');
      const daemon = await startDaemon(sandbox.configPath);
      daemons.push(daemon);
      const backup = startCli(['--config', sandbox.configPath, 'backup', 'create', 'app'], { env: pausedAt('freeze:frozen') });
      const pid = await pausedPid();
      process.kill(pid, 'SIGSTOP');
      try {
        const guards = await guardPids(sandbox.stateDir);
        expect(guards).toHaveLength(1);
        for (const guard of guards) process.kill(guard, 'SIGKILL');
        const deadline = await journaledDeadline();
        expect(deadline - Date.now()).toBeGreaterThan(500);
        // The owner is alive (stopped): nobody thaws before the deadline.
        await sleep(300);
        expect(await cgroup.isFrozen()).toBe(true);
        const at = await thawedAt(deadline - Date.now() + 4_000);
        // The daemon's bound: 1 s of grace past the deadline (recovery.ts) + one 250 ms watch tick
        // (watch.ts) = 1.25 s, plus the thaw itself (fsfreeze --unfreeze) and this test's polling.
        expect(at - deadline, `thawed ${at - deadline} ms after the deadline`).toBeLessThan(1250 + 100);
        expect(at - deadline, `thawed ${at - deadline} ms after the deadline`).toBeGreaterThan(900); // the daemon leaves a live owner its deadline's grace
        const thawed = await daemon.waitForLog('the daemon to say it thawed', (l) => l.msg.startsWith('the daemon thawed what a freeze left frozen'));
        expect(thawed).toMatchObject({ env: 'app', pid, targets: 2, thawed: 2 });
        expect(thawed.msg).toContain(`its owner (pid ${pid}) is past its deadline`);
        await expectJournalEmpty();
      } finally {
        process.kill(pid, 'SIGKILL');
        await backup;
      }
    });
  });
});

/**
 * The databases' own write stops end with the agent too: FLUSH TABLES WITH READ LOCK dies with
 * the agent's connection, and the Redis pause's end is in the same write as the pause. A
 * consistent backup of MySQL (or Redis) inside a cgroup freeze, SIGKILLed while the lock or
 * the pause is held: a writer on its own connection commits again within 1 s of the kill, and
 * the cgroup is thawed.
 */
describe('a kill while MySQL is locked or Redis paused: writers commit again within 1 s (real MariaDB, Redis, cgroups)', () => {
  const PASSWORD_ENV = 'SA_TEST_KILL_LOCK_MYSQL_PASSWORD';
  let sandbox: Sandbox;
  let tokens: Tokens;
  let server: MariadbTestServer;
  let root: Connection;
  let writerConnection: Connection;
  let db: string;
  let redis: TestRedis;
  let cgroup: TestCgroup;
  let pauseFile: string;
  const daemons: RunningDaemon[] = [];

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    server = mariadbServer();
    process.env[PASSWORD_ENV] = server.password;
    root = await connect(server, { root: true });
    db = await createDatabase(root, 'killlock');
    await root.query(`CREATE TABLE \`${db}\`.t (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB`);
    writerConnection = await connect(server, { root: true });
    redis = await startRedis();
    await redis.client().set('k', 'v');
    cgroup = await createCgroup('v2');
    cgroup.spawn('sh', ['-c', `while true; do echo x >> ${path.join(sandbox.dir, 'cgroup-writer.log')}; sleep 0.01; done`]);
    await sandbox.writeConfig({
      stores: { local: { type: 'fs', path: path.join(sandbox.dir, 'store') } },
      defaultStore: 'local',
      daemon: daemonSection(tokens),
      environments: {
        sql: { freeze: { cgroups: [cgroup.path] }, services: { db: mysqlServiceConfig(server, [db], PASSWORD_ENV) } },
        kv: { freeze: { cgroups: [cgroup.path] }, services: { cache: redis.serviceConfig() } },
      },
    });
  });
  afterEach(async () => {
    for (const daemon of daemons.splice(0)) await daemon.stop();
    for (const pid of await guardPids(sandbox.stateDir)) process.kill(pid, 'SIGKILL');
    await writeFile(path.join(cgroup.path, 'cgroup.freeze'), '0').catch(() => {}); // only if a test failed
    if (pauseFile) await rm(pauseFile, { force: true });
  });
  afterAll(async () => {
    await cgroup?.remove();
    await redis?.stop();
    await root?.query(`DROP DATABASE IF EXISTS \`${db}\``).catch(() => {});
    await root?.end().catch(() => {});
    await writerConnection?.end().catch(() => {});
    await sandbox?.cleanup();
  });

  const pausedAt = (phase: string) => {
    pauseFile = path.join(sandbox.dir, `paused-${Date.now()}`);
    return { STORAGE_AGENT_PAUSE_AT: phase, STORAGE_AGENT_PAUSE_FILE: pauseFile };
  };
  const pausedPid = () => waitFor('the agent to pause', async () => Number((await readFile(pauseFile, 'utf8')).trim()) || undefined, 60_000);

  /** An INSERT loop on its own connection (autocommit): the times its commits returned. */
  function startSqlWriter() {
    const commits: number[] = [];
    let stopped = false;
    const done = (async () => {
      while (!stopped) {
        await writerConnection.query(`INSERT INTO \`${db}\`.t (note) VALUES ('w')`);
        commits.push(performance.now());
        await sleep(5);
      }
    })();
    return {
      commits,
      stop: async () => {
        stopped = true;
        await done;
      },
    };
  }

  /** With the agent at mysql:locked: the writer is held (FTWRL taken); SIGKILL `pid`; ms until it commits and the cgroup is thawed. */
  async function killWhileLocked(pid: number, writer: ReturnType<typeof startSqlWriter>): Promise<{ commitMs: number; thawMs: number }> {
    expect(await cgroup.isFrozen()).toBe(true);
    await sleep(200); // a commit that returned just before the lock is counted by now
    const held = writer.commits.length;
    await sleep(300);
    expect(writer.commits.length, 'no commit while FLUSH TABLES WITH READ LOCK is held').toBe(held);
    const killed = performance.now();
    process.kill(pid, 'SIGKILL');
    const thawed = waitFor('the cgroup to be thawed', async () => !(await cgroup.isFrozen()) && performance.now(), 5_000);
    await waitFor('the writer to commit again', () => writer.commits.length > held, 5_000);
    return { commitMs: writer.commits[held]! - killed, thawMs: (await thawed) - killed };
  }

  it('a CLI backup SIGKILLed while it holds FLUSH TABLES WITH READ LOCK (mysql:locked): an INSERT commits within 1 s, the cgroup thawed', async () => {
    const writer = startSqlWriter();
    let backup: ReturnType<typeof startCli> | undefined;
    try {
      await waitFor('the writer to commit', () => writer.commits.length > 0);
      backup = startCli(['--config', sandbox.configPath, 'backup', 'create', 'sql'], { env: pausedAt('mysql:locked') });
      const pid = await pausedPid().catch(async (error: Error) => Promise.reject(new Error(`${error.message}: ${backup!.exitCode === null ? '' : String((await backup!).stderr)}`)));
      expect(pid).toBe(backup.pid);
      const { commitMs, thawMs } = await killWhileLocked(pid, writer);
      expect(commitMs, `committed ${commitMs} ms after the kill`).toBeLessThan(1000);
      expect(thawMs).toBeLessThan(1000);
      expect((await backup).signal).toBe('SIGKILL');
    } finally {
      backup?.kill('SIGKILL'); // a no-op once it is gone; else it would hold the lock
      await writer.stop();
    }
  });

  it('the daemon SIGKILLed in its own backup job while it holds FLUSH TABLES WITH READ LOCK (mysql:locked): an INSERT commits within 1 s, the cgroup thawed', async () => {
    const writer = startSqlWriter();
    let daemon: RunningDaemon | undefined;
    try {
      await waitFor('the writer to commit', () => writer.commits.length > 0);
      const started = (daemon = await startDaemon(sandbox.configPath, { env: pausedAt('mysql:locked') }));
      daemons.push(started);
      const client = await TestClient.connect(started.url, tokens.admin);
      await client.call('backup.create', { env: 'sql' });
      expect(await pausedPid().catch((error: Error) => Promise.reject(new Error(`${error.message}; daemon said:\n${started.stdout()}`)))).toBe(started.child.pid);
      const { commitMs, thawMs } = await killWhileLocked(started.child.pid!, writer);
      expect(commitMs, `committed ${commitMs} ms after the kill`).toBeLessThan(1000);
      expect(thawMs).toBeLessThan(1000);
      expect((await started.exited).signal).toBe('SIGKILL');
      await client.close().catch(() => {});
    } finally {
      daemon?.child.kill('SIGKILL'); // a no-op once it is gone; else it would hold the lock
      await writer.stop();
    }
  });

  it('the daemon SIGKILLed in its own backup job right after CLIENT PAUSE … WRITE was sent (redis:paused): Redis takes a write within 1 s, the cgroup thawed', async () => {
    const daemon = await startDaemon(sandbox.configPath, { env: pausedAt('redis:paused') });
    daemons.push(daemon);
    const client = await TestClient.connect(daemon.url, tokens.admin);
    await client.call('backup.create', { env: 'kv' });
    expect(await pausedPid().catch((error: Error) => Promise.reject(new Error(`${error.message}; daemon said:\n${daemon.stdout()}`)))).toBe(daemon.child.pid);
    expect(await cgroup.isFrozen()).toBe(true);
    const c = redis.client();
    await c.ping(); // connected before the kill: the write below measures the pause only
    const killed = performance.now();
    process.kill(daemon.child.pid!, 'SIGKILL');
    await c.set('written-after-the-kill', 'yes'); // waits while writes are paused
    const wroteMs = performance.now() - killed;
    expect(wroteMs, `wrote ${wroteMs} ms after the kill`).toBeLessThan(1000);
    expect(await c.get('written-after-the-kill')).toBe('yes');
    await waitFor('the cgroup to be thawed', async () => !(await cgroup.isFrozen()), 1_000 - (performance.now() - killed));
    expect((await daemon.exited).signal).toBe('SIGKILL');
    await client.close().catch(() => {});
  });
});
