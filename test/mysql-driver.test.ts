import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MysqlServiceConfig } from '../src/snapshot/mysql/service-config.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { MysqlDriver } from '../src/snapshot/mysql/driver.ts';
import { cli, cliJson, createSandbox, startCli } from './support/cli.ts';
import { connectionsTo } from './support/sockets.ts';
import {
  checksums,
  connect,
  createDatabase,
  createFixture,
  databaseExists,
  definitions,
  leftoverDatabases,
  mariadbScript,
  mariadbServer,
  mysqlServiceConfig,
  rows,
  uniqueName,
  type Definitions,
  type MariadbTestServer,
} from './support/mysql.ts';

const PASSWORD_ENV = 'SA_TEST_MYSQL_PASSWORD';
const never = () => new AbortController().signal;
const STATE_DIR = await mkdtemp(path.join(tmpdir(), 'mysql-driver-state-'));
afterAll(() => rm(STATE_DIR, { recursive: true, force: true }));

/** The FIFOs mysqldump wrote into (dump-output.ts) still in the private temp dirs: none once a capture is released. */
function fifosLeft(): string[] {
  const root = path.join(STATE_DIR, 'tmp');
  if (!existsSync(root)) return [];
  return readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((name) => name.endsWith('.fifo'));
}

/** Processes whose command line has every one of `parts` (e.g. a mysqldump of one database). */
function processesWith(...parts: string[]): { pid: number; argv: string[] }[] {
  const found: { pid: number; argv: string[] }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter(Boolean);
      const state = readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1]?.[0];
      if (state !== 'Z' && parts.every((p) => argv.some((a) => a.includes(p)))) found.push({ pid: Number(entry), argv });
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function waitFor<T>(probe: () => T | undefined | Promise<T | undefined>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * The definitions a restore by the agent's account makes of `defs`: every DEFINER is the
 * restoring account (the dump's are rewritten to CURRENT_USER, issue #10), nothing else changes.
 */
function restoredBy(user: string, defs: Definitions): Definitions {
  return JSON.parse(JSON.stringify(defs).replaceAll(/DEFINER=`[^`]*`@`[^`]*`/g, `DEFINER=\`${user}\`@\`127.0.0.1\``)) as Definitions;
}

/**
 * What a forged dump must not change anywhere on the server: every account's grants, every
 * routine, trigger and event (of any database), the binary logs (RESET MASTER, PURGE), the
 * plugins and the global settings a body could SET.
 */
async function serverState(db: Connection): Promise<Record<string, unknown>> {
  const grants: Record<string, string[] | string> = {};
  for (const { User, Host } of await rows<{ User: string; Host: string }>(db, 'SELECT User, Host FROM mysql.global_priv ORDER BY User, Host')) {
    grants[`${User}@${Host}`] = await rows<Record<string, string>>(db, 'SHOW GRANTS FOR ?@?', [User, Host]).then(
      (found) => found.map((r) => Object.values(r)[0]!),
      (error: Error) => error.message,
    );
  }
  return {
    grants,
    routines: await rows(db, 'SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE, DEFINER, SECURITY_TYPE, ROUTINE_DEFINITION FROM information_schema.ROUTINES ORDER BY 1, 2, 3'),
    triggers: await rows(db, 'SELECT TRIGGER_SCHEMA, TRIGGER_NAME, EVENT_OBJECT_TABLE, DEFINER, ACTION_STATEMENT FROM information_schema.TRIGGERS ORDER BY 1, 2'),
    events: await rows(db, 'SELECT EVENT_SCHEMA, EVENT_NAME, DEFINER, EVENT_DEFINITION, STATUS FROM information_schema.EVENTS ORDER BY 1, 2'),
    binlogs: (await rows<{ Log_name: string }>(db, 'SHOW BINARY LOGS')).map((r) => r.Log_name),
    plugins: await rows(db, 'SELECT PLUGIN_NAME, PLUGIN_STATUS FROM information_schema.PLUGINS ORDER BY 1'),
    globals: await rows(db, 'SELECT @@GLOBAL.event_scheduler AS scheduler, @@GLOBAL.read_only AS readOnly, @@GLOBAL.max_connections AS maxConnections'),
  };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('mysql driver (real MariaDB)', () => {
  let server: MariadbTestServer;
  /** root (over the socket): the tests change data the agent's user may only read. */
  let db: Connection;
  const created: string[] = [];
  /** The rich fixture database and a small second one, backed up together as one element. */
  let shop: string;
  let crm: string;
  /** ~120 MB of dump: long enough to look at a running mysqldump or to kill the server under it. */
  let big: string;

  const track = (name: string) => (created.push(name), name);
  const config = (databases: string[], extra: Partial<MysqlServiceConfig> = {}): MysqlServiceConfig => ({
    kind: 'mysql',
    host: server.host,
    port: server.port,
    socket: undefined,
    user: server.user,
    password: { env: PASSWORD_ENV },
    databases,
    lockWaitTimeout: 5_000,
    longQueryThreshold: 10_000,
    ...extra,
  });
  const driver = (databases: string[], extra: Partial<MysqlServiceConfig> = {}, password = async () => server.password as string | undefined) =>
    new MysqlDriver({ name: 'db', config: config(databases, extra), stateDir: STATE_DIR, password });

  beforeAll(async () => {
    server = mariadbServer();
    process.env[PASSWORD_ENV] = server.password;
    db = await connect(server, { root: true });
    shop = track(await createDatabase(db, 'sa_shop'));
    await createFixture(db, shop);
    crm = track(await createDatabase(db, 'sa_crm'));
    await db.query(`CREATE TABLE \`${crm}\`.contacts (id INT PRIMARY KEY, email VARCHAR(100) UNIQUE, tags SET('a','b','c'))`);
    await db.query(`INSERT INTO \`${crm}\`.contacts VALUES (1, 'a@example.org', 'a,c'), (2, 'b@example.org', '')`);
    big = track(await createDatabase(db, 'sa_big'));
    await db.query(`CREATE TABLE \`${big}\`.t (id INT PRIMARY KEY, b BLOB) ENGINE=InnoDB`);
    await db.query(`INSERT INTO \`${big}\`.t SELECT seq, RANDOM_BYTES(1024) FROM \`${big}\`.seq_1_to_60000`);
  });

  afterAll(async () => {
    const admin = await connect(server, { root: true }).catch(() => undefined);
    for (const name of created) await admin?.query(`DROP DATABASE IF EXISTS \`${name}\``).catch(() => {});
    admin?.destroy();
    db?.destroy();
  });

  it('captures one consistent point in time across databases and restores it identically into new ones', async () => {
    const before = { shop: await checksums(db, shop), crm: await checksums(db, crm), shopDefs: await definitions(db, shop) };
    const capture = await driver([shop, crm]).capture({ signal: never(), consistent: true });
    expect(capture.pointInTime).toBe(true);
    // Written once capture() resolved: after the point in time, so not in the backup.
    await db.query(`INSERT INTO \`${shop}\`.audit (what) VALUES ('after the snapshot')`);
    const dump = await readAll(capture.stream);
    const { facts, warnings } = await capture.result;
    await capture.release();
    expect(warnings).toEqual([]);
    expect(facts).toMatchObject({ databases: `${shop},${crm}`, binlogExact: true, binlogFile: expect.stringMatching(/^binlog\.\d+$/) });
    expect(facts.binlogPosition).toEqual(expect.any(Number));
    expect(facts.serverVersion).toMatch(/MariaDB/);
    expect(facts.ftwrlMs).toBeGreaterThan(0);
    expect(facts.ftwrlMs).toBeLessThan(1_000);

    // Databases that do not exist yet, mapped by position.
    const [shop2, crm2] = [track(uniqueName('sa_shop_copy')), track(uniqueName('sa_crm_copy'))];
    const staged = await driver([shop2, crm2]).stage(Readable.from([dump]), never());
    expect(staged.facts.databases).toBe(`${shop}->${shop2},${crm}->${crm2}`);
    // Staged beside the targets, which are not touched before commit.
    expect(await databaseExists(db, shop2)).toBe(false);
    expect(await leftoverDatabases(db)).toHaveLength(2);
    await staged.commit();
    expect(await leftoverDatabases(db)).toEqual([]);

    expect(await checksums(db, shop2)).toEqual(before.shop);
    expect(await checksums(db, crm2)).toEqual(before.crm);
    expect(await definitions(db, shop2)).toEqual(restoredBy(server.user, before.shopDefs));
    const [blob] = await rows<{ data: Buffer }>(db, `SELECT data FROM \`${shop2}\`.blobs WHERE id = 1`);
    expect([...new Set(blob!.data)].sort((a, b) => a - b)).toEqual(Array.from({ length: 256 }, (_, i) => i));
    const [emoji] = await rows<{ name: string }>(db, `SELECT name FROM \`${shop2}\`.parent WHERE id = 2`);
    expect(emoji!.name).toBe('emoji 😀🚀 and ünïcödé');

    // The restored objects work where they now live: procedure → triggers → view → function.
    await db.query(`CALL \`${shop2}\`.add_parent(10, '  spaced  ')`);
    const [made] = await rows<{ shout: string; audits: number; doubled: string }>(
      db,
      `SELECT n.shout, (SELECT COUNT(*) FROM \`${shop2}\`.audit WHERE what LIKE 'parent 10%') AS audits, \`${shop2}\`.double_it(1.25) AS doubled
       FROM \`${shop2}\`.parent_names n WHERE n.id = 10`,
    );
    expect(made).toEqual({ shout: 'SPACED', audits: 1, doubled: '2.5000000000' });
  });

  it('a restore drops the staging databases a crashed restore into the same targets left, and no others', async () => {
    const target = track(uniqueName('sa_stale'));
    const stale = track(`${target}__sa_stage_0badc0`);
    const unrelated = track(`${uniqueName('sa_other')}__sa_stage_0badc0`);
    for (const name of [stale, unrelated]) {
      await db.query(`CREATE DATABASE \`${name}\``);
      await db.query(`CREATE TABLE \`${name}\`.t (id INT)`);
    }
    const capture = await driver([crm]).capture({ signal: never(), consistent: false });
    const dump = await readAll(capture.stream);
    await capture.result;
    await capture.release();
    const staged = await driver([target]).stage(Readable.from([dump]), never());
    expect(await databaseExists(db, stale)).toBe(false);
    expect(await databaseExists(db, unrelated)).toBe(true);
    await staged.commit();
    expect(await checksums(db, target)).toEqual(await checksums(db, crm));
    await db.query(`DROP DATABASE \`${unrelated}\``); // other tests count leftovers
  });

  it('restores the same whatever the chunking of the stream (statements split anywhere)', async () => {
    const before = { sums: await checksums(db, shop), defs: await definitions(db, shop) };
    const capture = await driver([shop]).capture({ signal: never(), consistent: false });
    const dump = await readAll(capture.stream);
    await capture.result;
    await capture.release();
    // Irregular small chunks: every delimiter, comment opener, quote and escape lands on a boundary somewhere.
    const sizes = [1, 2, 3, 5, 7, 11, 13, 31, 32, 33, 64, 97];
    const chunks: Buffer[] = [];
    for (let at = 0, k = 0; at < dump.length; k++) {
      const size = at < 600_000 ? sizes[k % sizes.length]! : dump.length;
      chunks.push(dump.subarray(at, at + size));
      at += size;
    }
    const copy = track(uniqueName('sa_chunked'));
    const staged = await driver([copy]).stage(Readable.from(chunks), never());
    await staged.commit();
    expect(await checksums(db, copy)).toEqual(before.sums);
    expect(await definitions(db, copy)).toEqual(restoredBy(server.user, before.defs));
  });

  it('CLI: backup, list, restore in place over changed data, into another environment, and one element only', async () => {
    const sandbox = await createSandbox();
    try {
      const other = track(await createDatabase(db, 'sa_other'));
      await db.query(`CREATE TABLE \`${other}\`.kv (k VARCHAR(10) PRIMARY KEY, v TEXT)`);
      await db.query(`INSERT INTO \`${other}\`.kv VALUES ('x', 'original')`);
      const [shop3, crm3] = [track(uniqueName('sa_shop_env')), track(uniqueName('sa_crm_env'))];
      await sandbox.writeConfig({
        environments: {
          site: { services: { db: mysqlServiceConfig(server, [shop, crm], PASSWORD_ENV), other: mysqlServiceConfig(server, [other], PASSWORD_ENV) } },
          staging: { services: { db: mysqlServiceConfig(server, [shop3, crm3], PASSWORD_ENV) } },
        },
      });
      const args = ['--config', sandbox.configPath];
      const original = { shop: await checksums(db, shop), shopDefs: await definitions(db, shop), crm: await checksums(db, crm), other: await checksums(db, other) };

      const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'site']);
      expect(manifest.elements.map((e) => [e.name, e.kind, e.format])).toEqual([
        ['db', 'mysql', 'sql'],
        ['other', 'mysql', 'sql'],
      ]);
      expect(manifest.elements[0]!.facts).toMatchObject({ databases: `${shop},${crm}` });
      expect(await cliJson([...args, 'backup', 'list', 'site'])).toMatchObject([{ id: manifest.id, restorable: true }]);

      // Change everything a restore must undo: rows, a dropped view and trigger, a new table,
      // a new procedure; and the other element, which a restore of `db` alone must not touch.
      await db.query(
        `USE \`${shop}\`; DELETE FROM child WHERE id = 2; UPDATE parent SET name = 'changed' WHERE id = 1; DROP VIEW rich_children;
         DROP TRIGGER parent_name; CREATE TABLE extra (x INT); INSERT INTO extra VALUES (1); CREATE PROCEDURE extra_proc() SELECT 1; USE information_schema`,
      );
      await db.query(`UPDATE \`${other}\`.kv SET v = 'changed'`);
      const changedOther = await checksums(db, other);
      expect(changedOther).not.toEqual(original.other);

      const restore = await cli([...args, 'backup', 'restore', 'site', manifest.id, '--element', 'db', '--yes']);
      expect(restore.exitCode, restore.stderr).toBe(0);
      expect(await checksums(db, shop)).toEqual(original.shop);
      expect(await definitions(db, shop)).toEqual(restoredBy(server.user, original.shopDefs));
      expect(await checksums(db, crm)).toEqual(original.crm);
      expect(await checksums(db, other)).toEqual(changedOther);
      expect(await leftoverDatabases(db)).toEqual([]);

      const copy = await cli([...args, 'backup', 'restore', 'site', manifest.id, '--target', 'staging', '--element', 'db', '--yes']);
      expect(copy.exitCode, copy.stderr).toBe(0);
      expect(await checksums(db, shop3)).toEqual(original.shop);
      expect(await definitions(db, shop3)).toEqual(restoredBy(server.user, original.shopDefs));
      expect(await checksums(db, crm3)).toEqual(original.crm);

      const all = await cli([...args, 'backup', 'restore', 'site', manifest.id, '--yes']);
      expect(all.exitCode, all.stderr).toBe(0);
      expect(await checksums(db, other)).toEqual(original.other);
    } finally {
      await sandbox.cleanup();
    }
  });

  it('the password reaches mysqldump through a removed 0600 file only: never its argv or environment', async () => {
    // A password full of what an option file, a shell or a command line would mangle.
    const password = `p"w\\#'; x $HOME \`id\` end`;
    const user = uniqueName('sa_pw');
    const root = await connect(server, { root: true });
    try {
      await root.query('CREATE USER ?@? IDENTIFIED BY ?', [user, '127.0.0.1', password]);
      await root.query(`GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, RELOAD, PROCESS, REPLICATION CLIENT ON *.* TO ?@?`, [user, '127.0.0.1']);
      process.env.SA_TEST_WEIRD_PASSWORD = password;
      const weird = new MysqlDriver({
        name: 'db',
        config: { ...config([big]), user, password: { env: 'SA_TEST_WEIRD_PASSWORD' } },
        password: async () => process.env.SA_TEST_WEIRD_PASSWORD,
        stateDir: STATE_DIR,
      });
      const capture = await weird.capture({ signal: never(), consistent: true });
      // Not read yet: mysqldump is blocked writing, alive.
      const [dump] = await waitFor(() => {
        const found = processesWith('--databases', big);
        return found.length ? found : undefined;
      }, 'the mysqldump process');
      const argv = dump!.argv.join(' ');
      const environ = readFileSync(`/proc/${dump!.pid}/environ`, 'utf8');
      expect(argv).not.toContain(password);
      expect(argv).not.toMatch(/--password|(^| )-p/);
      expect(environ).not.toContain(password);
      expect(environ).not.toContain(server.password);
      expect(environ.split('\0').filter(Boolean).map((v) => v.split('=')[0]).sort()).toEqual(['LC_ALL', 'PATH']);
      const defaultsFile = dump!.argv.find((a) => a.startsWith('--defaults-file='))!.slice('--defaults-file='.length);
      expect(dump!.argv[1]).toBe(`--defaults-file=${defaultsFile}`);
      expect(existsSync(defaultsFile)).toBe(false); // removed as soon as mysqldump had read it

      // The escaped password did log in: the whole dump arrives.
      const bytes = (await readAll(capture.stream)).length;
      await expect(capture.result).resolves.toMatchObject({ warnings: [] });
      await capture.release();
      expect(bytes).toBeGreaterThan(100_000_000);
      expect(fifosLeft()).toEqual([]);
    } finally {
      await root.query('DROP USER IF EXISTS ?@?', [user, '127.0.0.1']).catch(() => {});
      root.destroy();
    }
  });

  it('cancelling a capture kills mysqldump and fails the element with E_CANCELLED', async () => {
    const controller = new AbortController();
    const capture = await driver([big]).capture({ signal: controller.signal, consistent: false });
    const reading = readAll(capture.stream).catch((error: unknown) => error);
    await waitFor(() => (processesWith('--databases', big).length ? true : undefined), 'the mysqldump process');
    controller.abort();
    await expect(capture.result).rejects.toMatchObject({ code: 'E_CANCELLED' });
    expect(await reading).toBeInstanceOf(Error);
    await capture.release();
    await waitFor(() => (processesWith('--databases', big).length === 0 ? true : undefined), 'mysqldump to exit');
    expect(fifosLeft()).toEqual([]);
  });

  it('a prepared capture released before it runs leaves no FIFO behind, and the next one dumps whole', async () => {
    const prepared = await driver([big]).prepare({ signal: never(), consistent: true });
    expect(fifosLeft()).toHaveLength(1);
    await prepared.release();
    expect(fifosLeft()).toEqual([]);
    const capture = await driver([shop]).capture({ signal: never(), consistent: false });
    const dump = (await readAll(capture.stream)).toString();
    await expect(capture.result).resolves.toMatchObject({ warnings: [] });
    await capture.release();
    expect(dump.startsWith('-- storage-agent mysql dump ')).toBe(true);
    expect(dump).toMatch(/-- Dump completed/);
    expect(fifosLeft()).toEqual([]);
  });

  it('refuses FLUSH TABLES WITH READ LOCK behind a long query, and leaves nothing locked', async () => {
    const sleeper = await connect(server);
    const sleeping = sleeper.query('SELECT SLEEP(30)').catch(() => {});
    try {
      await waitFor(async () => {
        const [row] = await rows<{ ms: string }>(db, "SELECT TIME_MS AS ms FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(30)'");
        return row && Number(row.ms) > 700 ? true : undefined;
      }, 'the long query');
      const started = Date.now();
      const failure = await driver([crm], { longQueryThreshold: 500 })
        .capture({ signal: never(), consistent: true })
        .catch((error: unknown) => error);
      expect(failure).toMatchObject({ code: 'E_CAPTURE_FAILED' });
      expect((failure as Error).message).toMatch(/longer than 0\.5s.*SELECT SLEEP\(30\)/);
      expect(Date.now() - started).toBeLessThan(2_000);
      // Nothing is locked: another session writes at once.
      const writeStarted = Date.now();
      await db.query(`SET SESSION lock_wait_timeout = 2; INSERT INTO \`${crm}\`.contacts VALUES (99, 'w@example.org', 'b'); SET SESSION lock_wait_timeout = DEFAULT`);
      expect(Date.now() - writeStarted).toBeLessThan(500);
      await db.query(`DELETE FROM \`${crm}\`.contacts WHERE id = 99`);
    } finally {
      await db.query(`KILL ${sleeper.threadId}`).catch(() => {});
      await sleeping;
      sleeper.destroy();
    }
  });

  it('prepare connects and checks before the freeze; the point in time is capture()\'s, and a prepare that fails, is cancelled or is released leaves no connection', async () => {
    // The test's own sessions are root's, over the socket: the agent's come over TCP.
    const baseline = await connectionsTo(server.port);
    const open = async () => (await connectionsTo(server.port)) - baseline;
    const closed = (what: string) => waitFor(async () => ((await open()) === 0 ? true : undefined), what);

    // Prepared: connected and checked, nothing locked, and the snapshot not taken yet.
    const prepared = await driver([crm]).prepare!({ signal: never(), consistent: true });
    expect(await open()).toBe(1);
    await db.query(`SET SESSION lock_wait_timeout = 2; INSERT INTO \`${crm}\`.contacts VALUES (70, 'prepared@example.org', 'a'); SET SESSION lock_wait_timeout = DEFAULT`);
    const capture = await prepared.capture(never());
    await db.query(`INSERT INTO \`${crm}\`.contacts VALUES (71, 'captured@example.org', 'a')`);
    const dump = (await readAll(capture.stream)).toString();
    const { facts } = await capture.result;
    await capture.release();
    await prepared.release(); // after capture: a no-op
    expect(dump).toContain('prepared@example.org');
    expect(dump).not.toContain('captured@example.org');
    expect(facts).toMatchObject({ binlogExact: true, ftwrlWaitMs: expect.any(Number), ftwrlMs: expect.any(Number) });
    await closed('the captured connection to close');

    // Released without a capture (a freeze that failed): closed.
    const unused = await driver([crm]).prepare!({ signal: never(), consistent: true });
    expect(await open()).toBe(1);
    await unused.release();
    await closed('the released connection to close');

    // A database that does not exist fails the prepare, with the connection closed.
    await expect(driver([crm, 'sa_no_such_db']).prepare!({ signal: never(), consistent: true })).rejects.toMatchObject({
      code: 'E_CAPTURE_FAILED',
      message: expect.stringMatching(/database sa_no_such_db does not exist/),
    });
    await closed('the failed prepare\'s connection to close');

    // Cancelled while connecting: E_CANCELLED, nothing left open.
    const controller = new AbortController();
    const cancelling = driver([crm]).prepare!({ signal: controller.signal, consistent: true });
    controller.abort();
    await expect(cancelling).rejects.toMatchObject({ code: 'E_CANCELLED' });
    await closed('the cancelled prepare\'s connection to close');
    await db.query(`DELETE FROM \`${crm}\`.contacts WHERE id IN (70, 71)`);
  });

  it('the long-query check runs in prepare (nothing frozen yet) and again right before FTWRL: a query started in between is caught', async () => {
    const sleeper = await connect(server);
    const longQuery = async () => {
      const running = sleeper.query('SELECT SLEEP(30)').catch(() => {});
      await waitFor(async () => {
        const [row] = await rows<{ ms: string }>(db, "SELECT TIME_MS AS ms FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(30)'");
        return row && Number(row.ms) > 700 ? true : undefined;
      }, 'the long query');
      return { running };
    };
    const baseline = await connectionsTo(server.port); // the sleeper's
    let sleeping: Promise<unknown> | undefined;
    try {
      // Already running at prepare: refused there.
      ({ running: sleeping } = await longQuery());
      await expect(driver([crm], { longQueryThreshold: 500 }).prepare!({ signal: never(), consistent: true })).rejects.toMatchObject({
        code: 'E_CAPTURE_FAILED',
        message: expect.stringMatching(/longer than 0\.5s.*SELECT SLEEP\(30\)/),
      });
      await db.query(`KILL QUERY ${sleeper.threadId}`);
      await sleeping;
      // Started after the prepare: refused by capture(), before FTWRL, with the session closed and nothing locked.
      const prepared = await driver([crm], { longQueryThreshold: 500 }).prepare!({ signal: never(), consistent: true });
      ({ running: sleeping } = await longQuery());
      await expect(prepared.capture(never())).rejects.toMatchObject({ code: 'E_CAPTURE_FAILED', message: expect.stringMatching(/SELECT SLEEP\(30\)/) });
      await prepared.release();
      await waitFor(async () => ((await connectionsTo(server.port)) === baseline ? true : undefined), 'the refused capture\'s connection to close');
      const writeStarted = Date.now();
      await db.query(`SET SESSION lock_wait_timeout = 2; INSERT INTO \`${crm}\`.contacts VALUES (98, 'w@example.org', 'b'); SET SESSION lock_wait_timeout = DEFAULT`);
      expect(Date.now() - writeStarted).toBeLessThan(500);
      await db.query(`DELETE FROM \`${crm}\`.contacts WHERE id = 98`);
    } finally {
      await db.query(`KILL ${sleeper.threadId}`).catch(() => {});
      await sleeping;
      sleeper.destroy();
    }
  });

  it('refuses forged or truncated dumps before touching anything, and drops what it staged', async () => {
    const target = track(await createDatabase(db, 'sa_target'));
    await db.query(`CREATE TABLE \`${target}\`.t (id INT PRIMARY KEY); INSERT INTO \`${target}\`.t VALUES (1), (2)`);
    const before = await checksums(db, target);
    const header = (dbs: string[]) => `-- storage-agent mysql dump ${JSON.stringify({ format: 1, databases: dbs })}\n`;
    const trailer = '-- Dump completed on 2026-01-01  0:00:00\n';
    const body = `CREATE DATABASE /*!32312 IF NOT EXISTS*/ \`src\`;\nUSE \`src\`;\nCREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (7);\n`;
    const cases: [string, string, RegExp][] = [
      ['drops a database', `${header(['src'])}${body}DROP DATABASE \`mysql\`;\n${trailer}`, /outside staging/],
      ['switches to an unlisted database', `${header(['src'])}${body}USE \`${target}\`;\nDELETE FROM t;\n${trailer}`, /does not list/],
      ['is truncated', `${header(['src'])}${body}`, /truncated/],
      ['is not ours', `SELECT 1;\n${trailer}`, /not a storage-agent MySQL dump/],
      ['holds two databases for one', `${header(['src', 'src2'])}${body}${trailer}`, /one to one by position/],
    ];
    for (const [what, dump, message] of cases) {
      const failure = await driver([target])
        .stage(Readable.from([Buffer.from(dump)]), never())
        .catch((error: unknown) => error);
      expect(failure, what).toMatchObject({ message: expect.stringMatching(message) });
      expect(await checksums(db, target), what).toEqual(before);
      expect(await leftoverDatabases(db), what).toEqual([]);
    }
    // The well-formed version of the same dump does load.
    const staged = await driver([target]).stage(Readable.from([Buffer.from(`${header(['src'])}${body}${trailer}`)]), never());
    await staged.discard();
    expect(await leftoverDatabases(db)).toEqual([]);
    expect(await checksums(db, target)).toEqual(before);
  });

  it('refuses, with E_UNSAFE_ARCHIVE_ENTRY, every statement a dump may not run (issue #10): no database, account or grant changes', async () => {
    const target = track(await createDatabase(db, 'sa_target'));
    await db.query(`CREATE TABLE \`${target}\`.t (id INT PRIMARY KEY); INSERT INTO \`${target}\`.t VALUES (1), (2)`);
    const victim = track(await createDatabase(db, 'sa_victim'));
    await db.query(
      `CREATE TABLE \`${victim}\`.t (id INT PRIMARY KEY, secret VARCHAR(20)); INSERT INTO \`${victim}\`.t VALUES (1, 'keep'), (2, 'me');
       CREATE FUNCTION \`${victim}\`.f() RETURNS INT DETERMINISTIC RETURN 1`,
    );
    const snapshot = async () => ({
      target: await checksums(db, target),
      victim: await checksums(db, victim),
      victimDefs: await definitions(db, victim),
      accounts: await rows(db, 'SELECT CONCAT(User, "@", Host) AS who, Priv FROM mysql.global_priv ORDER BY who'),
      grants: await rows(db, 'SELECT * FROM mysql.db ORDER BY Host, Db, User'),
      databases: await rows(db, "SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME NOT LIKE 'sa\\_%' OR SCHEMA_NAME IN (?, ?) ORDER BY name", [target, victim]),
      server: await serverState(db),
    });
    const before = await snapshot();
    const header = `-- storage-agent mysql dump ${JSON.stringify({ format: 1, databases: ['src'] })}\n`;
    const trailer = '-- Dump completed on 2026-01-01  0:00:00\n';
    const body = `CREATE DATABASE /*!32312 IF NOT EXISTS*/ \`src\`;\nUSE \`src\`;\nCREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (7);\n`;
    const v = `\`${victim}\``;
    const routine = (sql: string) => `DELIMITER ;;\n${sql};;\nDELIMITER ;\n`;
    const cases: [string, string][] = [
      ['GRANT', `GRANT ALL PRIVILEGES ON *.* TO 'agent'@'%';`],
      ['CREATE USER', `CREATE USER 'evil'@'%' IDENTIFIED BY 'x';`],
      ['a superuser planted in mysql.global_priv', `INSERT INTO mysql.global_priv VALUES ('%', 'evil', '{"access": 18446744073709551615}');`],
      ['FLUSH PRIVILEGES', `FLUSH PRIVILEGES;`],
      ['DROP TABLE of another database', `DROP TABLE IF EXISTS ${v}.\`t\`;`],
      ['TRUNCATE', `TRUNCATE TABLE ${v}.t;`],
      ['a table name starting with a digit after the qualifier', `DROP TABLE ${victim} . 1t;`],
      ['ALTER TABLE of another database', `ALTER TABLE ${v}.t ADD COLUMN x INT;`],
      ['ALTER TABLE … RENAME into another database', `ALTER TABLE t RENAME TO ${v}.stolen;`],
      ['DELETE', `DELETE FROM ${v}.t;`],
      ['UPDATE', `UPDATE ${v}.t SET secret = 'gone';`],
      ['RENAME TABLE', `RENAME TABLE ${v}.t TO t2;`],
      ['CREATE TABLE … LIKE another database', `CREATE TABLE t3 LIKE ${v}.t;`],
      ['CREATE TABLE … SELECT from another database', `CREATE TABLE t4 AS SELECT * FROM ${v}.t;`],
      ['LOCK TABLES of another database', `LOCK TABLES ${v}.t WRITE;`],
      ['INSERT into another database', `INSERT INTO ${v}.t VALUES (9, 'x');`],
      ['INSERT … SELECT', `INSERT INTO t SELECT id FROM ${v}.t;`],
      ['INSERT rows with a subquery', `INSERT INTO t VALUES (7), ((SELECT MAX(id) FROM ${v}.t));`],
      ['INSERT rows calling a function', `INSERT INTO t VALUES (${v}.f());`],
      ['INSERT rows with a comment', `INSERT INTO t VALUES (8) -- ';\n, (9);`],
      ['a procedure whose body reaches another database', routine(`CREATE DEFINER=\`root\`@\`localhost\` PROCEDURE p() BEGIN DELETE FROM ${v}.t; END`)],
      ['a procedure with dynamic SQL', routine(`CREATE PROCEDURE p() BEGIN SET @s = CONCAT('DROP TABLE ', 'x'); PREPARE s FROM @s; EXECUTE s; END`)],
      ['a procedure calling one of another database', routine(`CREATE PROCEDURE p() BEGIN CALL ${v}.q(); END`)],
      ['a function reading mysql.user', routine(`CREATE FUNCTION f() RETURNS INT READS SQL DATA RETURN (SELECT COUNT(*) FROM mysql.user)`)],
      ['a trigger writing another database', routine(`/*!50003 CREATE*/ /*!50017 DEFINER=\`root\`@\`localhost\`*/ /*!50003 TRIGGER tr AFTER INSERT ON t FOR EACH ROW INSERT INTO ${v}.t VALUES (NEW.id, 'x') */`)],
      ['a view of another database', `/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=\`root\`@\`localhost\` SQL SECURITY DEFINER */ /*!50001 VIEW vv AS select \`${victim}\`.\`t\`.\`secret\` AS s from ${v}.t */;`],
      ['an event dropping another database\'s table', routine(`CREATE EVENT e ON SCHEDULE AT CURRENT_TIMESTAMP DO DROP TABLE ${v}.t`)],
      ['a statement hidden in a conditional comment', `/*!50003 DROP TABLE ${v}.t */;`],
      ['GRANT in a conditional comment', `/*!40101 GRANT ALL ON *.* TO 'agent'@'127.0.0.1' */;`],
      ['SET GLOBAL', `SET GLOBAL event_scheduler = ON;`],
      ['SET @@global', `/*!40101 SET @@GLOBAL.read_only = 1 */;`],
      ['a multibyte character set', `/*!40101 SET NAMES gbk */;`],
      ['a sql_mode set from an unknown value', `SET sql_mode = @never_saved;`],
      ['ANSI_QUOTES names', `SET sql_mode = 'ANSI_QUOTES';\nDROP TABLE "${victim}"."t";`],
      ['a client command', `\\! touch /tmp/sa-forged-dump-ran\n`],
      ['SELECT … INTO OUTFILE', `SELECT * FROM ${v}.t INTO OUTFILE '/tmp/sa-forged-dump-ran';`],
      ['a FEDERATED/CONNECT table', `CREATE TABLE remote (id INT) ENGINE=CONNECT TABLE_TYPE=MYSQL CONNECTION='mysql://root@localhost/${victim}/t';`],
      ['a table in another directory', `CREATE TABLE elsewhere (id INT) DATA DIRECTORY = '/tmp';`],
      ['a second statement under another delimiter', `DELIMITER ;;\nCREATE TABLE t5 (a INT); SET sql_mode = 'NO_BACKSLASH_ESCAPES';;\nDELIMITER ;\n`],
      ['a database switch after CREATE DATABASE', `DELIMITER ;;\nCREATE DATABASE src; USE ${v}; DROP TABLE t;;\nDELIMITER ;\n`],
      ['USE in a routine body', routine(`CREATE PROCEDURE p2() BEGIN USE ${v}; DELETE FROM t; END`)],
      ['a body changing sql_mode', routine(`CREATE PROCEDURE p3() BEGIN SET @@sql_mode = 'ANSI_QUOTES'; END`)],
      ['a UDF from a shared library', `CREATE FUNCTION sys_exec RETURNS INTEGER SONAME 'lib_mysqludf_sys.so';`],
      // Restored stored programs run as the restoring account, which holds the backup's global
      // RELOAD, PROCESS, BINLOG MONITOR and SELECT: a body holds only what a stored program
      // needs for its own data (an allow-list), whoever would call it later.
      ['a definer procedure resetting the binary logs', routine(`CREATE DEFINER=\`root\`@\`localhost\` PROCEDURE p() SQL SECURITY DEFINER BEGIN RESET MASTER; END`)],
      ['an event resetting the binary logs', routine(`CREATE EVENT e ON SCHEDULE EVERY 1 MINUTE DO RESET MASTER`)],
      ['a trigger resetting the query cache', routine(`CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW RESET QUERY CACHE`)],
      ['a function resetting the binary logs', routine(`CREATE FUNCTION f2() RETURNS INT BINARY RESET MASTER`)],
      ['SHOW CREATE USER and SHOW GRANTS in a body', routine(`CREATE PROCEDURE p() BEGIN SHOW CREATE USER root@localhost; SHOW GRANTS FOR root@localhost; END`)],
      ['SHOW TABLES FROM another database in a body', routine(`CREATE PROCEDURE p() BEGIN SHOW TABLES FROM ${victim}; END`)],
      ['SHOW PROCESSLIST in an event', routine(`CREATE EVENT e ON SCHEDULE EVERY 1 MINUTE DO SHOW FULL PROCESSLIST`)],
      ['PURGE BINARY LOGS in a body', routine(`CREATE PROCEDURE p() BEGIN PURGE BINARY LOGS BEFORE NOW(); END`)],
      ['KILL in a body', routine(`CREATE PROCEDURE p() BEGIN KILL CONNECTION 1; END`)],
      ['SHUTDOWN as a body', routine(`CREATE PROCEDURE p() SHUTDOWN`)],
      ['SET GLOBAL in a body', routine(`CREATE PROCEDURE p() BEGIN SET GLOBAL max_connections = 1; END`)],
      ['SET @@global in a body', routine(`CREATE PROCEDURE p() BEGIN SET @@global.read_only = 1; END`)],
      ['CHANGE MASTER in a body', routine(`CREATE PROCEDURE p() BEGIN CHANGE MASTER TO MASTER_HOST = 'evil.example'; END`)],
      ['STOP SLAVE / START REPLICA in a body', routine(`CREATE PROCEDURE p() BEGIN STOP SLAVE; START REPLICA; END`)],
      ['INSTALL PLUGIN in a body', routine(`CREATE PROCEDURE p() BEGIN INSTALL PLUGIN connect SONAME 'ha_connect'; END`)],
      ['UNINSTALL PLUGIN in a body', routine(`CREATE PROCEDURE p() BEGIN UNINSTALL PLUGIN unix_socket; END`)],
      ['FLUSH in a body', routine(`CREATE PROCEDURE p() BEGIN FLUSH BINARY LOGS; END`)],
      ['BACKUP STAGE in a body', routine(`CREATE PROCEDURE p() BEGIN BACKUP STAGE START; END`)],
      ['CACHE INDEX / LOAD INDEX in a body', routine(`CREATE PROCEDURE p() BEGIN CACHE INDEX t IN hot; LOAD INDEX INTO CACHE t; END`)],
      ['LOCK TABLES in a body', routine(`CREATE PROCEDURE p() BEGIN LOCK TABLES t WRITE; END`)],
      ['HANDLER in a body', routine(`CREATE PROCEDURE p() BEGIN HANDLER t OPEN; END`)],
      ['SET DEFAULT ROLE in a body', routine(`CREATE PROCEDURE p() BEGIN SET DEFAULT ROLE NONE FOR root@localhost; END`)],
      ['EXECUTE of a statement prepared by the caller', routine(`CREATE PROCEDURE p() BEGIN EXECUTE caller_stmt; END`)],
      ['an event created by a body', routine(`CREATE PROCEDURE p() BEGIN CREATE EVENT e ON SCHEDULE EVERY 1 MINUTE DO RESET MASTER; END`)],
      ['RESET MASTER as a handler\'s statement', routine(`CREATE PROCEDURE p() BEGIN DECLARE EXIT HANDLER FOR SQLEXCEPTION RESET MASTER; SELECT 1; END`)],
      ['RESET MASTER behind IF … CASE … END THEN', routine(`CREATE PROCEDURE p() BEGIN IF CASE WHEN 1 THEN 1 END THEN RESET MASTER; END IF; END`)],
      ['RESET MASTER behind a loop and a label', routine(`CREATE PROCEDURE p() BEGIN l: LOOP LEAVE l; END LOOP l; REPEAT SELECT 1; UNTIL 1 END REPEAT; RESET MASTER; END`)],
      ['RESET MASTER behind a versioned comment only newer servers run', routine(`CREATE PROCEDURE p() BEGIN /*!99999 SELECT */ RESET MASTER; END`)],
      ['a cursor over SHOW', routine(`CREATE PROCEDURE p() BEGIN DECLARE c CURSOR FOR SHOW DATABASES; OPEN c; END`)],
      // Statements the load itself would run as the restoring account: they change the server now.
      ['a statement after a procedure\'s body, under another delimiter', routine(`CREATE PROCEDURE p() SELECT 1; RESET MASTER`)],
      ['a statement after DROP PROCEDURE, under another delimiter', routine(`DROP PROCEDURE IF EXISTS p; RESET MASTER`)],
      ['a statement in an event\'s header', routine(`CREATE EVENT e ON SCHEDULE EVERY 1 DAY; RESET MASTER; CREATE EVENT e2 ON SCHEDULE EVERY 1 DAY DO SELECT 1`)],
      ['ALTER EVENT … DO', routine(`ALTER EVENT e DO RESET MASTER`)],
      // sql_modes that change how the server reads names: followed, or refused.
      ['sql_mode POSTGRESQL (ANSI quotes)', `SET sql_mode = 'POSTGRESQL';\nDROP TABLE "${victim}"."t";`],
      ['sql_mode as a bit mask (4 = ANSI_QUOTES)', `SET sql_mode = 4;\nDROP TABLE "${victim}"."t";`],
      ['sql_mode MSSQL (names in brackets)', `SET sql_mode = 'MSSQL';\nDROP TABLE [${victim}].[t];`],
    ];
    for (const [what, forged] of cases) {
      const failure = await driver([target])
        .stage(Readable.from([Buffer.from(`${header}${body}${forged}\n${trailer}`)]), never())
        .catch((error: unknown) => error);
      expect(failure, what).toMatchObject({ code: 'E_UNSAFE_ARCHIVE_ENTRY', message: expect.stringMatching(/refusing to load it/) });
      expect(await snapshot(), what).toEqual(before);
      expect(await leftoverDatabases(db), what).toEqual([]);
    }
    expect(existsSync('/tmp/sa-forged-dump-ran')).toBe(false);
  });

  it('loads a dump in the MariaDB 11.4 format: sandbox line (both forms), NOTE_VERBOSITY saved and put back', async () => {
    // What mariadb-dump 11.4 writes around the data, as in public 11.4.5 dumps (the collations
    // are ones the 10.11 test server knows: 11.4's default, utf8mb4_uca1400_ai_ci, it does not).
    const dump = (sandbox: string) => `-- storage-agent mysql dump ${JSON.stringify({ format: 1, databases: ['src'] })}
${sandbox} \n-- MariaDB dump 10.19-11.4.5-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: localhost    Database: src
-- ------------------------------------------------------
-- Server version\t11.4.5-MariaDB-ubu2404

/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40101 SET @OLD_CHARACTER_SET_RESULTS=@@CHARACTER_SET_RESULTS */;
/*!40101 SET @OLD_COLLATION_CONNECTION=@@COLLATION_CONNECTION */;
/*!40101 SET NAMES utf8mb4 */;
/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */;
/*!40103 SET TIME_ZONE='+00:00' */;
/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */;
/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;
/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;
/*M!100616 SET @OLD_NOTE_VERBOSITY=@@NOTE_VERBOSITY, NOTE_VERBOSITY=0 */;

--
-- Current Database: \`src\`
--

CREATE DATABASE /*!32312 IF NOT EXISTS*/ \`src\` /*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci */;

USE \`src\`;

--
-- Table structure for table \`t\`
--

DROP TABLE IF EXISTS \`t\`;
/*!40101 SET @saved_cs_client     = @@character_set_client */;
/*!40101 SET character_set_client = utf8mb4 */;
CREATE TABLE \`t\` (
  \`id\` int(11) NOT NULL AUTO_INCREMENT,
  \`name\` varchar(50) NOT NULL,
  PRIMARY KEY (\`id\`)
) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
/*!40101 SET character_set_client = @saved_cs_client */;

--
-- Dumping data for table \`t\`
--

LOCK TABLES \`t\` WRITE;
/*!40000 ALTER TABLE \`t\` DISABLE KEYS */;
INSERT INTO \`t\` VALUES
(1,'Donna Walton Pérez'),
(2,'x');
/*!40000 ALTER TABLE \`t\` ENABLE KEYS */;
UNLOCK TABLES;

--
-- Dumping routines for database 'src'
--
/*!50003 SET @saved_sql_mode       = @@sql_mode */ ;
/*!50003 SET sql_mode              = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION' */ ;
DELIMITER ;;
CREATE DEFINER=\`root\`@\`localhost\` FUNCTION \`names\`() RETURNS int(11)
    READS SQL DATA
BEGIN
  DECLARE n INT DEFAULT 0;
  SELECT COUNT(*) INTO n FROM t;
  RETURN n;
END ;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;

/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */;
/*!40014 SET UNIQUE_CHECKS=@OLD_UNIQUE_CHECKS */;
/*!40101 SET CHARACTER_SET_CLIENT=@OLD_CHARACTER_SET_CLIENT */;
/*!40101 SET CHARACTER_SET_RESULTS=@OLD_CHARACTER_SET_RESULTS */;
/*!40101 SET COLLATION_CONNECTION=@OLD_COLLATION_CONNECTION */;
/*M!100616 SET NOTE_VERBOSITY=@OLD_NOTE_VERBOSITY */;

-- Dump completed on 2025-02-17  0:25:35
`;
    // 11.4.3 on; 11.4.2 (and 10.5.25, 10.6.18, 10.11.8) wrote the first form.
    for (const sandbox of ['/*M!999999\\- enable the sandbox mode */', '/*!999999\\- enable the sandbox mode */']) {
      const target = track(uniqueName('sa_mariadb114'));
      const staged = await driver([target]).stage(Readable.from([Buffer.from(dump(sandbox))]), never());
      await staged.commit();
      expect(await rows(db, `SELECT id, name FROM \`${target}\`.t ORDER BY id`), sandbox).toEqual([
        { id: 1, name: 'Donna Walton Pérez' },
        { id: 2, name: 'x' },
      ]);
      expect(await rows(db, `SELECT \`${target}\`.names() AS n`), sandbox).toEqual([{ n: 2 }]);
      expect(await leftoverDatabases(db)).toEqual([]);
    }
  });

  it('restores with the restore part of the documented grants only: privileges on its databases and their staging copies, nothing global', async () => {
    const target = track(uniqueName('sa_minimal'));
    const user = uniqueName('sa_restorer');
    const password = randomBytes(12).toString('hex');
    // README "MySQL privileges" lists one account's grants: the backup's, global, and the restore's,
    // on `db`.* and `db\_\_sa\_%`.*. Here the restore's alone, plus on those databases what the
    // backup's global ones give (SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES): staging and the
    // swap need nothing global. The whole documented set, through the CLI, is in
    // restore-privilege-config.test.ts.
    const privileges =
      'SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, REFERENCES, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, EXECUTE, TRIGGER, EVENT, LOCK TABLES';
    await db.query(`CREATE USER '${user}'@'127.0.0.1' IDENTIFIED BY '${password}'`);
    try {
      for (const scope of [target, `${target.replaceAll('_', '\\_')}\\_\\_sa\\_%`]) await db.query(`GRANT ${privileges} ON \`${scope}\`.* TO '${user}'@'127.0.0.1'`);
      const before = { sums: await checksums(db, shop), defs: await definitions(db, shop) };
      const capture = await driver([shop]).capture({ signal: never(), consistent: false });
      const dump = await readAll(capture.stream);
      await capture.result;
      await capture.release();
      const restorer = driver([target], { user }, async () => password);
      await (await restorer.stage(Readable.from([dump]), never())).commit();
      expect(await leftoverDatabases(db)).toEqual([]);
      expect(await checksums(db, target)).toEqual(before.sums);
      expect(await definitions(db, target)).toEqual(restoredBy(user, before.defs));
      // The objects run as the restoring account, which holds what they need on its database.
      await db.query(`CALL \`${target}\`.add_parent(11, '  minimal  ')`);
      expect(await rows(db, `SELECT shout FROM \`${target}\`.parent_names WHERE id = 11`)).toEqual([{ shout: 'MINIMAL' }]);
      // Again, over the existing target: swapped in place.
      await (await restorer.stage(Readable.from([dump]), never())).commit();
      expect(await checksums(db, target)).toEqual(before.sums);
    } finally {
      await db.query(`DROP USER '${user}'@'127.0.0.1'`);
    }
  });

  it('a routine, trigger or view naming its own database (as in the backup) works in the target; DEFINER becomes the restoring account', async () => {
    const target = track(uniqueName('sa_selfref'));
    const header = `-- storage-agent mysql dump ${JSON.stringify({ format: 1, databases: ['src'] })}\n`;
    const dump = `${header}CREATE DATABASE /*!32312 IF NOT EXISTS*/ \`src\`;\nUSE \`src\`;
CREATE TABLE t (id INT PRIMARY KEY);
CREATE TABLE \`src.t\` (id INT);
INSERT INTO \`src\`.t VALUES (1);
DELIMITER ;;
CREATE DEFINER=\`root\`@\`localhost\` PROCEDURE p() SQL SECURITY DEFINER BEGIN INSERT INTO \`src\`.t VALUES (2); INSERT INTO src.\`src.t\` VALUES (3); END;;
/*!50003 CREATE*/ /*!50017 DEFINER=\`root\`@\`localhost\`*/ /*!50003 TRIGGER tr BEFORE INSERT ON \`src\`.t FOR EACH ROW SET NEW.id = NEW.id + 10 */;;
DELIMITER ;
CREATE VIEW v AS SELECT src.t.id FROM src.t;
-- Dump completed on 2026-01-01  0:00:00\n`;
    const staged = await driver([target]).stage(Readable.from([Buffer.from(dump)]), never());
    await staged.commit();
    expect(await leftoverDatabases(db)).toEqual([]);
    await db.query(`CALL \`${target}\`.p()`);
    expect(await rows(db, `SELECT id FROM \`${target}\`.v ORDER BY id`)).toEqual([{ id: 1 }, { id: 12 }]);
    expect(await rows(db, `SELECT id FROM \`${target}\`.\`src.t\``)).toEqual([{ id: 3 }]);
    const [procedure] = await rows<{ DEFINER: string; BODY: string }>(db, 'SELECT DEFINER, ROUTINE_DEFINITION AS BODY FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?', [target]);
    expect(procedure).toEqual({ DEFINER: `${server.user}@127.0.0.1`, BODY: `BEGIN INSERT INTO \`${target}\`.t VALUES (2); INSERT INTO \`${target}\`.\`src.t\` VALUES (3); END` });
  });

  it('a restore failing at the very end (sha256 mismatch) leaves the target as it was, with no staging left', async () => {
    const sandbox = await createSandbox();
    try {
      const shopCopy = track(await createDatabase(db, 'sa_victim'));
      await createFixture(db, shopCopy);
      // Uncompressed: a flipped hex digit keeps the SQL valid, so only the final sha256 check fails.
      await sandbox.writeConfig({ compression: { algorithm: 'none' }, environments: { site: { services: { db: mysqlServiceConfig(server, [shopCopy], PASSWORD_ENV) } } } });
      const args = ['--config', sandbox.configPath];
      const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'site']);
      await db.query(`INSERT INTO \`${shopCopy}\`.parent VALUES (77, 'written after the backup')`);
      const before = { sums: await checksums(db, shopCopy), defs: await definitions(db, shopCopy) };

      const object = path.join(sandbox.stateDir, 'backups', manifest.elements[0]!.objects[0]!.key);
      const bytes = await readFile(object);
      const at = bytes.indexOf('0x', bytes.indexOf('INSERT INTO `blobs`')) + 1000;
      expect(String.fromCharCode(bytes[at]!)).toMatch(/[0-9A-F]/);
      bytes[at] = bytes[at] === 0x30 ? 0x31 : 0x30;
      await writeFile(object, bytes);

      const restore = await cli([...args, 'backup', 'restore', 'site', manifest.id, '--yes']);
      expect(restore.exitCode).toBe(5);
      expect(restore.stderr).toMatch(/E_CHECKSUM_MISMATCH/);
      expect(await checksums(db, shopCopy)).toEqual(before.sums);
      expect(await definitions(db, shopCopy)).toEqual(before.defs);
      expect(await leftoverDatabases(db)).toEqual([]);
    } finally {
      await sandbox.cleanup();
    }
  });

  it('a swap that fails after the RENAME puts the target back as it was', async () => {
    // The backup has views, the target none: without CREATE VIEW the swap fails once the tables
    // are swapped, and putting the target's own tables, trigger and function back needs no view.
    const target = track(uniqueName('sa_swapfail'));
    const agent = await connect(server);
    const target2 = track(uniqueName('sa_swapfail_new'));
    try {
      await agent.query(
        `CREATE DATABASE \`${target}\`; USE \`${target}\`; CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(100)); INSERT INTO parent VALUES (99, 'mine');
         CREATE TABLE only_here (x INT); CREATE TRIGGER mine_trg BEFORE INSERT ON parent FOR EACH ROW SET NEW.name = LOWER(NEW.name);
         CREATE FUNCTION mine_fn() RETURNS INT DETERMINISTIC RETURN 1; USE information_schema`,
      );
      const before = { sums: await checksums(db, target), defs: await definitions(db, target) };
      const capture = await driver([shop]).capture({ signal: never(), consistent: false });
      const dump = await readAll(capture.stream);
      await capture.result;
      await capture.release();
      const staged = await driver([target]).stage(Readable.from([dump]), never());
      const stagedNew = await driver([target2]).stage(Readable.from([dump]), never());
      await db.query("REVOKE CREATE VIEW ON *.* FROM 'agent'@'127.0.0.1'");
      try {
        await expect(staged.commit()).rejects.toMatchObject({ code: 'E_RESTORE_FAILED', message: expect.stringMatching(/failed: .*CREATE VIEW.*; sa_swapfail_\w+ was put back as it was/) });
        // A database that did not exist before is gone again.
        await expect(stagedNew.commit()).rejects.toMatchObject({ code: 'E_RESTORE_FAILED' });
      } finally {
        await db.query("GRANT CREATE VIEW ON *.* TO 'agent'@'127.0.0.1'");
      }
      expect(await checksums(db, target)).toEqual(before.sums);
      expect(await definitions(db, target)).toEqual(before.defs);
      expect(await databaseExists(db, target2)).toBe(false);
      // A failed commit keeps what it staged, for the restore journal's roll-forward to retry.
      expect(await leftoverDatabases(db)).toHaveLength(2);
      await staged.discard();
      await stagedNew.discard();
      expect(await leftoverDatabases(db)).toEqual([]);
    } finally {
      agent.destroy();
    }
  });

  it('CLI: a target holding some of its databases gets a safety backup of those, which restores them', async () => {
    const sandbox = await createSandbox();
    try {
      const [tshop, tshop2] = [track(uniqueName('sa_tshop')), track(uniqueName('sa_tshop2'))];
      await db.query(`CREATE DATABASE \`${tshop}\`; CREATE TABLE \`${tshop}\`.orders (id INT PRIMARY KEY, what TEXT); INSERT INTO \`${tshop}\`.orders VALUES (1, 'the only copy')`);
      await sandbox.writeConfig({
        environments: {
          site: { services: { db: mysqlServiceConfig(server, [shop, crm], PASSWORD_ENV) } },
          target: { services: { db: mysqlServiceConfig(server, [tshop, tshop2], PASSWORD_ENV) } },
        },
      });
      const args = ['--config', sandbox.configPath];
      const before = await checksums(db, tshop);
      const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'site']);
      // tshop2 does not exist: "nothing there" must mean nothing at all, and tshop holds rows.
      const restored = await cliJson<{ safetyBackup: { id: string; elements: string[]; skipped: string[] } }>([...args, 'backup', 'restore', 'site', manifest.id, '--target', 'target', '--element', 'db', '--yes']);
      expect(restored.safetyBackup).toMatchObject({ id: expect.any(String), elements: ['db'], skipped: [] });
      expect(await checksums(db, tshop)).toEqual(await checksums(db, shop));
      const safety = await cliJson<Manifest>([...args, 'backup', 'show', 'target', restored.safetyBackup.id]);
      expect(safety.elements[0]!.facts).toMatchObject({ databases: tshop });
      // Its undo: the safety backup restores tshop (by name; tshop2 is left as the restore made it).
      const undo = await cli([...args, 'backup', 'restore', 'target', restored.safetyBackup.id, '--yes', '--no-safety-backup']);
      expect(undo.exitCode, undo.stderr).toBe(0);
      expect(await checksums(db, tshop)).toEqual(before);
      expect(await checksums(db, tshop2)).toEqual(await checksums(db, crm));
    } finally {
      await sandbox.cleanup();
    }
  });

  it('CLI: a wrong password fails the element with an authentication error and leaves nothing restorable', async () => {
    const sandbox = await createSandbox();
    try {
      process.env.SA_TEST_WRONG_PASSWORD = 'not-the-password';
      await sandbox.writeConfig({ environments: { site: { services: { db: mysqlServiceConfig(server, [crm], 'SA_TEST_WRONG_PASSWORD') } } } });
      const args = ['--config', sandbox.configPath];
      const result = await cli([...args, 'backup', 'create', 'site']);
      expect(result.exitCode).toBe(7);
      expect(result.stderr).toMatch(/E_CAPTURE_FAILED.*authentication failed/);
      expect(await cliJson([...args, 'backup', 'list', 'site'])).toEqual([]);
    } finally {
      await sandbox.cleanup();
    }
  });

  // Last: it kills the server (then restarts it on the same data).
  it('CLI: MariaDB killed mid-dump fails the element and writes no manifest', async () => {
    const sandbox = await createSandbox();
    try {
      await sandbox.writeConfig({ environments: { site: { services: { db: mysqlServiceConfig(server, [big], PASSWORD_ENV) } } } });
      const args = ['--config', sandbox.configPath];
      const running = startCli([...args, 'backup', 'create', 'site']);
      await waitFor(() => (processesWith('--databases', big).length ? true : undefined), 'the mysqldump process', 20_000);
      mariadbScript('kill', server);
      const result = await running;
      expect(result.exitCode).toBe(7);
      expect(String(result.stderr)).toMatch(/E_CAPTURE_FAILED.*mysqldump failed/);
      expect(await cliJson([...args, 'backup', 'list', 'site'])).toEqual([]);
      // Nothing of the backup is left: only the environment's owner record (issue #11).
      expect(existsSync(path.join(sandbox.stateDir, 'backups', 'site')) ? readdirSync(path.join(sandbox.stateDir, 'backups', 'site')) : []).toEqual(['owners']);
    } finally {
      mariadbScript('start', server);
      db.destroy();
      db = await connect(server, { root: true });
      await sandbox.cleanup();
    }
    expect(await rows(db, `SELECT COUNT(*) AS n FROM \`${big}\`.t`)).toEqual([{ n: 60000 }]);
  });
});
