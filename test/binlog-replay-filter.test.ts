import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { isAgentError } from '../src/errors.ts';
import { ReplayFilter } from '../src/snapshot/mysql/binlog-replay.ts';

/** An event as a BINLOG statement carries it: the 19-byte header, then `body`. */
function event(type: number, body: Buffer): Buffer {
  const header = Buffer.alloc(19);
  header.writeUInt32LE(1_796_234_999, 0);
  header[4] = type;
  header.writeUInt32LE(1, 5);
  header.writeUInt32LE(19 + body.length, 9);
  return Buffer.concat([header, body]);
}

/** A table map of `db`.`table` (table id, flags, then the names, length-prefixed and NUL-terminated). */
function tableMap(db: string, table: string): Buffer {
  const name = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s), Buffer.from([0])]);
  return event(19, Buffer.concat([Buffer.alloc(8), name(db), name(table), Buffer.from([1, 3, 0, 0])]));
}

const writeRows = () => event(30, Buffer.alloc(12, 1));
const binlog = (...events: Buffer[]) => `BINLOG '\n${Buffer.concat(events).toString('base64')}\n'/*!*/;`;

/** What mariadb-binlog prints around the events of one transaction (its own lines, as 3.5 writes them). */
const HEAD = [
  '/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;',
  '/*!40019 SET @@session.max_delayed_threads=0*/;',
  'DELIMITER /*!*/;',
  '# at 4',
  '#261202 18:04:11 server id 1  end_log_pos 256 CRC32 0xdff363f3 \tStart: binlog v 4',
  'ROLLBACK/*!*/;',
];
const transaction = (rows: string, seq = 7) => [
  `#261202 18:09:59 server id 1  end_log_pos 1918 CRC32 0xee24d0f9 \tGTID 0-1-${seq} trans`,
  `/*M!100001 SET @@session.gtid_seq_no=${seq}*//*!*/;`,
  'START TRANSACTION',
  '/*!*/;',
  '#261202 18:09:59 server id 1  end_log_pos 2029 CRC32 0x90c8b78c \tTable_map: `shop__sa_stage_abcdef`.`t` mapped to number 18',
  rows,
  '#261202 18:09:59 server id 1  end_log_pos 2107 CRC32 0x3f12cb52 \tXid = 12',
  'COMMIT/*!*/;',
];
const query = (statement: string, db?: string) => [
  '#261202 18:10:00 server id 1  end_log_pos 2374 CRC32 0x41de44bf \tGTID 0-1-9 ddl',
  '# at 2374',
  '#261202 18:10:00 server id 1  end_log_pos 2481 CRC32 0xaa0163e4 \tQuery\tthread_id=7\texec_time=0\terror_code=0\txid=14',
  ...(db ? [`use \`${db}\`/*!*/;`] : []),
  'SET TIMESTAMP=1796235000/*!*/;',
  statement,
  '/*!*/;',
];
const TAIL = ['DELIMITER ;', '# End of log file', 'ROLLBACK /* added by mysqlbinlog */;', '/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=0*/;'];

async function run(lines: string[]): Promise<{ out: string; filter: ReplayFilter }> {
  const filter = new ReplayFilter({ staging: new Map([['shop', 'shop__sa_stage_abcdef']]), existing: ['shop', 'victim', 'mysql'], firstFile: 'binlog.000001' });
  const out = await text(Readable.from([Buffer.from(`${lines.join('\n')}\n`, 'latin1')]).pipe(filter));
  return { out, filter };
}

async function refusal(lines: string[]): Promise<{ code: string; message: string }> {
  try {
    await run(lines);
  } catch (error) {
    if (isAgentError(error)) return { code: error.code, message: error.message };
    throw error;
  }
  throw new Error('the filter passed what it should refuse');
}

describe('ReplayFilter: what a point-in-time replay lets through to the server', () => {
  it("passes mariadb-binlog's own output for the staging databases, without the source's GTIDs, and says what it applied last", async () => {
    const rows = binlog(tableMap('shop__sa_stage_abcdef', 't'), writeRows());
    const { out, filter } = await run([...HEAD, ...transaction(rows), ...query('ALTER TABLE shop.t ADD COLUMN w INT'), ...TAIL]);
    expect(out).toContain(rows);
    expect(out).toContain('START TRANSACTION');
    expect(out).toContain('COMMIT/*!*/;');
    expect(out).not.toContain('gtid_seq_no');
    expect(out).not.toContain('SET TIMESTAMP');
    // A qualified name of the dumped database goes to its staging copy.
    expect(out).toContain('ALTER TABLE `shop__sa_stage_abcdef`.t ADD COLUMN w INT');
    expect(filter.facts.last).toEqual({ gtid: '0-1-9', time: '2026-12-02T18:10:00Z', file: 'binlog.000001', position: 2481 });
  });

  it('knows which transactions the binlog held the commit of, replayed or passed over: a replay to a GTID without it stops short', async () => {
    const ours = binlog(tableMap('shop__sa_stage_abcdef', 't'), writeRows());
    const gtid = (domain: number, seq: number) => ({ domain, server: 1, seq });
    // 0-1-7 ours and committed, 0-1-9 a DDL of another database, passed over.
    const { filter } = await run([...HEAD, ...transaction(ours, 7), ...query('DROP TABLE t', 'victim'), ...TAIL]);
    expect([7, 9, 10].map((seq) => filter.holdsCommitOf(gtid(0, seq)))).toEqual([true, true, false]);
    expect(filter.holdsCommitOf(gtid(1, 1))).toBe(false);
    // Cut before the commit (its Xid event and COMMIT): mariadb-binlog closes with a ROLLBACK of its own.
    const cut = await run([...HEAD, ...transaction(ours, 7).slice(0, -2), ...TAIL]);
    expect(cut.filter.holdsCommitOf(gtid(0, 7))).toBe(false);
    // A DDL whose GTID event is held but not its Query event.
    const ddl = await run([...HEAD, ...transaction(ours, 7), ...query('DROP TABLE t', 'victim').slice(0, 1), ...TAIL]);
    expect([7, 9].map((seq) => ddl.filter.holdsCommitOf(gtid(0, seq)))).toEqual([true, false]);
  });

  it("passes over what belongs to other databases or to none: rows of other tables, another database's statements, account statements", async () => {
    const other = binlog(tableMap('victim', 't'), writeRows());
    const { out, filter } = await run([
      ...HEAD,
      ...transaction(other),
      ...query("CREATE USER 'x'@'%' IDENTIFIED BY 'y'"),
      ...query('DROP TABLE t', 'victim'),
      ...TAIL,
    ]);
    expect(out).not.toContain(other);
    expect(out).not.toContain('CREATE USER');
    expect(out).not.toContain('DROP TABLE');
    expect(out).not.toContain('victim');
    expect(filter.facts.skipped).toBe(3);
  });

  it('maps the tables of TRUNCATE and RENAME TABLE (applications, online schema tools) to staging, and refuses one of another database', async () => {
    const { out } = await run([
      ...HEAD,
      ...query('TRUNCATE TABLE shop.sessions'),
      ...query('RENAME TABLE shop.orders TO shop._orders_old, `shop`.`_orders_new` TO shop.orders'),
      ...query('TRUNCATE cache', 'shop__sa_stage_abcdef'),
      ...TAIL,
    ]);
    expect(out).toContain('TRUNCATE TABLE `shop__sa_stage_abcdef`.`sessions`');
    expect(out).toContain('RENAME TABLE `shop__sa_stage_abcdef`.`orders` TO `shop__sa_stage_abcdef`.`_orders_old`, `shop__sa_stage_abcdef`.`_orders_new` TO `shop__sa_stage_abcdef`.`orders`');
    expect(out).toContain('TRUNCATE cache');
    for (const statement of ['RENAME TABLE shop.orders TO victim.orders', 'TRUNCATE TABLE shop.a, shop.b', 'RENAME TABLE shop.a TO b']) {
      expect((await refusal([...HEAD, ...query(statement)])).code).toBe('E_UNSAFE_ARCHIVE_ENTRY');
    }
  });

  it.each([
    ['rows of a staging table and another database in one statement', [...transaction(binlog(tableMap('shop__sa_stage_abcdef', 't'), tableMap('victim', 't'), writeRows()))], 'staging and in other databases'],
    ['an event other than rows inside BINLOG', [...transaction(binlog(event(2, Buffer.alloc(20))))], 'not a row event'],
    ['a truncated event inside BINLOG', [...transaction(binlog(tableMap('shop__sa_stage_abcdef', 't')).replace(/'\n(.*)\n'/, (_m, b64: string) => `'\n${b64.slice(0, 20)}\n'`))], 'BINLOG statement'],
    ['a GRANT under the staging database', query('GRANT ALL ON *.* TO x', 'shop__sa_stage_abcdef'), 'statement policy'],
    ['a statement on the dumped database and another one', query('INSERT INTO shop.t SELECT * FROM victim.t'), 'statement policy'],
    ['SET GLOBAL', ['SET GLOBAL read_only=1/*!*/;'], 'other than a session variable'],
    ['a session under ANSI_QUOTES', ['SET @@session.sql_mode=4/*!*/;'], 'ANSI_QUOTES'],
    ['a session in a multibyte character set', ['/*!\\C sjis *//*!*/;'], 'character set sjis'],
    ['fragmented BINLOG', ['BINLOG @binlog_fragment_0, @binlog_fragment_1/*!*/;'], 'fragments'],
    ['a statement left open at the end', ['CREATE TABLE shop.t (id INT'], 'ends inside a statement'],
  ])('refuses %s, before the server sees it (E_UNSAFE_ARCHIVE_ENTRY)', async (_what, lines, why) => {
    const refused = await refusal([...HEAD, ...lines]);
    expect(refused.code).toBe('E_UNSAFE_ARCHIVE_ENTRY');
    expect(refused.message).toContain(why);
  });

  it('a restore of the databases since the base (its staging names in the binlog) cannot be replayed across: E_PITR_OUT_OF_WINDOW', async () => {
    const refused = await refusal([...HEAD, ...query('RENAME TABLE shop.t TO shop__sa_old_123abc.t, shop__sa_stage_123abc.t TO shop.t')]);
    expect(refused.code).toBe('E_PITR_OUT_OF_WINDOW');
    expect(refused.message).toContain('holds a restore');
  });
});
