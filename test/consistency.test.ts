import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, startCli, type Sandbox } from './support/cli.ts';
import { createCgroup, type TestCgroup } from './support/cgroup.ts';
import { startRedis, type TestRedis } from './support/redis.ts';
import { connectionsTo } from './support/sockets.ts';
import { mysqlTestServer } from './support/servers.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The consistency promise, end to end: a writer in a cgroup loops "insert n into MySQL, set n
 * in Redis, append n to a file". A consistent backup is one point in time of that writer, so
 * the restored state satisfies mysql ≥ redis ≥ file ≥ mysql − 1 — at random moments, every time.
 */
describe('consistent backups across MySQL, Redis and a file mount', () => {
  let sandbox: Sandbox;
  let cgroup: TestCgroup;
  let redis: TestRedis;
  let redisCopy: TestRedis;
  let mysqlDefaults: string;
  const db = `consist_${randomBytes(3).toString('hex')}`;
  const dbCopy = `${db}_copy`;
  const args = () => ['--config', sandbox.configPath];

  const sql = async (query: string) =>
    (await execa('mysql', [`--defaults-extra-file=${mysqlDefaults}`, '-N', '-B', '-e', query])).stdout.trim();

  beforeAll(async () => {
    sandbox = await createSandbox();
    const mysql = mysqlTestServer()!;
    mysqlDefaults = path.join(sandbox.dir, 'my.cnf');
    await writeFile(mysqlDefaults, `[client]\nhost=${mysql.host}\nport=${mysql.port}\nuser=${mysql.user}\npassword=${mysql.password}\n`, { mode: 0o600 });
    await sql(`CREATE DATABASE ${db}; CREATE TABLE ${db}.t (n INT PRIMARY KEY) ENGINE=InnoDB`);
    redis = await startRedis();
    redisCopy = await startRedis({ appendonly: true });
    const mount = path.join(sandbox.dir, 'uploads');
    await mkdir(mount);
    cgroup = await createCgroup('v2');
    process.env.TEST_MYSQL_PASSWORD = mysql.password;
    const mysqlService = (databases: string[]) => ({
      kind: 'mysql',
      host: mysql.host,
      port: mysql.port,
      user: mysql.user,
      password: { env: 'TEST_MYSQL_PASSWORD' },
      databases,
    });
    await sandbox.writeConfig({
      environments: {
        app: {
          freeze: { cgroups: [cgroup.path] },
          services: { db: mysqlService([db]), cache: redis.serviceConfig(), uploads: { kind: 'files', path: mount } },
        },
        // A capture that cannot be made: its database does not exist.
        broken: { freeze: { cgroups: [cgroup.path] }, services: { cache: redis.serviceConfig(), db: mysqlService([`${db}_missing`]) } },
        copy: {
          services: { db: mysqlService([dbCopy]), cache: redisCopy.serviceConfig(), uploads: { kind: 'files', path: path.join(sandbox.dir, 'copy') } },
        },
      },
    });
    const writer = [
      'n=0',
      'while true; do',
      '  n=$((n+1))',
      `  mysql --defaults-extra-file=${mysqlDefaults} -e "INSERT INTO ${db}.t VALUES ($n)" || exit 1`,
      `  redis-cli -p ${redis.port} SET n $n > /dev/null || exit 1`,
      `  echo $n >> ${mount}/log`,
      'done',
    ].join('\n');
    cgroup.spawn('sh', ['-c', writer]);
    await sleep(500);
  });

  afterAll(async () => {
    await cgroup?.remove();
    await redis?.stop();
    await redisCopy?.stop();
    await sql(`DROP DATABASE IF EXISTS ${db}; DROP DATABASE IF EXISTS ${dbCopy}`).catch(() => {});
    await sandbox?.cleanup();
  });

  async function restoredCounters(id: string) {
    const restore = await cli([...args(), 'backup', 'restore', 'app', id, '--target', 'copy', '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    const mysqlN = Number(await sql(`SELECT COALESCE(MAX(n), 0) FROM ${dbCopy}.t`));
    const redisN = Number((await redisCopy.client().get('n')) ?? 0);
    const log = (await readFile(path.join(sandbox.dir, 'copy', 'log'), 'utf8')).trimEnd().split('\n');
    return { mysqlN, redisN, fileN: Number(log.at(-1)), lines: log.length };
  }

  it('every consistent backup restores to one point of the writer, with a pause under 1 s', async () => {
    const backups: Manifest[] = [];
    for (let i = 0; i < 5; i++) {
      await sleep(100 + Math.random() * 400);
      const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'app']);
      expect(manifest.pauseMs).toBeLessThan(1000);
      backups.push(manifest);
    }
    for (const manifest of backups) {
      const { mysqlN, redisN, fileN, lines } = await restoredCounters(manifest.id);
      expect(mysqlN).toBeGreaterThan(0);
      expect(mysqlN, `backup ${manifest.id}`).toBeGreaterThanOrEqual(redisN);
      expect(redisN, `backup ${manifest.id}`).toBeGreaterThanOrEqual(fileN);
      expect(fileN, `backup ${manifest.id}`).toBeGreaterThanOrEqual(mysqlN - 1);
      expect(lines).toBe(fileN); // the file is whole: no torn or missing line
    }
    // The writer was never left frozen.
    expect(await cgroup.isFrozen()).toBe(false);
    const now = Number(await sql(`SELECT MAX(n) FROM ${db}.t`));
    await sleep(300);
    expect(Number(await sql(`SELECT MAX(n) FROM ${db}.t`))).toBeGreaterThan(now);
  });

  /** The CLI started with `args`, stopped at `phase` (src/phase-hook.ts); resolves to its pid once there. */
  async function stoppedAt(phase: string, argv: string[]) {
    const pauseFile = path.join(sandbox.dir, `paused-${Date.now()}`);
    const child = startCli(argv, { env: { STORAGE_AGENT_PAUSE_AT: phase, STORAGE_AGENT_PAUSE_FILE: pauseFile } });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    for (let waited = 0; !existsSync(pauseFile) || (await readFile(pauseFile, 'utf8')).trim() === ''; waited += 20) {
      if (child.exitCode !== null || waited > 60_000) throw new Error(`never reached ${phase}: ${stderr}`);
      await sleep(20);
    }
    const pid = Number((await readFile(pauseFile, 'utf8')).trim());
    return { child, pid, stderr: () => stderr, goOn: () => rm(pauseFile, { force: true }) };
  }
  const frozenEntries = () => readdir(path.join(sandbox.stateDir, 'frozen')).catch(() => [] as string[]);
  const writerCount = async () => Number(await sql(`SELECT COALESCE(MAX(n), 0) FROM ${db}.t`));

  it('connects to MySQL and Redis and checks them before the writers are frozen; a cancel there freezes nothing', async () => {
    const mysql = mysqlTestServer()!;
    const prepared = await stoppedAt('backup:prepared', [...args(), '--json', 'backup', 'create', 'app']);
    // Every capture prepared, nothing frozen: the agent holds its connections while the writer still writes.
    expect(await connectionsTo(mysql.port, prepared.pid)).toBe(1);
    expect(await connectionsTo(redis.port, prepared.pid)).toBe(1);
    expect(await cgroup.isFrozen()).toBe(false);
    expect(await frozenEntries()).toEqual([]);
    const before = await writerCount();
    await sleep(300);
    expect(await writerCount()).toBeGreaterThan(before);
    await prepared.goOn();
    const done = await prepared.child;
    expect(done.exitCode, String(done.stderr)).toBe(0);
    const manifest = JSON.parse(String(done.stdout)) as Manifest;
    expect(manifest).toMatchObject({ mode: 'consistent', pauseMs: expect.any(Number) });
    expect(manifest.elements.find((e) => e.name === 'cache')?.facts).toMatchObject({ forkUsec: expect.any(Number) });
    expect(manifest.elements.find((e) => e.name === 'db')?.facts).toMatchObject({ ftwrlWaitMs: expect.any(Number), ftwrlMs: expect.any(Number) });

    // Cancelled (SIGTERM) once prepared: E_CANCELLED, never journaled nor frozen, the connections closed with the process.
    const cancelled = await stoppedAt('backup:prepared', [...args(), '--log-level', 'info', 'backup', 'create', 'app']);
    cancelled.child.kill('SIGTERM');
    await sleep(200);
    await cancelled.goOn();
    const stopped = await cancelled.child;
    expect(stopped.exitCode, cancelled.stderr()).toBe(9);
    expect(cancelled.stderr()).toMatch(/E_CANCELLED/);
    expect(cancelled.stderr()).not.toMatch(/writers frozen/);
    expect(await frozenEntries()).toEqual([]);
    expect(await cgroup.isFrozen()).toBe(false);
  });

  it('a capture that fails while preparing (a missing database) fails the backup before anything is frozen', async () => {
    // Stopped at the journal entry if it got that far: it must fail before.
    const pauseFile = path.join(sandbox.dir, `journaled-${Date.now()}`);
    const result = await startCli([...args(), '--log-level', 'info', 'backup', 'create', 'broken'], {
      env: { STORAGE_AGENT_PAUSE_AT: 'freeze:journaled', STORAGE_AGENT_PAUSE_FILE: pauseFile },
    });
    expect(result.exitCode).not.toBe(0);
    expect(String(result.stderr)).toMatch(/E_CAPTURE_FAILED.*_missing does not exist/);
    expect(String(result.stderr)).not.toMatch(/writers frozen/);
    expect(existsSync(pauseFile)).toBe(false);
    expect(await frozenEntries()).toEqual([]);
    expect(await cgroup.isFrozen()).toBe(false);
  });

  it('a --live backup pauses nothing and is still restorable', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'app', '--live']);
    expect(manifest).toMatchObject({ mode: 'live', pauseMs: null });
    const { mysqlN } = await restoredCounters(manifest.id);
    expect(mysqlN).toBeGreaterThan(0);
  });
});
