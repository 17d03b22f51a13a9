import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DUMP_OPTIONS, dumpOptions } from '../src/snapshot/mysql/dump.ts';
import { dumpClient, parseDumpClient, parseServerFlavour } from '../src/snapshot/mysql/flavour.ts';
import { StagingRewriter } from '../src/snapshot/mysql/rewrite.ts';
import { connect, createDatabase, leftoverDatabases, mariadbServer, rows, testMysqlDriver, uniqueName, type MariadbTestServer } from './support/mysql.ts';

/*
 * Oracle MySQL 8 (issue #14 §3). Debian 12 has no MySQL 8 server (its mysql-server is MariaDB's,
 * and so is its mysqldump), so no test here dumps a real MySQL 8: the fixture
 * test/fixtures/mysql8/shop-gtid.sql stands in for one. It is mysqldump 8.0's output for a server
 * with GTIDs, written by hand in that format (header comments, `/*!50503 …*\/` settings,
 * SQL_LOG_BIN and GTID_PURGED, `/*!80016 …*\/` and `/*!80023 …*\/` clauses, a trigger, a function
 * and a procedure under DELIMITER ;;, a view's temporary and final structure), behind the
 * agent's header line. Where mysqldump 8 writes MySQL's default collation, utf8mb4_0900_ai_ci,
 * the fixture has utf8mb4_unicode_ci: the test server, MariaDB 10.11, has no 0900 collations.
 */

const FIXTURE = path.join(import.meta.dirname, 'fixtures/mysql8/shop-gtid.sql');
const STAGING = 'shop__sa_stage_abcdef';
const GTIDS = '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5417,8a94f357-aab4-11df-86ab-c80aa9429562:1-12';
const never = () => new AbortController().signal;

/** The fixture through the restore's rewriter (shop → STAGING), in chunks of `chunk` bytes. */
async function rewrite(dump: Buffer, existing: string[] = [], chunk = dump.length): Promise<{ text: string; gtidPurged: string | undefined }> {
  const rewriter = new StagingRewriter({ resolve: (dbs) => new Map(dbs.map((d) => [d, STAGING])), existing });
  const parts: Buffer[] = [];
  for (let i = 0; i < dump.length; i += chunk) parts.push(dump.subarray(i, i + chunk));
  const out: Buffer[] = [];
  for await (const part of Readable.from(parts).pipe(rewriter)) out.push(part as Buffer);
  return { text: Buffer.concat(out).toString('utf8'), gtidPurged: rewriter.gtidPurged };
}

/** The fixture with `from` replaced by `to` (exactly once: the test names what it changes). */
function variant(dump: Buffer, from: string, to: string): Buffer {
  const text = dump.toString('utf8');
  expect(text.split(from)).toHaveLength(2);
  return Buffer.from(text.replace(from, to));
}

describe('MySQL 8: flavour detection and dump options', () => {
  it('tells MariaDB, Oracle MySQL and Percona Server apart from VERSION() and @@version_comment', () => {
    expect(parseServerFlavour('10.11.6-MariaDB-0+deb12u1-log', 'Debian 12')).toEqual({ flavour: 'mariadb', version: '10.11.6-MariaDB-0+deb12u1-log' });
    expect(parseServerFlavour('5.5.5-10.6.18-MariaDB', 'MariaDB Server').flavour).toBe('mariadb');
    expect(parseServerFlavour('8.0.36', 'MySQL Community Server - GPL')).toEqual({ flavour: 'mysql', version: '8.0.36' });
    expect(parseServerFlavour('5.7.44-log', 'MySQL Community Server (GPL)').flavour).toBe('mysql');
    expect(parseServerFlavour('8.0.35-27', 'Percona Server (GPL), Release 27, Revision 2f8eeab2').flavour).toBe('percona');
  });

  it('tells the mysqldump clients apart from their --version', async () => {
    expect(parseDumpClient('mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)')).toEqual({ flavour: 'mysql', version: '8.0.36' });
    expect(parseDumpClient('mysqldump  Ver 8.4.3 for Linux on x86_64 (Percona Server (GPL), Release 3, Revision 4e1b2ce8)')).toEqual({ flavour: 'mysql', version: '8.4.3' });
    expect(parseDumpClient('mysqldump  Ver 10.13 Distrib 5.7.44, for Linux (x86_64)')).toEqual({ flavour: 'mysql', version: '5.7.44' });
    expect(parseDumpClient('mysqldump  Ver 10.19 Distrib 10.11.6-MariaDB, for debian-linux-gnu (x86_64)')).toEqual({ flavour: 'mariadb', version: '10.11.6' });
    expect(parseDumpClient('mariadb-dump from 11.4.5-MariaDB, client 10.19 for debian-linux-gnu (x86_64)')).toEqual({ flavour: 'mariadb', version: '11.4.5' });
    expect(parseDumpClient('pg_dump (PostgreSQL) 15.8')).toBeUndefined();
    // Debian 12's mysqldump is MariaDB's client.
    expect(await dumpClient(never())).toMatchObject({ flavour: 'mariadb', version: expect.stringMatching(/^10\.11\.\d+$/) });
  });

  it('passes --set-gtid-purged=OFF only to Oracle mysqldump dumping a MySQL or Percona server, --column-statistics=0 only to an 8.x one', () => {
    const mysql8 = { flavour: 'mysql', version: '8.0.36' } as const;
    const mariadbServer = { flavour: 'mariadb', version: '10.11.6-MariaDB' } as const;
    const mariadbClient = { flavour: 'mariadb', version: '10.11.6' } as const;
    expect(dumpOptions(mariadbServer, mariadbClient)).toEqual(DUMP_OPTIONS);
    expect(dumpOptions(mysql8, mariadbClient)).toEqual(DUMP_OPTIONS);
    expect(dumpOptions(mysql8, { flavour: 'mysql', version: '8.0.36' })).toEqual([...DUMP_OPTIONS, '--set-gtid-purged=OFF', '--column-statistics=0']);
    expect(dumpOptions({ flavour: 'percona', version: '8.0.35-27' }, { flavour: 'mysql', version: '8.0.35' })).toEqual([...DUMP_OPTIONS, '--set-gtid-purged=OFF', '--column-statistics=0']);
    expect(dumpOptions({ flavour: 'mysql', version: '5.7.44-log' }, { flavour: 'mysql', version: '5.7.44' })).toEqual([...DUMP_OPTIONS, '--set-gtid-purged=OFF']);
    expect(dumpOptions(mariadbServer, { flavour: 'mysql', version: '8.0.36' })).toEqual([...DUMP_OPTIONS, '--column-statistics=0']);
  });
});

describe('MySQL 8: the restore rewriter and statement check on a mysqldump 8.0 dump (fixture)', () => {
  let dump: Buffer;
  beforeAll(async () => {
    dump = await readFile(FIXTURE);
  });

  it('drops SQL_LOG_BIN and GTID_PURGED (reporting the GTID set), keeps everything else, and maps every qualified name in view and routine bodies to staging', async () => {
    const { text, gtidPurged } = await rewrite(dump);
    expect(gtidPurged).toBe(GTIDS);
    expect(text).not.toMatch(/SQL_LOG_BIN|GTID_PURGED|3e11fa47/);
    // mysqldump's comment about the GTID state stays: it is a comment.
    expect(text).toContain('-- GTID state at the beginning of the backup');
    expect(text).toContain('CREATE DATABASE `shop__sa_stage_abcdef` /*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci */ /*!80016 DEFAULT ENCRYPTION=\'N\' */;');
    expect(text).toContain('`audit` int DEFAULT NULL /*!80023 INVISIBLE */,');
    expect(text).toContain(
      '/*!50001 CREATE ALGORITHM=UNDEFINED */\n/*!50013 DEFINER=CURRENT_USER SQL SECURITY DEFINER */\n/*!50001 VIEW `big_orders` AS select `shop__sa_stage_abcdef`.`orders`.`id` AS `id`,`shop__sa_stage_abcdef`.`orders`.`total` AS `total` from `shop__sa_stage_abcdef`.`orders` where (`shop__sa_stage_abcdef`.`orders`.`total` > 10) */;',
    );
    expect(text).toContain('RETURN (SELECT COUNT(*) FROM `shop__sa_stage_abcdef`.`orders`) ;;');
    expect(text).toContain("  INSERT INTO `shop__sa_stage_abcdef`.orders (total, note) VALUES (p_total, '  via add_order  ');\n  SELECT COUNT(*) INTO @orders FROM `shop__sa_stage_abcdef`.`orders`;");
    // No statement names the source database any more (mysqldump's comments still do).
    const statements = text.split('\n').filter((line) => !line.startsWith('--'));
    expect(statements.filter((line) => /`shop`|shop\./.test(line))).toEqual([]);
    // Split anywhere, the stream rewrites the same.
    expect((await rewrite(dump, [], 7)).text).toBe(text);
  });

  it('refuses a view or routine body naming a database on the server that the dump does not restore (E_UNSAFE_ARCHIVE_ENTRY), naming it', async () => {
    const view = variant(dump, 'from `shop`.`orders` where', 'from `shop`.`orders` join `crm`.`customers` on (1) where');
    const procedure = variant(dump, 'SELECT COUNT(*) INTO @orders FROM `shop`.`orders`;', 'SELECT COUNT(*) INTO @orders FROM crm.customers;');
    const fn = variant(dump, 'RETURN (SELECT COUNT(*) FROM `shop`.`orders`) ;;', 'RETURN (SELECT COUNT(*) FROM `crm`.customers) ;;');
    for (const [what, forged] of [
      ['view', view],
      ['procedure', procedure],
      ['function', fn],
    ] as const) {
      await expect(rewrite(forged, ['crm']), what).rejects.toMatchObject({ code: 'E_UNSAFE_ARCHIVE_ENTRY', message: expect.stringMatching(/names database crm, which is not one of the dump's/) });
    }
  });

  it("drops Percona mysqldump's MyRocks bulk-load statements (dynamic SQL), byte for byte, and refuses any other PREPARE", async () => {
    // As Percona Server's mysqldump (5.7, 8.0) writes them after the settings and before the trailer.
    const preamble = `/*!50717 SELECT COUNT(*) INTO @rocksdb_has_p_s_session_variables FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = 'performance_schema' AND TABLE_NAME = 'session_variables' */;
/*!50717 SET @rocksdb_get_is_supported = IF (@rocksdb_has_p_s_session_variables, 'SELECT COUNT(*) INTO @rocksdb_is_supported FROM performance_schema.session_variables WHERE VARIABLE_NAME=\\'rocksdb_bulk_load\\'', 'SELECT 0') */;
/*!50717 PREPARE s FROM @rocksdb_get_is_supported */;
/*!50717 EXECUTE s */;
/*!50717 DEALLOCATE PREPARE s */;
/*!50717 SET @rocksdb_enable_bulk_load = IF (@rocksdb_is_supported, 'SET SESSION rocksdb_bulk_load = 1', 'SET @rocksdb_dummy_bulk_load = 0') */;
/*!50717 PREPARE s FROM @rocksdb_enable_bulk_load */;
/*!50717 EXECUTE s */;
/*!50717 DEALLOCATE PREPARE s */;
`;
    const postamble = `/*!50112 SET @disable_bulk_load = IF (@is_rocksdb_supported, 'SET SESSION rocksdb_bulk_load = @old_rocksdb_bulk_load', 'SET @dummy_rocksdb_bulk_load = 0') */;
/*!50112 PREPARE s FROM @disable_bulk_load */;
/*!50112 EXECUTE s */;
/*!50112 DEALLOCATE PREPARE s */;
`;
    const settings = '/*!40111 SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0 */;\n';
    const trailer = '/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;\n';
    const percona = variant(variant(dump, settings, `${settings}${preamble}`), trailer, `${postamble}${trailer}`);
    const { text } = await rewrite(percona);
    expect(text).not.toMatch(/rocksdb|PREPARE|EXECUTE/);
    // All that is left of them is the line ends after them.
    const lines = (dump: string) => dump.replace(/\n+/g, '\n');
    expect(lines(text)).toBe(lines((await rewrite(dump)).text));
    // A forged @rocksdb_enable_bulk_load is set, but the PREPARE of it is dropped all the same: nothing runs it.
    const primed = await rewrite(variant(dump, settings, `${settings}/*!50717 SET @rocksdb_enable_bulk_load = 'RESET MASTER' */;\n/*!50717 PREPARE s FROM @rocksdb_enable_bulk_load */;\n/*!50717 EXECUTE s */;\n`));
    expect(primed.text).not.toMatch(/PREPARE|EXECUTE/);
    for (const forged of ['/*!50717 PREPARE s FROM @forged */;', '/*!50717 EXECUTE s USING @forged */;']) {
      await expect(rewrite(variant(dump, settings, `${settings}${forged}\n`)), forged).rejects.toMatchObject({ code: 'E_UNSAFE_ARCHIVE_ENTRY' });
    }
  });

  it('refuses any other form of the binary log and GTID statements, and session settings mysqldump does not write', async () => {
    const cases: [string, string][] = [
      ['SQL_LOG_BIN turned on', 'SET @@SESSION.SQL_LOG_BIN = 1;'],
      ['GTID_PURGED from a variable', 'SET @@GLOBAL.GTID_PURGED = @forged;'],
      ['GTID_PURGED with more than a GTID set', "SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ CONCAT('3e11fa47-71ca-11e1-9e33-c80aa9429562:1', '');"],
      ['GTID_PURGED inside an executable comment', "/*!50000 SET @@GLOBAL.GTID_PURGED='3e11fa47-71ca-11e1-9e33-c80aa9429562:1' */;"],
      ['another global GTID variable', "SET @@GLOBAL.gtid_slave_pos = '0-1-1';"],
      ['a session variable mysqldump does not set (mysqlbinlog does)', '/*!80016 SET @@session.default_table_encryption=0*/;'],
    ];
    for (const [what, statement] of cases) {
      const forged = variant(dump, 'SET @@SESSION.SQL_LOG_BIN= 0;', statement);
      await expect(rewrite(forged), what).rejects.toMatchObject({ code: 'E_UNSAFE_ARCHIVE_ENTRY', message: expect.stringMatching(/refusing to load it/) });
    }
  });
});

describe('MySQL 8: a mysqldump 8.0 dump restored into the real MariaDB', () => {
  let server: MariadbTestServer;
  let db: Connection;
  const created: string[] = [];
  const track = (name: string) => (created.push(name), name);
  let stateDir: string;
  const driver = (databases: string[]) => testMysqlDriver(server, databases, stateDir);

  beforeAll(async () => {
    server = mariadbServer();
    db = await connect(server, { root: true });
    stateDir = await mkdtemp(path.join(tmpdir(), 'mysql8-dump-state-'));
  });

  afterAll(async () => {
    for (const name of created) await db?.query(`DROP DATABASE IF EXISTS \`${name}\``).catch(() => {});
    db?.destroy();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it('restores the rows, drops GTID_PURGED with a warning (the load is binary-logged), and the view and routines naming the source database work in the target', async () => {
    const target = track(uniqueName('sa_mysql8'));
    const binlogPos = async () => (await rows<{ pos: string }>(db, 'SELECT @@GLOBAL.gtid_binlog_pos AS pos'))[0]!.pos;
    const before = await binlogPos();
    const staged = await driver([target]).stage(Readable.from([await readFile(FIXTURE)]), never());
    expect(staged.facts).toMatchObject({ databases: `shop->${target}`, gtidPurgedDropped: GTIDS, warning: expect.stringMatching(/sets GTID_PURGED to 3e11fa47-.*not applied/) });
    await staged.commit();
    expect(await leftoverDatabases(db)).toEqual([]);
    // SQL_LOG_BIN = 0 was not run (the agent's account could not, and replicas would miss it).
    expect(await binlogPos()).not.toBe(before);

    expect(await rows(db, `SELECT id, total, note, audit FROM \`${target}\`.orders ORDER BY id`)).toEqual([
      { id: 1, total: '9.50', note: 'first', audit: null },
      { id: 2, total: '120.00', note: 'Grüße; USE `mysql`;', audit: 7 },
      { id: 3, total: '42.00', note: null, audit: null },
    ]);
    const [view] = await rows<{ 'Create View': string }>(db, `SHOW CREATE VIEW \`${target}\`.big_orders`);
    expect(view!['Create View']).toContain(`from \`${target}\`.\`orders\` where \`${target}\`.\`orders\`.\`total\` > 10`);
    expect(view!['Create View']).toContain(`DEFINER=\`${server.user}\`@\`127.0.0.1\``);
    const routines = await rows<{ name: string; body: string }>(
      db,
      'SELECT ROUTINE_NAME AS name, ROUTINE_DEFINITION AS body FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY ROUTINE_NAME',
      [target],
    );
    expect(routines).toEqual([
      { name: 'add_order', body: `BEGIN\n  INSERT INTO \`${target}\`.orders (total, note) VALUES (p_total, '  via add_order  ');\n  SELECT COUNT(*) INTO @orders FROM \`${target}\`.\`orders\`;\nEND` },
      { name: 'order_count', body: `RETURN (SELECT COUNT(*) FROM \`${target}\`.\`orders\`)` },
    ]);
    // They run against the target: the trigger trims the procedure's note, the view sees the row.
    await db.query(`CALL \`${target}\`.add_order(15)`);
    expect(await rows(db, `SELECT \`${target}\`.order_count() AS n`)).toEqual([{ n: 4 }]);
    expect(await rows(db, `SELECT id, total FROM \`${target}\`.big_orders ORDER BY id`)).toEqual([
      { id: 2, total: '120.00' },
      { id: 3, total: '42.00' },
      { id: 4, total: '15.00' },
    ]);
    expect(await rows(db, `SELECT note FROM \`${target}\`.orders WHERE id = 4`)).toEqual([{ note: 'via add_order' }]);
  });

  it('refuses a dump whose view names another database of the server, before changing anything', async () => {
    const other = track(await createDatabase(db, 'sa_other'));
    await db.query(`CREATE TABLE \`${other}\`.secrets (id INT PRIMARY KEY)`);
    const target = track(uniqueName('sa_mysql8'));
    const forged = variant(await readFile(FIXTURE), 'from `shop`.`orders` where', `from \`shop\`.\`orders\` join \`${other}\`.\`secrets\` on (1) where`);
    const failure = await driver([target])
      .stage(Readable.from([forged]), never())
      .catch((error: unknown) => error);
    expect(failure).toMatchObject({ code: 'E_UNSAFE_ARCHIVE_ENTRY', message: expect.stringContaining(`names database ${other}`) });
    expect(await rows(db, 'SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?', [target])).toEqual([]);
    expect(await leftoverDatabases(db)).toEqual([]);
  });

  it('a capture records the server flavour and the mysqldump client it ran (MariaDB\'s, with its options unchanged)', async () => {
    const source = track(await createDatabase(db, 'sa_flavour'));
    await db.query(`CREATE TABLE \`${source}\`.t (id INT PRIMARY KEY); INSERT INTO \`${source}\`.t VALUES (1)`);
    const capture = await driver([source]).capture({ signal: never(), consistent: false });
    await capture.stream.toArray();
    const { facts, warnings } = await capture.result;
    await capture.release();
    expect(warnings).toEqual([]);
    expect(facts).toMatchObject({ serverFlavour: 'mariadb', serverVersion: expect.stringMatching(/MariaDB/), mysqldump: expect.stringMatching(/^mariadb 10\.11\.\d+$/) });
  });
});
