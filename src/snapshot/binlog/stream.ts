import { mkdir, open, readdir, rm, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import type { Logger } from 'pino';
import { childEnv } from '../../child-env.ts';
import { AgentError, isAgentError } from '../../errors.ts';
import { clientArgs, clientProcessOptions, closeConnection, openConnection, queryRows, writeDefaultsFile, type DefaultsFile, type MysqlEndpoint } from '../mysql/connection.ts';
import { privateTempDir } from '../private-temp.ts';
import { BINLOG_MAGIC, EVENT_HEADER_SIZE, EventType, parseEvents, readHeader, type OpenGroup } from './events.ts';
import { binlogOrder, binlogSequence, type BinlogSegment, type SegmentSink } from './segment.ts';

/**
 * The binary log streamer (docs/pitr.md, "The streamer"): one `mariadb-binlog
 * --read-from-remote-server --raw --stop-never` child writes the server's binlog files into a
 * spool directory as the server sends them; every `flushEveryMs` the new complete events of
 * the file being written are handed to the sink as a segment. The child is the replication
 * client (it speaks the binlog dump protocol, follows rotations, waits for new events); this
 * class owns where it starts, what reaches storage, and what happens when it dies.
 *
 * What is stored is what the server sent, which is the server's file byte for byte except
 * the format description at its head: a server sends a replica that event with log_pos 0,
 * without the "file in use" flag and, for the file it created at start-up, without the
 * creation time (so with another checksum). Every event after it is the file's own.
 *
 * Positions are the server's file offsets. A child restarted with `--start-position=P` (after
 * a crash of the child, of the server, of the agent) rewrites the spool file from byte 0: the
 * magic, the header events the server makes up for a replica (log_pos 0), then the server's
 * events from P on. Those are mapped back to P, and the first one must end where its log_pos
 * says (events.ts), which proves the stream continues exactly where storage ends: no gap, no
 * byte twice.
 */
export interface BinlogStreamerOptions {
  /** Where and as whom to connect; called at each (re)start, so a changed password is read when needed. */
  endpoint: () => Promise<MysqlEndpoint>;
  /** The agent's state directory: the option file with the password goes in its private temp dir. */
  stateDir: string;
  /** The child's spool, under the state dir; created 0700, and emptied at start (it holds only copies of what the server has). */
  spoolDir: string;
  sink: SegmentSink;
  /** How often the growing file's new bytes are stored: the stream's RPO, give or take an upload. */
  flushEveryMs: number;
  /** The replica server id the child connects with: distinct from the server's and every replica's. */
  connectionServerId: number;
  logger: Logger;
  /** Largest segment (default 16 MiB); a catch-up over a large file is stored in pieces of this size. An event larger than it makes a segment of its own size. */
  maxSegmentBytes?: number;
  /** Restart delays after the child exits: first, then doubled up to max (default 0.5 s to 30 s). */
  backoff?: { initialMs: number; maxMs: number };
}

export type BinlogStreamState = 'starting' | 'streaming' | 'retrying' | 'stopped';

export interface BinlogStreamStatus {
  state: BinlogStreamState;
  /** Where storage ends: the file and the offset past its last stored byte (null before the first start). */
  file: string | null;
  end: number | null;
  /** The header time of the newest stored event (ms), or null. */
  lastEventMs: number | null;
  /** When the last segment was stored (ms since the epoch), or null. */
  lastAppendAt: number | null;
  /**
   * How far storage may be behind the server, in ms: now − the time since which storage may
   * lack events the server has logged.
   * - 0 while streaming and caught up: the child has passed the server's position at connect
   *   time, and the last flush stored every complete event it had received (so the loss a
   *   crash would cost is what the server logged since that flush, < flushEveryMs); during a
   *   flush the sink has not finished (storage slow or refusing), now − its first event's time.
   * - While catching up (streaming, but behind the position the server had when the child
   *   connected): now − the newest stored event's time.
   * - While the child is not streaming (starting, retrying, stopped): now − the last time the
   *   stream was caught up (the server may have logged anything since); before it ever was,
   *   now − the newest stored event's time, or now − the streamer's start.
   */
  lagMs: number;
  /** Why the last child ended or the last start failed (no secrets: the server's message), or null. */
  lastError: string | null;
  /** The running child's pid, or null. */
  pid: number | null;
}

/** What the streamer knows is in storage. */
interface Position {
  file: string;
  end: number;
  closed: boolean;
  /**
   * The transaction open at `end`, as this process stored the bytes before it, so that the
   * segment holding its commit names its GTID. Null or absent: none is open, or that is not
   * known (resumed from storage: the first commit then names no GTID, and a restore to that
   * GTID reads on to the next one).
   */
  group?: OpenGroup | null;
}

/** How the bytes of one spool file map to the server's file. */
interface SpoolFile {
  /** server offset = spool offset + shift; undefined until the made-up header of a restarted child has been read. */
  shift: number | undefined;
  /** Spool offset of the next byte to store. */
  readFrom: number;
  /** The server offset the child was started at, for a file it rewrote with a made-up header. */
  startedAt: number;
}

interface BinlogClient {
  command: string;
  /** The option naming the replica id: mariadb-binlog's `--stop-never-slave-server-id`, Oracle's `--connection-server-id`. */
  serverIdOption: string;
}

interface ChildOutcome {
  /** The child stored something, or streamed long enough: the next restart needs no longer wait. */
  progressed: boolean;
  error: string | null;
}

const DEFAULT_MAX_SEGMENT = 16 << 20;
const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000 };
/** The option file is removed once the child's first bytes arrive, or after this long at most: a client reads it at start, long before. */
const DEFAULTS_FILE_MAX_MS = 5_000;
const DEFAULTS_POLL_MS = 50;
const MAX_STDERR_LINES = 20;

export class BinlogStreamer {
  readonly #options: BinlogStreamerOptions;
  readonly #maxSegment: number;
  readonly #backoff: { initialMs: number; maxMs: number };
  #state: BinlogStreamState = 'stopped';
  #position: Position | undefined;
  #spool = new Map<string, SpoolFile>();
  #lastEventMs: number | null = null;
  #lastAppendAt: number | null = null;
  #lastError: string | null = null;
  #pid: number | null = null;
  #startedAt = Date.now();
  /** The server's binlog position when the current child connected: until storage passes it, the stream is catching up. */
  #catchUpTarget: { file: string; pos: number } | undefined;
  #caughtUp = false;
  /** The first event time of a segment handed to the sink and not yet stored (storage slow or refusing), or null. */
  #unstoredSinceMs: number | null = null;
  #caughtUpAt: number | null = null;
  #running = false;

  constructor(options: BinlogStreamerOptions) {
    this.#options = options;
    this.#maxSegment = options.maxSegmentBytes ?? DEFAULT_MAX_SEGMENT;
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
  }

  status(): BinlogStreamStatus {
    const now = Date.now();
    let lagMs: number;
    if (this.#state === 'streaming' && this.#caughtUp) lagMs = this.#unstoredSinceMs === null ? 0 : now - this.#unstoredSinceMs;
    else if (this.#state === 'streaming') lagMs = now - (this.#lastEventMs ?? this.#startedAt);
    else lagMs = now - (this.#caughtUpAt ?? this.#lastEventMs ?? this.#startedAt);
    return {
      state: this.#state,
      file: this.#position?.file ?? null,
      end: this.#position?.end ?? null,
      lastEventMs: this.#lastEventMs,
      lastAppendAt: this.#lastAppendAt,
      lagMs: Math.max(0, lagMs),
      lastError: this.#lastError,
      pid: this.#pid,
    };
  }

  /**
   * Streams until `signal` aborts, then kills the child and resolves. Every failure on the way
   * (the server down, the child killed, storage refusing) is retried with backoff from where
   * storage ends, and shows in status().lastError. Rejects only when no binlog client is
   * installed (E_BINLOG_STREAM), which no retry fixes.
   */
  async run(signal: AbortSignal): Promise<void> {
    if (this.#running) throw new AgentError('E_INTERNAL', 'this binlog streamer is already running');
    this.#running = true;
    this.#startedAt = Date.now();
    this.#state = 'starting';
    const { logger } = this.#options;
    try {
      await this.#clearSpool(true);
      const client = await detectClient();
      let delay = this.#backoff.initialMs;
      while (!signal.aborted) {
        let progressed = false;
        try {
          const start = await this.#plan(signal);
          const outcome = await this.#stream(client, start, signal);
          progressed = outcome.progressed;
          if (signal.aborted) break;
          this.#lastError = outcome.error;
          logger.warn({ file: this.#position?.file, end: this.#position?.end, error: outcome.error }, 'binlog stream: the client exited; restarting it');
        } catch (error) {
          if (signal.aborted) break;
          this.#lastError = error instanceof Error ? error.message : String(error);
          logger.warn({ file: this.#position?.file, end: this.#position?.end, error: this.#lastError, code: isAgentError(error) ? error.code : undefined }, 'binlog stream failed; retrying');
        }
        this.#leave('retrying');
        if (progressed) delay = this.#backoff.initialMs;
        await sleep(delay, undefined, { signal }).catch(() => {});
        delay = Math.min(delay * 2, this.#backoff.maxMs);
      }
    } finally {
      this.#leave('stopped');
      this.#pid = null;
      this.#running = false;
    }
  }

  /** Leaves the streaming state: a stream that was caught up was so until now. */
  #leave(state: 'retrying' | 'stopped'): void {
    if (this.#state === 'streaming' && this.#caughtUp && this.#unstoredSinceMs === null) this.#caughtUpAt = Date.now();
    this.#state = state;
  }

  /**
   * Where the next child starts: where storage ends (asked of the sink once, then known), or at
   * the server's current file when storage holds nothing. A file the server no longer has is a
   * gap: the sink restarts its chain and the stream goes on from the server's oldest file.
   */
  async #plan(signal: AbortSignal): Promise<Position> {
    const { sink, logger } = this.#options;
    if (!this.#position) {
      const stored = await sink.resume(signal);
      if (stored) this.#position = { file: stored.file, end: stored.end, closed: stored.closed ?? false };
    }
    const connection = await openConnection(await this.#options.endpoint(), 'E_BINLOG_STREAM', 'binlog stream');
    try {
      const logs = (await queryRows<{ Log_name: string; File_size: string | number }>(connection, 'SHOW BINARY LOGS')).map((row) => ({ name: row.Log_name, size: Number(row.File_size) }));
      const master = await masterStatus(connection);
      if (logs.length === 0 || !master) throw new AgentError('E_BINLOG_STREAM', 'the server has no binary log (log_bin is OFF): start it with --log-bin');
      this.#catchUpTarget = master;
      this.#caughtUp = false;
      if (!this.#position) {
        this.#position = { file: master.file, end: 0, closed: false };
        logger.info({ file: master.file }, 'binlog stream: storage holds nothing yet; starting at the server\'s current file');
        return this.#position;
      }
      const position = this.#position;
      const current = logs.find((log) => log.name === position.file);
      if (position.closed) {
        // Storage has the whole file: go on with the one after it, which the server must still have.
        const next = logs.find((log) => binlogOrder(log.name, position.file) > 0);
        if (next && isSuccessor(next.name, position.file)) return (this.#position = { file: next.name, end: 0, closed: false });
        if (current && !next) return position; // rotated in storage's view, yet the server has no newer file: wait on this one
      } else if (current && position.end <= current.size) {
        return position;
      }
      const reason = current
        ? `storage holds ${position.file} up to byte ${position.end}, but the server's ${position.file} has ${current.size} bytes: its binary log was reset, or this is another server`
        : `the server no longer has ${position.file} (purged; its oldest binary log is ${logs[0]!.name}): what it logged after byte ${position.end} of ${position.file} is not in storage`;
      logger.warn({ reason }, 'binlog stream: gap in the binary log; restarting the chain');
      await sink.restart(reason, signal);
      this.#lastError = reason;
      return (this.#position = { file: logs[0]!.name, end: 0, closed: false });
    } finally {
      closeConnection(connection);
    }
  }

  /** Runs one child from `start` until it exits (or the signal aborts), storing what it writes. */
  async #stream(client: BinlogClient, start: Position, signal: AbortSignal): Promise<ChildOutcome> {
    const { spoolDir, logger } = this.#options;
    await this.#clearSpool(false);
    // From the file's first bytes the child writes the file as it is; from further on it writes
    // a made-up header first (see the class comment).
    const fromMiddle = start.end > BINLOG_MAGIC.length;
    this.#spool = new Map([[start.file, fromMiddle ? { shift: undefined, readFrom: 0, startedAt: start.end } : { shift: 0, readFrom: start.end, startedAt: 0 }]]);

    const defaults = await writeDefaultsFile(await this.#options.endpoint(), await privateTempDir(this.#options.stateDir));
    let child: ResultPromise | undefined;
    try {
      const args = [
        ...clientArgs(defaults),
        '--read-from-remote-server',
        '--raw',
        '--stop-never',
        // A prefix, not a file: with --raw the child writes `<prefix><server's file name>`.
        `--result-file=${path.resolve(spoolDir)}${path.sep}`,
        `--${client.serverIdOption}=${this.#options.connectionServerId}`,
        ...(fromMiddle ? [`--start-position=${start.end}`] : []),
        start.file,
      ];
      child = execa(client.command, args, { ...clientProcessOptions(signal), stdin: 'ignore', stdout: 'ignore' });
    } catch (error) {
      await defaults.remove();
      throw error;
    }
    const startedAt = Date.now();
    this.#pid = child.pid ?? null;
    logger.info({ pid: this.#pid, file: start.file, from: start.end, client: client.command }, 'binlog stream: client started');

    const stderr: string[] = [];
    createInterface({ input: child.stderr!, crlfDelay: Infinity }).on('line', (line) => {
      if (line.trim()) stderr.push(line.trim());
      if (stderr.length > MAX_STDERR_LINES) stderr.shift();
    });
    let exited = false;
    const exit = child.then(
      () => undefined,
      (error: unknown) => error,
    );
    void exit.then(() => {
      exited = true;
    });
    const connected = this.#removeOnceConnected(defaults, exit);

    let appended = false;
    try {
      for (;;) {
        await Promise.race([exit, sleep(this.#options.flushEveryMs)]);
        if (signal.aborted) break;
        if (await this.#spoolHasBytes()) {
          this.#state = 'streaming';
        }
        if (await this.#drain(signal)) appended = true;
        if (exited) break;
      }
    } catch (error) {
      child.kill('SIGKILL');
      throw error;
    } finally {
      await exit;
      await connected;
      this.#pid = null;
    }
    const failure = await exit;
    const lived = Date.now() - startedAt;
    return {
      progressed: appended || (this.#state === 'streaming' && lived >= this.#backoff.maxMs),
      error: describeExit(client.command, failure, stderr),
    };
  }

  /**
   * Removes the option file (the password) as soon as the child has bytes from the server, so
   * it has logged in, or it has exited, or DEFAULTS_FILE_MAX_MS have passed: it read the file at
   * start, and a restart writes a new one.
   */
  async #removeOnceConnected(defaults: DefaultsFile, exit: Promise<unknown>): Promise<void> {
    let exited = false;
    void exit.then(() => {
      exited = true;
    });
    const deadline = Date.now() + DEFAULTS_FILE_MAX_MS;
    try {
      while (!exited && Date.now() < deadline && !(await this.#spoolHasBytes())) {
        await Promise.race([exit, sleep(DEFAULTS_POLL_MS)]);
      }
    } finally {
      await defaults.remove();
    }
  }

  /**
   * Stores the spool's new complete events, file by file: the file storage ends in, then, when
   * the child has moved on to a newer one (a rotation), that file's rest as its closing segment
   * (its spool copy removed) and the newer file from its first byte. Returns whether anything
   * was stored.
   */
  async #drain(signal: AbortSignal): Promise<boolean> {
    // A server that logged nothing since storage ends: caught up without a byte to store.
    this.#updateCaughtUp();
    let appended = false;
    for (;;) {
      const position = this.#position!;
      const names = (await this.#spoolFiles()).filter((name) => binlogOrder(name, position.file) >= 0);
      if (!names.includes(position.file)) {
        if (names.length > 0) {
          throw new AgentError('E_BINLOG_STREAM', `the binlog client wrote ${names[0]} but not ${position.file}, where storage ends: the server skipped a file; restarting the stream`);
        }
        return appended;
      }
      const newer = names.find((name) => binlogOrder(name, position.file) > 0);
      if (await this.#appendNew(position.file, newer !== undefined, signal)) appended = true;
      if (!newer) return appended;
      if (!this.#position!.closed) {
        // The file ended without a rotate or stop event (the server crashed): its last bytes
        // are stored already, so the close is a segment of none.
        const end = this.#position!.end;
        await this.#append({ file: position.file, offset: end, end, bytes: Buffer.alloc(0), firstEventMs: null, lastEventMs: null, lastGtid: null, closed: true }, signal);
        appended = true;
      }
      await rm(path.join(this.#options.spoolDir, position.file), { force: true });
      this.#spool.delete(position.file);
      this.#position = { file: newer, end: 0, closed: false };
      if (!this.#spool.has(newer)) this.#spool.set(newer, { shift: 0, readFrom: 0, startedAt: 0 });
    }
  }

  /**
   * Stores the complete events of spool file `file` past what is stored, in segments of at
   * most maxSegmentBytes. `finished`: the child has moved on, so no byte will be added, and an
   * incomplete event at the end is corruption. Returns whether anything was stored.
   */
  async #appendNew(file: string, finished: boolean, signal: AbortSignal): Promise<boolean> {
    const info = this.#spool.get(file) ?? { shift: 0, readFrom: 0, startedAt: 0 };
    this.#spool.set(file, info);
    const spoolPath = path.join(this.#options.spoolDir, file);
    const handle = await open(spoolPath, 'r');
    let appended = false;
    try {
      const size = (await handle.stat()).size;
      // A header and nothing after it, in a file the child has finished: the server had nothing
      // past where storage ends (it crashed, or rotated, right there).
      if (info.shift === undefined && !(await this.#readHeader(handle, size, file, info))) return false;
      const shift = info.shift!;
      while (info.readFrom < size) {
        const available = size - info.readFrom;
        let bytes = await readAt(handle, info.readFrom, Math.min(available, this.#maxSegment));
        const offset = info.readFrom + shift;
        let parsed = parseEvents(bytes, offset, file, this.#position?.group ?? null);
        if (parsed.count === 0 && parsed.end === offset && parsed.pendingSize !== null && parsed.pendingSize <= available) {
          // One event larger than a segment: it is a segment of its own.
          bytes = await readAt(handle, info.readFrom, parsed.pendingSize);
          parsed = parseEvents(bytes, offset, file, this.#position?.group ?? null);
        }
        if (parsed.end === offset) {
          if (finished) throw new AgentError('E_BINLOG_CORRUPT', `${file} ends inside an event at offset ${offset} (${available} bytes left), yet the server has moved on to a newer file; restarting the stream`);
          break;
        }
        const length = parsed.end - offset;
        const last = info.readFrom + length >= size;
        const closed = parsed.lastType === EventType.ROTATE || parsed.lastType === EventType.STOP || (finished && last);
        await this.#append(
          { file, offset, end: parsed.end, bytes: bytes.subarray(0, length), firstEventMs: parsed.firstEventMs, lastEventMs: parsed.lastEventMs, lastGtid: parsed.lastGtid, closed },
          signal,
          parsed.group,
        );
        info.readFrom += length;
        appended = true;
        if (closed) break;
      }
      return appended;
    } finally {
      await handle.close();
    }
  }

  /**
   * The made-up head of a file a child was started in the middle of: the magic and the events
   * the server sends first with log_pos 0 (the format description). Once the first real event
   * is there, maps spool offsets to the server's (shift) and returns true.
   */
  async #readHeader(handle: FileHandle, size: number, file: string, info: SpoolFile): Promise<boolean> {
    let pos = BINLOG_MAGIC.length;
    const magic = await readAt(handle, 0, Math.min(size, pos));
    parseEvents(magic, 0, `${file} (as the binlog client restarted it)`);
    if (size < pos) return false;
    while (size - pos >= EVENT_HEADER_SIZE) {
      const header = readHeader(await readAt(handle, pos, EVENT_HEADER_SIZE), 0, pos);
      if (header.logPos !== 0) {
        parseEvents(await readAt(handle, 0, pos), 0, `${file} (as the binlog client restarted it)`); // the magic and a format description first
        info.shift = info.startedAt - pos;
        info.readFrom = pos;
        return true;
      }
      if (header.size < EVENT_HEADER_SIZE) parseEvents(await readAt(handle, pos, EVENT_HEADER_SIZE), info.startedAt, file); // throws E_BINLOG_CORRUPT
      pos += header.size;
    }
    return false;
  }

  async #append(segment: BinlogSegment, signal: AbortSignal, group: OpenGroup | null = null): Promise<void> {
    // Until the sink has it, storage lacks this segment's events: the lag counts from its first.
    this.#unstoredSinceMs ??= segment.firstEventMs;
    await this.#options.sink.append(segment, signal);
    this.#unstoredSinceMs = null;
    this.#position = { file: segment.file, end: segment.end, closed: segment.closed, group };
    this.#lastAppendAt = Date.now();
    if (segment.lastEventMs !== null) this.#lastEventMs = Math.max(this.#lastEventMs ?? 0, segment.lastEventMs);
    this.#updateCaughtUp();
  }

  /** Caught up once storage has passed where the server's log was when the child connected. */
  #updateCaughtUp(): void {
    const target = this.#catchUpTarget;
    const position = this.#position;
    if (this.#caughtUp || !target || !position) return;
    const order = binlogOrder(position.file, target.file);
    if (order > 0 || (order === 0 && position.end >= target.pos)) {
      this.#caughtUp = true;
      this.#caughtUpAt = Date.now();
    }
  }

  async #spoolFiles(): Promise<string[]> {
    const names = await readdir(this.#options.spoolDir);
    return names.sort(binlogOrder);
  }

  async #spoolHasBytes(): Promise<boolean> {
    for (const name of await readdir(this.#options.spoolDir)) {
      const info = await stat(path.join(this.#options.spoolDir, name)).catch(() => undefined);
      if (info && info.size > 0) return true;
    }
    return false;
  }

  /** Empties the spool (its files are copies of the server's, from a child that is gone); `create` makes it 0700 first. */
  async #clearSpool(create: boolean): Promise<void> {
    const { spoolDir } = this.#options;
    if (create) await mkdir(spoolDir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(spoolDir)) await rm(path.join(spoolDir, name), { recursive: true, force: true });
  }
}

/** Reads `length` bytes at `position` (fewer only at the end of the file). */
async function readAt(handle: FileHandle, position: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buffer.subarray(0, done);
}

/** `SHOW MASTER STATUS` (MySQL 8.4 renamed it `SHOW BINARY LOG STATUS`); undefined without a binary log. */
async function masterStatus(connection: Parameters<typeof queryRows>[0]): Promise<{ file: string; pos: number } | undefined> {
  let rows: Array<{ File: string; Position: string | number }>;
  try {
    rows = await queryRows(connection, 'SHOW MASTER STATUS');
  } catch (error) {
    if ((error as { code?: string }).code !== 'ER_PARSE_ERROR') throw error;
    rows = await queryRows(connection, 'SHOW BINARY LOG STATUS');
  }
  const row = rows[0];
  return row ? { file: row.File, pos: Number(row.Position) } : undefined;
}

function isSuccessor(next: string, file: string): boolean {
  const [x, y] = [binlogSequence(next), binlogSequence(file)];
  return x !== undefined && y !== undefined && x === y + 1;
}

/**
 * The binlog client: mariadb-binlog, else mysqlbinlog (older MariaDB packages and Oracle's),
 * and how it takes the replica id, read from its --help (the two name the option differently).
 */
async function detectClient(): Promise<BinlogClient> {
  for (const command of ['mariadb-binlog', 'mysqlbinlog']) {
    let help: string;
    try {
      help = (await execa(command, ['--no-defaults', '--help'], { env: childEnv(), extendEnv: false, stdin: 'ignore', timeout: 10_000 })).stdout;
    } catch (error) {
      if ((error as { code?: string }).code === 'ENOENT') continue;
      throw new AgentError('E_BINLOG_STREAM', `${command} --help failed: ${(error as Error).message}`, { cause: error });
    }
    if (help.includes('--connection-server-id')) return { command, serverIdOption: 'connection-server-id' };
    if (help.includes('--stop-never-slave-server-id')) return { command, serverIdOption: 'stop-never-slave-server-id' };
    throw new AgentError('E_BINLOG_STREAM', `${command} takes no replica server id (neither --connection-server-id nor --stop-never-slave-server-id): install a newer mariadb-client or mysql-client`);
  }
  throw new AgentError('E_BINLOG_STREAM', 'neither mariadb-binlog nor mysqlbinlog is installed: install mariadb-client (or mysql-client) on this host for point-in-time restore');
}

/** Why a child ended, from its stderr (mariadb-binlog prints the server's error there). */
function describeExit(command: string, failure: unknown, stderr: readonly string[]): string {
  const e = failure as { exitCode?: number; signal?: string } | undefined;
  const how = e?.signal ? `killed by ${e.signal}` : e?.exitCode !== undefined ? `exit code ${e.exitCode}` : 'exit code 0';
  const text = stderr.join('; ');
  let hint = '';
  if (/access denied/i.test(text)) hint = 'authentication failed (check the service user and password): ';
  else if (/Could not find first log file name/i.test(text)) hint = 'the server no longer has the file (purged): ';
  return `${command} ended (${how}): ${hint}${text || 'no message'}`;
}
