import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ResultSetHeader } from 'mysql2';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/agent/config.ts';
import { createLogger } from '../src/agent/logger.ts';
import { pruneBackups } from '../src/agent/prune.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, killCliAt, type Sandbox } from './support/cli.ts';
import { daemonSection, sleep, startDaemon, waitFor, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';
import { checksums, connect, createDatabase, leftoverDatabases, mariadbScript, mariadbServer, mysqlServiceConfig, rows, type MariadbTestServer } from './support/mysql.ts';
import { waitStoredPast } from './support/pitr.ts';

const PASSWORD_ENV = 'SA_TEST_MYSQL_PASSWORD';
const ENV = 'pitr';

/** The CLI's error line on stderr (`error [CODE]: message`), as code and message. */
function errorOf(stderr: string): { code: string; message: string } {
  const m = /^error \[(E_[A-Z_]+)\]: (.*)$/m.exec(stderr);
  if (!m) throw new Error(`no error line on stderr: ${stderr}`);
  return { code: m[1]!, message: m[2]! };
}

interface Order {
  id: number;
  note: string;
  /** The server's second when it was written (UNIX_TIMESTAMP(), which the binlog event carries too). */
  at: number;
}

/**
 * Point-in-time restore (issue #14 §1) against the real MariaDB with binary logging: the real
 * daemon streams the binlog into the fs store, the real CLI restores to chosen seconds.
 */
describe('point-in-time restore of MySQL (real MariaDB, real daemon and CLI)', () => {
  let server: MariadbTestServer;
  let db: Connection;
  let sandbox: Sandbox;
  let daemon: RunningDaemon | undefined;
  let database: string;
  let storeDir: string;
  let args: string[];
  let tokens: Tokens;
  /** Every row as the writer left it, by id; deleted ones removed. */
  const written = new Map<number, Order>();
  const history: { at: number; id: number; change: 'insert' | 'update' | 'delete'; note?: string; gtid?: string }[] = [];

  const restoreTo = (point: string[]) => cli([...args, 'backup', 'restore', ENV, ...point, '--yes', '--no-safety-backup', '--json']);
  const currentRows = async () => (await rows<{ id: number; note: string }>(db, `SELECT id, note FROM \`${database}\`.orders ORDER BY id`)).map((r) => ({ id: r.id, note: r.note }));
  /** The table as it was at the end of second `at`, from the writer's own history. */
  const expectedAt = (at: number, upTo = history.length) => {
    const state = new Map<number, string>();
    for (const h of history.slice(0, upTo)) {
      if (h.at > at) break;
      if (h.change === 'delete') state.delete(h.id);
      else state.set(h.id, h.note!);
    }
    return [...state].sort(([a], [b]) => a - b).map(([id, note]) => ({ id, note }));
  };
  const serverSecond = async () => Number((await rows<{ t: string }>(db, 'SELECT UNIX_TIMESTAMP() AS t'))[0]!.t);

  /**
   * Writes for `seconds`: inserts, with an update and a delete now and then, each remembered with
   * the second its binlog event carries (UNIX_TIMESTAMP() of the statement itself: the event's
   * time). A delete's second is read around it; one that straddles a second is marked, and no
   * restore point is chosen there.
   */
  const write = async (seconds: number) => {
    const until = Date.now() + seconds * 1000;
    while (Date.now() < until) {
      const note = `order ${history.length + 1}`;
      const [result] = await db.query<ResultSetHeader>(`INSERT INTO \`${database}\`.orders (note, at) VALUES (?, UNIX_TIMESTAMP())`, [note]);
      const at = await secondOf(result.insertId);
      const gtid = (await rows<{ gtid: string }>(db, 'SELECT @@last_gtid AS gtid'))[0]!.gtid;
      written.set(result.insertId, { id: result.insertId, note, at });
      history.push({ at, id: result.insertId, change: 'insert', note, gtid });
      if (history.length % 7 === 0) {
        const ids = [...written.keys()];
        const id = ids[history.length % ids.length]!;
        await db.query(`UPDATE \`${database}\`.orders SET note = CONCAT(note, ' paid'), at = UNIX_TIMESTAMP() WHERE id = ?`, [id]);
        const row = written.get(id)!;
        row.note = `${row.note} paid`;
        history.push({ at: await secondOf(id), id, change: 'update', note: row.note });
      }
      if (history.length % 11 === 0) {
        const id = [...written.keys()][1]!;
        const before = await serverSecond();
        await db.query(`DELETE FROM \`${database}\`.orders WHERE id = ?`, [id]);
        const after = await serverSecond();
        if (before !== after) ambiguous.add(before);
        written.delete(id);
        history.push({ at: after, id, change: 'delete' });
      }
      await sleep(40);
    }
  };
  const ambiguous = new Set<number>();
  const secondOf = async (id: number) => Number((await rows<{ at: number }>(db, `SELECT at FROM \`${database}\`.orders WHERE id = ?`, [id]))[0]!.at);
  /** A second at or before `at` where nothing straddled the boundary. */
  const clearSecond = (at: number) => {
    while (ambiguous.has(at)) at--;
    return at;
  };

  /** Waits until the stream has stored an event of a second after `at` (a marker row written then). */
  const storedPast = (at: number) =>
    waitStoredPast(path.join(storeDir, ENV, 'pitr', 'db'), at, { second: serverSecond, mark: () => db.query(`INSERT INTO \`${database}\`.markers VALUES ()`) });

  beforeAll(async () => {
    server = mariadbServer();
    process.env[PASSWORD_ENV] = server.password;
    db = await connect(server, { root: true });
    database = await createDatabase(db, 'sa_pitr');
    await db.query(`CREATE TABLE \`${database}\`.orders (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(60) NOT NULL, at INT NOT NULL, KEY (note))`);
    await db.query(`CREATE TABLE \`${database}\`.markers (id INT AUTO_INCREMENT PRIMARY KEY)`);
    sandbox = await createSandbox();
    storeDir = path.join(sandbox.dir, 'store');
    tokens = await writeTokens(sandbox);
    await sandbox.writeConfig({
      defaultStore: 'local',
      stores: { local: { type: 'fs', path: storeDir } },
      daemon: daemonSection(tokens),
      environments: {
        [ENV]: { services: { db: mysqlServiceConfig(server, [database], PASSWORD_ENV, { pitr: { window: '1d', flushEvery: '1s' } }) } },
        // Another environment's database, to restore into with --target.
        copy: { services: { db: mysqlServiceConfig(server, [`${database}_copy`], PASSWORD_ENV) } },
      },
    });
    args = ['--config', sandbox.configPath];
    daemon = await startDaemon(sandbox.configPath, { env: { [PASSWORD_ENV]: server.password } });
    await daemon.waitForLog('the binlog stream', (l) => l.msg === 'binlog stream started');
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop();
    await db?.query(`DROP DATABASE IF EXISTS \`${database}\``).catch(() => {});
    await db?.query(`DROP DATABASE IF EXISTS \`${database}_copy\``).catch(() => {});
    db?.destroy();
    await sandbox?.cleanup();
  });

  let base: Manifest;
  let firstSecond: number;
  let lastSecond: number;

  it('restores to chosen seconds: exactly the rows committed up to each, and says what it applied', async () => {
    await write(1);
    base = await cliJson<Manifest>([...args, 'backup', 'create', ENV]);
    expect(base.elements[0]!.facts).toMatchObject({ binlogExact: true });
    const baseSecond = await serverSecond();
    const writtenBefore = history.length;
    await write(4);
    // The second of the first change after the base (on a loaded machine the writer may start a
    // second or more after it): every point below has something to replay.
    firstSecond = history.slice(writtenBefore).find((h) => !ambiguous.has(h.at))!.at;
    lastSecond = Math.max(...history.map((h) => h.at));
    await storedPast(lastSecond);

    // Three points: just after the base, the middle, the end (the last: every row, which leaves
    // the table as the writer's history says for the tests after this one).
    for (const at of [firstSecond, clearSecond(Math.floor((firstSecond + lastSecond) / 2)), lastSecond]) {
      if (at === lastSecond) {
        // And to a transaction: the one of an insert two thirds in, included.
        const index = history.findIndex((h, i) => h.change === 'insert' && h.at > baseSecond && i >= (history.length * 2) / 3);
        const gtid = history[index]!.gtid!;
        const byGtid = await restoreTo(['--to-gtid', gtid]);
        expect(byGtid.exitCode, byGtid.stderr).toBe(0);
        expect(await currentRows()).toEqual(expectedAt(Infinity, index + 1));
        expect(JSON.parse(byGtid.stdout).elements[0].facts.lastAppliedGtid).toBe(gtid);
      }
      const time = new Date(at * 1000).toISOString();
      const result = await restoreTo(['--to-time', time]);
      expect(result.exitCode, result.stderr).toBe(0);
      const summary = JSON.parse(result.stdout) as { id: string; elements: { name: string; facts: Record<string, unknown> }[] };
      expect(summary.id).toBe(base.id);
      expect(await currentRows()).toEqual(expectedAt(at));
      const facts = summary.elements[0]!.facts;
      expect(Date.parse(facts.lastAppliedTime as string)).toBeLessThanOrEqual(at * 1000);
      expect(facts.lastAppliedGtid).toMatch(/^\d+-\d+-\d+$/);
    }
  }, 120_000);

  it('what applications and online schema tools do (TRUNCATE, a gh-ost style RENAME, ALTER) is replayed too', async () => {
    await db.query(`CREATE TABLE \`${database}\`.sessions (id INT PRIMARY KEY, data VARCHAR(20))`);
    await db.query(`INSERT INTO \`${database}\`.sessions VALUES (1, 'old'), (2, 'old')`);
    await cliJson<Manifest>([...args, 'backup', 'create', ENV]);
    await sleep(1100); // the base's second is over
    await db.query(`TRUNCATE TABLE \`${database}\`.sessions`);
    await db.query(`INSERT INTO \`${database}\`.sessions VALUES (3, 'new')`);
    await db.query(`CREATE TABLE \`${database}\`.sessions_new LIKE \`${database}\`.sessions`);
    await db.query(`ALTER TABLE \`${database}\`.sessions_new ADD COLUMN seen INT NOT NULL DEFAULT 7`);
    await db.query(`INSERT INTO \`${database}\`.sessions_new (id, data) SELECT id, data FROM \`${database}\`.sessions`);
    await db.query(`RENAME TABLE \`${database}\`.sessions TO \`${database}\`.sessions_old, \`${database}\`.sessions_new TO \`${database}\`.sessions`);
    await db.query(`DROP TABLE \`${database}\`.sessions_old`);
    const live = await rows(db, `SELECT * FROM \`${database}\`.sessions ORDER BY id`);
    const at = await serverSecond();
    await storedPast(at);
    const result = await restoreTo(['--to-time', new Date(at * 1000).toISOString()]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await rows(db, `SELECT * FROM \`${database}\`.sessions ORDER BY id`)).toEqual(live);
    expect(live).toEqual([{ id: 3, data: 'new', seen: 7 }]);
    const tables = await rows<{ name: string }>(db, 'SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1', [database]);
    expect(tables.map((t) => t.name)).toEqual(['markers', 'orders', 'sessions']);
    expect(await currentRows()).toEqual(expectedAt(lastSecond));
  }, 120_000);

  it('--target: the point in time of one environment restored into another, the source untouched', async () => {
    const source = await checksums(db, database);
    const at = clearSecond(Math.floor((firstSecond + lastSecond) / 2));
    const result = await cli([...args, 'backup', 'restore', ENV, '--to-time', new Date(at * 1000).toISOString(), '--target', 'copy', '--yes', '--no-safety-backup', '--json']);
    expect(result.exitCode, result.stderr).toBe(0);
    const copied = (await rows<{ id: number; note: string }>(db, `SELECT id, note FROM \`${database}_copy\`.orders ORDER BY id`)).map((r) => ({ id: r.id, note: r.note }));
    expect(copied).toEqual(expectedAt(at));
    expect(await checksums(db, database)).toEqual(source);
    await db.query(`DROP DATABASE IF EXISTS \`${database}_copy\``);
  }, 120_000);

  it('backup window: from the oldest base backup in the stored chain to the newest stored event', async () => {
    const [window] = await cliJson<{ service: string; from: string; fromBackup: string; to: string; chain: string }[]>([...args, 'backup', 'window', ENV]);
    expect(window).toMatchObject({ service: 'db', fromBackup: base.id, from: base.elements[0]!.facts.binlogAt });
    expect(Date.parse(window!.to)).toBeGreaterThan(lastSecond * 1000);
    const text = await cli([...args, 'backup', 'window', ENV]);
    expect(text.stdout).toContain(`(backup ${base.id})`);
    // The daemon's status and metrics show the stream, caught up.
    const remote = ['--config', sandbox.configPath, '--remote', daemon!.url, '--token-file', tokens.viewerFile];
    const status = await cliJson<{ binlogStreams: { env: string; service: string; state: string; lagMs: number; lastError: string | null }[] }>([...remote, 'status']);
    expect(status.binlogStreams).toEqual([expect.objectContaining({ env: ENV, service: 'db', state: 'streaming', lastError: null })]);
    expect(status.binlogStreams[0]!.lagMs).toBeLessThan(10_000);
    expect((await cli([...remote, 'status'])).stdout).toMatch(/binlog  pitr\/db: streaming at binlog\.\d+:\d+, lag \d+\.\d s/);
    const metrics = await fetch(`${daemon!.http}/metrics`, { headers: { authorization: `Bearer ${tokens.viewer}` } }).then((r) => r.text());
    expect(metrics).toMatch(new RegExp(`storage_agent_binlog_lag_seconds\\{env="${ENV}",service="db"\\} \\d`));
  });

  it('a point the stored binlog does not reach, or one before every base, is refused with the target unchanged', async () => {
    const before = await checksums(db, database);
    const future = await restoreTo(['--to-time', new Date(Date.now() + 3_600_000).toISOString()]);
    expect(future.exitCode).toBe(4);
    expect(errorOf(future.stderr).code).toBe('E_PITR_OUT_OF_WINDOW');
    const past = await restoreTo(['--to-time', new Date(Date.parse(base.createdAt) - 3_600_000).toISOString()]);
    expect(past.exitCode).toBe(4);
    expect(errorOf(past.stderr)).toMatchObject({ code: 'E_PITR_OUT_OF_WINDOW', message: expect.stringContaining('before the restorable window') });
    const malformed = await restoreTo(['--to-time', 'yesterday']);
    expect(malformed.exitCode).toBe(2);
    expect(await checksums(db, database)).toEqual(before);
  }, 60_000);

  it('the daemon SIGKILLed while rows are written and started again: no gap, every row is restorable', async () => {
    const writing = write(4);
    await sleep(1500);
    daemon!.child.kill('SIGKILL');
    await daemon!.exited;
    await writing;
    daemon = await startDaemon(sandbox.configPath, { env: { [PASSWORD_ENV]: server.password } });
    await write(1);
    lastSecond = Math.max(...history.map((h) => h.at));
    await storedPast(lastSecond);
    const result = await restoreTo(['--to-time', new Date(lastSecond * 1000).toISOString()]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await currentRows()).toEqual(expectedAt(lastSecond));
  }, 120_000);

  it('prune keeps the base its window starts from and deletes the binlog before it; later points still restore', async () => {
    // A base in a binlog file of its own: what came before that file is what prune may delete.
    await db.query('FLUSH BINARY LOGS');
    await write(1);
    const newestBase = await cliJson<Manifest>([...args, 'backup', 'create', ENV]);
    lastSecond = Math.max(...history.map((h) => h.at));
    await storedPast(lastSecond);
    await daemon!.stop(); // nothing appended while prune runs
    const config = await loadConfig(sandbox.configPath);
    // Two hours on, with a window of 1h, the anchor is the newest base older than an hour ago:
    // every base here is, so the newest of them.
    const shortWindow = structuredClone(config);
    const service = shortWindow.environments[ENV]!.services.db!;
    if (service.kind === 'mysql') service.pitr = { window: 3_600_000, flushEvery: 1_000, serverId: 4_193_000_001 };
    const ctx = { config: shortWindow, logger: createLogger('silent'), signal: new AbortController().signal };
    const later = new Date(Date.now() + 2 * 3_600_000);
    const recordsBefore = (await readdir(path.join(storeDir, ENV, 'pitr', 'db'), { recursive: true })).filter((n) => n.endsWith('.json')).length;
    const result = await pruneBackups(ctx, ENV, false, later);
    expect(result.binlog).toEqual([{ service: 'db', base: newestBase.id, deletedRecords: expect.any(Number) }]);
    expect(result.deleted.map((d) => d.id)).not.toContain(newestBase.id);
    const recordsAfter = (await readdir(path.join(storeDir, ENV, 'pitr', 'db'), { recursive: true })).filter((n) => n.endsWith('.json')).length;
    expect(result.binlog![0]!.deletedRecords).toBeGreaterThan(0);
    expect(recordsAfter).toBe(recordsBefore - result.binlog![0]!.deletedRecords);

    daemon = await startDaemon(sandbox.configPath, { env: { [PASSWORD_ENV]: server.password } });
    // A point after the anchor: replayed from it.
    await write(1);
    lastSecond = Math.max(...history.map((h) => h.at));
    await storedPast(lastSecond);
    const restored = await restoreTo(['--to-time', new Date(lastSecond * 1000).toISOString()]);
    expect(restored.exitCode, restored.stderr).toBe(0);
    expect(await currentRows()).toEqual(expectedAt(lastSecond));
    expect(JSON.parse(restored.stdout).id).toBe(newestBase.id);
    // Before the anchor the binlog is gone: the first base cannot be replayed from.
    const gone = await restoreTo([base.id, '--to-time', new Date(clearSecond(firstSecond) * 1000).toISOString()]);
    expect(errorOf(gone.stderr).code).toBe('E_PITR_OUT_OF_WINDOW');
  }, 120_000);

  it.each(['restore:binlog-gathered:db', 'restore:mysql:replaying'])('the CLI SIGKILLed at %s: the next command leaves nothing behind, the target unchanged', async (phase) => {
    const before = await checksums(db, database);
    await killCliAt(sandbox.dir, [...args, 'backup', 'restore', ENV, '--to-time', new Date(lastSecond * 1000).toISOString(), '--yes', '--no-safety-backup'], phase);
    expect((await cli([...args, 'backup', 'list', ENV])).exitCode).toBe(0);
    const left = await readdir(path.join(sandbox.stateDir, 'restores'), { recursive: true }).catch(() => []);
    expect(left).toEqual([]);
    expect((await leftoverDatabases(db)).filter((name) => name.startsWith(database))).toEqual([]);
    expect(await checksums(db, database)).toEqual(before);
  }, 120_000);

  it('a damaged or missing piece of the stored binlog: E_BINLOG_CHAIN, target unchanged', async () => {
    // Rows after the newest base, so that the replay to lastSecond reads pieces to tamper with.
    await write(2);
    lastSecond = Math.max(...history.map((h) => h.at));
    await storedPast(lastSecond);
    await daemon!.stop(); // nothing is appended while the store is tampered with
    const [chain] = (await readdir(path.join(storeDir, ENV, 'pitr', 'db'))).sort().reverse();
    const dir = path.join(storeDir, ENV, 'pitr', 'db', chain!);
    // The newest record the replay to lastSecond reads: after the base it starts from, before the point.
    const records = (await readdir(dir)).filter((n) => n.endsWith('.json')).sort();
    const events = await Promise.all(records.map(async (n) => (JSON.parse(await readFile(path.join(dir, n), 'utf8')) as { lastEventMs: number | null }).lastEventMs ?? 0));
    const middle = records[events.findLastIndex((ms) => ms > 0 && ms <= lastSecond * 1000)]!;
    const point = ['--to-time', new Date(lastSecond * 1000).toISOString()];
    const before = await checksums(db, database);

    const segment = path.join(dir, middle.replace('.json', '.zst'));
    const original = await readFile(segment);
    const damaged = Buffer.from(original);
    damaged[damaged.length - 5]! ^= 0xff;
    await writeFile(segment, damaged);
    const tampered = await restoreTo(point);
    expect(tampered.exitCode).toBe(5);
    expect(errorOf(tampered.stderr)).toMatchObject({ code: 'E_BINLOG_CHAIN', message: expect.stringContaining('does not match its record') });
    expect(await checksums(db, database)).toEqual(before);
    await writeFile(segment, original);

    const record = path.join(dir, middle);
    const text = await readFile(record, 'utf8');
    await rm(record);
    const missing = await restoreTo(point);
    expect(missing.exitCode).toBe(5);
    expect(errorOf(missing.stderr)).toMatchObject({ code: 'E_BINLOG_CHAIN', message: expect.stringContaining('is missing or was replaced') });

    // A record re-signed by nobody: its MAC no longer verifies.
    await writeFile(record, text.replace(/"end":(\d+)/, (_m, end: string) => `"end":${Number(end) + 1}`));
    const forged = await restoreTo(point);
    expect(forged.exitCode).toBe(5);
    expect(errorOf(forged.stderr)).toMatchObject({ code: 'E_BINLOG_CHAIN', message: expect.stringContaining('is not authenticated') });
    expect(await checksums(db, database)).toEqual(before);
    await writeFile(record, text);
    daemon = await startDaemon(sandbox.configPath, { env: { [PASSWORD_ENV]: server.password } });
  }, 120_000);

  // Last: a transaction the server had logged but not acknowledged when it died is in the
  // table and the binlog, not in the writer's history.
  it('the server SIGKILLed while rows are written: everything it committed is restorable once it is back', async () => {
    const writing = write(5).catch(() => {}); // its connection dies with the server
    await sleep(1500);
    mariadbScript('kill', server);
    await writing;
    mariadbScript('start', server);
    db.destroy();
    db = await connect(server, { root: true });
    const committed = await currentRows(); // what InnoDB and the binlog agree was committed
    const at = await serverSecond();
    await storedPast(at);
    const result = await restoreTo(['--to-time', new Date(at * 1000).toISOString()]);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await currentRows()).toEqual(committed);
  }, 120_000);
});

describe('point-in-time restore: a server or account that cannot stream', () => {
  it("only the environment's owner streams: another node's daemon stores nothing and says who owns it, until it adopts the environment", async () => {
    const server = mariadbServer();
    const db = await connect(server, { root: true });
    const database = await createDatabase(db, 'sa_pitr_owner');
    const sandbox = await createSandbox();
    let daemon: RunningDaemon | undefined;
    try {
      const tokens = await writeTokens(sandbox);
      const storeDir = path.join(sandbox.dir, 'store');
      const config = (nodeId: string) => ({
        nodeId,
        defaultStore: 'local',
        stores: { local: { type: 'fs', path: storeDir } },
        daemon: daemonSection(tokens),
        environments: { shop: { services: { db: mysqlServiceConfig(server, [database], PASSWORD_ENV, { pitr: { window: '1d', flushEvery: '1s' } }) } } },
      });
      await sandbox.writeConfig(config('node-a'));
      expect((await cli(['--config', sandbox.configPath, 'env', 'adopt', 'shop'])).exitCode).toBe(0); // node-a owns shop
      await sandbox.writeConfig(config('node-b'));
      daemon = await startDaemon(sandbox.configPath, { env: { [PASSWORD_ENV]: server.password } });
      const refused = await daemon.waitForLog('the stream to refuse', (l) => l.msg === 'the binlog stream cannot run; trying again');
      expect(refused).toMatchObject({ code: 'E_ENV_OWNED', err: expect.stringContaining('node-a') });
      const status = await cliJson<{ binlogStreams: { state: string; lastError: string }[] }>(['--config', sandbox.configPath, '--remote', daemon.url, '--token-file', tokens.viewerFile, 'status']);
      expect(status.binlogStreams[0]).toMatchObject({ state: 'starting', lastError: expect.stringContaining('node-a') });
      expect(await readdir(storeDir, { recursive: true })).not.toContainEqual(expect.stringContaining('pitr'));
      // Adopted here: the daemon's next try streams.
      expect((await cli(['--config', sandbox.configPath, 'env', 'adopt', 'shop', '--force'])).exitCode).toBe(0);
      await daemon.waitForLog('the stream to start', (l) => l.msg === 'binlog stream started', 20_000);
      await waitFor('a stored binlog record', async () => (await readdir(storeDir, { recursive: true })).some((f) => /pitr\/db\/.*\.json$/.test(String(f))), 20_000);
    } finally {
      await daemon?.stop();
      await db.query(`DROP DATABASE IF EXISTS \`${database}\``);
      db.destroy();
      await sandbox.cleanup();
    }
  }, 60_000);

  it('the daemon names every missing grant in its log and status, keeps running, and streams nothing', async () => {
    const server = mariadbServer();
    const db = await connect(server, { root: true });
    const user = `sa_norepl_${Date.now() % 100_000}`;
    const sandbox = await createSandbox();
    let daemon: RunningDaemon | undefined;
    try {
      await db.query(`CREATE USER '${user}'@'127.0.0.1' IDENTIFIED BY 'pw-norepl'`);
      await db.query(`GRANT SELECT, RELOAD, PROCESS ON *.* TO '${user}'@'127.0.0.1'`);
      const tokens = await writeTokens(sandbox);
      await sandbox.writeConfig({
        defaultStore: 'local',
        stores: { local: { type: 'fs', path: path.join(sandbox.dir, 'store') } },
        daemon: daemonSection(tokens),
        environments: { weak: { services: { db: { ...mysqlServiceConfig(server, ['mysql'], 'SA_NOREPL_PW', { pitr: { window: '1d' } }), user } } } },
      });
      daemon = await startDaemon(sandbox.configPath, { env: { SA_NOREPL_PW: 'pw-norepl' } });
      const logged = await daemon.waitForLog('the stream to refuse', (l) => l.msg === 'the binlog stream cannot run; trying again');
      expect(logged).toMatchObject({ code: 'E_CONFIG_INVALID', err: expect.stringMatching(/REPLICATION SLAVE.*BINLOG MONITOR.*BINLOG REPLAY/) });
      const remote = ['--config', sandbox.configPath, '--remote', daemon.url, '--token-file', tokens.viewerFile];
      const status = await cliJson<{ binlogStreams: { state: string; lastError: string }[] }>([...remote, 'status']);
      expect(status.binlogStreams[0]).toMatchObject({ state: 'starting', lastError: expect.stringContaining('REPLICATION SLAVE') });
      expect(await readdir(path.join(sandbox.dir, 'store'), { recursive: true }).catch(() => [])).not.toContainEqual(expect.stringContaining('pitr'));
    } finally {
      await daemon?.stop();
      await db.query(`DROP USER IF EXISTS '${user}'@'127.0.0.1'`);
      db.destroy();
      await sandbox.cleanup();
    }
  }, 60_000);
});
