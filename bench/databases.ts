/**
 * The database part of `npm run bench`: the agent's MySQL and Redis elements, run as the real
 * CLI, next to the classic pipelines on the same data (issue #3, "Benchmark").
 *
 *   node_modules/.bin/node bench/databases.ts [--only dump,restore,pause]
 *
 * 1. dump: `backup create ENV --element db --live` (mysqldump → zstd → sha256 → fs store) against
 *    `mysqldump --single-transaction --quick DB | zstd -1 -T0 > FILE`, on ~1 GiB of dump.
 * 2. restore: `backup restore ENV ID --target ENV2 --yes` (stream into a staging database, then
 *    the RENAME swap) against `zstd -dc FILE | mysql DB` into a fresh database, on a smaller
 *    database (restores are bound by mysqld, ~15 MB/s here).
 * 3. pause: consistent backups (`backup create ENV`) of an environment with MySQL (~1 GiB),
 *    Redis (~1 GiB) and a files mount while a writer in a frozen cgroup v2 loops "insert n into
 *    MySQL, SET n in Redis, append n to a file": the manifest's pauseMs (median, p99, max over
 *    BENCH_DB_PAUSE_RUNS backups) and its parts — the cgroup freeze and the thaw (the lease's
 *    log lines), FTWRL's wait and hold (the mysql facts), the Redis CLIENT PAUSE and its fork
 *    (latest_fork_usec), a files element read inside the freeze — and the fixed overhead that
 *    remains (the pause minus those parts), total time and bytes. The goal (issue #14 §4):
 *    ≤ 250 ms at p99, flat in the data size (BENCH_DB_MYSQL_MB, BENCH_DB_REDIS_MB).
 *
 * It starts its own MariaDB (scripts/mariadb.sh with MARIADB_DIR=${BENCH_DB_MARIADB_DIR:-/tmp/storage-agent-bench-mariadb},
 * MARIADB_PORT=${BENCH_DB_MARIADB_PORT:-13326}: another pair when someone else benchmarks on the machine) and its own redis-server (a free port, a dir under the work dir), never
 * the test instances, and stops both, the writer and its cgroup and removes its scratch files
 * at the end, on failure and on Ctrl-C/SIGTERM.
 *
 * The data is generated once and cached in ${BENCH_DIR:-/var/tmp/storage-agent-bench}/db: a
 * copy of the MariaDB datadir after a clean shutdown (copied back before each run: ~10 s
 * instead of ~2 min of LOAD DATA) and the Redis RDB (loaded by redis-server at start). A cache
 * is valid for one generator version, size and MariaDB version (db/*.ready).
 *
 * Environment: BENCH_DIR; BENCH_DB_MYSQL_MB (dump size of the main database, default 1024),
 * BENCH_DB_REDIS_MB (Redis data: that many × 1024 keys of 1 KiB, default 1024),
 * BENCH_DB_RESTORE_MB (dump size of the restore database, default 256), BENCH_DB_RUNS
 * (measured dump runs per contender after one warm-up, default 3), BENCH_DB_RESTORE_RUNS
 * (restore runs per contender, no warm-up, default 2), BENCH_DB_PAUSE_RUNS (consistent
 * backups, default 20: enough for a p99 that means something), BENCH_STAT (best, the default, or median; as bench/run.ts).
 *
 * Every command runs as a child under GNU `/usr/bin/time -f '%e %U %S %M'` (wall, user and
 * system CPU of the whole process tree, peak RSS of its largest process). The server's own
 * CPU (mariadbd, from /proc) is reported beside it: a restore's work is mostly there.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { removeCgroup } from './cgroup.ts';
import { BenchMariadb } from './mariadb.ts';
import { agentCommand, cleanUpOnSignals, closingLines, percentile, processCpuSeconds, runChecked, stopChild, timed as timedRun } from './timing.ts';
import { randomBytes } from 'node:crypto';
import { chownSync, copyFileSync, cpSync, existsSync, linkSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { loadavg } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify as toYaml } from 'yaml';

const ROOT = path.resolve(import.meta.dirname, '..');
/** The agent's CLI, as installed (its Node flags). */
const AGENT = agentCommand(ROOT);
/** scripts/bench.sh runs a copy of src/ and bench/ only: then the checkout's (the cwd's) script. */
const mariadb = new BenchMariadb(process.env.BENCH_DB_MARIADB_DIR || '/tmp/storage-agent-bench-mariadb', numberEnv('BENCH_DB_MARIADB_PORT', 13326));
const MARIADB_SOCKET = mariadb.socket;
const CGROUP_ROOT = '/sys/fs/cgroup/unified';
/** Bump when the generated data changes, so cached data is made again. */
export const GENERATOR_VERSION = 1;
const REDIS_VALUE_BYTES = 1024;
const MIB = 1024 ** 2;
/** Issue #14 §4: the pause at p99. */
const PAUSE_GOAL_MS = 250;

// ------------------------------------------------------------------ options

const args = process.argv.slice(2);
function option(name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}
function numberEnv(name: string, fallback: number, min = 1): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min) throw new Error(`${name}=${raw}: expected a number ≥ ${min}`);
  return value;
}
const benchDir = path.resolve(process.env.BENCH_DIR || '/var/tmp/storage-agent-bench');
const cacheDir = path.join(benchDir, 'db');
const work = path.join(cacheDir, 'work');
const mysqlTargetBytes = numberEnv('BENCH_DB_MYSQL_MB', 1024) * MIB;
const restoreTargetBytes = numberEnv('BENCH_DB_RESTORE_MB', 256) * MIB;
const redisKeys = Math.round(numberEnv('BENCH_DB_REDIS_MB', 1024) * 1024);
const dumpRuns = numberEnv('BENCH_DB_RUNS', 3);
const restoreRuns = numberEnv('BENCH_DB_RESTORE_RUNS', 2);
const pauseRuns = numberEnv('BENCH_DB_PAUSE_RUNS', 20);
const statistic = process.env.BENCH_STAT === 'median' ? 'median' : 'best';
const sections = new Set((option('--only') ?? 'dump,restore,pause').split(',').map((s) => s.trim()));

const DB_MAIN = 'bench';
const DB_SMALL = 'bench_small';
const DB_SMALL_COPY = 'bench_small_copy';
const DB_SMALL_PEER = 'bench_small_peer';

// ------------------------------------------------------------------ logging, processes

const problems: string[] = [];

function log(line: string): void {
  process.stderr.write(`bench-db: ${line}\n`);
}

/** Runs a command to completion; throws with its stderr when it fails. */
const run = runChecked;

/** Like run(), asynchronous (the event loop keeps going: timers, other children). */
function runAsync(command: string, argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code === 0) resolve(Buffer.concat(out).toString());
      else reject(new Error(`${command} ${argv.join(' ')} failed (${code ?? signal}): ${Buffer.concat(err).toString().trim().slice(-2000)}`));
    });
  });
}

function sh(script: string, ...params: string[]): string[] {
  return ['bash', '-c', `set -o pipefail; ${script}`, 'bench', ...params];
}

interface Sample {
  wall: number;
  user: number;
  sys: number;
  maxRssKiB: number;
  /** CPU seconds of mariadbd during the run. */
  serverCpu: number;
  stdout: string;
  stderr: string;
}

let current: ChildProcess | undefined;

/** Runs argv under /usr/bin/time; rejects with its stderr if it fails. */
async function timed(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Sample> {
  const serverPid = mariadb.pid();
  const cpuBefore = processCpuSeconds(serverPid);
  try {
    const run = await timedRun(argv, { cwd: ROOT, timeFile: path.join(work, 'time.out'), env, onSpawn: (child) => (current = child) });
    return { ...run, serverCpu: processCpuSeconds(serverPid) - cpuBefore };
  } finally {
    current = undefined;
  }
}


function mbps(bytes: number, seconds: number): number {
  return bytes / 1e6 / seconds;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

// ------------------------------------------------------------------ data generation

/** xorshift32: fast, seeded, the same data every time. */
export class Random {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  next(): number {
    let s = this.#s;
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    this.#s = s;
    return s;
  }
  below(n: number): number {
    return this.next() % n;
  }
}

const SYLLABLES = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'xe', 'zu', 'bra', 'cle', 'dri', 'fo', 'gru', 'pla', 'que', 'ste', 'tro', 'wen'];
const WORDS: string[] = [];
for (let i = 0; i < 2000; i++) {
  let word = '';
  let x = Math.imul(i, 2654435761) >>> 0;
  for (let j = 0; j < 2 + (i % 3) + (i % 7 === 0 ? 1 : 0); j++) {
    word += SYLLABLES[x % SYLLABLES.length];
    x = Math.floor(x / SYLLABLES.length) + j * 7;
  }
  WORDS.push(word);
}
/** Recurring phrases: text columns repeat like real notes and descriptions do (zstd -1 ~3.9× overall). */
const PHRASES: string[] = [];
for (let i = 0; i < 400; i++) {
  const words: string[] = [];
  for (let j = 0; j < 4 + (i % 5); j++) words.push(WORDS[(i * 31 + j * 17 + ((i * j) % 13)) % WORDS.length]!);
  PHRASES.push(words.join(' '));
}
export const STATUSES = ['pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'];
const CURRENCIES = ['EUR', 'USD', 'GBP'];
const DOMAINS = ['example.com', 'mail.test', 'shop.example', 'corp.test'];
const COUNTRIES = ['DE', 'FR', 'GB', 'US', 'NL', 'ES', 'IT', 'PL', 'SE', 'CH', 'AT', 'BE', 'DK', 'NO', 'FI', 'IE', 'PT', 'CZ', 'CA', 'AU'];
const CUSTOMERS_PER_GIB = 400_000;

const pad = (n: number, width: number) => String(n).padStart(width, '0');

function dateTime(r: Random): string {
  return `2024-${pad(1 + r.below(12), 2)}-${pad(1 + r.below(28), 2)} ${pad(r.below(24), 2)}:${pad(r.below(60), 2)}:${pad(r.below(60), 2)}`;
}
export function word(r: Random): string {
  return WORDS[r.below(WORDS.length)]!;
}
function note(r: Random, parts: number): string {
  let text = '';
  for (let i = 0; i < parts; i++) text += `${i ? '. ' : ''}${word(r)} ${PHRASES[r.below(PHRASES.length)]} ${word(r)}`;
  return text;
}

const ORDERS_DDL = `CREATE TABLE orders (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  customer_id INT UNSIGNED NOT NULL,
  created_at DATETIME NOT NULL,
  status VARCHAR(16) NOT NULL,
  amount DECIMAL(10,2) NOT NULL,
  currency CHAR(3) NOT NULL,
  sku VARCHAR(16) NOT NULL,
  quantity SMALLINT UNSIGNED NOT NULL,
  email VARCHAR(96) NOT NULL,
  note TEXT NOT NULL,
  KEY customer (customer_id)
) ENGINE=InnoDB`;

const CUSTOMERS_DDL = `CREATE TABLE customers (
  id INT UNSIGNED NOT NULL PRIMARY KEY,
  name VARCHAR(64) NOT NULL,
  email VARCHAR(96) NOT NULL,
  city VARCHAR(48) NOT NULL,
  country CHAR(2) NOT NULL,
  created_at DATETIME NOT NULL,
  credit DECIMAL(12,2) NOT NULL,
  profile TEXT NOT NULL,
  KEY email (email)
) ENGINE=InnoDB`;

/** The writer's table, present (empty) in every database so the dumps compare. */
const TICKS_DDL = 'CREATE TABLE ticks (n INT NOT NULL PRIMARY KEY) ENGINE=InnoDB';

function customerRows(r: Random, first: number, count: number): string {
  const lines: string[] = [];
  for (let id = first; id < first + count; id++) {
    const name = `${word(r)} ${word(r)}`;
    const email = `${name.replace(' ', '.')}${r.below(1000)}@${DOMAINS[r.below(DOMAINS.length)]}`;
    const profile = `{"lang":"${['en', 'de', 'fr'][r.below(3)]}","newsletter":${r.below(2) === 1},"tags":["${word(r)}","${word(r)}"],"bio":"${note(r, 1 + r.below(3))}"}`;
    lines.push(`${id}\t${name}\t${email}\t${word(r)}\t${COUNTRIES[r.below(COUNTRIES.length)]}\t${dateTime(r)}\t${r.below(100000)}.${pad(r.below(100), 2)}\t${profile}\n`);
  }
  return lines.join('');
}

function orderRows(r: Random, first: number, targetBytes: number, customers: number): { text: string; rows: number } {
  const lines: string[] = [];
  let bytes = 0;
  let id = first;
  while (bytes < targetBytes) {
    const line =
      `${id}\t${1 + r.below(customers)}\t${dateTime(r)}\t${STATUSES[r.below(STATUSES.length)]}\t${r.below(10000)}.${pad(r.below(100), 2)}\t` +
      `${CURRENCIES[r.below(3)]}\tSKU-${pad(r.below(1_000_000), 6)}\t${1 + r.below(20)}\t${word(r)}.${word(r)}${r.below(1000)}@${DOMAINS[r.below(DOMAINS.length)]}\t${note(r, 1 + r.below(6))}\n`;
    lines.push(line);
    bytes += line.length;
    id++;
  }
  return { text: lines.join(''), rows: id - first };
}

/** root over the socket: loading with sql_log_bin=0 (no binlog) and LOCAL INFILE. */
function rootSql(query: string, database?: string, socket = MARIADB_SOCKET): string {
  return run('mariadb', ['--no-defaults', `--socket=${socket}`, '-uroot', '--batch', '--skip-column-names', ...(database ? [database] : []), '-e', query]);
}

function rootSqlAsync(query: string, database: string, socket = MARIADB_SOCKET): Promise<string> {
  return runAsync('mariadb', ['--no-defaults', `--socket=${socket}`, '-uroot', '--batch', '--local-infile=1', database, '-e', query]);
}

/** The server generateDatabase loads into (root over its socket), and where it writes its TSV files. */
export interface GeneratorTarget {
  socket: string;
  scratch: string;
}

/**
 * Fills `database` with customers and orders whose mysqldump is about `targetBytes`, by LOAD DATA
 * LOCAL INFILE of 128 MiB TSV chunks: the next chunk is generated while the server loads one.
 */
export async function generateDatabase(
  database: string,
  targetBytes: number,
  seed: number,
  target: GeneratorTarget = { socket: MARIADB_SOCKET, scratch: path.join(work, 'gen') },
): Promise<{ orders: number; customers: number }> {
  const started = performance.now();
  rootSql(`DROP DATABASE IF EXISTS ${database}; CREATE DATABASE ${database}; USE ${database}; ${ORDERS_DDL}; ${CUSTOMERS_DDL}; ${TICKS_DDL}`, undefined, target.socket);
  const r = new Random(seed);
  const gen = target.scratch;
  mkdirSync(gen, { recursive: true });
  const load = (file: string, table: string) =>
    rootSqlAsync(`SET SESSION sql_log_bin = 0, unique_checks = 0, foreign_key_checks = 0; LOAD DATA LOCAL INFILE '${file}' INTO TABLE ${table}`, database, target.socket).finally(() =>
      rmSync(file, { force: true }),
    );
  // The dump adds quotes, commas and parentheses to the TSV: ~6 % more bytes.
  const tsvBytes = targetBytes / 1.06;
  const customers = Math.max(1000, Math.round((CUSTOMERS_PER_GIB * targetBytes) / 1024 ** 3));
  const customersFile = path.join(gen, `${database}-customers.tsv`);
  writeFileSync(customersFile, customerRows(r, 1, customers));
  let loading = load(customersFile, 'customers');
  let written = statSync(customersFile).size;
  let orders = 0;
  for (let chunk = 0; written < tsvBytes; chunk++) {
    const { text, rows } = orderRows(r, orders + 1, Math.min(128 * MIB, tsvBytes - written), customers);
    const file = path.join(gen, `${database}-orders-${chunk}.tsv`);
    writeFileSync(file, text);
    written += text.length;
    orders += rows;
    await loading;
    loading = load(file, 'orders');
    log(`  ${database}: ${(written / MIB).toFixed(0)} of ${(tsvBytes / MIB).toFixed(0)} MiB of TSV generated`);
  }
  await loading;
  log(`  ${database}: ${orders} orders, ${customers} customers loaded in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  return { orders, customers };
}

// ------------------------------------------------------------------ MariaDB

interface MysqlInfo {
  version: number;
  mysqlTargetBytes: number;
  restoreTargetBytes: number;
  mariadb: string;
  tables: Record<string, { orders: number; customers: number }>;
}

function mariadbVersion(): string {
  return run('mariadbd', ['--version']).trim();
}

/** MariaDB on 13326 with the bench databases: from the cached datadir, or generated (and cached). */
async function prepareMariadb(): Promise<MysqlInfo> {
  const cachedData = path.join(cacheDir, 'mariadb-data');
  const marker = path.join(cacheDir, 'mariadb.ready');
  const wanted = { version: GENERATOR_VERSION, mysqlTargetBytes, restoreTargetBytes, mariadb: mariadbVersion() };
  let info: MysqlInfo | undefined;
  try {
    const found = JSON.parse(readFileSync(marker, 'utf8')) as MysqlInfo;
    if (found.version === wanted.version && found.mysqlTargetBytes === wanted.mysqlTargetBytes && found.restoreTargetBytes === wanted.restoreTargetBytes && found.mariadb === wanted.mariadb && existsSync(cachedData)) {
      info = found;
    }
  } catch {
    // no cache, or an unreadable marker: generate
  }
  mariadb.stop(); // a server left by an interrupted run
  if (info) {
    const started = performance.now();
    mariadb.startOn(cachedData);
    log(`MariaDB started on the cached datadir in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    return info;
  }
  log(`generating the MySQL data (${(mysqlTargetBytes / MIB).toFixed(0)} + ${(restoreTargetBytes / MIB).toFixed(0)} MiB of dump; cached in ${cacheDir})`);
  rmSync(marker, { force: true });
  rmSync(cachedData, { recursive: true, force: true });
  mariadb.start();
  const tables: MysqlInfo['tables'] = {};
  tables[DB_MAIN] = await generateDatabase(DB_MAIN, mysqlTargetBytes, 0x5eed0001);
  tables[DB_SMALL] = await generateDatabase(DB_SMALL, restoreTargetBytes, 0x5eed0002);
  await mariadb.saveDatadir(cachedData);
  info = { ...wanted, tables };
  writeFileSync(marker, `${JSON.stringify(info, null, 2)}\n`);
  return info;
}

const defaultsFile = () => path.join(work, 'my.cnf');

/** As the agent user over TCP, with the same 0600 defaults file the peer commands use. */
function sql(query: string, database?: string): string {
  return run('mysql', [`--defaults-extra-file=${defaultsFile()}`, '--batch', '--skip-column-names', ...(database ? [database] : []), '-e', query]).trim();
}

function databaseBytes(database: string): number {
  return Number(sql(`SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '${database}'`));
}

function checksums(database: string): string {
  return sql(`CHECKSUM TABLE ${database}.orders, ${database}.customers`)
    .split('\n')
    .map((line) => line.replace(/^[^.]+\./, ''))
    .join(', ');
}

// ------------------------------------------------------------------ Redis

interface RedisServer {
  port: number;
  dir: string;
  child: ChildProcess;
  exited: Promise<void>;
}

let redis: RedisServer | undefined;

interface RedisInfo {
  version: number;
  keys: number;
  valueBytes: number;
  rdbBytes: number;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function redisUser(): { uid: number; gid: number } | undefined {
  try {
    return { uid: Number(run('id', ['-u', 'redis']).trim()), gid: Number(run('id', ['-g', 'redis']).trim()) };
  } catch {
    return undefined;
  }
}

function redisCli(...argv: string[]): string {
  return run('redis-cli', ['-p', String(redis!.port), ...argv]).trim();
}

/** A private redis-server as in test/support/redis.ts (the `redis` user, no save points, no AOF). */
async function startRedis(rdb: string | undefined): Promise<void> {
  const dir = path.join(work, 'redis');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const user = redisUser();
  if (rdb) {
    // A hard link costs nothing; Redis never writes into it (a save renames a new file over the name).
    try {
      linkSync(rdb, path.join(dir, 'dump.rdb'));
    } catch {
      copyFileSync(rdb, path.join(dir, 'dump.rdb'));
    }
  }
  if (user) chownSync(dir, user.uid, user.gid);
  const port = await freePort();
  const argv = ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--dbfilename', 'dump.rdb', '--logfile', path.join(dir, 'redis.log')];
  argv.push('--daemonize', 'no', '--appendonly', 'no', '--save', '', '--enable-protected-configs', 'yes');
  const child = spawn('redis-server', argv, { stdio: 'ignore', ...(user ?? {}) });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  redis = { port, dir, child, exited };
  const started = performance.now();
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`redis-server exited at start; see ${path.join(dir, 'redis.log')}`);
    const reply = spawnSync('redis-cli', ['-p', String(port), 'INFO', 'persistence'], { encoding: 'utf8' });
    if (reply.status === 0 && /\bloading:0\b/.test(reply.stdout)) break;
    if (performance.now() - started > 180_000) throw new Error('redis-server did not finish loading within 180 s');
    await sleep(100);
  }
  log(`redis-server on port ${port} ready in ${((performance.now() - started) / 1000).toFixed(1)} s`);
}

async function stopRedis(): Promise<void> {
  if (!redis) return;
  const { child, exited, dir } = redis;
  redis = undefined;
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGKILL');
    await exited;
  }
  rmSync(dir, { recursive: true, force: true });
}

/** `keys` SETs of 1 KiB values (JSON-like text and a random token) through redis-cli --pipe. */
async function generateRedis(keys: number): Promise<void> {
  const started = performance.now();
  const r = new Random(0x5eed0003);
  const pipe = spawn('redis-cli', ['-p', String(redis!.port), '--pipe'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  pipe.stdout.on('data', (b: Buffer) => (output += b.toString()));
  pipe.stderr.on('data', (b: Buffer) => (output += b.toString()));
  const done = new Promise<number | null>((resolve) => pipe.once('close', resolve));
  const batch = 4096;
  for (let first = 0; first < keys; first += batch) {
    const tokens = randomBytes(48 * batch).toString('base64');
    const parts: string[] = [];
    for (let i = first; i < Math.min(keys, first + batch); i++) {
      const key = `session:${pad(i, 8)}`;
      const token = tokens.slice((i - first) * 64, (i - first) * 64 + 64);
      let value = `{"uid":${i},"ts":${1_700_000_000 + r.below(30_000_000)},"token":"${token}","cart":"${note(r, 8)}"`;
      while (value.length < REDIS_VALUE_BYTES - 2) value += ` ${note(r, 2)}`;
      value = `${value.slice(0, REDIS_VALUE_BYTES - 2)}"}`;
      parts.push(`*3\r\n$3\r\nSET\r\n$${key.length}\r\n${key}\r\n$${value.length}\r\n${value}\r\n`);
    }
    if (!pipe.stdin.write(parts.join(''))) await new Promise((resolve) => pipe.stdin.once('drain', resolve));
  }
  pipe.stdin.end();
  const code = await done;
  if (code !== 0 || !/errors: 0,/.test(output)) throw new Error(`redis-cli --pipe failed (${code}): ${output.trim().slice(-1000)}`);
  log(`  redis: ${keys} keys written in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

/** redis-server with `redisKeys` keys: from the cached RDB, or generated (and cached). */
async function prepareRedis(): Promise<RedisInfo> {
  const cachedRdb = path.join(cacheDir, 'redis.rdb');
  const marker = path.join(cacheDir, 'redis.ready');
  try {
    const found = JSON.parse(readFileSync(marker, 'utf8')) as RedisInfo;
    if (found.version === GENERATOR_VERSION && found.keys === redisKeys && found.valueBytes === REDIS_VALUE_BYTES && existsSync(cachedRdb) && statSync(cachedRdb).size === found.rdbBytes) {
      await startRedis(cachedRdb);
      const loaded = Number(redisCli('DBSIZE'));
      if (loaded === redisKeys) return found;
      log(`the cached RDB loaded ${loaded} keys, expected ${redisKeys}: generating it again`);
      await stopRedis();
    }
  } catch (error) {
    if (redis) throw error;
    // no cache, or an unreadable marker: generate
  }
  log(`generating the Redis data (${redisKeys} keys × ${REDIS_VALUE_BYTES} bytes; cached in ${cacheDir})`);
  rmSync(marker, { force: true });
  await startRedis(undefined);
  await generateRedis(redisKeys);
  redisCli('SAVE');
  mkdirSync(cacheDir, { recursive: true });
  copyFileSync(path.join(redis!.dir, 'dump.rdb'), `${cachedRdb}.tmp`);
  renameSync(`${cachedRdb}.tmp`, cachedRdb);
  const info: RedisInfo = { version: GENERATOR_VERSION, keys: redisKeys, valueBytes: REDIS_VALUE_BYTES, rdbBytes: statSync(cachedRdb).size };
  writeFileSync(marker, `${JSON.stringify(info, null, 2)}\n`);
  return info;
}

// ------------------------------------------------------------------ the writer in a cgroup

interface Writer {
  cgroup: string;
  child: ChildProcess;
  exited: Promise<void>;
}

let writer: Writer | undefined;

function cgroupFrozen(cgroup: string): boolean {
  return /^frozen 1$/m.test(readFileSync(path.join(cgroup, 'cgroup.events'), 'utf8'));
}

/** As test/consistency.test.ts: loops "insert n into MySQL, SET n in Redis, append n to a file". */
async function startWriter(mount: string): Promise<void> {
  const cgroup = path.join(CGROUP_ROOT, `storage-agent-bench-${randomBytes(4).toString('hex')}`);
  mkdirSync(cgroup);
  const loop = [
    'n=0',
    'while true; do',
    '  n=$((n+1))',
    `  mysql --defaults-extra-file=${defaultsFile()} -e "INSERT INTO ${DB_MAIN}.ticks VALUES ($n)" || exit 1`,
    `  redis-cli -p ${redis!.port} SET n $n > /dev/null || exit 1`,
    `  echo $n >> ${mount}/log`,
    'done',
  ].join('\n');
  // The child joins the cgroup itself before exec, so no write it makes escapes the freezer.
  const child = spawn('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec sh -c "$1"`, 'sh', loop], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  writer = { cgroup, child, exited };
  await sleep(1000);
  if (child.exitCode !== null) throw new Error(`the writer exited at once (${child.exitCode})`);
}

function writerCount(): number {
  return Number(sql(`SELECT COALESCE(MAX(n), 0) FROM ${DB_MAIN}.ticks`));
}

async function stopWriter(): Promise<void> {
  if (!writer) return;
  const { cgroup, child, exited } = writer;
  writer = undefined;
  try {
    writeFileSync(path.join(cgroup, 'cgroup.freeze'), '0');
  } catch {
    // gone already
  }
  try {
    writeFileSync(path.join(cgroup, 'cgroup.kill'), '1'); // every process in it, by the kernel
  } catch {
    child.kill('SIGKILL');
  }
  await Promise.race([exited, sleep(5000)]);
  if (!(await removeCgroup(cgroup))) problems.push(`could not remove the writer's cgroup ${cgroup}`);
}

// ------------------------------------------------------------------ the agent

const configFile = () => path.join(work, 'config.yaml');
const storeDir = () => path.join(work, 'state', 'backups');
const agentEnv = (): NodeJS.ProcessEnv => ({ ...process.env, BENCH_MYSQL_PASSWORD: mariadb.password });

function writeAgentConfig(mount: string, cgroup: string | undefined): void {
  const mysql = (databases: string[]) => ({
    kind: 'mysql',
    host: '127.0.0.1',
    port: mariadb.port,
    user: 'agent',
    password: { env: 'BENCH_MYSQL_PASSWORD' },
    databases,
  });
  const config = {
    stateDir: path.join(work, 'state'),
    compression: { algorithm: 'zstd', level: 1 },
    environments: {
      app: {
        ...(cgroup ? { freeze: { cgroups: [cgroup] } } : {}),
        services: {
          db: mysql([DB_MAIN]),
          cache: { kind: 'redis', host: '127.0.0.1', port: redis?.port ?? 6379 },
          uploads: { kind: 'files', path: mount },
        },
      },
      small: { services: { db: mysql([DB_SMALL]) } },
      'small-copy': { services: { db: mysql([DB_SMALL_COPY]) } },
    },
  };
  writeFileSync(configFile(), toYaml(config));
}

function agent(...argv: string[]): string[] {
  return [...AGENT, '--config', configFile(), '--json', ...argv];
}

interface ElementLike {
  name: string;
  rawBytes: number;
  storedBytes: number;
  durationMs: number;
  readInsideFreeze?: boolean;
  warnings: string[];
  facts: Record<string, string | number | boolean | null>;
}
interface ManifestLike {
  id: string;
  mode: string;
  pauseMs: number | null;
  elements: ElementLike[];
}

function removeBackup(env: string, id: string): void {
  rmSync(path.join(storeDir(), env, id), { recursive: true, force: true });
}

// ------------------------------------------------------------------ results

interface Row {
  key: string;
  name: string;
  /** Raw (uncompressed dump) bytes per run: MB/s = bytes / wall. */
  bytes: number;
  samples: Sample[];
  /** Why runs failed (the agent's error), when they did. */
  failure?: string;
}

const rows: Row[] = [];

function pick(samples: Sample[]): Sample {
  const sorted = [...samples].sort((a, b) => a.wall - b.wall);
  return statistic === 'best' ? sorted[0]! : sorted[Math.floor((sorted.length - 1) / 2)]!;
}

function rowOf(key: string): Row | undefined {
  return rows.find((r) => r.key === key);
}

function speed(row: Row | undefined): number {
  return row && row.samples.length ? mbps(row.bytes, pick(row.samples).wall) : Number.NaN;
}

/** The agent's `error [CODE]: message` line of a failed CLI run, else the error's first line. */
function agentError(error: unknown): string {
  const text = (error as Error).message;
  const line = /^error \[(E_[A-Z_]+)\]: (.*)$/m.exec(text);
  return line ? `${line[1]}: ${line[2]!.slice(0, 400)}` : text.split('\n')[0]!.slice(0, 400);
}

function describeSample(s: Sample, bytes: number): string {
  return `${s.wall.toFixed(2)} s, ${mbps(bytes, s.wall).toFixed(1)} MB/s, CPU ${(s.user + s.sys).toFixed(2)} s, RSS ${(s.maxRssKiB / 1024).toFixed(0)} MiB, mariadbd CPU ${s.serverCpu.toFixed(2)} s`;
}

// ------------------------------------------------------------------ 1. dump throughput

const dumpSizes: { ours?: number; peer?: number; oursRaw?: number; peerRaw?: number } = {};

async function dumpSection(): Promise<void> {
  log(`--- MySQL element throughput: database ${DB_MAIN}`);
  const peerFile = path.join(work, 'peer.sql.zst');
  const ours: Row = { key: 'dump-ours', name: 'mysql dump, ours: backup create --element db --live → fs store', bytes: 0, samples: [] };
  const peer: Row = { key: 'dump-peer', name: 'mysql dump, peer: mysqldump --single-transaction --quick DB | zstd -1 -T0 > FILE', bytes: 0, samples: [] };
  rows.push(ours, peer);
  for (let round = 0; round <= dumpRuns; round++) {
    const label = round === 0 ? 'warm-up' : `run ${round}/${dumpRuns}`;
    const a = await timed(agent('backup', 'create', 'app', '--element', 'db', '--live'), agentEnv());
    const manifest = JSON.parse(a.stdout) as ManifestLike;
    const element = manifest.elements[0]!;
    ours.bytes = element.rawBytes;
    dumpSizes.ours = element.storedBytes;
    dumpSizes.oursRaw = element.rawBytes;
    if (element.warnings.length) problems.push(`mysql element warnings: ${element.warnings.join('; ')}`);
    removeBackup('app', manifest.id);
    log(`ours ${label}: ${describeSample(a, ours.bytes)}`);
    if (round > 0) ours.samples.push(a);
    run('sync', []);

    rmSync(peerFile, { force: true });
    const p = await timed(sh('mysqldump --defaults-extra-file="$1" --single-transaction --quick "$2" | zstd -1 -T0 -q > "$3"', defaultsFile(), DB_MAIN, peerFile));
    if (round === 0) {
      // Untimed: the peer's raw dump size, from its own output.
      peer.bytes = Number(run('bash', ['-c', 'zstd -dc "$1" | wc -c', 'bench', peerFile]).trim());
      dumpSizes.peerRaw = peer.bytes;
    }
    dumpSizes.peer = statSync(peerFile).size;
    log(`peer ${label}: ${describeSample(p, peer.bytes)}`);
    if (round > 0) peer.samples.push(p);
    run('sync', []);
  }
  rmSync(peerFile, { force: true });
  if (dumpSizes.oursRaw && dumpSizes.peerRaw && Math.abs(dumpSizes.oursRaw - dumpSizes.peerRaw) / dumpSizes.peerRaw > 0.02) {
    problems.push(`our dump has ${dumpSizes.oursRaw} raw bytes, the peer's ${dumpSizes.peerRaw}: more than 2 % apart`);
  }
}

// ------------------------------------------------------------------ 2. restore throughput

async function restoreSection(): Promise<void> {
  log(`--- MySQL restore: database ${DB_SMALL} into a fresh database`);
  const peerFile = path.join(work, 'small.sql.zst');
  // Untimed: the backup we restore, and the peer's dump of the same database.
  const backup = JSON.parse((await timed(agent('backup', 'create', 'small', '--live'), agentEnv())).stdout) as ManifestLike;
  const element = backup.elements[0]!;
  run('bash', sh('mysqldump --defaults-extra-file="$1" --single-transaction --quick "$2" | zstd -1 -T0 -q > "$3"', defaultsFile(), DB_SMALL, peerFile).slice(1));
  const peerRaw = Number(run('bash', ['-c', 'zstd -dc "$1" | wc -c', 'bench', peerFile]).trim());
  const ours: Row = { key: 'restore-ours', name: `mysql restore, ours: backup restore --target ENV2 (staging + swap)`, bytes: element.rawBytes, samples: [] };
  const peer: Row = { key: 'restore-peer', name: 'mysql restore, peer: zstd -dc FILE | mysql DB (fresh DB)', bytes: peerRaw, samples: [] };
  rows.push(ours, peer);
  const source = checksums(DB_SMALL);
  for (let round = 1; round <= restoreRuns; round++) {
    sql(`DROP DATABASE IF EXISTS ${DB_SMALL_COPY}`);
    run('sync', []);
    try {
      const a = await timed(agent('backup', 'restore', 'small', backup.id, '--target', 'small-copy', '--yes'), agentEnv());
      log(`ours run ${round}/${restoreRuns}: ${describeSample(a, ours.bytes)}`);
      ours.samples.push(a);
      if (ours.samples.length === 1) {
        const restored = checksums(DB_SMALL_COPY);
        if (restored !== source) problems.push(`our restore of ${DB_SMALL} differs: CHECKSUM TABLE ${restored}, expected ${source}`);
      }
    } catch (error) {
      // The agent's own error (a failed restore changes nothing): reported, the peer still runs.
      const message = agentError(error);
      log(`ours run ${round}/${restoreRuns} FAILED: ${message}`);
      if (!ours.failure) problems.push(`backup restore of ${DB_SMALL} (${(element.rawBytes / MIB).toFixed(0)} MiB dump) failed: ${message}`);
      ours.failure = message;
    }

    sql(`DROP DATABASE IF EXISTS ${DB_SMALL_PEER}; CREATE DATABASE ${DB_SMALL_PEER}`);
    run('sync', []);
    const p = await timed(sh('zstd -dc "$1" | mysql --defaults-extra-file="$2" "$3"', peerFile, defaultsFile(), DB_SMALL_PEER));
    log(`peer run ${round}/${restoreRuns}: ${describeSample(p, peer.bytes)}`);
    peer.samples.push(p);
    if (round === 1) {
      const restored = checksums(DB_SMALL_PEER);
      if (restored !== source) problems.push(`the peer's restore of ${DB_SMALL} differs: CHECKSUM TABLE ${restored}, expected ${source}`);
    }
  }
  sql(`DROP DATABASE IF EXISTS ${DB_SMALL_COPY}; DROP DATABASE IF EXISTS ${DB_SMALL_PEER}`);
  removeBackup('small', backup.id);
  rmSync(peerFile, { force: true });
}

// ------------------------------------------------------------------ 3. pause window

/** One consistent backup's pause and its parts (ms; null: not reported). */
interface PauseRun {
  id: string;
  pauseMs: number;
  /** The cgroup freeze ('writers frozen' freezeMs) and the thaw ('writers thawed' thawMs). */
  freezeMs: number | null;
  thawMs: number | null;
  /** FLUSH TABLES WITH READ LOCK getting the lock, then the lock held until UNLOCK (mysqldump start, its snapshot). */
  ftwrlWaitMs: number | null;
  ftwrlMs: number | null;
  /** CLIENT PAUSE … UNPAUSE, and the fork inside it (latest_fork_usec). */
  redisPauseMs: number | null;
  forkMs: number | null;
  /** A files element read inside the freeze (no snapshot of its mount); null when snapshotted. */
  filesMs: number | null;
  /** The pause minus the parts above: what remains inside the freeze (checks, round trips, the agent's own work). */
  overheadMs: number;
  sample: Sample;
  rawBytes: number;
  storedBytes: number;
  elements: { name: string; durationMs: number; rawBytes: number; storedBytes: number }[];
}

const pauses: PauseRun[] = [];
let writerProgress: { before: number; after: number; seconds: number } | undefined;

/** The pino lines of one CLI run (--log-level info), by message. */
function logLine(stderr: string, message: string): Record<string, unknown> | undefined {
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const entry = JSON.parse(line) as Record<string, unknown>;
      if (entry.msg === message) return entry;
    } catch {
      // not a log line
    }
  }
  return undefined;
}

/** An element's readMs in the agent's 'the pause includes reading elements…' line. */
function readMsOf(line: Record<string, unknown> | undefined, element: string): number | undefined {
  const value = (line?.readMs as Record<string, unknown> | undefined)?.[element];
  return typeof value === 'number' ? value : undefined;
}

async function pauseSection(mount: string): Promise<void> {
  log(`--- pause window: consistent backups of mysql (${DB_MAIN}) + redis + files with a frozen writer`);
  const row: Row = { key: 'pause', name: 'consistent backup (mysql + redis + files, frozen writer) → fs store', bytes: 0, samples: [] };
  rows.push(row);
  const before = writerCount();
  const startedAt = performance.now();
  for (let i = 1; i <= pauseRuns; i++) {
    await sleep(100 + Math.random() * 400); // a random moment of the writer's loop
    const s = await timed(agent('--log-level', 'info', 'backup', 'create', 'app'), agentEnv());
    const manifest = JSON.parse(s.stdout) as ManifestLike;
    const by = (name: string) => manifest.elements.find((e) => e.name === name);
    const logged = (message: string, field: string) => {
      const value = logLine(s.stderr, message)?.[field];
      return typeof value === 'number' ? value : null;
    };
    const fact = (element: string, name: string) => {
      const value = by(element)?.facts[name];
      return typeof value === 'number' ? value : null;
    };
    const rawBytes = manifest.elements.reduce((sum, e) => sum + e.rawBytes, 0);
    const uploads = by('uploads');
    const forkUsec = fact('cache', 'forkUsec');
    const parts = {
      freezeMs: logged('writers frozen', 'freezeMs'),
      thawMs: logged('writers thawed', 'thawMs'),
      ftwrlWaitMs: fact('db', 'ftwrlWaitMs'),
      ftwrlMs: fact('db', 'ftwrlMs'),
      redisPauseMs: fact('cache', 'pauseMs'),
      // Its share of the pause is the read; its durationMs also counts storing its end, after the thaw.
      filesMs: uploads?.readInsideFreeze ? readMsOf(logLine(s.stderr, 'the pause includes reading elements that could not be snapshotted'), 'uploads') ?? uploads.durationMs : null,
    };
    const pauseMs = manifest.pauseMs ?? Number.NaN;
    const result: PauseRun = {
      id: manifest.id,
      pauseMs,
      ...parts,
      forkMs: forkUsec === null ? null : forkUsec / 1000,
      overheadMs: pauseMs - Object.values(parts).reduce<number>((sum, v) => sum + (v ?? 0), 0),
      sample: s,
      rawBytes,
      storedBytes: manifest.elements.reduce((sum, e) => sum + e.storedBytes, 0),
      elements: manifest.elements.map((e) => ({ name: e.name, durationMs: e.durationMs, rawBytes: e.rawBytes, storedBytes: e.storedBytes })),
    };
    pauses.push(result);
    row.bytes = rawBytes;
    row.samples.push(s);
    if (manifest.mode !== 'consistent' || manifest.pauseMs === null) problems.push(`backup ${manifest.id}: mode ${manifest.mode}, pauseMs ${manifest.pauseMs}`);
    for (const e of manifest.elements) if (e.warnings.length) problems.push(`backup ${manifest.id} ${e.name}: ${e.warnings.join('; ')}`);
    if (cgroupFrozen(writer!.cgroup)) problems.push(`the writer's cgroup is still frozen after backup ${manifest.id}`);
    log(
      `consistent ${i}/${pauseRuns}: pause ${result.pauseMs} ms (freeze ${result.freezeMs} ms, FTWRL ${result.ftwrlWaitMs} + held ${result.ftwrlMs} ms, Redis paused ${result.redisPauseMs} ms ` +
        `(fork ${result.forkMs} ms), files ${result.filesMs} ms, thaw ${result.thawMs} ms, overhead ${result.overheadMs.toFixed(1)} ms); backup ${s.wall.toFixed(1)} s, ${(rawBytes / MIB).toFixed(0)} → ${(result.storedBytes / MIB).toFixed(0)} MiB, CPU ${(s.user + s.sys).toFixed(1)} s, RSS ${(s.maxRssKiB / 1024).toFixed(0)} MiB`,
    );
    removeBackup('app', manifest.id);
    run('sync', []);
  }
  await sleep(300);
  const after = writerCount();
  writerProgress = { before, after, seconds: (performance.now() - startedAt) / 1000 };
  if (after <= before) problems.push(`the writer made no progress during the consistent backups (${before} → ${after})`);
}

// ------------------------------------------------------------------ report

function table(headers: string[], body: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(headers), `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}

interface Context {
  mysql?: MysqlInfo;
  redis?: RedisInfo;
  mainBytes?: number;
  smallBytes?: number;
  redisMemory?: number;
}

function report(started: number, load: number[], ctx: Context): string {
  const out: string[] = [];
  const ratioOf = (key: string): string => {
    const peerKey = key.replace(/-ours$/, '-peer');
    if (!key.endsWith('-ours') || !rowOf(peerKey)) return '';
    const ratio = speed(rowOf(key)) / speed(rowOf(peerKey));
    return Number.isFinite(ratio) ? ratio.toFixed(2) : '';
  };
  const body = rows
    .filter((r) => r.samples.length || r.failure)
    .map((r) => {
      if (!r.samples.length) return [r.name, 'failed', '', '', '', '', r.failure!.split(':')[0]!, '0'];
      const m = pick(r.samples);
      const speeds = r.samples.map((s) => mbps(r.bytes, s.wall));
      return [
        r.name,
        mbps(r.bytes, m.wall).toFixed(1),
        (m.user + m.sys).toFixed(2),
        (Math.max(...r.samples.map((s) => s.maxRssKiB)) / 1024).toFixed(0),
        m.serverCpu.toFixed(2),
        ratioOf(r.key),
        `${Math.min(...speeds).toFixed(1)}–${Math.max(...speeds).toFixed(1)}`,
        String(r.samples.length),
      ];
    });
  out.push(
    `${statistic === 'best' ? 'Best' : 'Median'} run of each (dump: after one warm-up); MB/s = raw (uncompressed) dump bytes / wall s — the manifest's rawBytes for ours, \`zstd -dc FILE | wc -c\` for the peer.`,
  );
  out.push('CPU s = user+sys of the whole client process tree; peak RSS = its largest process, highest of all runs; mariadbd CPU s = the server\'s, that run; ratio = ours / peer MB/s.');
  out.push('');
  out.push(table(['name', 'MB/s', 'CPU s', 'peak RSS MiB', 'mariadbd CPU s', 'ratio', 'MB/s range', 'runs'], body));
  out.push('');

  if (pauses.length) {
    const values = pauses.map((p) => p.pauseMs);
    const p99 = percentile(values, 99);
    out.push(
      `Pause window over ${pauses.length} consistent backups (writer frozen in a cgroup v2; MySQL ${((ctx.mainBytes ?? 0) / MIB).toFixed(0)} MiB InnoDB, Redis ${ctx.redis?.keys ?? '?'} keys, ${((ctx.redisMemory ?? 0) / MIB).toFixed(0)} MiB used_memory): ` +
        `median ${median(values).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${Math.max(...values).toFixed(1)} ms — goal ≤ ${PAUSE_GOAL_MS} ms at p99: ${p99 <= PAUSE_GOAL_MS ? 'met' : 'MISSED'}.`,
    );
    out.push('');
    const f = (v: number | null) => (v === null || !Number.isFinite(v) ? '-' : v.toFixed(1));
    /** The pause's parts, the columns of both tables. */
    const parts: [string, (p: PauseRun) => number | null][] = [
      ['pauseMs', (p) => p.pauseMs],
      ['cgroup freeze', (p) => p.freezeMs],
      ['FTWRL wait', (p) => p.ftwrlWaitMs],
      ['FTWRL held', (p) => p.ftwrlMs],
      ['redis pause', (p) => p.redisPauseMs],
      ['(of it: fork)', (p) => p.forkMs],
      ['files in freeze', (p) => p.filesMs],
      ['thaw', (p) => p.thawMs],
      ['fixed overhead', (p) => p.overheadMs],
    ];
    const statOf = (read: (p: PauseRun) => number | null, stat: (v: number[]) => number) => {
      const known = pauses.map(read).filter((v): v is number => v !== null && Number.isFinite(v));
      return known.length ? stat(known) : null;
    };
    out.push(
      table(
        ['ms', ...parts.map(([name]) => name)],
        [
          ['median', ...parts.map(([, read]) => f(statOf(read, median)))],
          ['p99', ...parts.map(([, read]) => f(statOf(read, (v) => percentile(v, 99))))],
        ],
      ),
    );
    out.push('');
    out.push(
      table(
        ['backup', ...parts.map(([name]) => name), 'backup s', 'raw MiB', 'stored MiB', 'CPU s', 'peak RSS MiB', 'db / cache s'],
        pauses.map((p, i) => {
          const el = (name: string) => p.elements.find((e) => e.name === name);
          return [
            String(i + 1),
            ...parts.map(([, read]) => f(read(p))),
            p.sample.wall.toFixed(1),
            (p.rawBytes / MIB).toFixed(0),
            (p.storedBytes / MIB).toFixed(0),
            (p.sample.user + p.sample.sys).toFixed(1),
            (p.sample.maxRssKiB / 1024).toFixed(0),
            `${((el('db')?.durationMs ?? 0) / 1000).toFixed(1)} / ${((el('cache')?.durationMs ?? 0) / 1000).toFixed(1)}`,
          ];
        }),
      ),
    );
    out.push('');
    out.push(
      'All inside the freeze, from the first cgroup freeze to the end of the thaw. "fixed overhead" = pauseMs minus the other parts (the fork is inside the Redis pause): ' +
        'the long-query check before FTWRL, SHOW MASTER STATUS is in "FTWRL held" (with the mysqldump start and its snapshot), Redis INFO persistence and the log offset before its pause, ' +
        'the agent between steps. Connecting, the version, database and long-query checks, INFO/CONFIG GET and the mysqldump --version probe run before the freeze (docs/freeze.md).',
    );
    if (writerProgress) {
      out.push(
        `The writer went from ${writerProgress.before} to ${writerProgress.after} iterations over the ${writerProgress.seconds.toFixed(0)} s of backups (${((writerProgress.after - writerProgress.before) / writerProgress.seconds).toFixed(0)}/s) and was never left frozen.`,
      );
    }
    out.push('');
  }

  const sizes: string[] = [];
  if (ctx.mysql) {
    const t = ctx.mysql.tables;
    sizes.push(
      `MySQL ${DB_MAIN}: ${t[DB_MAIN]?.orders} orders + ${t[DB_MAIN]?.customers} customers, ${((ctx.mainBytes ?? 0) / MIB).toFixed(0)} MiB InnoDB (data+index)` +
        (dumpSizes.peerRaw ? `, dump ${(dumpSizes.peerRaw / MIB).toFixed(0)} MiB, zstd -1 ratio ${(dumpSizes.peerRaw / (dumpSizes.peer ?? 1)).toFixed(2)} (peer) / ${((dumpSizes.oursRaw ?? 0) / (dumpSizes.ours ?? 1)).toFixed(2)} (ours)` : ''),
    );
    const restoreRow = rowOf('restore-peer');
    sizes.push(
      `MySQL ${DB_SMALL} (restore): ${t[DB_SMALL]?.orders} orders + ${t[DB_SMALL]?.customers} customers, ${((ctx.smallBytes ?? 0) / MIB).toFixed(0)} MiB InnoDB` +
        (restoreRow ? `, dump ${(restoreRow.bytes / MIB).toFixed(0)} MiB` : ''),
    );
  }
  if (ctx.redis) sizes.push(`Redis: ${ctx.redis.keys} keys × ${ctx.redis.valueBytes} B values, RDB ${(ctx.redis.rdbBytes / MIB).toFixed(0)} MiB, used_memory ${((ctx.redisMemory ?? 0) / MIB).toFixed(0)} MiB`);
  out.push(`Data: ${sizes.join('; ')}.`);
  out.push(`Servers: ${ctx.mysql?.mariadb ?? 'MariaDB ?'} (scripts/mariadb.sh: 256 MiB buffer pool, binlog ROW); ${run('redis-server', ['--version']).trim().split(' ').slice(0, 3).join(' ')}.`);
  out.push(...closingLines(load, started, problems));
  return out.join('\n');
}

// ------------------------------------------------------------------ clean-up, main

let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await stopChild(current);
    await stopWriter().catch((error: unknown) => log(`stopping the writer: ${(error as Error).message}`));
    await stopRedis().catch((error: unknown) => log(`stopping redis: ${(error as Error).message}`));
    mariadb.stopIfStarted(log);
    rmSync(work, { recursive: true, force: true });
  })();
  return cleaning;
}

// Only when run as the benchmark: bench/mysql-dedup.ts imports the data generator from here.
if (import.meta.main) {
  cleanUpOnSignals(cleanup, log);
  // Last resort (an exception past main): nothing of ours keeps running.
  process.once('exit', () => {
    if (writer) {
      try {
        writeFileSync(path.join(writer.cgroup, 'cgroup.kill'), '1');
      } catch {
        writer.child.kill('SIGKILL');
      }
    }
    redis?.child.kill('SIGKILL');
  });
}

async function main(): Promise<void> {
  const started = performance.now();
  const load = loadavg();
  // mariadb.sh installs the MariaDB packages itself; the rest comes from scripts/bench.sh or test.sh.
  for (const tool of ['redis-server', 'redis-cli', 'zstd']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`${tool} is not installed (apt-get install redis-server zstd)`);
  }
  if (!existsSync('/usr/bin/time')) throw new Error('GNU time is not installed (apt-get install time)');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  log(`BENCH_DIR=${benchDir} mysql=${mysqlTargetBytes / MIB} MiB restore=${restoreTargetBytes / MIB} MiB redis=${redisKeys} keys runs=${dumpRuns}/${restoreRuns}/${pauseRuns} sections=${[...sections].join(',')}`);
  const ctx: Context = {};
  let text = '';
  try {
    const needRedis = sections.has('pause');
    // Redis loads its RDB (one core) while MariaDB starts.
    const redisReady = needRedis ? prepareRedis() : undefined;
    redisReady?.catch(() => {});
    ctx.mysql = await prepareMariadb();
    writeFileSync(defaultsFile(), `[client]\nhost=127.0.0.1\nport=${mariadb.port}\nuser=agent\npassword=${mariadb.password}\n`, { mode: 0o600 });
    ctx.redis = await redisReady;
    if (redis) ctx.redisMemory = Number(/used_memory:(\d+)/.exec(redisCli('INFO', 'memory'))?.[1] ?? 0);
    ctx.mainBytes = databaseBytes(DB_MAIN);
    ctx.smallBytes = databaseBytes(DB_SMALL);
    rootSql(`TRUNCATE TABLE ${DB_MAIN}.ticks`);
    const mount = path.join(work, 'uploads');
    mkdirSync(mount, { recursive: true });
    writeAgentConfig(mount, undefined);
    // A section that fails is reported; the others still run.
    const section = async (name: string, body: () => Promise<void>) => {
      if (!sections.has(name)) return;
      try {
        await body();
      } catch (error) {
        problems.push(`the ${name} section stopped: ${(error as Error).message.split('\n').slice(0, 6).join(' | ')}`);
        process.exitCode = 1;
      }
    };
    await section('dump', dumpSection);
    await section('restore', restoreSection);
    await section('pause', async () => {
      await startWriter(mount);
      writeAgentConfig(mount, writer!.cgroup);
      await pauseSection(mount);
      await stopWriter();
    });
  } catch (error) {
    problems.push(`the run stopped: ${(error as Error).message.split('\n').slice(0, 6).join(' | ')}`);
    process.exitCode = 1;
  } finally {
    text = report(started, load, ctx);
    await cleanup();
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    mkdirSync(benchDir, { recursive: true });
    writeFileSync(path.join(benchDir, `db-results-${stamp}.md`), `${text}\n`);
    writeFileSync(
      path.join(benchDir, `db-results-${stamp}.json`),
      `${JSON.stringify({ statistic, rows: rows.map((r) => ({ ...r, samples: r.samples.map(({ stdout: _o, stderr: _e, ...s }) => s) })), pauses: pauses.map(({ sample, ...p }) => ({ ...p, wall: sample.wall })), dumpSizes, ctx, problems }, null, 2)}\n`,
    );
    console.log(text);
    log(`results written to ${path.join(benchDir, `db-results-${stamp}.{md,json}`)}`);
  }
}

if (import.meta.main) await main();
