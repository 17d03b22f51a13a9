import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/agent/logger.ts';
import { isAgentError } from '../src/errors.ts';
import { scanCommits } from '../src/snapshot/binlog/events.ts';
import { checkBinlogRequirements } from '../src/snapshot/binlog/requirements.ts';
import type { BinlogSegment, SegmentSink, StreamPosition } from '../src/snapshot/binlog/segment.ts';
import { BinlogStreamer } from '../src/snapshot/binlog/stream.ts';
import { connect, createDatabase, mariadbScript, mariadbServer, rows, type MariadbTestServer } from './support/mysql.ts';

/**
 * An archive in memory that checks the stream's one promise as each segment arrives: a file's
 * segments follow each other byte for byte (no gap, no byte twice), a file is followed only
 * once closed, and a chain starts over only after restart().
 */
class MemorySink implements SegmentSink {
  readonly segments: BinlogSegment[] = [];
  readonly restarts: string[] = [];
  readonly violations: string[] = [];
  #restarted = false;

  async resume(): Promise<StreamPosition | undefined> {
    const last = this.segments.at(-1);
    return last ? { file: last.file, end: last.end, closed: last.closed } : undefined;
  }

  async append(segment: BinlogSegment): Promise<void> {
    const last = this.segments.at(-1);
    const describe = `${segment.file} ${segment.offset}-${segment.end}${segment.closed ? ' closed' : ''}`;
    if (segment.bytes.length !== segment.end - segment.offset) this.violations.push(`${describe}: ${segment.bytes.length} bytes`);
    if (!last || this.#restarted) {
      if (segment.offset !== 0) this.violations.push(`${describe}: a chain must start at a file's first byte`);
    } else if (last.file === segment.file) {
      if (last.closed) this.violations.push(`${describe}: after the file was closed`);
      if (segment.offset !== last.end) this.violations.push(`${describe}: follows ${last.end} (${segment.offset < last.end ? 'duplicate' : 'gap'})`);
    } else if (!last.closed || segment.offset !== 0) {
      this.violations.push(`${describe}: follows ${last.file} ${last.end}${last.closed ? ' closed' : ' (not closed)'}`);
    }
    this.#restarted = false;
    this.segments.push({ ...segment, bytes: Buffer.from(segment.bytes) });
  }

  async restart(reason: string): Promise<void> {
    this.restarts.push(reason);
    this.#restarted = true;
  }

  /** The stored bytes of `file`, from its segments in order. */
  bytes(file: string): Buffer {
    return Buffer.concat(this.segments.filter((s) => s.file === file).map((s) => s.bytes));
  }

  end(file: string): number {
    return this.segments.filter((s) => s.file === file).at(-1)?.end ?? 0;
  }

  closed(file: string): boolean {
    return this.segments.some((s) => s.file === file && s.closed);
  }
}

let server: MariadbTestServer;
let root: Connection;
let db: string;
let stateDir: string;
const logger = createLogger('silent');

beforeAll(async () => {
  server = mariadbServer();
  root = await connect(server, { root: true });
  db = await createDatabase(root, 'pitr');
  await root.query(`CREATE TABLE \`${db}\`.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200))`);
  stateDir = await mkdtemp(path.join(tmpdir(), 'sa-binlog-'));
});

afterAll(async () => {
  await root?.query(`DROP DATABASE IF EXISTS \`${db}\``).catch(() => {});
  await root?.end().catch(() => {});
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

function streamer(sink: SegmentSink, name: string, maxSegmentBytes?: number): BinlogStreamer {
  return new BinlogStreamer({
    maxSegmentBytes,
    endpoint: async () => ({ host: server.host, port: server.port, socket: undefined, user: server.user, password: server.password }),
    stateDir,
    spoolDir: path.join(stateDir, 'binlog', name),
    sink,
    flushEveryMs: 100,
    connectionServerId: 4242,
    logger,
    backoff: { initialMs: 100, maxMs: 1_000 },
  });
}

function start(s: BinlogStreamer): { stop(): Promise<void>; done: Promise<void> } {
  const controller = new AbortController();
  const done = s.run(controller.signal);
  return {
    done,
    stop: async () => {
      controller.abort();
      await done;
    },
  };
}

async function waitFor(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function masterStatus(connection: Connection = root): Promise<{ file: string; pos: number }> {
  const [row] = await rows<{ File: string; Position: string | number }>(connection, 'SHOW MASTER STATUS');
  return { file: row!.File, pos: Number(row!.Position) };
}

async function insert(count: number, label: string): Promise<string> {
  for (let i = 0; i < count; i++) await root.query(`INSERT INTO \`${db}\`.t (v) VALUES (?)`, [`${label}-${i}-${'x'.repeat(100)}`]);
  const [row] = await rows<{ gtid: string }>(root, 'SELECT @@last_gtid AS gtid');
  return row!.gtid;
}

/** Until the sink holds the server's log up to where it is now. */
async function caughtUp(sink: MemorySink): Promise<{ file: string; pos: number }> {
  const target = await masterStatus();
  await waitFor(`the sink holds ${target.file} up to ${target.pos}`, () => sink.end(target.file) >= target.pos);
  return target;
}

async function serverFile(file: string): Promise<Buffer> {
  return readFile(path.join(server.dir, 'data', file));
}

/**
 * The stored file is the server's: every byte after the format description is the same, and
 * the format description differs at most where a server changes it for a replica (log_pos,
 * the in-use flag, the creation time, and so the checksum).
 */
function expectSameBinlog(stored: Buffer, original: Buffer, file: string): void {
  expect(stored.length, `${file}: length`).toBe(original.length);
  const fdeEnd = 4 + original.readUInt32LE(4 + 9);
  expect(stored.readUInt32LE(4 + 9), `${file}: format description size`).toBe(fdeEnd - 4);
  expect(stored.subarray(fdeEnd).equals(original.subarray(fdeEnd)), `${file}: bytes after the format description`).toBe(true);
  const mask = (b: Buffer) => {
    const copy = Buffer.from(b.subarray(0, fdeEnd));
    copy.fill(0, 4 + 13, 4 + 19); // log_pos, flags
    copy.fill(0, 4 + 19 + 52, 4 + 19 + 56); // created
    copy.fill(0, fdeEnd - 4, fdeEnd); // CRC32
    return copy;
  };
  expect(mask(stored).equals(mask(original)), `${file}: format description`).toBe(true);
}

/** Files whose complete bytes the sink holds (closed), compared with the server's. */
async function expectClosedFilesSame(sink: MemorySink): Promise<string[]> {
  const files = [...new Set(sink.segments.map((s) => s.file))].filter((f) => sink.closed(f));
  for (const file of files) expectSameBinlog(sink.bytes(file), await serverFile(file), file);
  return files;
}

/** The open file: what the sink holds is the server's file's prefix. */
async function expectPrefixSame(sink: MemorySink, file: string): Promise<void> {
  const stored = sink.bytes(file);
  expectSameBinlog(stored, (await serverFile(file)).subarray(0, stored.length), file);
}

describe('BinlogStreamer against the real MariaDB', () => {
  it('streams the server binlog byte for byte, follows FLUSH BINARY LOGS, and keeps the password out of argv, environ and the disk', async () => {
    const sink = new MemorySink();
    const s = streamer(sink, 'rotate');
    const run = start(s);
    try {
      const first = await masterStatus();
      await insert(20, 'a');
      await caughtUp(sink);
      expect(s.status()).toMatchObject({ state: 'streaming', file: first.file });
      expect((await stat(path.join(stateDir, 'binlog', 'rotate'))).mode & 0o777).toBe(0o700);

      // The child: no password on its command line or in its environment, and its option file gone.
      const pid = s.status().pid!;
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'latin1');
      const environ = await readFile(`/proc/${pid}/environ`, 'latin1');
      expect(cmdline).toContain('--read-from-remote-server');
      expect(cmdline).not.toContain(server.password);
      expect(environ).not.toContain(server.password);
      await waitFor('the option file is removed', async () => {
        const dirs = await readdir(path.join(stateDir, 'tmp')).catch(() => []);
        for (const dir of dirs) if ((await readdir(path.join(stateDir, 'tmp', dir))).length > 0) return false;
        return true;
      });

      await root.query('FLUSH BINARY LOGS');
      const lastGtid = await insert(20, 'b');
      const second = await caughtUp(sink);
      expect(second.file).not.toBe(first.file);
      await waitFor('the rotated file is dropped from the spool', async () => !(await readdir(path.join(stateDir, 'binlog', 'rotate'))).includes(first.file));

      expect(sink.closed(first.file)).toBe(true);
      expect(sink.segments.find((seg) => seg.file === second.file)?.offset).toBe(0);
      expect(await expectClosedFilesSame(sink)).toContain(first.file);
      await expectPrefixSame(sink, second.file);
      expect(sink.violations).toEqual([]);

      // What the archive records: the times and last GTID of the events, and the restore's commits.
      const last = sink.segments.at(-1)!;
      expect(last.lastGtid).toBe(lastGtid);
      expect(last.lastEventMs).not.toBeNull();
      const commits = scanCommits(sink.bytes(second.file));
      expect(commits.at(-1)?.gtid).toBe(lastGtid);
      expect(commits.filter((c) => c.gtid !== null).length).toBeGreaterThanOrEqual(20);
      expect(s.status()).toMatchObject({ state: 'streaming', file: second.file, end: sink.end(second.file), lagMs: 0, lastError: null });
    } finally {
      await run.stop();
    }
    expect(s.status().state).toBe('stopped');
  });

  it('cuts transactions across segments, and names a GTID in the segment holding its commit, not its GTID event', async () => {
    await root.query('FLUSH BINARY LOGS');
    const sink = new MemorySink();
    const s = streamer(sink, 'split', 160); // smaller than one INSERT's events: every transaction is cut
    const run = start(s);
    try {
      const { file } = await masterStatus();
      const lastGtid = await insert(12, 'split');
      await caughtUp(sink);
      const commits = scanCommits(await serverFile(file));
      const segments = sink.segments.filter((seg) => seg.file === file);
      expect(segments.length).toBeGreaterThan(2 * 12);
      for (const seg of segments) {
        const committed = commits.filter((c) => c.end > seg.offset && c.end <= seg.end).at(-1);
        expect(seg.lastGtid, `${file} ${seg.offset}–${seg.end}`).toBe(committed?.gtid ?? null);
      }
      // A segment ending between a GTID event and its commit names no GTID: the cut fell inside a transaction.
      expect(segments.some((seg) => seg.lastGtid === null && commits.some((c) => c.end > seg.end && c.end - seg.end < 400))).toBe(true);
      expect(segments.at(-1)!.lastGtid).toBe(lastGtid);
      expect(sink.violations).toEqual([]);
    } finally {
      await run.stop();
    }
  });

  it('restarts a SIGKILLed client where storage ends: no gap, no byte twice', async () => {
    const sink = new MemorySink();
    const s = streamer(sink, 'kill-child');
    const run = start(s);
    try {
      await insert(5, 'c');
      await caughtUp(sink);
      for (let round = 0; round < 3; round++) {
        const pid = s.status().pid!;
        const writes = insert(30, `d${round}`);
        await new Promise((resolve) => setTimeout(resolve, 30));
        process.kill(pid, 'SIGKILL');
        await writes;
        await waitFor('a new client runs', () => s.status().pid !== null && s.status().pid !== pid);
        // It asks the server for the log from where storage ends, not from the file's start.
        const cmdline = (await readFile(`/proc/${s.status().pid}/cmdline`, 'latin1').catch(() => '')).split('\0');
        expect(cmdline.find((arg) => arg.startsWith('--start-position='))).toMatch(/^--start-position=\d{3,}$/);
      }
      const target = await caughtUp(sink);
      await expectPrefixSame(sink, target.file);
      expect(s.status().lastError).toMatch(/killed by SIGKILL/);
      expect(sink.violations).toEqual([]);
    } finally {
      await run.stop();
    }
  });

  it('resumes from the sink when a new streamer starts after the old one stopped', async () => {
    const sink = new MemorySink();
    const first = start(streamer(sink, 'resume'));
    await insert(10, 'e');
    const before = await caughtUp(sink);
    await first.stop();

    await insert(10, 'f');
    await root.query('FLUSH BINARY LOGS');
    const gtid = await insert(10, 'g');
    const second = start(streamer(sink, 'resume'));
    try {
      const after = await caughtUp(sink);
      expect(after.file).not.toBe(before.file);
      expect(sink.closed(before.file)).toBe(true);
      expect(await expectClosedFilesSame(sink)).toContain(before.file);
      await expectPrefixSame(sink, after.file);
      expect(sink.segments.at(-1)!.lastGtid).toBe(gtid);
      expect(sink.restarts).toEqual([]);
      expect(sink.violations).toEqual([]);
    } finally {
      await second.stop();
    }

    // A third start on a server this test wrote nothing to since: streaming, caught up, no
    // transaction stored again. (The shared server may log an event of its own meanwhile — the
    // suite's run once stored one more segment here — but never one of ours twice, nor a gap.)
    const count = sink.segments.length;
    const lastGtid = sink.segments.at(-1)!.lastGtid;
    const idle = streamer(sink, 'resume');
    const third = start(idle);
    try {
      await waitFor('the idle stream is caught up', () => idle.status().state === 'streaming' && idle.status().lagMs === 0);
      for (const segment of sink.segments.slice(count)) expect(segment.lastGtid ?? lastGtid).toBe(lastGtid);
      expect(sink.violations).toEqual([]);
    } finally {
      await third.stop();
    }
  });

  it('goes on after the server is SIGKILLed and started again, with everything committed before the kill', async () => {
    const sink = new MemorySink();
    const s = streamer(sink, 'server-kill');
    const run = start(s);
    try {
      await insert(5, 'h');
      await caughtUp(sink);
      const beforeKill = await masterStatus();
      const committed = await insert(25, 'i');
      mariadbScript('kill', server);
      await waitFor('the streamer notices', () => s.status().state === 'retrying');
      mariadbScript('start', server);
      root = await connect(server, { root: true });
      const gtid = await insert(5, 'j');
      const after = await caughtUp(sink);
      expect(after.file).not.toBe(beforeKill.file);
      expect(sink.closed(beforeKill.file)).toBe(true);
      expect(await expectClosedFilesSame(sink)).toContain(beforeKill.file);
      const stored = scanCommits(sink.bytes(beforeKill.file)).map((c) => c.gtid);
      expect(stored).toContain(committed);
      expect(sink.segments.at(-1)!.lastGtid).toBe(gtid);
      expect(sink.violations).toEqual([]);
    } finally {
      await run.stop();
    }
  });

  it('restarts the chain when the server purged the file storage ends in', async () => {
    const sink = new MemorySink();
    const first = start(streamer(sink, 'purge'));
    await insert(5, 'k');
    const before = await caughtUp(sink);
    await first.stop();

    await insert(5, 'l');
    await root.query('FLUSH BINARY LOGS');
    await insert(5, 'm');
    await root.query('FLUSH BINARY LOGS');
    const current = await masterStatus();
    // The server keeps a file a dump thread still reads (the stopped client's, until the server
    // notices it gone): purge until it is gone.
    await waitFor(`${before.file} is purged`, async () => {
      await root.query(`PURGE BINARY LOGS TO '${current.file}'`);
      const logs = await rows<{ Log_name: string }>(root, 'SHOW BINARY LOGS');
      return !logs.some((log) => log.Log_name === before.file);
    });
    const gtid = await insert(5, 'n');

    const second = start(streamer(sink, 'purge'));
    try {
      await caughtUp(sink);
      expect(sink.restarts).toHaveLength(1);
      expect(sink.restarts[0]).toContain(`no longer has ${before.file}`);
      const afterRestart = sink.segments.slice(sink.segments.findIndex((seg) => seg.file === current.file));
      expect(afterRestart[0]).toMatchObject({ file: current.file, offset: 0 });
      await expectPrefixSame(sink, current.file);
      expect(sink.segments.at(-1)!.lastGtid).toBe(gtid);
      expect(sink.violations).toEqual([]);
    } finally {
      await second.stop();
    }
  });
});

describe('checkBinlogRequirements', () => {
  it('passes for the test account, names a missing grant and binlog_format=STATEMENT', async () => {
    const agent = await connect(server);
    try {
      await checkBinlogRequirements(agent, { replay: true });
    } finally {
      await agent.end();
    }

    await root.query("CREATE OR REPLACE USER 'pitr_weak'@'127.0.0.1' IDENTIFIED BY 'pitr-weak-pw'");
    await root.query("GRANT REPLICATION SLAVE ON *.* TO 'pitr_weak'@'127.0.0.1'");
    await root.query("SET GLOBAL binlog_format = 'STATEMENT'");
    const weak = await connect({ ...server, user: 'pitr_weak', password: 'pitr-weak-pw' });
    try {
      const error = await checkBinlogRequirements(weak, { replay: true }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isAgentError(error, 'E_CONFIG_INVALID')).toBe(true);
      const message = (error as Error).message;
      expect(message).toMatch(/binlog_format is STATEMENT: set binlog_format=ROW/);
      expect(message).toMatch(/BINLOG REPLAY/);
      expect(message).toMatch(/BINLOG MONITOR/);
      expect(message).not.toMatch(/lacks the privilege REPLICATION SLAVE/);
      expect(message).not.toMatch(/log_bin|binlog_row_image|server_id/);
      // The stream alone does not need BINLOG REPLAY.
      const streamOnly = await checkBinlogRequirements(weak, { replay: false }).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(streamOnly?.message).not.toMatch(/BINLOG REPLAY/);
    } finally {
      await weak.end();
      await root.query("SET GLOBAL binlog_format = 'ROW'");
      await root.query("DROP USER 'pitr_weak'@'127.0.0.1'");
    }
  });
});
