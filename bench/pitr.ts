/**
 * Point-in-time restore of MySQL/MariaDB (issue #14 §1, docs/pitr.md): how much a crash loses
 * (the stream's RPO) and how fast a restore replays the stored binlog, against
 * `mariadb-binlog | mysql` on the same server in the same run.
 *
 *   node_modules/.bin/node bench/pitr.ts [--only rpo,replay]     (npm run bench -- pitr)
 *
 * rpo:    the real daemon (`storage-agent daemon`, src/agent/main.ts as installed) with a config
 *         whose mysql service has `pitr: {window: 1d, flushEvery: F}`, streaming into an fs store.
 *         For each F of BENCH_PITR_FLUSH (default 1s,5s): 10 s idle, then a writer commits
 *         single-row transactions (autocommit INSERTs over TCP, `SELECT @@last_gtid` in the same
 *         round trip) at each rate of BENCH_PITR_RATES (default 100,1000 per s) for
 *         BENCH_PITR_SECONDS (default 20), recording each commit's wall time (when its answer
 *         arrived) and its GTID. A watcher (inotify on the chain directories of the store, with a
 *         rescan every 200 ms as a fallback) notes when each record `<seq>.json` appeared, reads
 *         it and its segment, and takes a transaction as durable once a record holds its commit
 *         (its XID event: the record's last GTID if the segment ends on an XID, else the one
 *         before). RPO of a transaction = the time its record appeared − its commit time.
 *         The daemon's CPU (node and its mariadb-binlog child, from /proc) and mariadbd's over
 *         each window.
 * replay: a table `bench.events` (rows of 200–500 bytes) with BENCH_PITR_BASE_ROWS rows, a
 *         consistent base backup with the real CLI (`backup create`), then ~BENCH_PITR_BINLOG_MB
 *         of binlog written after it: multi-row INSERTs of 1,000 rows, every 10th batch an UPDATE
 *         of 500 existing rows (FULL row image: before and after). Once the stream has stored an
 *         event of a later second (a marker row in another table), the daemon is stopped (nothing
 *         streams during the timed commands) and, under GNU time (bench/timing.ts), one run each:
 *           (b) `backup restore ENV BASE --target ENV2 --yes --no-safety-backup`: the base alone;
 *           (a) `backup restore ENV --to-time T --target ENV2 --yes --no-safety-backup --json`,
 *               T the second of the last write: the same base, then the binlog gathered from the
 *               store (verified) and replayed; (a) − (b) is the replay's share;
 *           (c) the peer: `mariadb-binlog --start-position=BASE_POS --stop-position=LAST_POS
 *               --rewrite-db=bench->bench_peer <the server's binlog files from the base's on> |
 *               mariadb bench_peer` (an account with ALL over TCP, as the agent's client
 *               connects), into a database that holds the base already: restored by the agent
 *               (untimed) from the same base into a third environment.
 *           (d) no server: `mariadb-binlog … > /dev/null`, and mariadb-binlog's output through
 *               the agent's ReplayFilter in this process into nothing (the filter's CPU alone).
 *         ENV2 is a second environment whose service `db` (database bench_restore) has no pitr:,
 *         so no base backup is taken after the restore (it would be after a restore into a
 *         pitr service, and would be timed with it). Each restored table is checked with
 *         CHECKSUM TABLE against the source. The CLI's phase log lines (--log-level info) split
 *         (a) into gather, load + replay and swap; the CPU of each process of a command (node,
 *         mariadb-binlog, mysql) is sampled from /proc every 250 ms.
 *
 * It starts its own MariaDB (scripts/mariadb.sh, MARIADB_DIR=/tmp/sa-bench-pitr-mariadb, port
 * 13337: log_bin, ROW, server_id 1) and stops it at the end, on failure and on Ctrl-C/SIGTERM.
 * Scratch (state dir, fs store) is BENCH_DIR/pitr, removed at the end unless BENCH_KEEP=1.
 *
 * Environment: BENCH_DIR (default /var/tmp/storage-agent-bench), BENCH_PITR_BINLOG_MB (default
 * 1024), BENCH_PITR_BASE_ROWS (default 100000), BENCH_PITR_FLUSH (default 1s,5s),
 * BENCH_PITR_RATES (default 100,1000), BENCH_PITR_SECONDS (default 20), BENCH_KEEP=1.
 * Results: printed, and saved as BENCH_DIR/results-pitr-DATE.{txt,json}.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, watch, writeFileSync, type FSWatcher } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { createConnection, type Connection, type RowDataPacket } from 'mysql2/promise';
import { stringify as toYaml } from 'yaml';
import { ReplayFilter } from '../src/snapshot/mysql/binlog-replay.ts';
import { Random, STATUSES, word } from './databases.ts';
import { BenchMariadb } from './mariadb.ts';
import { agentCommand, cleanUpOnSignals, closingLines, integerEnv, option, percentile, processCpuSeconds, runChecked, stopChild, timed as timedRun } from './timing.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const AGENT = agentCommand(ROOT);
// A server of its own: the test suite's is on 13306, the other benchmarks' on 13326/13451.
const mariadb = new BenchMariadb('/tmp/sa-bench-pitr-mariadb', 13337);
const MIB = 1024 ** 2;
const DB = 'bench';
const DB_RESTORE = 'bench_restore';
const DB_PEER = 'bench_peer';
const ENV = 'bench-pitr';
const ENV_RESTORE = 'bench-pitr-restore';
const ENV_PEER = 'bench-pitr-peer';
const SEED = 0x5eed0014;
const PEER_PASSWORD = 'storage-agent-bench-peer-pw';

const SECTIONS = ['rpo', 'replay'] as const;
const only = new Set((option('--only') ?? SECTIONS.join(',')).split(',').map((s) => s.trim()));
for (const s of only) if (!(SECTIONS as readonly string[]).includes(s)) throw new Error(`--only ${s}: sections are ${SECTIONS.join(', ')}`);
const benchDir = path.resolve(process.env.BENCH_DIR || '/var/tmp/storage-agent-bench');
const work = path.join(benchDir, 'pitr');
const binlogMiB = integerEnv('BENCH_PITR_BINLOG_MB', 1024, 8);
const baseRows = integerEnv('BENCH_PITR_BASE_ROWS', 100_000, 1000);
const windowSeconds = integerEnv('BENCH_PITR_SECONDS', 20, 2);
const rates = (process.env.BENCH_PITR_RATES || '100,1000').split(',').map((s) => Number(s.trim()));
if (rates.some((r) => !Number.isInteger(r) || r < 1)) throw new Error(`BENCH_PITR_RATES=${process.env.BENCH_PITR_RATES}: expected positive integers`);
const flushes = (process.env.BENCH_PITR_FLUSH || '1s,5s').split(',').map((s) => {
  const m = /^(\d+)s$/.exec(s.trim());
  if (!m || Number(m[1]) < 1) throw new Error(`BENCH_PITR_FLUSH: ${s} is not a number of seconds such as 1s`);
  return Number(m[1]);
});
const keep = process.env.BENCH_KEEP === '1';

const paths = {
  config: path.join(work, 'config.yaml'),
  state: path.join(work, 'state'),
  store: path.join(work, 'store'),
  defaults: path.join(work, 'my.cnf'),
  peerDefaults: path.join(work, 'peer.cnf'),
  daemonLog: path.join(work, 'daemon.log'),
  timeFile: path.join(work, 'time.out'),
};
const chainsDir = path.join(paths.store, ENV, 'pitr', 'db');

const problems: string[] = [];
const log = (line: string): void => void process.stderr.write(`bench-pitr: ${line}\n`);
const run = runChecked;
const now = (): number => performance.timeOrigin + performance.now();

function mib(bytes: number): string {
  const v = bytes / MIB;
  return Math.abs(v) < 10 ? v.toFixed(2) : v.toFixed(0);
}

function table(headers: string[], body: string[][], leftColumns = 1): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(headers), `|${widths.map((w, i) => (i < leftColumns ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}

// ------------------------------------------------------------------ processes and their CPU

/** pid → comm and utime+stime (s), or undefined when gone. */
function procStat(pid: number): { comm: string; cpu: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { comm, cpu: (Number(fields[11]) + Number(fields[12])) / 100 };
  } catch {
    return undefined;
  }
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tasks) {
    try {
      out.push(...readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
    } catch {
      // gone
    }
  }
  return out;
}

function descendants(pid: number): number[] {
  const all: number[] = [];
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift()!;
    for (const c of childrenOf(p)) {
      all.push(c);
      queue.push(c);
    }
  }
  return all;
}

/**
 * The CPU of each process under `root`, sampled every 250 ms (a process that exits between two
 * samples loses at most its last 250 ms): by command name (node, mariadb-binlog, mysql …).
 */
class CpuSampler {
  readonly #seen = new Map<number, { comm: string; cpu: number }>();
  /** Cumulative CPU by name at each sample (mariadbd's since the start as `mariadbd`): for phases. */
  readonly series: { at: number; byComm: Record<string, number> }[] = [];
  #timer: NodeJS.Timeout | undefined;
  #server0 = 0;

  start(root: () => number | undefined): void {
    const server = mariadb.pid();
    this.#server0 = processCpuSeconds(server);
    const sample = () => {
      const r = root();
      if (!r) return;
      for (const pid of [r, ...descendants(r)]) {
        const s = procStat(pid);
        if (s) this.#seen.set(pid, s);
      }
      this.series.push({ at: now(), byComm: { ...this.#totals(), mariadbd: processCpuSeconds(server) - this.#server0 } });
    };
    sample();
    this.#timer = setInterval(sample, 250);
  }

  stop(): Record<string, number> {
    clearInterval(this.#timer);
    return this.#totals();
  }

  /** CPU s by name between two times (epoch ms), from the samples nearest to them. */
  between(from: number, to: number): Record<string, number> {
    const at = (t: number) => this.series.reduce((best, x) => (Math.abs(x.at - t) < Math.abs(best.at - t) ? x : best), this.series[0]!).byComm;
    const [a, b] = [at(from), at(to)];
    return Object.fromEntries(Object.keys(b).map((k) => [k, (b[k] ?? 0) - (a[k] ?? 0)]));
  }

  #totals(): Record<string, number> {
    const byComm: Record<string, number> = {};
    for (const { comm, cpu } of this.#seen.values()) {
      if (comm === 'time' || comm === 'bash') continue;
      // Node names its main thread, which /proc/PID/stat reports as the process's name.
      const name = comm === 'MainThread' ? 'node' : comm;
      byComm[name] = (byComm[name] ?? 0) + cpu;
    }
    return byComm;
  }
}

interface Sample {
  wall: number;
  /** user + sys of the whole process tree (GNU time). */
  cpu: number;
  maxRssKiB: number;
  /** CPU s of mariadbd meanwhile. */
  serverCpu: number;
  /** Sampled CPU s by process name. */
  processes: Record<string, number>;
  /** 1-minute load average just before. */
  load: number;
}

let current: ChildProcess | undefined;

async function timed(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ sample: Sample; stdout: string; stderr: string; sampler: CpuSampler }> {
  const server = mariadb.pid();
  const serverBefore = processCpuSeconds(server);
  const load = loadavg()[0]!;
  const sampler = new CpuSampler();
  try {
    const t = await timedRun(argv, {
      cwd: ROOT,
      timeFile: paths.timeFile,
      env,
      onSpawn: (child) => {
        current = child;
        sampler.start(() => child.pid);
      },
    });
    const processes = sampler.stop();
    const serverCpu = processCpuSeconds(server) - serverBefore;
    run('sync', []);
    return { sample: { wall: t.wall, cpu: t.user + t.sys, maxRssKiB: t.maxRssKiB, serverCpu, processes, load }, stdout: t.stdout, stderr: t.stderr, sampler };
  } finally {
    sampler.stop();
    current = undefined;
  }
}

function describe(s: Sample): string {
  const procs = Object.entries(s.processes)
    .map(([c, v]) => `${c} ${v.toFixed(1)}`)
    .join(', ');
  return `${s.wall.toFixed(2)} s, CPU ${s.cpu.toFixed(2)} s (${procs}), RSS ${(s.maxRssKiB / 1024).toFixed(0)} MiB, mariadbd CPU ${s.serverCpu.toFixed(2)} s, load ${s.load.toFixed(2)}`;
}

// ------------------------------------------------------------------ MariaDB, config, daemon

function rootSql(query: string): string {
  return run('mariadb', ['--no-defaults', `--socket=${mariadb.socket}`, '-uroot', '--batch', '--skip-column-names', '-e', query]).trim();
}

async function connectAgent(): Promise<Connection> {
  return createConnection({ host: '127.0.0.1', port: mariadb.port, user: 'agent', password: mariadb.password, database: DB, multipleStatements: true });
}

async function query<T extends RowDataPacket>(c: Connection, sql: string, values?: unknown[]): Promise<T[]> {
  const [rows] = await c.query<T[]>(sql, values);
  return rows;
}

const agentEnv = (): NodeJS.ProcessEnv => ({ ...process.env, BENCH_MYSQL_PASSWORD: mariadb.password });

function writeConfig(flushSeconds: number): void {
  const mysql = (database: string, extra: Record<string, unknown> = {}) => ({ kind: 'mysql', host: '127.0.0.1', port: mariadb.port, user: 'agent', password: { env: 'BENCH_MYSQL_PASSWORD' }, databases: [database], ...extra });
  const config = {
    stateDir: paths.state,
    defaultStore: 'local',
    compression: { algorithm: 'zstd', level: 1 },
    stores: { local: { type: 'fs', path: paths.store } },
    daemon: { listen: { host: '127.0.0.1', port: 0 } },
    environments: {
      [ENV]: { manualLimit: 100, services: { db: mysql(DB, { pitr: { window: '1d', flushEvery: `${flushSeconds}s` } }) } },
      [ENV_RESTORE]: { services: { db: mysql(DB_RESTORE) } },
      [ENV_PEER]: { services: { db: mysql(DB_PEER) } },
    },
  };
  writeFileSync(paths.config, toYaml(config));
}

function agent(...argv: string[]): string[] {
  return [...AGENT, '--config', paths.config, '--json', ...argv];
}

interface Daemon {
  child: ChildProcess;
  exited: Promise<void>;
}
let daemon: Daemon | undefined;

function daemonLogLines(): { msg?: string; [k: string]: unknown }[] {
  if (!existsSync(paths.daemonLog)) return [];
  return readFileSync(paths.daemonLog, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg?: string });
}

async function startDaemon(flushSeconds: number): Promise<void> {
  writeConfig(flushSeconds);
  const skip = daemonLogLines().length;
  const fd = openSync(paths.daemonLog, 'a');
  const child = spawn(AGENT[0]!, [...AGENT.slice(1), '--config', paths.config, 'daemon'], { cwd: ROOT, env: agentEnv(), stdio: ['ignore', fd, fd] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  daemon = { child, exited };
  for (let waited = 0; ; waited += 100) {
    const lines = daemonLogLines().slice(skip);
    if (lines.some((l) => l.msg === 'binlog stream: client started')) break;
    if (child.exitCode !== null || waited > 60_000) throw new Error(`the daemon did not start its binlog stream: ${readFileSync(paths.daemonLog, 'utf8').slice(-2000)}`);
    await sleep(100);
  }
  log(`daemon ${child.pid} streaming, flushEvery ${flushSeconds}s`);
}

async function stopDaemon(): Promise<void> {
  if (!daemon) return;
  const { child, exited } = daemon;
  daemon = undefined;
  if (child.exitCode === null) {
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
  }
  const warnings = daemonLogLines().filter((l) => typeof l.level === 'number' && (l.level as number) >= 40);
  for (const w of warnings.filter((l) => !String(l.msg).startsWith('no tokens configured')).slice(-3)) problems.push(`daemon: ${w.msg} ${JSON.stringify(w.error ?? w.err ?? '')}`.slice(0, 400));
}

/** The daemon's CPU: node itself and its children (mariadb-binlog). */
function daemonCpu(): { node: number; client: number } {
  const pid = daemon?.child.pid;
  if (!pid) return { node: 0, client: 0 };
  let client = 0;
  for (const c of descendants(pid)) client += procStat(c)?.cpu ?? 0;
  return { node: procStat(pid)?.cpu ?? 0, client };
}

// ------------------------------------------------------------------ the store's records

interface StoredRecord {
  chain: string;
  seq: number;
  /** When the watcher saw the record appear (epoch ms). */
  seenAt: number;
  writtenAt: number;
  file: string;
  end: number;
  lastEventMs: number | null;
  /** The GTID seq up to which every transaction is in storage with this record (its commit event is). */
  completeSeq: number | null;
}

const gtidSeq = (gtid: string | null): number | null => (gtid ? Number(gtid.split('-')[2]) : null);

/**
 * Watches the store's records of `bench-pitr/db`: each new `<seq>.json` is timed when it appears
 * (inotify on the chain directories; a rescan every 200 ms catches a missed event and new chains),
 * then read.
 */
class RecordWatcher {
  readonly records: StoredRecord[] = [];
  readonly #known = new Set<string>();
  readonly #watchers = new Map<string, FSWatcher>();
  #lastGtidSeq: number | null = null;
  #timer: NodeJS.Timeout | undefined;
  #queue: Promise<void> = Promise.resolve();

  start(): void {
    this.#scan();
    this.#timer = setInterval(() => this.#scan(), 200);
  }

  stop(): void {
    clearInterval(this.#timer);
    for (const w of this.#watchers.values()) w.close();
    this.#watchers.clear();
  }

  /** Resolves once every record seen so far has been read. */
  settled(): Promise<void> {
    return this.#queue;
  }

  newestEventMs(): number {
    return Math.max(0, ...this.records.map((r) => r.lastEventMs ?? 0));
  }

  completeSeq(): number {
    return Math.max(-1, ...this.records.map((r) => r.completeSeq ?? -1));
  }

  #scan(): void {
    let chains: string[] = [];
    try {
      chains = readdirSync(chainsDir);
    } catch {
      return;
    }
    for (const chain of chains.sort()) {
      const dir = path.join(chainsDir, chain);
      if (!this.#watchers.has(chain)) {
        this.#watchers.set(
          chain,
          watch(dir, (_event, name) => {
            if (name && name.endsWith('.json')) this.#saw(chain, name, now());
          }),
        );
      }
      for (const name of readdirSync(dir)) if (name.endsWith('.json')) this.#saw(chain, name, now());
    }
  }

  #saw(chain: string, name: string, at: number): void {
    const key = `${chain}/${name}`;
    if (this.#known.has(key)) return;
    if (!existsSync(path.join(chainsDir, chain, name))) return; // a rename event of something else
    this.#known.add(key);
    // Read in order of appearance (a chain's records appear in seq order).
    this.#queue = this.#queue.then(() => this.#read(chain, name, at)).catch((error: unknown) => void problems.push(`watcher: ${(error as Error).message}`));
  }

  async #read(chain: string, name: string, seenAt: number): Promise<void> {
    const dir = path.join(chainsDir, chain);
    const record = JSON.parse(readFileSync(path.join(dir, name), 'utf8')) as { seq: number; file: string; end: number; lastGtid: string | null; lastEventMs: number | null; writtenAt: string };
    // A record's GTID is that of the last transaction whose commit it holds; none: the one before still is.
    const completeSeq = gtidSeq(record.lastGtid) ?? this.#lastGtidSeq;
    this.#lastGtidSeq = completeSeq;
    this.records.push({ chain, seq: record.seq, seenAt, writtenAt: Date.parse(record.writtenAt), file: record.file, end: record.end, lastEventMs: record.lastEventMs, completeSeq });
  }
}

// ------------------------------------------------------------------ section rpo

interface RpoResult {
  flushSeconds: number;
  /** 0: idle (no writer). */
  rate: number;
  transactions: number;
  achievedRate: number;
  seconds: number;
  /** RPO per transaction, ms. */
  p50: number | null;
  p99: number | null;
  max: number | null;
  /** Transactions no record held by the end of the wait. */
  missing: number;
  records: number;
  /** Mean bytes per record (segment). */
  meanSegmentBytes: number;
  daemonNodeCpu: number;
  daemonClientCpu: number;
  serverCpu: number;
  load: number;
}

async function rpoWindow(c: Connection, watcher: RecordWatcher, flushSeconds: number, rate: number): Promise<RpoResult> {
  const seconds = rate === 0 ? 10 : windowSeconds;
  const load = loadavg()[0]!;
  const cpu0 = daemonCpu();
  const server0 = processCpuSeconds(mariadb.pid());
  const records0 = watcher.records.length;
  const commits: { at: number; seq: number }[] = [];
  const start = now();
  if (rate === 0) await sleep(seconds * 1000);
  else {
    for (let i = 0; ; i++) {
      const due = start + (i * 1000) / rate;
      if (due >= start + seconds * 1000) break;
      const wait = due - now();
      if (wait >= 1) await sleep(wait);
      const [results] = await c.query<RowDataPacket[][]>('INSERT INTO rpo_tx (note) VALUES (\'a single-row transaction\'); SELECT @@last_gtid AS g');
      const at = now();
      commits.push({ at, seq: gtidSeq(String(results[1]![0]!.g))! });
    }
  }
  const elapsed = (now() - start) / 1000;
  const cpu1 = daemonCpu();
  const server1 = processCpuSeconds(mariadb.pid());
  // Until every commit is stored (or 3 flush intervals + 10 s have passed).
  const lastSeq = commits.at(-1)?.seq ?? -1;
  for (const deadline = now() + flushSeconds * 3000 + 10_000; now() < deadline; ) {
    await watcher.settled();
    if (watcher.completeSeq() >= lastSeq) break;
    await sleep(50);
  }
  await watcher.settled();
  const records = watcher.records.slice(records0);
  const ordered = [...watcher.records].sort((a, b) => a.seenAt - b.seenAt);
  const rpos: number[] = [];
  let missing = 0;
  let j = 0;
  let durableSeq = -1;
  let durableAt = 0;
  for (const commit of commits) {
    while (durableSeq < commit.seq && j < ordered.length) {
      const r = ordered[j++]!;
      if (r.completeSeq !== null && r.completeSeq > durableSeq) {
        durableSeq = r.completeSeq;
        durableAt = r.seenAt;
      }
    }
    if (durableSeq >= commit.seq) rpos.push(Math.max(0, durableAt - commit.at));
    else missing++;
  }
  const segmentBytes = records.length > 1 ? (records.at(-1)!.end - records[0]!.end) / (records.length - 1) : 0;
  const result: RpoResult = {
    flushSeconds,
    rate,
    transactions: commits.length,
    achievedRate: commits.length / elapsed,
    seconds: elapsed,
    p50: rpos.length ? percentile(rpos, 50) : null,
    p99: rpos.length ? percentile(rpos, 99) : null,
    max: rpos.length ? Math.max(...rpos) : null,
    missing,
    records: records.length,
    meanSegmentBytes: segmentBytes > 0 ? segmentBytes : 0,
    daemonNodeCpu: cpu1.node - cpu0.node,
    daemonClientCpu: cpu1.client - cpu0.client,
    serverCpu: server1 - server0,
    load,
  };
  if (missing) problems.push(`flushEvery ${flushSeconds}s, ${rate}/s: ${missing} transactions were not stored ${flushSeconds * 3 + 10} s after the writer stopped`);
  log(
    `flushEvery ${flushSeconds}s, ${rate ? `${rate}/s (achieved ${result.achievedRate.toFixed(0)}/s, ${commits.length} tx)` : 'idle'}: RPO p50 ${result.p50?.toFixed(0)} p99 ${result.p99?.toFixed(0)} max ${result.max?.toFixed(0)} ms; ${records.length} records; daemon CPU node ${result.daemonNodeCpu.toFixed(2)} s + mariadb-binlog ${result.daemonClientCpu.toFixed(2)} s; mariadbd ${result.serverCpu.toFixed(2)} s`,
  );
  return result;
}

/** Waits until the stream has stored a transaction committed now (the stream caught up). */
async function waitStored(c: Connection, watcher: RecordWatcher, what: string): Promise<void> {
  const [results] = await c.query<RowDataPacket[][]>('INSERT INTO rpo_tx (note) VALUES (\'marker\'); SELECT @@last_gtid AS g');
  const seq = gtidSeq(String(results[1]![0]!.g))!;
  for (const deadline = now() + 60_000; watcher.completeSeq() < seq; ) {
    if (now() > deadline) throw new Error(`the stream did not store ${what} within 60 s`);
    await sleep(50);
    await watcher.settled();
  }
}

async function rpoSection(watcher: RecordWatcher): Promise<RpoResult[]> {
  const c = await connectAgent();
  const out: RpoResult[] = [];
  try {
    await c.query('CREATE TABLE IF NOT EXISTS rpo_tx (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL DEFAULT NOW(6), note VARCHAR(64) NOT NULL)');
    for (const flushSeconds of flushes) {
      await stopDaemon();
      await startDaemon(flushSeconds);
      await waitStored(c, watcher, 'a marker after the start');
      for (const rate of [0, ...rates]) out.push(await rpoWindow(c, watcher, flushSeconds, rate));
    }
  } finally {
    await c.end();
  }
  return out;
}

// ------------------------------------------------------------------ section replay

const EVENTS_DDL = `CREATE TABLE IF NOT EXISTS events (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  account_id INT UNSIGNED NOT NULL,
  created_at DATETIME NOT NULL,
  status VARCHAR(16) NOT NULL,
  amount DECIMAL(12,2) NOT NULL,
  payload VARCHAR(600) NOT NULL,
  KEY (account_id)
) ENGINE=InnoDB`;

const pad = (n: number) => String(n).padStart(2, '0');

/** `count` rows of 200–500 bytes (a payload of 150–450 characters of words). */
function rowsSql(r: Random, count: number): string {
  const rows: string[] = [];
  for (let i = 0; i < count; i++) {
    const length = 150 + r.below(301);
    let payload = '';
    while (payload.length < length) payload += `${word(r)} `;
    rows.push(`(${1 + r.below(50_000)},'2025-${pad(1 + r.below(12))}-${pad(1 + r.below(28))} ${pad(r.below(24))}:${pad(r.below(60))}:${pad(r.below(60))}','${STATUSES[r.below(STATUSES.length)]}',${r.below(100_000)}.${pad(r.below(100))},'${payload.slice(0, length)}')`);
  }
  return `INSERT INTO events (account_id, created_at, status, amount, payload) VALUES ${rows.join(',')}`;
}

interface BinlogFileInfo {
  name: string;
  size: number;
}

async function binaryLogs(c: Connection): Promise<BinlogFileInfo[]> {
  return (await query<RowDataPacket>(c, 'SHOW BINARY LOGS')).map((row) => ({ name: String(row.Log_name), size: Number(row.File_size) }));
}

async function masterStatus(c: Connection): Promise<{ file: string; pos: number }> {
  const [row] = await query<RowDataPacket>(c, 'SHOW MASTER STATUS');
  return { file: String(row!.File), pos: Number(row!.Position) };
}

const fileNumber = (name: string) => Number(name.slice(name.lastIndexOf('.') + 1));

/** Bytes of binlog from `from` to `to` (across files). */
function binlogBytesBetween(logs: BinlogFileInfo[], from: { file: string; pos: number }, to: { file: string; pos: number }): number {
  let bytes = 0;
  for (const f of logs) {
    const n = fileNumber(f.name);
    if (n < fileNumber(from.file) || n > fileNumber(to.file)) continue;
    const start = f.name === from.file ? from.pos : 4;
    const end = f.name === to.file ? to.pos : f.size;
    bytes += Math.max(0, end - start);
  }
  return bytes;
}

function checksum(database: string): string {
  return rootSql(`CHECKSUM TABLE ${database}.events`).split('\t')[1] ?? '?';
}

/** The CLI's phase log lines (--log-level info on stderr): their times by message. */
function phases(stderr: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const l = JSON.parse(line) as { msg?: string; time?: string };
      if (l.msg && l.time && !out.has(l.msg)) out.set(l.msg, Date.parse(l.time));
    } catch {
      // the progress line or another non-JSON line
    }
  }
  return out;
}

/** mariadb-binlog's output through the agent's ReplayFilter (src/snapshot/mysql/binlog-replay.ts) into nothing: the filter's cost alone. */
async function filterAlone(argv: string[], firstFile: string): Promise<{ wall: number; cpu: number; binlogCpu: number; inBytes: number; outBytes: number }> {
  const decoder = spawn('mariadb-binlog', argv, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, TZ: 'UTC' } });
  const filter = new ReplayFilter({ staging: new Map([[DB, DB_PEER]]), existing: [], firstFile });
  let inBytes = 0;
  let outBytes = 0;
  let decoderCpu = 0;
  const poll = setInterval(() => (decoderCpu = Math.max(decoderCpu, processCpuSeconds(decoder.pid))), 100);
  const started = performance.now();
  const cpu0 = process.cpuUsage();
  decoder.stdout.on('data', (b: Buffer) => (inBytes += b.length));
  await pipeline(
    decoder.stdout,
    filter,
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        outBytes += chunk.length;
        callback();
      },
    }),
  );
  const cpu = process.cpuUsage(cpu0);
  clearInterval(poll);
  return { wall: (performance.now() - started) / 1000, cpu: (cpu.user + cpu.system) / 1e6, binlogCpu: decoderCpu, inBytes, outBytes };
}

interface Phase {
  seconds: number;
  cpu: Record<string, number>;
}

interface ReplayResult {
  baseRows: number;
  rowsWritten: number;
  updates: number;
  base: { id: string; file: string; position: number };
  stop: { file: string; pos: number; time: string };
  binlogBytes: number;
  binlogFiles: number;
  generateSeconds: number;
  streamWaitSeconds: number;
  plain?: { sample: Sample; phases: Record<string, Phase>; identicalToBase: boolean };
  pitr?: { sample: Sample; phases: Record<string, Phase>; identical: boolean; facts: Record<string, unknown> };
  /** The daemon's CPU s while the binlog was written and until it was stored. */
  streamCpu: { node: number; client: number; seconds: number };
  peer?: { sample: Sample; identical: boolean };
  /** The decoding alone, no server: mariadb-binlog > /dev/null, and mariadb-binlog | the agent's ReplayFilter (in this process) > nothing. */
  decode?: { binlogOnly: Sample; filter: { wall: number; cpu: number; binlogCpu: number; inBytes: number; outBytes: number } };
  sourceChecksum: string;
}

async function replaySection(watcher: RecordWatcher): Promise<ReplayResult> {
  const c = await connectAgent();
  try {
    if (!daemon) await startDaemon(flushes[0]!);
    await c.query('CREATE TABLE IF NOT EXISTS rpo_tx (id BIGINT AUTO_INCREMENT PRIMARY KEY, at DATETIME(6) NOT NULL DEFAULT NOW(6), note VARCHAR(64) NOT NULL)');
    await c.query('DROP TABLE IF EXISTS events');
    await c.query(EVENTS_DDL);
    const r = new Random(SEED);
    for (let done = 0; done < baseRows; done += 1000) await c.query(rowsSql(r, Math.min(1000, baseRows - done)));
    await waitStored(c, watcher, 'the base rows');
    log(`base: ${baseRows} rows; backup create`);
    const backup = await timed(agent('backup', 'create', ENV), agentEnv());
    const manifest = JSON.parse(backup.stdout) as { id: string; elements: { name: string; facts: Record<string, unknown> }[] };
    const facts = manifest.elements.find((e) => e.name === 'db')!.facts;
    if (facts.binlogExact !== true) throw new Error(`the base backup has no exact binlog position: ${JSON.stringify(facts)}`);
    const base = { id: manifest.id, file: String(facts.binlogFile), position: Number(facts.binlogPosition) };
    const baseChecksum = checksum(DB);
    log(`base backup ${base.id} at ${base.file}:${base.position} (${describe(backup.sample)})`);

    // ~binlogMiB of binlog after the base: INSERT batches, every 10th an UPDATE of 500 rows.
    const target = binlogMiB * MIB;
    const generated = now();
    const streamCpu0 = daemonCpu();
    let rowsWritten = 0;
    let updates = 0;
    let maxId = baseRows;
    for (let batch = 1; ; batch++) {
      await c.query(rowsSql(r, 1000));
      rowsWritten += 1000;
      maxId += 1000;
      if (batch % 10 === 0) {
        const from = 1 + r.below(maxId - 500);
        await c.query(`UPDATE events SET status = '${STATUSES[r.below(STATUSES.length)]}', amount = amount + 1 WHERE id BETWEEN ${from} AND ${from + 499}`);
        updates += 500;
      }
      if (batch % 10 === 0) {
        const bytes = binlogBytesBetween(await binaryLogs(c), { file: base.file, pos: base.position }, await masterStatus(c));
        if (bytes >= target) break;
        if (batch % 300 === 0) log(`  ${mib(bytes)} MiB of binlog written`);
      }
    }
    const stop = await masterStatus(c);
    const lastSecond = Number((await query<RowDataPacket>(c, 'SELECT UNIX_TIMESTAMP() AS t'))[0]!.t);
    const generateSeconds = (now() - generated) / 1000;
    const logs = await binaryLogs(c);
    const binlogBytes = binlogBytesBetween(logs, { file: base.file, pos: base.position }, stop);
    const files = logs.filter((f) => fileNumber(f.name) >= fileNumber(base.file) && fileNumber(f.name) <= fileNumber(stop.file)).map((f) => f.name);
    const sourceChecksum = checksum(DB);
    log(`wrote ${rowsWritten} rows and updated ${updates} in ${generateSeconds.toFixed(0)} s: ${mib(binlogBytes)} MiB of binlog in ${files.length} file(s), up to ${stop.file}:${stop.pos}`);

    // Stored past the last write: a marker in a later second, then the stream's records.
    const waitStart = now();
    while (Number((await query<RowDataPacket>(c, 'SELECT UNIX_TIMESTAMP() AS t'))[0]!.t) <= lastSecond) await sleep(100);
    await waitStored(c, watcher, 'the marker after the last write');
    if (watcher.newestEventMs() <= lastSecond * 1000) throw new Error('the stored stream has no event after the last write');
    const streamWaitSeconds = (now() - waitStart) / 1000;
    const streamCpu1 = daemonCpu();
    const streamCpu = { node: streamCpu1.node - streamCpu0.node, client: streamCpu1.client - streamCpu0.client, seconds: (now() - generated) / 1000 };
    log(`the stream stored past the last write ${streamWaitSeconds.toFixed(1)} s after it; stopping the daemon for the timed commands`);
    await stopDaemon();
    run('sync', []);

    const result: ReplayResult = {
      baseRows,
      rowsWritten,
      updates,
      base,
      stop: { ...stop, time: new Date(lastSecond * 1000).toISOString() },
      binlogBytes,
      binlogFiles: files.length,
      generateSeconds,
      streamWaitSeconds,
      streamCpu,
      sourceChecksum,
    };
    /** Seconds and CPU s by process of each phase, from the CLI's log lines and the samples. */
    const phaseSpans = (stderr: string, sampler: CpuSampler): Record<string, { seconds: number; cpu: Record<string, number> }> => {
      const p = phases(stderr);
      const span = (a: string, b: string) => {
        const [x, y] = [p.get(a), p.get(b)];
        return x !== undefined && y !== undefined ? { seconds: (y - x) / 1000, cpu: sampler.between(x, y) } : { seconds: Number.NaN, cpu: {} };
      };
      return p.has('binlog gathered for the replay')
        ? { gather: span('restore started', 'binlog gathered for the replay'), stage: span('binlog gathered for the replay', 'element staged'), swap: span('element staged', 'restore completed') }
        : { stage: span('restore started', 'element staged'), swap: span('element staged', 'restore completed') };
    };

    // (b) the base alone.
    rootSql(`DROP DATABASE IF EXISTS ${DB_RESTORE}`);
    const plain = await timed(agent('--log-level', 'info', 'backup', 'restore', ENV, base.id, '--target', ENV_RESTORE, '--yes', '--no-safety-backup'), agentEnv());
    const plainResult = { sample: plain.sample, phases: phaseSpans(plain.stderr, plain.sampler), identicalToBase: checksum(DB_RESTORE) === baseChecksum };
    result.plain = plainResult;
    if (!plainResult.identicalToBase) problems.push('(b) the restored base differs from the source at the base (CHECKSUM TABLE)');
    log(`(b) restore of the base: ${describe(plain.sample)}`);
    rootSql(`DROP DATABASE IF EXISTS ${DB_RESTORE}`);

    // (a) the base and the binlog to the last write's second.
    const pitr = await timed(agent('--log-level', 'info', 'backup', 'restore', ENV, '--to-time', result.stop.time, '--target', ENV_RESTORE, '--yes', '--no-safety-backup'), agentEnv());
    const summary = JSON.parse(pitr.stdout) as { id: string; elements: { name: string; facts: Record<string, unknown> }[] };
    const restored = checksum(DB_RESTORE);
    const pitrResult = { sample: pitr.sample, phases: phaseSpans(pitr.stderr, pitr.sampler), identical: restored === sourceChecksum, facts: summary.elements[0]?.facts ?? {} };
    result.pitr = pitrResult;
    if (summary.id !== base.id) problems.push(`(a) the point-in-time restore took base ${summary.id}, not ${base.id}`);
    if (!pitrResult.identical) problems.push(`(a) the point-in-time restore differs: CHECKSUM TABLE ${restored}, source ${sourceChecksum}`);
    log(`(a) point-in-time restore to ${result.stop.time}: ${describe(pitr.sample)}; ${Object.entries(pitrResult.phases).map(([k, v]) => `${k} ${v.seconds.toFixed(2)} s`).join(', ')}; last applied ${String(pitrResult.facts.lastAppliedGtid)} at ${String(pitrResult.facts.lastAppliedPosition)}`);
    rootSql(`DROP DATABASE IF EXISTS ${DB_RESTORE}`);

    // (c) the peer: the base loaded untimed (the agent restores it into a third environment), then mariadb-binlog | mariadb.
    rootSql(`DROP DATABASE IF EXISTS ${DB_PEER}`);
    await timed(agent('backup', 'restore', ENV, base.id, '--target', ENV_PEER, '--yes', '--no-safety-backup'), agentEnv());
    const datadir = path.join(mariadb.dir, 'data');
    const peerArgv = [
      `--start-position=${base.position}`,
      `--stop-position=${stop.pos}`,
      `--rewrite-db=${DB}->${DB_PEER}`,
      ...files.map((f) => path.join(datadir, f)),
    ];
    const peer = await timed(['bash', '-c', 'set -o pipefail; defaults=$1; shift; mariadb-binlog "$@" | mariadb --defaults-file="$defaults"', 'bench', paths.peerDefaults, ...peerArgv]);
    const peerSum = checksum(DB_PEER);
    result.peer = { sample: peer.sample, identical: peerSum === sourceChecksum };
    if (!result.peer.identical) problems.push(`(c) mariadb-binlog | mariadb differs: CHECKSUM TABLE ${peerSum}, source ${sourceChecksum}`);
    log(`(c) mariadb-binlog | mariadb: ${describe(peer.sample)}`);
    rootSql(`DROP DATABASE IF EXISTS ${DB_PEER}`);

    // (d) where the client side's time goes: the decoder alone, then the decoder and the filter (no server).
    const decodeOnly = await timed(['bash', '-c', 'mariadb-binlog "$@" > /dev/null', 'bench', ...peerArgv]);
    result.decode = { binlogOnly: decodeOnly.sample, filter: await filterAlone(peerArgv, base.file) };
    log(`(d) mariadb-binlog > /dev/null: ${describe(decodeOnly.sample)}; | ReplayFilter: ${result.decode.filter.wall.toFixed(2)} s, filter CPU ${result.decode.filter.cpu.toFixed(2)} s, ${mib(result.decode.filter.inBytes)} MiB in, ${mib(result.decode.filter.outBytes)} MiB out`);
    rootSql(`DROP DATABASE IF EXISTS ${DB_PEER}`);
    return result;
  } finally {
    await c.end();
  }
}

// ------------------------------------------------------------------ report

interface Results {
  mariadb?: string;
  rpo: RpoResult[];
  replay?: ReplayResult;
}
const results: Results = { rpo: [] };

function report(started: number, loadAtStart: number[]): string {
  const out: string[] = [];
  if (results.mariadb) out.push(`${results.mariadb}; the agent of ${process.env.BENCH_AGENT_VERSION ?? 'this checkout'}.`, '');
  if (results.rpo.length) {
    out.push(
      'RPO of the binlog stream (the real daemon, fs store): per transaction, when the record holding its commit appeared in the store − when its commit returned to the writer (single-row autocommit INSERTs over TCP, one connection, paced). CPU s over the writing window, from /proc.',
      '',
    );
    const ms = (v: number | null) => (v === null ? '' : v.toFixed(0));
    const body = results.rpo.map((x) => [
      `${x.flushSeconds}s`,
      x.rate === 0 ? 'idle' : String(x.rate),
      x.rate === 0 ? '' : x.achievedRate.toFixed(0),
      String(x.transactions),
      ms(x.p50),
      ms(x.p99),
      ms(x.max),
      String(x.missing),
      String(x.records),
      x.meanSegmentBytes ? (x.meanSegmentBytes / 1024).toFixed(1) : '',
      x.daemonNodeCpu.toFixed(2),
      x.daemonClientCpu.toFixed(2),
      `${(((x.daemonNodeCpu + x.daemonClientCpu) / x.seconds) * 100).toFixed(1)} %`,
      x.serverCpu.toFixed(2),
      x.load.toFixed(2),
    ]);
    out.push(table(['flushEvery', 'rate /s', 'achieved /s', 'tx', 'RPO p50 ms', 'p99 ms', 'max ms', 'not stored', 'records', 'KiB/record', 'daemon node CPU s', 'mariadb-binlog CPU s', 'daemon % of a core', 'mariadbd CPU s', 'load'], body, 2));
    out.push('');
    for (const x of results.rpo.filter((y) => y.rate > 0 && y.p99 !== null)) {
      out.push(`Goal (information): RPO p99 vs flushEvery at ${x.rate}/s: ${x.p99!.toFixed(0)} ms vs ${x.flushSeconds * 1000} ms (${(x.p99! / (x.flushSeconds * 1000)).toFixed(2)}×).`);
    }
    out.push('');
  }
  const p = results.replay;
  if (p) {
    out.push(
      `Replay: base ${p.baseRows} rows (backup ${p.base.id} at ${p.base.file}:${p.base.position}); then ${p.rowsWritten} rows inserted (1,000 per INSERT) and ${p.updates} updated (500 per UPDATE) in ${p.generateSeconds.toFixed(0)} s: ${mib(p.binlogBytes)} MiB of binlog in ${p.binlogFiles} file(s), to ${p.stop.file}:${p.stop.pos} (${p.stop.time}). The stream had stored past it ${p.streamWaitSeconds.toFixed(1)} s after the last write; the daemon was then stopped. One run of each; GNU time (wall, CPU of the process tree, peak RSS of the largest process); per-process CPU sampled from /proc; mariadbd CPU from /proc.`,
      '',
    );
    const row = (what: string, s: Sample, ok: string) => [
      what,
      s.wall.toFixed(2),
      s.cpu.toFixed(2),
      Object.entries(s.processes)
        .sort(([, a], [, b]) => b - a)
        .map(([c, v]) => `${c} ${v.toFixed(1)}`)
        .join(', '),
      (s.maxRssKiB / 1024).toFixed(0),
      s.serverCpu.toFixed(2),
      s.load.toFixed(2),
      ok,
    ];
    const body: string[][] = [];
    const check = (v: boolean) => (v ? 'CHECKSUM = source' : 'DIFFERS');
    if (p.plain) body.push(row('(b) backup restore ENV BASE (the base alone)', p.plain.sample, p.plain.identicalToBase ? 'CHECKSUM = base' : 'DIFFERS'));
    if (p.pitr) body.push(row('(a) backup restore ENV --to-time T', p.pitr.sample, check(p.pitr.identical)));
    if (p.peer) body.push(row('(c) mariadb-binlog \\| mariadb (base preloaded, untimed)', p.peer.sample, check(p.peer.identical)));
    out.push(table(['command', 'wall s', 'CPU s', 'CPU s by process (sampled)', 'RSS MiB', 'mariadbd CPU s', 'load', 'result'], body));
    out.push('');
    if (p.pitr && p.plain) {
      const a = p.pitr.phases;
      const b = p.plain.phases;
      const cpuText = (cpu: Record<string, number>) =>
        Object.entries(cpu)
          .filter(([, v]) => v >= 0.05)
          .sort(([, x], [, y]) => y - x)
          .map(([c, v]) => `${c} ${v.toFixed(1)}`)
          .join(', ');
      const phaseRow = (what: string, ph: Phase | undefined) => [what, ph ? ph.seconds.toFixed(2) : '', ph ? cpuText(ph.cpu) : ''];
      out.push("Phases, from the CLI's log lines (--log-level info) and the CPU samples nearest to them (250 ms):", '');
      out.push(
        table(
          ['phase', 's', 'CPU s by process (mariadbd: the server)'],
          [
            (phaseRow('(a) choose the base, gather + verify the binlog into staging (the dump loads meanwhile)', a.gather)),
            phaseRow('(a) the rest of the load, then the replay', a.stage),
            phaseRow('(a) swap', a.swap),
            phaseRow('(b) load the dump', b.stage),
            phaseRow('(b) swap', b.swap),
          ],
        ),
      );
      out.push('');
      out.push(`Replayed: ${String(p.pitr.facts.replayedStatements)} statements (${String(p.pitr.facts.replaySkipped)} passed over), last ${String(p.pitr.facts.lastAppliedGtid)} at ${String(p.pitr.facts.lastAppliedPosition)}. The stream meanwhile (writing the binlog and storing it, ${p.streamCpu.seconds.toFixed(0)} s): daemon node ${p.streamCpu.node.toFixed(2)} CPU s, mariadb-binlog ${p.streamCpu.client.toFixed(2)} CPU s (${((p.streamCpu.node + p.streamCpu.client) / (p.binlogBytes / 1e6)).toFixed(4)} CPU s per MB streamed).`, '');
      const mb = p.binlogBytes / 1e6;
      const oursSeconds = p.pitr.sample.wall - p.plain.sample.wall;
      const replayOnly = (a.stage?.seconds ?? Number.NaN) - (b.stage?.seconds ?? Number.NaN);
      const speeds: string[][] = [
        ['ours: (a) − (b) (gather + replay)', oursSeconds.toFixed(2), (mb / oursSeconds).toFixed(1)],
        ['ours: load+replay phase of (a) − load phase of (b) (replay alone)', replayOnly.toFixed(2), (mb / replayOnly).toFixed(1)],
      ];
      if (p.peer) speeds.push(['mariadb-binlog \\| mariadb', p.peer.sample.wall.toFixed(2), (mb / p.peer.sample.wall).toFixed(1)]);
      out.push(table(['replay of ' + `${mib(p.binlogBytes)} MiB of binlog`, 's', 'MB/s'], speeds));
      out.push('');
      if (p.decode) {
        const d = p.decode;
        out.push(
          `The client side alone, no server (d): \`mariadb-binlog … > /dev/null\` ${d.binlogOnly.wall.toFixed(2)} s (CPU ${d.binlogOnly.cpu.toFixed(2)} s); \`mariadb-binlog … |\` the agent's ReplayFilter (in the bench's process) into nothing: ${d.filter.wall.toFixed(2)} s, filter CPU ${d.filter.cpu.toFixed(2)} s (${(d.filter.inBytes / 1e6 / d.filter.cpu).toFixed(0)} MB/s of decoded text per CPU s; ${mib(d.filter.inBytes)} MiB in, ${mib(d.filter.outBytes)} MiB out).`,
          '',
        );
      }
      if (p.peer) out.push(`Goal (information): replay speed ours / \`mariadb-binlog | mysql\` = ${(p.peer.sample.wall / oursSeconds).toFixed(2)} (gather included; ${(p.peer.sample.wall / replayOnly).toFixed(2)} for the replay alone).`, '');
    }
  }
  out.push(...closingLines(loadAtStart, started, problems));
  return out.join('\n');
}

// ------------------------------------------------------------------ clean-up, main

let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await stopChild(current);
    await stopDaemon().catch(() => {});
    mariadb.stopIfStarted(log);
    if (!keep) rmSync(work, { recursive: true, force: true });
  })();
  return cleaning;
}

cleanUpOnSignals(cleanup, log);

async function main(): Promise<void> {
  const started = performance.now();
  const load0 = loadavg();
  for (const tool of ['mariadb', 'mariadb-binlog']) {
    if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).error) throw new Error(`${tool} not found (scripts/mariadb.sh install brings the MariaDB clients)`);
  }
  if (!existsSync('/usr/bin/time')) throw new Error('GNU time is not installed (apt-get install time)');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  log(`BENCH_DIR=${benchDir} sections=${[...only].join(',')} flushEvery=${flushes.map((f) => `${f}s`).join(',')} rates=${rates.join(',')} binlog=${binlogMiB} MiB`);
  const watcher = new RecordWatcher();
  try {
    mariadb.stop(); // a server left by an interrupted run
    mariadb.start();
    results.mariadb = run('mariadbd', ['--version']).trim();
    rootSql(`CREATE DATABASE IF NOT EXISTS ${DB}; CREATE USER IF NOT EXISTS 'peer'@'127.0.0.1' IDENTIFIED BY '${PEER_PASSWORD}'; GRANT ALL ON *.* TO 'peer'@'127.0.0.1'`);
    writeFileSync(paths.peerDefaults, `[client]\nuser=peer\npassword=${PEER_PASSWORD}\nprotocol=TCP\nhost=127.0.0.1\nport=${mariadb.port}\n`, { mode: 0o600 });
    writeConfig(flushes[0]!);
    watcher.start();
    if (only.has('rpo')) results.rpo = await rpoSection(watcher);
    if (only.has('replay')) results.replay = await replaySection(watcher);
  } catch (error) {
    problems.push(`the run stopped: ${(error as Error).message.split('\n').slice(0, 6).join(' | ').slice(0, 1500)}`);
    process.exitCode = 1;
  } finally {
    watcher.stop();
    await stopDaemon().catch(() => {});
    const text = report(started, load0);
    await cleanup();
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    mkdirSync(benchDir, { recursive: true });
    writeFileSync(path.join(benchDir, `results-pitr-${stamp}.json`), `${JSON.stringify({ agentVersion: process.env.BENCH_AGENT_VERSION ?? null, binlogMiB, flushes, rates, ...results, problems }, null, 2)}\n`);
    writeFileSync(path.join(benchDir, `results-pitr-${stamp}.txt`), `${text}\n`);
    console.log(text);
    log(`results written to ${path.join(benchDir, `results-pitr-${stamp}.{txt,json}`)}`);
  }
}

await main();
