import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { childPids, cli, cliJson, createSandbox, killCliAt, killCliAtOccurrence, processRuns, startCli, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, TestClient, waitFor, writeTokens, type Tokens } from './support/daemon.ts';
import { connect, leftoverDatabases, mariadbServer, mysqlServiceConfig, rows, uniqueName } from './support/mysql.ts';
import { startRedis, type TestRedis } from './support/redis.ts';
import { tempEntries } from './support/worker-tmp.ts';

/** Phases of a restore of three elements (files, then MySQL, then Redis), in the order reached. */
const BEFORE_FIRST_SWAP = ['restore:staged:uploads', 'restore:staged:db', 'restore:staged:cache'];
const AFTER_FIRST_SWAP = [
  'restore:committing',
  'restore:files:old-moved',
  'restore:committed:uploads',
  'restore:mysql:renamed',
  'restore:committed:db',
  'restore:redis:replicating',
  'restore:committed:cache',
];

/**
 * A restore is all-or-nothing across its elements, whenever its process dies: SIGKILLed at each
 * phase, then one ordinary command (which runs recovery) → every element old (killed while
 * staging) or every element new (killed once committing began), never a mix, and nothing left
 * behind: no staging or old tree beside the mount, no staging database, no staged RDB or temp
 * file in the state dir or /tmp, no restore journal, and Redis a writable master again.
 */
describe('a restore killed at any phase is finished or undone by the next command, never left mixed', () => {
  let sandbox: Sandbox;
  let redis: TestRedis;
  let mysql: Connection;
  let backupId: string;
  const db = uniqueName('crash');
  const args = () => ['--config', sandbox.configPath];
  let mount: string;
  let tmpBefore: string[];

  async function writeGeneration(gen: string): Promise<void> {
    await rm(mount, { recursive: true, force: true });
    await mkdir(path.join(mount, 'sub'), { recursive: true });
    await writeFile(path.join(mount, 'gen'), gen);
    await writeFile(path.join(mount, 'sub', `only-${gen}`), gen.repeat(1000));
    await mysql.query(`DROP TABLE IF EXISTS \`${db}\`.t, \`${db}\`.only_${gen === 'A' ? 'b' : 'a'}`);
    await mysql.query(`CREATE TABLE \`${db}\`.t (g VARCHAR(8)) ENGINE=InnoDB`);
    await mysql.query(`CREATE TABLE IF NOT EXISTS \`${db}\`.only_${gen.toLowerCase()} (n INT)`);
    await mysql.query(`INSERT INTO \`${db}\`.t VALUES (?)`, [gen]);
    const client = redis.client();
    await client.flushall();
    await client.set('gen', gen);
    await client.set(`only-${gen}`, gen);
  }

  /** Each element's generation, and what an element holds of the other one. */
  async function generations() {
    const file = await readFile(path.join(mount, 'gen'), 'utf8');
    const [row] = await rows<{ g: string }>(mysql, `SELECT g FROM \`${db}\`.t`);
    const tables = (await rows<{ name: string }>(mysql, 'SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1', [db])).map((r) => r.name);
    const client = redis.client();
    return {
      files: file,
      filesOnly: (await readdir(path.join(mount, 'sub'))).sort(),
      mysql: row?.g,
      tables,
      redis: await client.get('gen'),
      redisKeys: (await client.keys('*')).sort(),
    };
  }

  const expected = (gen: 'A' | 'B') => ({
    files: gen,
    filesOnly: [`only-${gen}`],
    mysql: gen,
    tables: [`only_${gen.toLowerCase()}`, 't'],
    redis: gen,
    redisKeys: ['gen', `only-${gen}`],
  });

  async function leftovers(): Promise<string[]> {
    const found: string[] = [];
    for (const name of await readdir(sandbox.dir)) if (name.includes('.storage-agent-')) found.push(name);
    for (const name of await readdir(path.join(sandbox.stateDir, 'jobs')).catch(() => [])) if (!name.endsWith('.json')) found.push(`jobs/${name}`);
    for (const dir of ['restores', 'tmp', 'redis-restores', 'frozen', 'locks', 'uploads']) {
      const entries = await readdir(path.join(sandbox.stateDir, dir), { recursive: true }).catch(() => []);
      // An empty per-process temp directory of a live or ended command holds nothing.
      for (const entry of entries) if (!(dir === 'tmp' && /^\d+-\d+$/.test(entry))) found.push(`${dir}/${entry}`);
    }
    for (const name of await tempEntries()) if (/^storage-agent-(mysql|redis)-/.test(path.basename(name)) && !tmpBefore.includes(name)) found.push(`tmp: ${name}`);
    found.push(...(await leftoverDatabases(mysql)).filter((name) => name.startsWith(db)));
    return found;
  }

  beforeAll(async () => {
    sandbox = await createSandbox();
    tmpBefore = await tempEntries();
    const server = mariadbServer();
    mysql = await connect(server, { root: true });
    await mysql.query(`CREATE DATABASE \`${db}\``);
    redis = await startRedis();
    mount = path.join(sandbox.dir, 'uploads');
    process.env.TEST_CRASH_MYSQL_PASSWORD = server.password;
    await sandbox.writeConfig({
      environments: {
        app: {
          services: { uploads: { kind: 'files', path: mount }, db: mysqlServiceConfig(server, [db], 'TEST_CRASH_MYSQL_PASSWORD'), cache: redis.serviceConfig() },
        },
      },
    });
    await writeGeneration('B');
    backupId = (await cliJson<Manifest>([...args(), 'backup', 'create', 'app', '--live'])).id;
  });

  afterAll(async () => {
    await redis?.stop();
    await mysql?.query(`DROP DATABASE IF EXISTS \`${db}\``).catch(() => {});
    await mysql?.end();
    await sandbox?.cleanup();
  });

  const killRestoreAt = (phase: string) => killCliAt(sandbox.dir, [...args(), 'backup', 'restore', 'app', backupId, '--yes', '--no-safety-backup'], phase);

  it.each([...BEFORE_FIRST_SWAP.map((p) => [p, 'A'] as const), ...AFTER_FIRST_SWAP.map((p) => [p, 'B'] as const)])(
    'killed at %s → after one command every element is %s, nothing left behind',
    async (phase, gen) => {
      await writeGeneration('A');
      await killRestoreAt(phase);
      const list = await cli([...args(), 'backup', 'list', 'app']);
      expect(list.exitCode, list.stderr).toBe(0);
      expect(await generations()).toEqual(expected(gen));
      expect(await leftovers()).toEqual([]);
      // Redis is a writable master again, its settings set back.
      const client = redis.client();
      expect(await client.set('writable', '1')).toBe('OK');
      expect(await client.config('GET', 'masterauth')).toEqual(['masterauth', '']);
      // The job says what recovery did.
      const jobs = await cliJson<{ id: string; kind: string; state: string; error?: { code: string; message: string } }[]>([...args(), 'jobs', 'list']);
      const job = jobs.find((j) => j.kind === 'backup.restore' && j.error?.code === 'E_INTERRUPTED' && !seenJobs.has(j.id));
      expect(job?.error?.message).toMatch(gen === 'A' ? /recovery removed what it had staged.*the target is unchanged/ : /recovery finished the restore.*entirely the backup's/);
      seenJobs.add(job!.id);
    },
  );
  const seenJobs = new Set<string>();

  it('killed between two swaps, and Redis unreachable at the next command: the job says what is swapped in and what waits; once Redis is back the next command finishes it and the job says so', async () => {
    await writeGeneration('A');
    await killRestoreAt('restore:committed:db');
    const config = parse(await readFile(sandbox.configPath, 'utf8')) as { environments: { app: { services: { cache: { port: number } } } } };
    const unreachable = structuredClone(config);
    unreachable.environments.app.services.cache.port = 1; // nothing listens there
    await sandbox.writeConfig(unreachable);
    const jobOf = async () => (await cliJson<{ id: string; kind: string; error?: { code: string; message: string } }[]>([...args(), 'jobs', 'list'])).find((j) => j.kind === 'backup.restore' && !seenJobs.has(j.id));
    try {
      const list = await cli([...args(), 'backup', 'list', 'app']);
      expect(list.exitCode, list.stderr).toBe(0);
      const waiting = await jobOf();
      expect(waiting?.error?.code).toBe('E_INTERRUPTED');
      expect(waiting?.error?.message).toMatch(/recovery could not finish it yet \(.*\): uploads, db already the backup's, cache still as before; the next agent start, or the next job on app \(none runs before\), retries/);
      expect(await generations()).toMatchObject({ files: 'B', mysql: 'B', redis: 'A' });
    } finally {
      await sandbox.writeConfig(config);
    }
    const list = await cli([...args(), 'backup', 'list', 'app']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(await generations()).toEqual(expected('B'));
    expect(await leftovers()).toEqual([]);
    const finished = await jobOf();
    expect(finished?.error?.message).toMatch(/recovery finished the restore \(swapped in cache\): the target is entirely the backup's \(by a later recovery, /);
    seenJobs.add(finished!.id);
  });

  it('an uninterrupted restore after all of that still works and leaves nothing', async () => {
    await writeGeneration('A');
    const restore = await cli([...args(), 'backup', 'restore', 'app', backupId, '--yes', '--no-safety-backup']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(await generations()).toEqual(expected('B'));
    expect(await leftovers()).toEqual([]);
  });
});

/**
 * A MySQL element of TWO databases is all-or-nothing too: the swap is one RENAME TABLE per
 * database, so a kill between the first database's swap and the second's (restore:mysql:swapped
 * is reached once per database, after its swap and before its old tables are dropped) must be
 * rolled forward over both. And a restore killed while `mysql` is still loading a staging
 * database leaves nothing: no staging database, no option file, no child process.
 */
describe('a restore of a two-database MySQL element killed mid-swap or mid-load is never left mixed', () => {
  let sandbox: Sandbox;
  let mysql: Connection;
  let backupId: string;
  let tokens: Tokens;
  let mount: string;
  let tmpBefore: string[];
  const db1 = uniqueName('crash2a');
  const db2 = uniqueName('crash2b');
  const dbs = [db1, db2];
  const args = () => ['--config', sandbox.configPath];
  const restoreArgs = () => [...args(), 'backup', 'restore', 'two', backupId, '--yes', '--no-safety-backup'];
  const seenJobs = new Set<string>();

  /** Both databases (and the files element) at generation `gen`; each database has a view of its generation too. */
  async function writeGeneration(gen: 'A' | 'B'): Promise<void> {
    await rm(mount, { recursive: true, force: true });
    await mkdir(mount, { recursive: true });
    await writeFile(path.join(mount, 'gen'), gen);
    const other = gen === 'A' ? 'b' : 'a';
    for (const db of dbs) {
      await mysql.query(`DROP VIEW IF EXISTS \`${db}\`.v_${other}, \`${db}\`.v_${gen.toLowerCase()}`);
      await mysql.query(`DROP TABLE IF EXISTS \`${db}\`.t, \`${db}\`.only_${other}`);
      await mysql.query(`CREATE TABLE \`${db}\`.t (g VARCHAR(8)) ENGINE=InnoDB`);
      await mysql.query(`CREATE TABLE IF NOT EXISTS \`${db}\`.only_${gen.toLowerCase()} (n INT)`);
      await mysql.query(`CREATE VIEW \`${db}\`.v_${gen.toLowerCase()} AS SELECT g FROM \`${db}\`.t`);
      await mysql.query(`INSERT INTO \`${db}\`.t VALUES (?)`, [gen]);
    }
  }

  async function generations() {
    const result: Record<string, unknown> = { files: await readFile(path.join(mount, 'gen'), 'utf8') };
    for (const db of dbs) {
      const [row] = await rows<{ g: string }>(mysql, `SELECT g FROM \`${db}\`.t`);
      const tables = (await rows<{ name: string }>(mysql, "SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME <> 'big' ORDER BY 1", [db])).map((r) => r.name);
      result[db] = { gen: row?.g, tables };
    }
    return result;
  }
  const expected = (gen: 'A' | 'B') => ({
    files: gen,
    ...Object.fromEntries(dbs.map((db) => [db, { gen, tables: [`only_${gen.toLowerCase()}`, 't', `v_${gen.toLowerCase()}`] }])),
  });

  /** Everything a restore may leave: beside the mount, in the state dir (option files too), in /tmp, staging/old databases. */
  async function leftovers(): Promise<string[]> {
    const found: string[] = [];
    for (const name of await readdir(sandbox.dir)) if (name.includes('.storage-agent-')) found.push(name);
    for (const dir of ['restores', 'tmp', 'redis-restores', 'frozen', 'locks', 'uploads']) {
      const entries = await readdir(path.join(sandbox.stateDir, dir), { recursive: true }).catch(() => []);
      for (const entry of entries) if (!(dir === 'tmp' && /^\d+-\d+$/.test(entry))) found.push(`${dir}/${entry}`);
    }
    for (const entry of await readdir(sandbox.stateDir, { recursive: true })) if (entry.endsWith('.cnf')) found.push(entry);
    for (const name of await tempEntries()) if (/^storage-agent-(mysql|redis)-/.test(path.basename(name)) && !tmpBefore.includes(name)) found.push(`tmp: ${name}`);
    found.push(...(await leftoverDatabases(mysql)).filter((name) => dbs.some((db) => name.startsWith(db))));
    return found;
  }

  /** The job of the latest interrupted restore, not seen by an earlier test. */
  async function interruptedJob() {
    const jobs = await cliJson<{ id: string; kind: string; state: string; error?: { code: string; message: string } }[]>([...args(), 'jobs', 'list']);
    const job = jobs.find((j) => j.kind === 'backup.restore' && j.error?.code === 'E_INTERRUPTED' && !seenJobs.has(j.id));
    if (job) seenJobs.add(job.id);
    return job;
  }

  beforeAll(async () => {
    sandbox = await createSandbox();
    tmpBefore = await tempEntries();
    tokens = await writeTokens(sandbox);
    const server = mariadbServer();
    mysql = await connect(server, { root: true });
    for (const db of dbs) await mysql.query(`CREATE DATABASE \`${db}\``);
    // Some rows, so that loading the staging databases takes a moment (the mid-load kill).
    await mysql.query(`CREATE TABLE \`${db1}\`.big (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB`);
    await mysql.query(
      `INSERT INTO \`${db1}\`.big SELECT seq, REPEAT(MD5(seq), 6) FROM \`${db1}\`.seq_1_to_30000`, // MariaDB's SEQUENCE engine
    );
    mount = path.join(sandbox.dir, 'uploads');
    process.env.TEST_CRASH2_MYSQL_PASSWORD = server.password;
    await sandbox.writeConfig({
      daemon: daemonSection(tokens),
      environments: { two: { services: { uploads: { kind: 'files', path: mount }, db: mysqlServiceConfig(server, dbs, 'TEST_CRASH2_MYSQL_PASSWORD') } } },
    });
    await writeGeneration('B');
    backupId = (await cliJson<Manifest>([...args(), 'backup', 'create', 'two', '--live'])).id;
  });

  afterAll(async () => {
    for (const db of dbs) await mysql?.query(`DROP DATABASE IF EXISTS \`${db}\``).catch(() => {});
    for (const name of (await leftoverDatabases(mysql).catch(() => [])).filter((n) => dbs.some((db) => n.startsWith(db)))) {
      await mysql.query(`DROP DATABASE IF EXISTS \`${name}\``).catch(() => {});
    }
    await mysql?.end();
    await sandbox?.cleanup();
  });

  it.each([
    ['restore:mysql:renamed', 1, "first database's tables renamed, its objects not yet made", ['B', 'A']],
    ['restore:mysql:swapped', 1, 'first database swapped, the second not yet', ['B', 'A']],
    ['restore:mysql:renamed', 2, "second database's tables renamed, the first swapped", ['B', 'B']],
    ['restore:mysql:swapped', 2, 'both swapped, staging not yet dropped', ['B', 'B']],
  ] as const)('killed at %s (time %i: %s) → after one command both databases are new', async (phase, occurrence, _, killedWith) => {
    await writeGeneration('A');
    await killCliAtOccurrence(sandbox.dir, restoreArgs(), phase, occurrence);
    // Where the kill left the tables, before anything recovers: mixed, for the first two.
    const tablesNow = [];
    for (const db of dbs) tablesNow.push((await rows<{ g: string }>(mysql, `SELECT g FROM \`${db}\`.t`))[0]?.g);
    expect(tablesNow).toEqual(killedWith);
    const list = await cli([...args(), 'backup', 'list', 'two']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(await generations()).toEqual(expected('B'));
    expect(await leftovers()).toEqual([]);
    expect((await interruptedJob())?.error?.message).toMatch(/recovery finished the restore.*entirely the backup's/);
  });

  it('killed while mysql loads the staging databases → after one command the target is old, no staging database, option file or child left', async () => {
    await writeGeneration('A');
    const restore = startCli(restoreArgs());
    const journalSaysStaging = async () => {
      for (const name of await readdir(path.join(sandbox.stateDir, 'restores')).catch(() => [])) {
        if (!name.endsWith('.json')) continue;
        const record = JSON.parse(await readFile(path.join(sandbox.stateDir, 'restores', name), 'utf8').catch(() => '{}')) as { phase?: string };
        if (record.phase === 'staging') return true;
      }
      return false;
    };
    // The first staging database exists (mysql is loading it) while the journal says staging.
    await waitFor(
      'the staging database of the restore',
      async () => restore.exitCode === null && (await leftoverDatabases(mysql)).some((name) => name.startsWith(`${db1}__sa_stage_`)) && (await journalSaysStaging()),
      60_000,
    );
    const children = await childPids(restore.pid!);
    restore.kill('SIGKILL');
    const killed = await restore;
    expect(killed.signal, `the restore ended before it was killed: ${String(killed.stderr)}`).toBe('SIGKILL');
    expect(children.length, 'the restore had no child process (mysql) when killed').toBeGreaterThan(0);
    const list = await cli([...args(), 'backup', 'list', 'two']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(await generations()).toEqual(expected('A'));
    expect(await leftovers()).toEqual([]);
    const running: string[] = [];
    for (const pid of children) if (await processRuns(pid)) running.push(`${pid}: ${(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ')}`);
    expect(running).toEqual([]);
    expect((await interruptedJob())?.error?.message).toMatch(/recovery removed what it had staged.*the target is unchanged/);
  });

  it('a daemon SIGKILLed during its own restore job, files swapped and MySQL not: the next daemon start rolls it forward and the job says so', async () => {
    await writeGeneration('A');
    const pauseFile = path.join(sandbox.dir, `paused-daemon-${Date.now()}`);
    const daemon = await startDaemon(sandbox.configPath, { env: { STORAGE_AGENT_PAUSE_AT: 'restore:committed:uploads', STORAGE_AGENT_PAUSE_FILE: pauseFile } });
    let next: Awaited<ReturnType<typeof startDaemon>> | undefined;
    try {
      const client = await TestClient.connect(daemon.url, tokens.admin);
      const { jobId } = await client.call<{ jobId: string }>('backup.restore', { env: 'two', id: backupId, safetyBackup: false });
      await waitFor('the daemon to pause', () => existsSync(pauseFile), 60_000);
      expect(Number((await readFile(pauseFile, 'utf8')).trim())).toBe(daemon.child.pid);
      daemon.child.kill('SIGKILL');
      await daemon.exited;
      await client.close().catch(() => {});
      // What the kill left, before anything recovers: files new, MySQL old.
      expect((await generations()).files).toBe('B');
      expect(((await generations())[db1] as { gen: string }).gen).toBe('A');

      next = await startDaemon(sandbox.configPath);
      const finished = next.logs().find((l) => /was finished: every element is the backup's now/.test(String(l.msg)));
      expect(finished, next.stdout()).toMatchObject({ target: 'two', backupId });
      expect(next.logs().find((l) => l.msg === 'daemon listening')).toMatchObject({ recovered: expect.anything() });
      expect(await generations()).toEqual(expected('B'));
      expect(await leftovers()).toEqual([]);
      // The job record, as the new daemon serves it: interrupted, and what recovery did.
      const viewer = await TestClient.connect(next.url, tokens.viewer);
      const job = await viewer.call<{ state: string; error?: { code: string; message: string } }>('job.get', { jobId });
      await viewer.close();
      expect(job).toMatchObject({ state: 'failed', error: { code: 'E_INTERRUPTED' } });
      expect(job.error!.message).toMatch(
        /^interrupted: the agent process \(pid \d+\) ended while this job was running; every element had been staged and verified, so recovery finished the restore \(swapped in db\): the target is entirely the backup's$/,
      );
      seenJobs.add(jobId);
    } finally {
      await rm(pauseFile, { force: true });
      await daemon.stop();
      await next?.stop();
    }
  });
});
