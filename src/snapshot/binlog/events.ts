import { AgentError } from '../../errors.ts';

/**
 * The server's binary log on disk, format v4 (MySQL ≥ 5.0, every MariaDB): the 4-byte magic
 * `\xfebin`, then events, each a 19-byte header and a body:
 *
 *   timestamp u32 LE (seconds) | type u8 | server_id u32 | event_size u32 (header included)
 *   | log_pos u32 (the file offset just past the event; 0 for events the server makes up for
 *   a replica, such as the format description it sends first) | flags u16
 *
 * This module reads only headers and the few bodies the archive records (GTIDs) or the restore
 * stops at (commits); it never decodes rows. Anything that does not add up is E_BINLOG_CORRUPT:
 * a stream that no longer parses must stop before it stores bytes a restore cannot replay.
 */

export const BINLOG_MAGIC = Buffer.from([0xfe, 0x62, 0x69, 0x6e]);
export const EVENT_HEADER_SIZE = 19;

/** The event types this module looks at (the others pass by their header alone). */
export const EventType = {
  QUERY: 2,
  STOP: 3,
  ROTATE: 4,
  FORMAT_DESCRIPTION: 15,
  XID: 16,
  /** MySQL 5.6+: a GTID (server uuid, transaction number). */
  MYSQL_GTID: 33,
  /** MySQL 5.7+ without gtid_mode: opens a group as MYSQL_GTID does, with no GTID. */
  MYSQL_ANONYMOUS_GTID: 34,
  /** MariaDB 10.0+: a GTID (domain, server id from the header, sequence number). */
  MARIADB_GTID: 162,
} as const;

/**
 * No event is larger than the server lets a replica receive (slave_max_allowed_packet, at most
 * 1 GiB) plus its header: a bigger size is forged or garbage, and waiting for its bytes would
 * stall the stream forever.
 */
export const MAX_EVENT_SIZE = (1 << 30) + 64 * 1024;

export interface EventHeader {
  /** Offset of the event in the file. */
  offset: number;
  timestamp: number;
  type: number;
  serverId: number;
  size: number;
  logPos: number;
  flags: number;
}

export interface ParsedEvents {
  /** File offset just past the last complete event (or past the magic): where the next cut starts. Equals the start offset when nothing complete is there. */
  end: number;
  /** How many complete events lie between the start offset and `end`. */
  count: number;
  /**
   * Header times (s → ms) of the first complete event and of the newest one (the largest: an
   * event replayed from an older binlog keeps its original time, so the last is not always the
   * newest); null when there is none. Events with a zero timestamp (made up by the server) are not counted.
   */
  firstEventMs: number | null;
  lastEventMs: number | null;
  /**
   * The GTID (MariaDB `domain-server-seq`, MySQL `uuid:gno`) of the last transaction whose commit
   * is among the complete events, or null: a bytes range that ends between a transaction's GTID
   * event and its commit does not hold that transaction, whatever GTIDs it shows.
   */
  lastGtid: string | null;
  /** The event group open at `end` (its commit not yet seen), to hand to the next call; null between groups. */
  group: OpenGroup | null;
  /** The type of the last complete event, or null (ROTATE or STOP: the server has finished the file). */
  lastType: number | null;
  /** Size of the incomplete event at `end` when its header is there (so a reader knows how much to wait for), else null. */
  pendingSize: number | null;
}

/**
 * Walks the complete events of `bytes`, which holds the file's bytes from `offset` on (0: the
 * buffer starts with the magic). Never reports half an event: a truncated tail is left for the
 * next call. Throws E_BINLOG_CORRUPT on a bad magic, a size below the header's or above
 * MAX_EVENT_SIZE, a non-zero log_pos other than the event's own end, or a file whose first event
 * is not a v4 format description. `what` names the bytes in messages (e.g. `binlog.000042`).
 */
export function parseEvents(bytes: Buffer, offset: number, what = 'binary log', group: OpenGroup | null = null): ParsedEvents {
  const result: ParsedEvents = { end: offset, count: 0, firstEventMs: null, lastEventMs: null, lastGtid: null, group, lastType: null, pendingSize: null };
  let pos = 0;
  if (offset < BINLOG_MAGIC.length) {
    if (offset !== 0) throw corrupt(what, offset, `offset ${offset} is inside the 4-byte magic, not on an event boundary`);
    const have = Math.min(bytes.length, BINLOG_MAGIC.length);
    if (!bytes.subarray(0, have).equals(BINLOG_MAGIC.subarray(0, have))) throw corrupt(what, 0, 'the file does not start with the binlog magic \\xfebin (not a v4 binary log)');
    if (have < BINLOG_MAGIC.length) return result;
    pos = BINLOG_MAGIC.length;
    result.end = BINLOG_MAGIC.length;
  }
  while (bytes.length - pos >= EVENT_HEADER_SIZE) {
    const header = readHeader(bytes, pos, offset + pos);
    checkHeader(header, what);
    if (header.offset === BINLOG_MAGIC.length) checkFirstEvent(bytes, pos, header, what);
    if (bytes.length - pos < header.size) {
      result.pendingSize = header.size;
      break;
    }
    result.count++;
    result.lastType = header.type;
    if (header.timestamp !== 0) {
      result.firstEventMs ??= header.timestamp * 1000;
      result.lastEventMs = Math.max(result.lastEventMs ?? 0, header.timestamp * 1000);
    }
    const step = stepGroup(result.group, bytes.subarray(pos, pos + header.size), header);
    result.group = step.group;
    if (step.committed?.gtid) result.lastGtid = step.committed.gtid;
    pos += header.size;
    result.end = offset + pos;
  }
  return result;
}

/** The header of the event at `pos` of `bytes` (its file offset `offset`); the caller checks there are 19 bytes. */
export function readHeader(bytes: Buffer, pos: number, offset: number): EventHeader {
  return {
    offset,
    timestamp: bytes.readUInt32LE(pos),
    type: bytes.readUInt8(pos + 4),
    serverId: bytes.readUInt32LE(pos + 5),
    size: bytes.readUInt32LE(pos + 9),
    logPos: bytes.readUInt32LE(pos + 13),
    flags: bytes.readUInt16LE(pos + 17),
  };
}

function checkHeader(header: EventHeader, what: string): void {
  if (header.size < EVENT_HEADER_SIZE) throw corrupt(what, header.offset, `event size ${header.size} is smaller than the ${EVENT_HEADER_SIZE}-byte header`);
  if (header.size > MAX_EVENT_SIZE) throw corrupt(what, header.offset, `event size ${header.size} is larger than any event a server sends (${MAX_EVENT_SIZE})`);
  // log_pos is a u32: past 4 GiB (MariaDB allows such files) it wraps, and so does the check.
  if (header.logPos !== 0 && header.logPos !== (header.offset + header.size) % 2 ** 32) {
    throw corrupt(what, header.offset, `the event's end position ${header.logPos} is not its offset + size (${header.offset + header.size})`);
  }
}

/** A file's first event is the format description, of binlog version 4 (the u16 that starts its body). */
function checkFirstEvent(bytes: Buffer, pos: number, header: EventHeader, what: string): void {
  if (header.type !== EventType.FORMAT_DESCRIPTION) throw corrupt(what, header.offset, `the first event is of type ${header.type}, not a format description (15)`);
  if (bytes.length - pos >= EVENT_HEADER_SIZE + 2) {
    const version = bytes.readUInt16LE(pos + EVENT_HEADER_SIZE);
    if (version !== 4) throw corrupt(what, header.offset, `binlog format version ${version}; only version 4 is supported`);
  }
}

/** The GTID an event carries (MariaDB GTID_EVENT, MySQL GTID_LOG_EVENT), or undefined. */
function gtidOf(event: Buffer, header: EventHeader): string | undefined {
  const body = EVENT_HEADER_SIZE;
  if (header.type === EventType.MARIADB_GTID && event.length >= body + 12) {
    const seq = event.readBigUInt64LE(body);
    const domain = event.readUInt32LE(body + 8);
    return `${domain}-${header.serverId}-${seq}`;
  }
  if (header.type === EventType.MYSQL_GTID && event.length >= body + 25) {
    const sid = event.subarray(body + 1, body + 17).toString('hex');
    const gno = event.readBigInt64LE(body + 17);
    return `${sid.slice(0, 8)}-${sid.slice(8, 12)}-${sid.slice(12, 16)}-${sid.slice(16, 20)}-${sid.slice(20)}:${gno}`;
  }
  return undefined;
}

/**
 * The first bytes of a QUERY_EVENT's statement, upper-cased (enough to tell BEGIN and COMMIT).
 * Body: thread_id u32, exec_time u32, db_len u8, error_code u16, status_vars_len u16, the
 * status variables, the database name and a NUL, then the statement (and, with
 * binlog_checksum, a 4-byte CRC after it: hence only a prefix is compared).
 */
function statementStart(event: Buffer): string {
  const post = EVENT_HEADER_SIZE;
  if (event.length < post + 13) return '';
  const dbLength = event.readUInt8(post + 8);
  const statusLength = event.readUInt16LE(post + 11);
  const start = post + 13 + statusLength + dbLength + 1;
  return event.subarray(start, Math.min(event.length, start + 8)).toString('latin1').toUpperCase();
}

export interface Commit {
  /** File offset just past the commit's last event: a `--stop-position` that ends the replay right after this transaction. */
  end: number;
  /** The commit event's header time (ms; second resolution). */
  timestampMs: number;
  /** The transaction's GTID (the GTID event that opened its group), or null on a server without GTIDs in the log. */
  gtid: string | null;
}

/**
 * Every transaction's commit in a whole binlog file (`bytes` from offset 0), in order: where a
 * restore may stop. A transaction is an event group opened by a GTID event; its commit is
 * - an XID_EVENT (16): a transactional (InnoDB) transaction's COMMIT;
 * - a QUERY_EVENT `COMMIT`: the end of a group of non-transactional (MyISAM, Aria) changes;
 * - the group's first QUERY_EVENT when it is not `BEGIN`: a DDL statement, a group of its own.
 * Everything else (BEGIN, table maps, row events, ROLLBACK-ended groups) is not a commit. A
 * group a server crash cut before its commit has none, so a replay never stops inside it.
 * Throws E_BINLOG_CORRUPT as parseEvents does, and on a truncated last event.
 */
export function scanCommits(bytes: Buffer, what = 'binary log'): Commit[] {
  const parsed = parseEvents(bytes, 0, what);
  if (parsed.end !== bytes.length) {
    const inside = parsed.pendingSize === null ? 'an event header' : `an event of ${parsed.pendingSize} bytes`;
    throw corrupt(what, parsed.end, `the file ends inside ${inside}`);
  }
  const commits: Commit[] = [];
  let group: OpenGroup | null = null;
  for (let pos = BINLOG_MAGIC.length; pos < bytes.length; ) {
    const header = readHeader(bytes, pos, pos);
    const step = stepGroup(group, bytes.subarray(pos, pos + header.size), header);
    pos += header.size;
    group = step.group;
    if (step.committed) commits.push({ end: pos, timestampMs: header.timestamp * 1000, gtid: step.committed.gtid });
  }
  return commits;
}

/**
 * An event group (a transaction) whose GTID event has been read and whose commit has not:
 * `gtid` null for MySQL's anonymous groups, `atStart` until its first statement is read.
 */
export interface OpenGroup {
  gtid: string | null;
  atStart: boolean;
}

/**
 * One event's effect on the group open before it: a GTID event opens one, a commit (see
 * scanCommits) ends the open one and returns it as `committed`. A commit with no group known to
 * be open (a stream resumed inside one) is committed with a null GTID: which transaction it
 * ends is not known.
 */
function stepGroup(open: OpenGroup | null, event: Buffer, header: EventHeader): { group: OpenGroup | null; committed?: OpenGroup } {
  const opened = gtidOf(event, header);
  if (opened !== undefined || header.type === EventType.MYSQL_ANONYMOUS_GTID) return { group: { gtid: opened ?? null, atStart: true } };
  let commit = header.type === EventType.XID;
  if (header.type === EventType.QUERY) {
    const statement = statementStart(event);
    commit = statement.startsWith('COMMIT') || (open?.atStart === true && !statement.startsWith('BEGIN'));
    if (!commit) return { group: open && { gtid: open.gtid, atStart: false } };
  }
  if (!commit) return { group: open };
  return { group: null, committed: open ?? { gtid: null, atStart: false } };
}

function corrupt(what: string, offset: number, why: string): AgentError {
  return new AgentError('E_BINLOG_CORRUPT', `${what} is not a well-formed binary log at offset ${offset}: ${why}`, { details: { offset } });
}
