import { describe, expect, it } from 'vitest';
import { BINLOG_MAGIC, EventType, MAX_EVENT_SIZE, parseEvents, scanCommits } from '../src/snapshot/binlog/events.ts';
import { isAgentError } from '../src/errors.ts';

/** One v4 event at file offset `offset`: the 19-byte header (log_pos = its end unless given) and `body`. */
function event(offset: number, type: number, body: Buffer, options: { timestamp?: number; serverId?: number; logPos?: number; size?: number } = {}): Buffer {
  const header = Buffer.alloc(19);
  const size = options.size ?? 19 + body.length;
  header.writeUInt32LE(options.timestamp ?? 1_700_000_000, 0);
  header.writeUInt8(type, 4);
  header.writeUInt32LE(options.serverId ?? 1, 5);
  header.writeUInt32LE(size, 9);
  header.writeUInt32LE(options.logPos ?? offset + 19 + body.length, 13);
  header.writeUInt16LE(0, 17);
  return Buffer.concat([header, body]);
}

function formatDescription(offset = 4, options: { version?: number; logPos?: number } = {}): Buffer {
  const body = Buffer.alloc(100 - 19);
  body.writeUInt16LE(options.version ?? 4, 0);
  body.write('10.11.19-MariaDB-log', 2, 'latin1');
  return event(offset, EventType.FORMAT_DESCRIPTION, body, { logPos: options.logPos });
}

function mariadbGtid(offset: number, seq: bigint, domain: number, serverId: number, flags2 = 0): Buffer {
  const body = Buffer.alloc(8 + 4 + 1 + 4);
  body.writeBigUInt64LE(seq, 0);
  body.writeUInt32LE(domain, 8);
  body.writeUInt8(flags2, 12);
  return event(offset, EventType.MARIADB_GTID, body, { serverId });
}

/** A QUERY_EVENT with `statement` (no status variables, database `db`), and a 4-byte checksum as with binlog_checksum=CRC32. */
function query(offset: number, statement: string, timestamp?: number): Buffer {
  const post = Buffer.alloc(13);
  post.writeUInt8(2, 8); // db_len
  const body = Buffer.concat([post, Buffer.from('db\0', 'latin1'), Buffer.from(statement, 'latin1'), Buffer.alloc(4, 0xaa)]);
  return event(offset, EventType.QUERY, body, { timestamp });
}

function xid(offset: number, timestamp?: number): Buffer {
  return event(offset, EventType.XID, Buffer.alloc(8 + 4), { timestamp });
}

/** A file built event by event, each at the offset the previous one ends. */
function file(...builders: Array<(offset: number) => Buffer>): Buffer {
  const parts: Buffer[] = [BINLOG_MAGIC];
  let offset = BINLOG_MAGIC.length;
  for (const build of builders) {
    const part = build(offset);
    parts.push(part);
    offset += part.length;
  }
  return Buffer.concat(parts);
}

function corruptError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(isAgentError(error, 'E_BINLOG_CORRUPT')).toBe(true);
    return (error as Error).message;
  }
  throw new Error('expected E_BINLOG_CORRUPT');
}

describe('parseEvents', () => {
  const sample = file(
    (o) => formatDescription(o),
    (o) => mariadbGtid(o, 7n, 0, 1),
    (o) => query(o, 'BEGIN', 1_700_000_001),
    (o) => xid(o, 1_700_000_002),
    (o) => mariadbGtid(o, 8n, 3, 42),
    (o) => query(o, 'CREATE TABLE t (a int)', 1_700_000_005),
  );

  it('walks a whole file: end, event count, first and last time, last GTID', () => {
    const parsed = parseEvents(sample, 0);
    expect(parsed).toMatchObject({ end: sample.length, count: 6, firstEventMs: 1_700_000_000_000, lastEventMs: 1_700_000_005_000, lastGtid: '3-42-8', pendingSize: null, lastType: EventType.QUERY });
  });

  it('names the GTID of the last transaction committed, carrying the open one from a cut to the next', () => {
    // Cut after each event: the bytes before the cut and the bytes after it, the group handed on.
    const boundaries: number[] = [];
    for (let pos = 4; pos < sample.length; pos += sample.readUInt32LE(pos + 9)) boundaries.push(pos + sample.readUInt32LE(pos + 9));
    const committedBy = ['', '', '', '0-1-7', '0-1-7', '3-42-8']; // after the n-th event
    boundaries.forEach((cut, n) => {
      const before = parseEvents(sample.subarray(0, cut), 0);
      expect(before.lastGtid, `cut after event ${n}`).toBe(committedBy[n] || null);
      const after = parseEvents(sample.subarray(cut), cut, 'binary log', before.group);
      expect(after.lastGtid, `after the cut after event ${n}`).toBe(n < 5 ? '3-42-8' : null);
      expect(after.group).toBeNull();
    });
    // The GTID event alone: its transaction is open, not committed.
    const open = parseEvents(sample.subarray(0, boundaries[1]), 0);
    expect(open).toMatchObject({ lastGtid: null, group: { gtid: '0-1-7', atStart: true } });
    // A commit whose group is not known (a stream resumed inside it) names no GTID.
    expect(parseEvents(sample.subarray(boundaries[2]!, boundaries[3]), boundaries[2]!)).toMatchObject({ count: 1, lastGtid: null, group: null });
  });

  it('the newest time is the largest, not the last: a replayed event keeps its older time', () => {
    const replayed = file(
      (o) => formatDescription(o),
      (o) => query(o, 'BEGIN', 1_700_000_009),
      (o) => query(o, 'INSERT INTO t VALUES (1)', 1_700_000_003),
    );
    expect(parseEvents(replayed, 0)).toMatchObject({ firstEventMs: 1_700_000_000_000, lastEventMs: 1_700_000_009_000 });
  });

  it('never reports half an event: every truncation ends on the last complete event', () => {
    const boundaries = [0, 4];
    for (let pos = 4; pos < sample.length; pos += sample.readUInt32LE(pos + 9)) boundaries.push(pos + sample.readUInt32LE(pos + 9));
    for (let cut = 0; cut <= sample.length; cut++) {
      const parsed = parseEvents(sample.subarray(0, cut), 0);
      expect(parsed.end).toBe(Math.max(...boundaries.filter((b) => b <= cut)));
    }
    // A header alone says how large the event is that the reader waits for.
    const fdeEnd = 4 + 100;
    expect(parseEvents(sample.subarray(0, fdeEnd + 19), 0)).toMatchObject({ end: fdeEnd, pendingSize: 19 + 17 });
  });

  it('parses from a known offset inside the file, and checks end positions against it', () => {
    const from = 4 + 100; // after the format description
    const parsed = parseEvents(sample.subarray(from), from);
    expect(parsed).toMatchObject({ end: sample.length, count: 5, firstEventMs: 1_700_000_000_000, lastGtid: '3-42-8' });
    // The same bytes said to be elsewhere in the file: their log_pos gives them away.
    expect(corruptError(() => parseEvents(sample.subarray(from), from + 8))).toMatch(/end position \d+ is not its offset \+ size/);
    // A buffer with no complete event: end is where it started.
    expect(parseEvents(sample.subarray(from, from + 10), from)).toMatchObject({ end: from, count: 0, firstEventMs: null, lastGtid: null });
  });

  it('accepts the magic alone, and a zero log_pos (events the server makes up, e.g. the format description it sends a replica)', () => {
    expect(parseEvents(BINLOG_MAGIC, 0)).toMatchObject({ end: 4, count: 0, firstEventMs: null });
    expect(parseEvents(BINLOG_MAGIC.subarray(0, 2), 0)).toMatchObject({ end: 0, count: 0 });
    const withZero = file((o) => formatDescription(o, { logPos: 0 }));
    expect(parseEvents(withZero, 0)).toMatchObject({ end: withZero.length, count: 1 });
  });

  it('refuses a bad magic, a forged size, a wrong end position, a first event that is no v4 format description', () => {
    expect(corruptError(() => parseEvents(Buffer.from('GIF89a'), 0))).toMatch(/does not start with the binlog magic/);
    expect(corruptError(() => parseEvents(Buffer.from([0xfe, 0x62, 0x00]), 0))).toMatch(/magic/);
    expect(corruptError(() => parseEvents(sample.subarray(2), 2))).toMatch(/inside the 4-byte magic/);

    const small = Buffer.from(sample);
    small.writeUInt32LE(18, 4 + 100 + 9);
    expect(corruptError(() => parseEvents(small, 0))).toMatch(/event size 18 is smaller than the 19-byte header/);

    const huge = Buffer.from(sample);
    huge.writeUInt32LE(MAX_EVENT_SIZE + 1, 4 + 100 + 9);
    expect(corruptError(() => parseEvents(huge, 0))).toMatch(/larger than any event/);

    // A size that still ends inside the buffer but disagrees with log_pos.
    const forged = Buffer.from(sample);
    forged.writeUInt32LE(19 + 10, 4 + 100 + 9);
    expect(corruptError(() => parseEvents(forged, 0))).toMatch(/end position/);

    expect(corruptError(() => parseEvents(file((o) => xid(o)), 0))).toMatch(/first event is of type 16, not a format description/);
    expect(corruptError(() => parseEvents(file((o) => formatDescription(o, { version: 3 })), 0))).toMatch(/binlog format version 3/);
  });

  it('reads MySQL GTIDs as uuid:gno', () => {
    const body = Buffer.alloc(1 + 16 + 8 + 1);
    Buffer.from('3e11fa4771ca11e1a1ea0800200c9a66', 'hex').copy(body, 1);
    body.writeBigInt64LE(23n, 17);
    const bytes = file((o) => formatDescription(o), (o) => event(o, EventType.MYSQL_GTID, body), (o) => query(o, 'BEGIN'), (o) => xid(o));
    expect(parseEvents(bytes, 0).lastGtid).toBe('3e11fa47-71ca-11e1-a1ea-0800200c9a66:23');
  });
});

describe('scanCommits', () => {
  it('finds XID commits, COMMIT queries and DDL groups, with their GTID; not BEGIN nor an unfinished group', () => {
    const bytes = file(
      (o) => formatDescription(o),
      (o) => mariadbGtid(o, 1n, 0, 1),
      (o) => query(o, 'BEGIN'),
      (o) => event(o, 19, Buffer.alloc(30)), // a table map
      (o) => event(o, 30, Buffer.alloc(40)), // rows
      (o) => xid(o, 1_700_000_010),
      (o) => mariadbGtid(o, 2n, 0, 1),
      (o) => query(o, 'BEGIN'),
      (o) => query(o, 'COMMIT', 1_700_000_011),
      (o) => mariadbGtid(o, 3n, 0, 1, 1),
      (o) => query(o, 'DROP TABLE `t`', 1_700_000_012),
      (o) => mariadbGtid(o, 4n, 0, 1),
      (o) => query(o, 'BEGIN'),
      (o) => event(o, 30, Buffer.alloc(40)),
    );
    const commits = scanCommits(bytes);
    expect(commits.map((c) => [c.gtid, c.timestampMs])).toEqual([
      ['0-1-1', 1_700_000_010_000],
      ['0-1-2', 1_700_000_011_000],
      ['0-1-3', 1_700_000_012_000],
    ]);
    // Each end is an event boundary: the next event (a GTID) starts there.
    for (const commit of commits) expect(bytes.readUInt8(commit.end + 4)).toBe(EventType.MARIADB_GTID);
  });

  it('refuses a file that ends inside an event', () => {
    const bytes = file((o) => formatDescription(o), (o) => xid(o));
    expect(corruptError(() => scanCommits(bytes.subarray(0, bytes.length - 1)))).toMatch(/ends inside an event of 31 bytes/);
  });
});
