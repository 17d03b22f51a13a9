import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, type Sandbox } from './support/cli.ts';
import { createCgroup, type TestCgroup } from './support/cgroup.ts';
import { startRedis, type TestRedis } from './support/redis.ts';

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
    const mysql = inject('mysql');
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

  it('a --live backup pauses nothing and is still restorable', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'app', '--live']);
    expect(manifest).toMatchObject({ mode: 'live', pauseMs: null });
    const { mysqlN } = await restoredCounters(manifest.id);
    expect(mysqlN).toBeGreaterThan(0);
  });
});
