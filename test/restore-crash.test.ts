import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, killCliAt, type Sandbox } from './support/cli.ts';
import { connect, leftoverDatabases, mariadbServer, mysqlServiceConfig, rows, uniqueName } from './support/mysql.ts';
import { startRedis, type TestRedis } from './support/redis.ts';

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
    for (const name of await readdir(tmpdir())) if (/^storage-agent-(mysql|redis)-/.test(name) && !tmpBefore.includes(name)) found.push(`/tmp/${name}`);
    found.push(...(await leftoverDatabases(mysql)).filter((name) => name.startsWith(db)));
    return found;
  }

  beforeAll(async () => {
    sandbox = await createSandbox();
    tmpBefore = await readdir(tmpdir());
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

  it('an uninterrupted restore after all of that still works and leaves nothing', async () => {
    await writeGeneration('A');
    const restore = await cli([...args(), 'backup', 'restore', 'app', backupId, '--yes', '--no-safety-backup']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(await generations()).toEqual(expected('B'));
    expect(await leftovers()).toEqual([]);
  });
});
