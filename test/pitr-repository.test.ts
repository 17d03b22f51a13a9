import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/agent/config.ts';
import { createLogger } from '../src/agent/logger.ts';
import { pruneBackups } from '../src/agent/prune.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';
import { checksums, connect, createDatabase, mariadbServer, mysqlServiceConfig, rows, type MariadbTestServer } from './support/mysql.ts';
import { waitStoredPast } from './support/pitr.ts';

const PASSWORD_ENV = 'SA_TEST_MYSQL_PASSWORD';
const ENV = 'vault';
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
/** What the application writes: the bucket must never show it in clear. */
const CARD = 'card 4000-1234-5678-9010';

/**
 * Point-in-time restore in an environment with a repository (docs/pitr.md), against the real
 * MariaDB, the real daemon's stream and the real CLI: its binlog is sealed with the repository's
 * key (the bucket holds no row in clear, a restore reads it back, a sealed segment changed in
 * the bucket is refused with the target unchanged; test/binlog-archive.test.ts has the refusals
 * in detail), and a restore breaks the chain: the base taken after it, the window's gap, the
 * refusal of a point inside it, and retention keeping that base.
 */
describe('point-in-time restore in an environment with a repository (real MariaDB and daemon)', () => {
  let server: MariadbTestServer;
  let db: Connection;
  let sandbox: Sandbox;
  let daemon: RunningDaemon | undefined;
  let database: string;
  let pitrDir: string;
  let args: string[];
  let tokens: Tokens;

  /** Every stored binlog object, by path. */
  const storedObjects = async () => (await readdir(pitrDir, { recursive: true })).filter((name) => /\.(json|zst)$/.test(name)).map((name) => path.join(pitrDir, name));
  const serverSecond = async () => Number((await rows<{ t: string }>(db, 'SELECT UNIX_TIMESTAMP() AS t'))[0]!.t);
  const restoreTo = (point: string[]) => cli([...args, 'backup', 'restore', ENV, ...point, '--yes', '--no-safety-backup', '--json']);
  const toTime = (second: number) => ['--to-time', new Date(second * 1000).toISOString()];
  const cards = () => rows<{ id: number; note: string }>(db, `SELECT id, note FROM \`${database}\`.cards ORDER BY id`);
  /** Waits until the stream has stored an event of a second after `second` (a row written then). */
  const storedPast = (second: number) =>
    waitStoredPast(pitrDir, second, { second: serverSecond, mark: () => db.query(`INSERT INTO \`${database}\`.cards (note) VALUES ('after the point')`) });

  beforeAll(async () => {
    server = mariadbServer();
    process.env[PASSWORD_ENV] = server.password;
    db = await connect(server, { root: true });
    database = await createDatabase(db, 'sa_pitr_sealed');
    await db.query(`CREATE TABLE \`${database}\`.cards (id INT AUTO_INCREMENT PRIMARY KEY, note VARCHAR(80) NOT NULL)`);
    sandbox = await createSandbox();
    const storeDir = path.join(sandbox.dir, 'store');
    pitrDir = path.join(storeDir, ENV, 'pitr', 'db');
    tokens = await writeTokens(sandbox);
    await sandbox.writeConfig({
      defaultStore: 'local',
      stores: { local: { type: 'fs', path: storeDir } },
      daemon: daemonSection(tokens),
      environments: {
        // Its own replica id: test/pitr.test.ts streams the same server with the default one.
        [ENV]: { repository: true, services: { db: mysqlServiceConfig(server, [database], PASSWORD_ENV, { pitr: { window: '1d', flushEvery: '1s', serverId: 4_193_000_002 } }) } },
      },
    });
    args = ['--config', sandbox.configPath];
  }, 120_000);

  afterAll(async () => {
    await daemon?.stop();
    await db?.query(`DROP DATABASE IF EXISTS \`${database}\``).catch(() => {});
    db?.destroy();
    await sandbox?.cleanup();
  });

  let rowsAtEnd: { id: number; note: string }[];
  let endSecond: number;
  let firstBase: Manifest;
  /** The base backup taken right after the first restore. */
  let restoreBase: string;

  it('stores nothing before the first backup has made the repository key, then streams sealed segments only', async () => {
    daemon = await startDaemon(sandbox.configPath, { env: { [PASSWORD_ENV]: server.password } });
    await db.query(`INSERT INTO \`${database}\`.cards (note) VALUES (?)`, [`${CARD} before any backup`]);
    // No key yet: the stream says why it stores nothing, and creates no key of its own.
    await daemon.waitForLog('the stream to wait for the repository key', (l) => JSON.stringify(l).includes('cannot be opened'));
    const remote = ['--config', sandbox.configPath, '--remote', daemon.url, '--token-file', tokens.viewerFile];
    const status = await cliJson<{ binlogStreams: { lastError: string | null }[] }>([...remote, 'status']);
    expect(status.binlogStreams[0]!.lastError).toMatch(/cannot be opened: it has no key object.*only a backup creates: it is stored from the first backup of vault on \('backup create vault'\)/);
    expect(await storedObjects().catch(() => [])).toEqual([]);

    firstBase = await cliJson<Manifest>([...args, 'backup', 'create', ENV]);
    expect(firstBase.elements[0]!.repository).toBeDefined();
    for (let i = 0; i < 20; i++) await db.query(`INSERT INTO \`${database}\`.cards (note) VALUES (?)`, [`${CARD} #${i}`]);
    await db.query(`UPDATE \`${database}\`.cards SET note = CONCAT(note, ' paid') WHERE id % 3 = 0`);
    rowsAtEnd = await cards();
    endSecond = await serverSecond();
    await storedPast(endSecond); // the restore point's second is whole in storage

    const objects = await storedObjects();
    expect(objects.filter((o) => o.endsWith('.zst')).length).toBeGreaterThan(0);
    for (const object of objects) {
      const bytes = await readFile(object);
      expect(bytes.includes(Buffer.from('4000-1234'))).toBe(false);
      if (object.endsWith('.zst')) expect(bytes.subarray(0, 4).equals(ZSTD_MAGIC)).toBe(false);
      else expect((JSON.parse(bytes.toString('utf8')) as { sealed?: boolean }).sealed).toBe(true);
    }
  }, 120_000);

  it('a point-in-time restore opens them: exactly the rows up to that second; a base backup is taken right after it', async () => {
    // The stream stopped: storage will not reach the restore's base before the next test reads
    // the window (as with a stream running behind).
    await daemon!.stop();
    daemon = undefined;
    await db.query(`DELETE FROM \`${database}\`.cards`);
    const result = await restoreTo(toTime(endSecond));
    expect(result.exitCode, result.stderr).toBe(0);
    expect(await cards()).toEqual(rowsAtEnd);
    const summary = JSON.parse(result.stdout) as { id: string; baseBackup: { id: string; elements: string[] } };
    expect(summary.id).toBe(firstBase.id);
    expect(summary.baseBackup).toEqual({ id: expect.any(String), elements: ['db'] });
    restoreBase = summary.baseBackup.id;
    const manifest = await cliJson<Manifest>([...args, 'backup', 'show', ENV, restoreBase]);
    expect(manifest).toMatchObject({ trigger: 'restore', restoredAt: expect.any(String) });
    expect(Date.parse(manifest.restoredAt!)).toBeLessThan(Date.parse(manifest.createdAt));
  }, 120_000);

  it('a restore breaks the chain: the window shows the gap, a point inside it is refused, a point after its base restores from that base', async () => {
    const [window] = await cliJson<{ from: string; fromBackup: string; gaps: { from: string; to: string; backup: string }[] }[]>([...args, 'backup', 'window', ENV]);
    const base = await cliJson<Manifest>([...args, 'backup', 'show', ENV, restoreBase]);
    expect(window).toMatchObject({ fromBackup: firstBase.id, gaps: [{ from: base.restoredAt, to: base.elements[0]!.facts.binlogAt, backup: restoreBase }] });
    expect((await cli([...args, 'backup', 'window', ENV])).stdout).toContain(`not restorable: `);
    expect((await cli([...args, 'backup', 'window', ENV])).stdout).toContain(`(a restore, then its base backup ${restoreBase})`);
    // The same once the stream has stored past the base.
    daemon = await startDaemon(sandbox.configPath, { env: { [PASSWORD_ENV]: server.password } });
    await storedPast(await serverSecond());
    const [caughtUp] = await cliJson<{ gaps: unknown[] }[]>([...args, 'backup', 'window', ENV]);
    expect(caughtUp!.gaps).toEqual(window!.gaps);

    // The restore's own writes are in the binlog just before the base's position: a point there
    // (its base: the first backup) would replay them. Refused, naming the restore; the target unchanged.
    const before = await checksums(db, database);
    const { binlogFile, binlogPosition } = base.elements[0]!.facts as { binlogFile: string; binlogPosition: number };
    const inside = await restoreTo(['--to-position', `${binlogFile}:${binlogPosition - 1}`]);
    expect(inside.exitCode, inside.stderr).toBe(4);
    expect(inside.stderr).toMatch(/E_PITR_OUT_OF_WINDOW.*holds a restore of these databases/);
    expect(await checksums(db, database)).toEqual(before);

    // After the base: from that base, exactly the rows written since.
    for (let i = 0; i < 5; i++) await db.query(`INSERT INTO \`${database}\`.cards (note) VALUES (?)`, [`after the restore #${i}`]);
    const expected = await cards();
    const second = await serverSecond();
    await storedPast(second);
    // With a safety backup this time: the gap begins once it is done (it only reads the target).
    const after = await cli([...args, 'backup', 'restore', ENV, ...toTime(second), '--yes', '--json']);
    expect(after.exitCode, after.stderr).toBe(0);
    const restored = JSON.parse(after.stdout) as { id: string; safetyBackup: { id: string }; baseBackup: { id: string } };
    expect(restored.id).toBe(restoreBase);
    expect(await cards()).toEqual(expected);
    const [safety, nextBase] = await Promise.all([restored.safetyBackup.id, restored.baseBackup.id].map((id) => cliJson<Manifest>([...args, 'backup', 'show', ENV, id])));
    expect(safety!.trigger).toBe('safety');
    expect(Date.parse(nextBase!.restoredAt!)).toBeGreaterThanOrEqual(Date.parse(safety!.completedAt));
    expect(Date.parse(nextBase!.restoredAt!)).toBeLessThan(Date.parse(nextBase!.createdAt));
  }, 120_000);

  it('prune keeps the bases taken after restores while they are inside the window, whatever the tiers say', async () => {
    const config = await loadConfig(sandbox.configPath);
    const ctx = { config, logger: createLogger('silent'), signal: new AbortController().signal };
    const result = await pruneBackups(ctx, ENV, true);
    const restoreBases = result.kept.filter((k) => k.trigger === 'restore');
    // Two restores so far (the tests above), each followed by its base; the tiers (essential: the
    // newest of each day) keep one of them, the window the other.
    expect(restoreBases.map((k) => k.id)).toContain(restoreBase);
    expect(restoreBases).toHaveLength(2);
    expect(result.kept.find((k) => k.id === restoreBase)!.reason).toBe("the base after a restore inside db's point-in-time window");
    expect(result.deleted).toEqual([]);
  }, 60_000);

  it('a sealed segment changed in the bucket: E_BINLOG_CHAIN, the target unchanged', async () => {
    await daemon!.stop(); // nothing appended while the bucket is tampered with
    daemon = undefined;
    // One bit of each: whichever the replay reads first fails it.
    for (const segment of (await storedObjects()).filter((o) => o.endsWith('.zst'))) {
      const bytes = await readFile(segment);
      bytes[bytes.length >> 1]! ^= 0x01;
      await writeFile(segment, bytes);
    }
    await db.query(`INSERT INTO \`${database}\`.cards (note) VALUES ('written after the tamper')`);
    const before = await checksums(db, database);
    const result = await restoreTo(toTime(endSecond));
    expect(result.exitCode).toBe(5);
    expect(result.stderr).toMatch(/E_BINLOG_CHAIN.*does not match its record/);
    expect(await checksums(db, database)).toEqual(before);
  }, 120_000);
});
