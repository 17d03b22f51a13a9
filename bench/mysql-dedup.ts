/**
 * MySQL dumps in the repository (issue #13): how much of a database's second dump, taken after
 * 1 % of its rows were updated, is new to the repository, which mysqldump options keep that low,
 * and what they cost in dump and restore time. Goal: new bytes ≤ 10 % of a full dump (1 GiB).
 *
 *   node_modules/.bin/node bench/mysql-dedup.ts [--only agent,variants]
 *
 * Both sections see the same two states of one database: as generated, then after an UPDATE of
 * 1 % of the rows of each table (orders and customers; seeded, spread uniformly over the table).
 *
 * agent:    the real CLI (src/agent/main.ts) on an environment with a mysql service and
 *           `repository: true` on an fs store: backup 1 (full) before the update, backup 2 after
 *           it, then a restore of backup 2 into a second environment's database (`backup restore
 *           ENV ID --target ENV2 --yes --no-safety-backup`), checked with CHECKSUM TABLE.
 * variants: mysqldump run directly, before and after the update, with the agent's options
 *           (DUMP_OPTIONS of src/snapshot/mysql/dump.ts) plus each variant
 *           (--skip-extended-insert, --net-buffer-length=16384 / 65536, --order-by-primary). Both
 *           dumps of a variant are written into a fresh repository (openRepository on an fs store,
 *           as a backup does) once per chunker size of BENCH_DEDUP_CHUNKERS: the agent's
 *           512K/1M/8M and smaller ones, since the chunk size decides what a scattered update
 *           costs. The second dump of the default and of the variant that dedups best is then
 *           loaded with `mariadb DB < FILE` into a scratch database: the restore cost.
 *
 * It starts its own MariaDB (scripts/mariadb.sh, MARIADB_DIR=/tmp/sa-dedup-mariadb, port 13451)
 * and stops it at the end, on failure and on Ctrl-C/SIGTERM. The database (bench/databases.ts'
 * generator and schema: orders, customers) is generated once per size and cached as a datadir
 * in BENCH_DIR/mysql-dedup-cache (copied back before each run, since the run updates it).
 * Scratch (the stores and the dump files of every variant before and after: ~11× the dump size
 * at most) is BENCH_DIR/mysql-dedup, removed at the end unless BENCH_KEEP=1.
 *
 * Every command runs under GNU time (bench/timing.ts): wall s, CPU s of the client process tree,
 * peak RSS; mariadbd's CPU during the command from /proc. Stored = what the store directory grew
 * by (`du -sb`). One run of each: the bytes hardly vary between runs (only the repository keys,
 * hence the cut points, are new each time); the times are single samples on a shared machine.
 *
 * Environment: BENCH_DIR (default /var/tmp/storage-agent-bench), BENCH_DEDUP_MB (dump size of the
 * database, default 1024), BENCH_DEDUP_CHUNKERS (mean chunk sizes, each cut min = avg / 2,
 * max = 8 × avg as the agent's; default 1m,64k,8k,2k), BENCH_KEEP=1 (keep the scratch).
 * Results: printed, and saved as BENCH_DIR/results-mysql-dedup-DATE.{txt,json}.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, createReadStream, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { stringify as toYaml } from 'yaml';
import { DUMP_OPTIONS } from '../src/snapshot/mysql/dump.ts';
import { FsObjectStore } from '../src/transport/stores/fs-store.ts';
import { DEFAULT_CHUNKER, type ChunkerParams } from '../src/transport/repository/chunker.ts';
import { openRepository } from '../src/transport/repository/repository.ts';
import type { PlatformKeys } from '../src/transport/repository/repository-keys.ts';
import { GENERATOR_VERSION, generateDatabase, Random, STATUSES, word } from './databases.ts';
import { BenchMariadb } from './mariadb.ts';
import { agentCommand, cleanUpOnSignals, closingLines, integerEnv, option, processCpuSeconds, runChecked, stopChild, timed as timedRun } from './timing.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
/** The agent's CLI, as installed (its Node flags). */
const AGENT = agentCommand(ROOT);
/** As bench/databases.ts: scripts/bench.sh runs a copy of src/ and bench/ only, then the checkout's (the cwd's) script. */
// A server of its own: the test suite's is on 13306, bench/databases.ts' on 13326.
const mariadb = new BenchMariadb('/tmp/sa-dedup-mariadb', 13451);
const MARIADB_SOCKET = mariadb.socket;
const MIB = 1024 ** 2;
const DB = 'bench';
const DB_RESTORE = 'bench_restore';
const DB_LOAD = 'bench_load';
const ENV = 'bench-dedup';
const ENV_RESTORE = 'bench-dedup-restore';
/** bench/databases.ts' seed for its main database: the same data at the same size. */
const GENERATOR_SEED = 0x5eed0001;
const UPDATE_SEED = 0x5eed0013;
const UPDATED_SHARE = 0.01;
const GOAL = 0.1;

// ------------------------------------------------------------------ options

/** `2k`, `64k`, `1m`: a mean chunk size (a power of two), cut as the agent's default is (min avg/2, max 8 × avg). */
function chunkerOf(text: string): ChunkerParams {
  const match = /^(\d+)([km])$/i.exec(text.trim());
  const avg = match ? Number(match[1]) * (match[2]!.toLowerCase() === 'k' ? 1024 : MIB) : Number.NaN;
  if (!Number.isInteger(Math.log2(avg)) || avg < 256) throw new Error(`BENCH_DEDUP_CHUNKERS: ${text} is not a power of two ≥ 256 with k or m (2k, 64k, 1m)`);
  return { minBytes: avg / 2, avgBytes: avg, maxBytes: avg * 8 };
}

const SECTIONS = ['agent', 'variants'] as const;
const only = new Set((option('--only') ?? SECTIONS.join(',')).split(',').map((s) => s.trim()));
for (const s of only) if (!(SECTIONS as readonly string[]).includes(s)) throw new Error(`--only ${s}: sections are ${SECTIONS.join(', ')}`);
const benchDir = path.resolve(process.env.BENCH_DIR || '/var/tmp/storage-agent-bench');
const work = path.join(benchDir, 'mysql-dedup');
const cacheDir = path.join(benchDir, 'mysql-dedup-cache');
const sizeMiB = integerEnv('BENCH_DEDUP_MB', 1024, 8);
const chunkers = (process.env.BENCH_DEDUP_CHUNKERS || '1m,64k,8k,2k').split(',').map(chunkerOf);
const keep = process.env.BENCH_KEEP === '1';

const paths = {
  config: path.join(work, 'config.yaml'),
  state: path.join(work, 'state'),
  store: path.join(work, 'store'),
  defaults: path.join(work, 'my.cnf'),
  dumps: path.join(work, 'dumps'),
  repositories: path.join(work, 'repositories'),
  timeFile: path.join(work, 'time.out'),
};

/** mysqldump's options beside the agent's; the agent adds `--databases DB` (CREATE DATABASE and USE at the top), left out here so that a dump loads into any database. */
const VARIANTS = [
  { key: 'default', name: 'default (DUMP_OPTIONS)', options: [] },
  { key: 'skip-extended-insert', name: '--skip-extended-insert', options: ['--skip-extended-insert'] },
  { key: 'net-16k', name: '--net-buffer-length=16384', options: ['--net-buffer-length=16384'] },
  { key: 'net-64k', name: '--net-buffer-length=65536', options: ['--net-buffer-length=65536'] },
  { key: 'order-by-primary', name: '--order-by-primary', options: ['--order-by-primary'] },
] as const;
type Variant = (typeof VARIANTS)[number];

// ------------------------------------------------------------------ processes, measuring

const problems: string[] = [];

function log(line: string): void {
  process.stderr.write(`bench-dedup: ${line}\n`);
}

const run = runChecked;

function sh(script: string, ...params: string[]): string[] {
  return ['bash', '-c', `set -o pipefail; ${script}`, 'bench', ...params];
}

/** Apparent bytes under a path (du -sb), 0 if absent. */
function du(dir: string): number {
  return existsSync(dir) ? Number(run('du', ['-sb', dir]).split('\t')[0]) : 0;
}

/** Writes dirty pages back (untimed), so that one command's writes do not slow the next. */
function settle(): void {
  run('sync', []);
}

interface Sample {
  wall: number;
  /** user + sys of the whole client process tree. */
  cpu: number;
  maxRssKiB: number;
  /** CPU seconds of mariadbd during the command. */
  serverCpu: number;
  /** 1-minute load average just before it. */
  load: number;
}

let current: ChildProcess | undefined;

/** Runs argv under GNU time: its figures, mariadbd's CPU meanwhile, and its stdout. */
async function timed(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ sample: Sample; stdout: string }> {
  const server = mariadb.pid();
  const serverBefore = processCpuSeconds(server);
  const load = loadavg()[0]!;
  try {
    const t = await timedRun(argv, { cwd: ROOT, timeFile: paths.timeFile, env, onSpawn: (child) => (current = child) });
    settle();
    return { sample: { wall: t.wall, cpu: t.user + t.sys, maxRssKiB: t.maxRssKiB, serverCpu: processCpuSeconds(server) - serverBefore, load }, stdout: t.stdout };
  } finally {
    current = undefined;
  }
}

function describe(s: Sample): string {
  return `${s.wall.toFixed(2)} s, CPU ${s.cpu.toFixed(2)} s, RSS ${(s.maxRssKiB / 1024).toFixed(0)} MiB, mariadbd CPU ${s.serverCpu.toFixed(2)} s, load ${s.load.toFixed(2)}`;
}

function mib(bytes: number): string {
  const v = bytes / MIB;
  return Math.abs(v) < 10 ? v.toFixed(2) : v.toFixed(0);
}

function percent(share: number): string {
  return `${(share * 100).toFixed(share < 0.1 ? 2 : 1)} %`;
}

// ------------------------------------------------------------------ MariaDB

/** root over the socket (unix_socket authentication: we are root). */
function rootSql(query: string): string {
  return run('mariadb', ['--no-defaults', `--socket=${MARIADB_SOCKET}`, '-uroot', '--batch', '--skip-column-names', '-e', query]);
}

function rootScript(database: string, script: string): string {
  return run('mariadb', ['--no-defaults', `--socket=${MARIADB_SOCKET}`, '-uroot', '--batch', '--skip-column-names', database], { input: script });
}

interface DatabaseInfo {
  generator: number;
  sizeMiB: number;
  mariadb: string;
  orders: number;
  customers: number;
}

/** MariaDB on its own port with database `bench`: from the cached datadir, or generated (and cached). */
async function prepareMariadb(): Promise<DatabaseInfo> {
  const cachedData = path.join(cacheDir, `mariadb-${sizeMiB}m`);
  const marker = `${cachedData}.ready`;
  const version = run('mariadbd', ['--version']).trim();
  let info: DatabaseInfo | undefined;
  try {
    const found = JSON.parse(readFileSync(marker, 'utf8')) as DatabaseInfo;
    if (found.generator === GENERATOR_VERSION && found.sizeMiB === sizeMiB && found.mariadb === version && existsSync(cachedData)) info = found;
  } catch {
    // no cache, or an unreadable marker: generate
  }
  mariadb.stop(); // a server left by an interrupted run
  if (info) {
    mariadb.startOn(cachedData);
    log(`MariaDB started on the cached datadir ${cachedData}`);
    return info;
  }
  log(`generating the database (${sizeMiB} MiB of dump; cached in ${cacheDir})`);
  rmSync(marker, { force: true });
  rmSync(cachedData, { recursive: true, force: true });
  mariadb.start();
  const counts = await generateDatabase(DB, sizeMiB * MIB, GENERATOR_SEED, { socket: MARIADB_SOCKET, scratch: path.join(work, 'gen') });
  await mariadb.saveDatadir(cachedData);
  info = { generator: GENERATOR_VERSION, sizeMiB, mariadb: version, ...counts };
  writeFileSync(marker, `${JSON.stringify(info, null, 2)}\n`);
  return info;
}

/** As the agent user over TCP, with the options file every client command here uses. */
function sql(query: string): string {
  return run('mariadb', [`--defaults-file=${paths.defaults}`, '--batch', '--skip-column-names', '-e', query]).trim();
}

function checksums(database: string): string {
  return sql(`CHECKSUM TABLE ${database}.orders, ${database}.customers`)
    .split('\n')
    .map((line) => line.replace(/^[^.]+\./, ''))
    .join(', ');
}

// ------------------------------------------------------------------ the update

interface UpdateInfo {
  table: string;
  rows: number;
  updated: number;
  /** ROW_COUNT() of the UPDATE: rows whose values changed. */
  changed: number;
}

/**
 * Updates UPDATED_SHARE of the rows of each table, drawn uniformly (seeded): an order gets a new
 * status and amount, a customer a new city and credit (often a different length: the dump's
 * lines shift). The new values go into a temporary table first, then one UPDATE … JOIN.
 */
function updateRows(): UpdateInfo[] {
  const r = new Random(UPDATE_SEED);
  const cents = () => String(r.below(100)).padStart(2, '0');
  const tables = [
    { table: 'orders', columns: 'status VARCHAR(16) NOT NULL, amount DECIMAL(10,2) NOT NULL', set: 't.status = u.status, t.amount = u.amount', values: () => `'${STATUSES[r.below(STATUSES.length)]}',${r.below(10000)}.${cents()}` },
    { table: 'customers', columns: 'city VARCHAR(48) NOT NULL, credit DECIMAL(12,2) NOT NULL', set: 't.city = u.city, t.credit = u.credit', values: () => `'${word(r)}',${r.below(100000)}.${cents()}` },
  ];
  return tables.map(({ table, columns, set, values }) => {
    const [rows, maxId] = rootSql(`SELECT COUNT(*), MAX(id) FROM ${DB}.${table}`).trim().split('\t').map(Number) as [number, number];
    // The generator numbers rows 1..n: an id drawn from that range is a row.
    if (rows !== maxId) throw new Error(`${DB}.${table}: ${rows} rows but MAX(id) ${maxId}; expected ids 1..n`);
    const ids = new Set<number>();
    const wanted = Math.round(rows * UPDATED_SHARE);
    while (ids.size < wanted) ids.add(1 + r.below(rows));
    const sorted = [...ids].sort((a, b) => a - b);
    const statements = [`CREATE TEMPORARY TABLE u (id INT UNSIGNED NOT NULL PRIMARY KEY, ${columns});`];
    for (let i = 0; i < sorted.length; i += 5000) statements.push(`INSERT INTO u VALUES ${sorted.slice(i, i + 5000).map((id) => `(${id},${values()})`).join(',')};`);
    statements.push(`UPDATE ${table} AS t JOIN u USING (id) SET ${set};`, 'SELECT ROW_COUNT();');
    const changed = Number(rootScript(DB, statements.join('\n')).trim());
    return { table, rows, updated: wanted, changed };
  });
}

// ------------------------------------------------------------------ the agent (section agent)

const agentEnv = (): NodeJS.ProcessEnv => ({ ...process.env, BENCH_MYSQL_PASSWORD: mariadb.password });

function writeConfig(): void {
  const mysql = (database: string) => ({ kind: 'mysql', host: '127.0.0.1', port: mariadb.port, user: 'agent', password: { env: 'BENCH_MYSQL_PASSWORD' }, databases: [database] });
  // No freeze section: the default (consistent) mode pauses nothing but takes FTWRL for the snapshot.
  const config = {
    stateDir: paths.state,
    defaultStore: 'dedup',
    compression: { algorithm: 'zstd', level: 1 },
    stores: { dedup: { type: 'fs', path: paths.store } },
    environments: {
      [ENV]: { repository: true, services: { db: mysql(DB) } },
      [ENV_RESTORE]: { services: { db: mysql(DB_RESTORE) } },
    },
  };
  writeFileSync(paths.config, toYaml(config));
}

function agent(...argv: string[]): string[] {
  return [...AGENT, '--config', paths.config, '--json', ...argv];
}

interface ElementLike {
  name: string;
  rawBytes: number;
  storedBytes: number;
  repository?: { chunks: number; newChunks: number };
  warnings: string[];
}

interface AgentBackup {
  id: string;
  rawBytes: number;
  /** The manifest's storedBytes: sealed bytes of the new chunks. */
  newBytes: number;
  /** What the store grew by. */
  stored: number;
  chunks: number;
  newChunks: number;
  sample: Sample;
}

async function agentBackup(label: string): Promise<AgentBackup> {
  const before = du(paths.store);
  const { sample, stdout } = await timed(agent('backup', 'create', ENV), agentEnv());
  const manifest = JSON.parse(stdout) as { id: string; elements: ElementLike[] };
  const e = manifest.elements.find((x) => x.name === 'db');
  if (!e?.repository) throw new Error(`${label}: the manifest has no repository element db: ${stdout.slice(0, 300)}`);
  if (e.warnings.length) problems.push(`${label} (${manifest.id}): ${e.warnings.join('; ')}`);
  const backup: AgentBackup = { id: manifest.id, rawBytes: e.rawBytes, newBytes: e.storedBytes, stored: du(paths.store) - before, chunks: e.repository.chunks, newChunks: e.repository.newChunks, sample };
  log(`${label}: ${describe(sample)}; dump ${mib(backup.rawBytes)} MiB, ${backup.newChunks} new of ${backup.chunks} chunks, stored +${mib(backup.stored)} MiB`);
  return backup;
}

interface AgentRestore {
  sample: Sample;
  identical: boolean;
}

async function agentRestore(backup: AgentBackup, source: string): Promise<AgentRestore> {
  sql(`DROP DATABASE IF EXISTS ${DB_RESTORE}`);
  const { sample } = await timed(agent('backup', 'restore', ENV, backup.id, '--target', ENV_RESTORE, '--yes', '--no-safety-backup'), agentEnv());
  const restored = checksums(DB_RESTORE);
  if (restored !== source) problems.push(`the agent's restore of backup 2 differs: CHECKSUM TABLE ${restored}, expected ${source}`);
  sql(`DROP DATABASE IF EXISTS ${DB_RESTORE}`);
  log(`restore of backup 2: ${describe(sample)}${restored === source ? '; CHECKSUM TABLE as the source' : ''}`);
  return { sample, identical: restored === source };
}

// ------------------------------------------------------------------ mysqldump variants (section variants)

interface Dump {
  file: string;
  bytes: number;
  /** INSERT statements (lines) in it. */
  inserts: number;
  sample: Sample;
}

async function dump(variant: Variant, options: string[], phase: 'full' | 'second'): Promise<Dump> {
  const file = path.join(paths.dumps, `${variant.key}-${phase}.sql`);
  const argv = [`--defaults-file=${paths.defaults}`, ...options, ...variant.options, DB];
  const { sample } = await timed(sh('out=$1; shift; mysqldump "$@" > "$out"', file, ...argv));
  const bytes = du(file);
  const inserts = Number(run('bash', ['-c', 'grep -c "^INSERT INTO" "$1" || true', 'bench', file]).trim());
  log(`dump ${variant.name}, ${phase}: ${describe(sample)}; ${mib(bytes)} MiB, ${inserts} INSERT statements`);
  return { file, bytes, inserts, sample };
}

const platformSecret = randomBytes(32);
const PLATFORM_KEYS: PlatformKeys = { signing: { id: 'bench', secret: platformSecret }, verifying: new Map([['bench', platformSecret]]) };

interface Stored {
  stored: number;
  chunks: number;
  newChunks: number;
  seconds: number;
  cpu: number;
}

/**
 * An empty repository whose key every cell's repository starts from: the chunker's gear table
 * derives from it, so equal bytes cut equally everywhere and the variants differ by their bytes
 * alone (with a key each, the cuts and hence the figures would vary by a few tenths of a percent).
 */
async function keyTemplate(): Promise<string> {
  const dir = path.join(paths.repositories, 'template');
  await openRepository(new FsObjectStore(dir), 'bench', PLATFORM_KEYS, { create: true });
  return dir;
}

/** Writes a dump file into the repository in `dir`, opened afresh as each backup opens it (its index loaded from the store). */
async function storeDump(dir: string, chunker: ChunkerParams, file: string): Promise<Stored> {
  const repository = await openRepository(new FsObjectStore(dir), 'bench', PLATFORM_KEYS, { create: true, chunker, level: 1 });
  const before = du(dir);
  const started = performance.now();
  const cpu = process.cpuUsage();
  const written = await repository.writeStream(createReadStream(file, { highWaterMark: 1 << 20 }));
  await repository.commit();
  const used = process.cpuUsage(cpu);
  return { stored: du(dir) - before, chunks: written.chunks, newChunks: written.newChunks, seconds: (performance.now() - started) / 1000, cpu: (used.user + used.system) / 1e6 };
}

interface Cell {
  variant: string;
  chunker: ChunkerParams;
  full: Stored;
  second: Stored;
}

async function dedupOf(template: string, variant: Variant, chunker: ChunkerParams, full: Dump, second: Dump): Promise<Cell> {
  const dir = path.join(paths.repositories, `${variant.key}-${chunker.avgBytes}`);
  rmSync(dir, { recursive: true, force: true });
  cpSync(template, dir, { recursive: true });
  const a = await storeDump(dir, chunker, full.file);
  const b = await storeDump(dir, chunker, second.file);
  rmSync(dir, { recursive: true, force: true });
  settle();
  log(`  ${variant.name} × ${chunkerLabel(chunker)}: full ${mib(a.stored)} MiB in ${a.chunks} chunks, second +${mib(b.stored)} MiB (${percent(b.stored / a.stored)}), ${b.newChunks} new chunks`);
  return { variant: variant.key, chunker, full: a, second: b };
}

interface Load {
  variant: string;
  sample: Sample;
  identical: boolean;
}

/** The restore cost of a dump: `mariadb DB < FILE` into a fresh database, checked with CHECKSUM TABLE. */
async function load(variant: Variant, second: Dump, source: string): Promise<Load> {
  sql(`DROP DATABASE IF EXISTS ${DB_LOAD}; CREATE DATABASE ${DB_LOAD}`);
  const { sample } = await timed(sh('mariadb --defaults-file="$1" "$2" < "$3"', paths.defaults, DB_LOAD, second.file));
  const loaded = checksums(DB_LOAD);
  if (loaded !== source) problems.push(`${variant.name}: the loaded dump differs: CHECKSUM TABLE ${loaded}, expected ${source}`);
  sql(`DROP DATABASE IF EXISTS ${DB_LOAD}`);
  log(`load of ${variant.name}: ${describe(sample)}`);
  return { variant: variant.key, sample, identical: loaded === source };
}

// ------------------------------------------------------------------ report

function isAgentChunker(c: ChunkerParams): boolean {
  return c.minBytes === DEFAULT_CHUNKER.minBytes && c.avgBytes === DEFAULT_CHUNKER.avgBytes && c.maxBytes === DEFAULT_CHUNKER.maxBytes;
}

function chunkerLabel(c: ChunkerParams): string {
  const size = (bytes: number) => (bytes >= MIB ? `${bytes / MIB}M` : `${bytes / 1024}K`);
  return `${size(c.minBytes)}/${size(c.avgBytes)}/${size(c.maxBytes)}${isAgentChunker(c) ? ' (agent)' : ''}`;
}

function table(headers: string[], body: string[][], leftColumns = 1): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(headers), `|${widths.map((w, i) => (i < leftColumns ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}

interface Results {
  database?: DatabaseInfo;
  update?: UpdateInfo[];
  dumpOptions?: string[];
  agent?: { full: AgentBackup; second?: AgentBackup; restore?: AgentRestore };
  dumps: Record<string, { full?: Dump; second?: Dump }>;
  cells: Cell[];
  best?: string;
  loads: Load[];
}

const results: Results = { dumps: {}, cells: [], loads: [] };

function report(started: number, loadAtStart: number[]): string {
  const out: string[] = [];
  const goalText = (share: number) => (share <= GOAL ? 'met' : 'MISSED');
  const db = results.database;
  if (db) out.push(`Database: ${db.orders} orders + ${db.customers} customers (bench/databases.ts' generator, ${db.sizeMiB} MiB of dump); ${db.mariadb}.`);
  if (results.update) {
    out.push(`Update between the two dumps: ${results.update.map((u) => `${u.updated} of ${u.rows} ${u.table} (${u.changed} changed)`).join(', ')}, drawn uniformly (seed ${UPDATE_SEED.toString(16)}).`);
  }
  if (results.dumpOptions) out.push(`DUMP_OPTIONS (src/snapshot/mysql/dump.ts): ${results.dumpOptions.join(' ')}.`);
  out.push('One run of each; wall s and CPU s (user+sys of the client process tree) from GNU time; mariadbd CPU s from /proc; stored = what the store directory grew by (du -sb).', '');

  const a = results.agent;
  if (a) {
    const body: string[][] = [];
    const backupRow = (what: string, b: AgentBackup) => [
      what,
      mib(b.rawBytes),
      mib(b.stored),
      b === a.full ? '' : percent(b.stored / a.full.stored),
      `${b.newChunks} / ${b.chunks}`,
      b.sample.wall.toFixed(2),
      b.sample.cpu.toFixed(2),
      (b.sample.maxRssKiB / 1024).toFixed(0),
      b.sample.serverCpu.toFixed(2),
      (b.rawBytes / 1e6 / b.sample.wall).toFixed(1),
    ];
    body.push(backupRow('backup 1 (full)', a.full));
    if (a.second) body.push(backupRow(`backup 2 (after ${percent(UPDATED_SHARE)} of the rows updated)`, a.second));
    if (a.restore && a.second) {
      const s = a.restore.sample;
      body.push([`restore of backup 2 (--target, staging + swap)${a.restore.identical ? '' : ' DIFFERS'}`, mib(a.second.rawBytes), '', '', '', s.wall.toFixed(2), s.cpu.toFixed(2), (s.maxRssKiB / 1024).toFixed(0), s.serverCpu.toFixed(2), (a.second.rawBytes / 1e6 / s.wall).toFixed(1)]);
    }
    out.push('The agent (`backup create` / `backup restore` of an environment with `repository: true`, fs store, chunker 512K/1M/8M):', '');
    out.push(table(['step', 'dump MiB (raw)', 'stored MiB', 'new / full', 'new chunks / chunks', 'wall s', 'CPU s', 'RSS MiB', 'mariadbd CPU s', 'MB/s (raw)'], body));
    out.push('');
    if (a.second) out.push(`Goal: backup 2's new bytes ≤ ${percent(GOAL)} of backup 1's: ${percent(a.second.stored / a.full.stored)} — ${goalText(a.second.stored / a.full.stored)}.`, '');
  }

  const variants = VARIANTS.filter((v) => results.dumps[v.key]?.full && results.dumps[v.key]?.second);
  if (variants.length) {
    out.push('mysqldump variants (DUMP_OPTIONS + the variant, no --databases), each dump alone under GNU time:', '');
    const body = variants.map((v) => {
      const { full, second } = results.dumps[v.key]!;
      const f = full!.sample;
      return [v.name, mib(full!.bytes), String(full!.inserts), (full!.bytes / Math.max(1, full!.inserts) / 1024).toFixed(1), f.wall.toFixed(2), f.cpu.toFixed(2), f.serverCpu.toFixed(2), (full!.bytes / 1e6 / f.wall).toFixed(1), second!.sample.wall.toFixed(2)];
    });
    out.push(table(['variant', 'dump MiB', 'INSERTs', 'mean INSERT KiB', 'dump s', 'CPU s', 'mariadbd CPU s', 'MB/s', 'second dump s'], body));
    out.push('');
  }

  if (results.cells.length) {
    const cellOf = (variant: string, c: ChunkerParams) => results.cells.find((x) => x.variant === variant && x.chunker === c);
    // Today's full backup: the agent's dump options and chunker (when BENCH_DEDUP_CHUNKERS has it).
    const agentChunker = chunkers.find(isAgentChunker);
    const today = agentChunker && cellOf('default', agentChunker)?.full.stored;
    const matrix = (value: (cell: Cell) => string) => variants.map((v) => [v.name, ...chunkers.map((c) => (cellOf(v.key, c) ? value(cellOf(v.key, c)!) : ''))]);
    const header = ['variant', ...chunkers.map(chunkerLabel)];
    out.push(`Second dump's new bytes / its full dump's bytes (stored: sealed, per chunk zstd -1), per variant and chunker (min/avg/max); goal ≤ ${percent(GOAL)}:`, '');
    const shares = matrix((cell) => `${percent(cell.second.stored / cell.full.stored)}${cell.second.stored / cell.full.stored <= GOAL ? ' ✓' : ''}`);
    // A uniform update of share p leaves a chunk of n rows unchanged with probability (1 − p)^n.
    const meanRow = db && results.dumps.default?.full ? results.dumps.default.full.bytes / (db.orders + db.customers) : Number.NaN;
    shares.push([
      `model: 1 − (1 − ${UPDATED_SHARE})^(rows per chunk)`,
      ...chunkers.map((c) => {
        const cell = cellOf('default', c);
        return cell && Number.isFinite(meanRow) ? percent(1 - (1 - UPDATED_SHARE) ** (results.dumps.default!.full!.bytes / cell.full.chunks / meanRow)) : '';
      }),
    ]);
    out.push(table(header, shares));
    out.push('');
    out.push(`(Mean row in the default dump: ${meanRow.toFixed(0)} bytes. The model counts a chunk new when any of its rows changed; it ignores INSERT statements whose boundaries move.)`, '');
    if (today) {
      out.push(`The same new bytes / today's full backup (default options, the agent's chunker: ${mib(today)} MiB), i.e. what backup 2 would cost against backup 1 as stored now:`, '');
      out.push(table(header, matrix((cell) => percent(cell.second.stored / today))));
      out.push('');
      out.push("Full dump stored / today's full backup (smaller chunks compress worse: each is its own zstd frame):", '');
      out.push(table(header, matrix((cell) => `${(cell.full.stored / today).toFixed(2)}×`)));
      out.push('');
    }
    out.push('Details per cell: full stored MiB / second stored MiB, chunks of the full dump (mean size), new chunks of the second, write s of full / second (in this process, incl. sealing in the workers):', '');
    const details = results.cells.map((cell) => {
      const v = VARIANTS.find((x) => x.key === cell.variant)!;
      const full = results.dumps[cell.variant]!.full!;
      return [v.name, chunkerLabel(cell.chunker), mib(cell.full.stored), mib(cell.second.stored), `${cell.full.chunks} (${(full.bytes / cell.full.chunks / 1024).toFixed(1)} KiB)`, String(cell.second.newChunks), `${cell.full.seconds.toFixed(2)} / ${cell.second.seconds.toFixed(2)}`, `${cell.full.cpu.toFixed(2)} / ${cell.second.cpu.toFixed(2)}`];
    });
    out.push(table(['variant', 'chunker', 'full MiB', 'second MiB', 'chunks (mean)', 'new chunks', 'write s', 'CPU s'], details, 2));
    out.push('');
  }

  if (results.loads.length) {
    out.push('Restore cost: the second dump loaded with `mariadb DB < FILE` into a fresh database:', '');
    const body = results.loads.map((l) => {
      const v = VARIANTS.find((x) => x.key === l.variant)!;
      const bytes = results.dumps[l.variant]!.second!.bytes;
      const base = results.loads.find((x) => x.variant === 'default');
      return [`${v.name}${l.variant === results.best ? ' (best dedup)' : ''}${l.identical ? '' : ' DIFFERS'}`, mib(bytes), l.sample.wall.toFixed(2), l.sample.cpu.toFixed(2), l.sample.serverCpu.toFixed(2), (bytes / 1e6 / l.sample.wall).toFixed(1), base ? (l.sample.wall / base.sample.wall).toFixed(2) : ''];
    });
    out.push(table(['variant', 'dump MiB', 'wall s', 'client CPU s', 'mariadbd CPU s', 'MB/s', 'time × default'], body));
    out.push('');
  }
  out.push(...closingLines(loadAtStart, started, problems));
  return out.join('\n');
}

// ------------------------------------------------------------------ clean-up, main

let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await stopChild(current);
    mariadb.stopIfStarted(log);
    if (!keep) rmSync(work, { recursive: true, force: true });
  })();
  return cleaning;
}

cleanUpOnSignals(cleanup, log);

async function main(): Promise<void> {
  const started = performance.now();
  const load0 = loadavg();
  for (const tool of ['mysqldump', 'mariadb', 'du']) {
    if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).error) throw new Error(`${tool} not found (scripts/mariadb.sh install brings the MariaDB clients)`);
  }
  if (!existsSync('/usr/bin/time')) throw new Error('GNU time is not installed (apt-get install time)');
  rmSync(work, { recursive: true, force: true });
  mkdirSync(paths.dumps, { recursive: true });
  log(`BENCH_DIR=${benchDir} size=${sizeMiB} MiB chunkers=${chunkers.map(chunkerLabel).join(', ')} sections=${[...only].join(',')}`);
  try {
    results.database = await prepareMariadb();
    writeFileSync(paths.defaults, `[client]\nuser=agent\npassword=${mariadb.password}\nprotocol=TCP\nhost=127.0.0.1\nport=${mariadb.port}\n`, { mode: 0o600 });
    writeConfig();
    const options = [...DUMP_OPTIONS];
    results.dumpOptions = options;
    const variants = only.has('variants') ? VARIANTS : [];
    const dumpAll = async (phase: 'full' | 'second') => {
      for (const v of variants) (results.dumps[v.key] ??= {})[phase] = await dump(v, options, phase);
    };

    if (only.has('agent')) results.agent = { full: await agentBackup('backup 1 (full)') };
    await dumpAll('full');
    results.update = updateRows();
    log(`updated: ${results.update.map((u) => `${u.changed} of ${u.rows} ${u.table}`).join(', ')}`);
    const source = checksums(DB);
    if (results.agent) results.agent.second = await agentBackup('backup 2');
    await dumpAll('second');
    if (results.agent?.second) results.agent.restore = await agentRestore(results.agent.second, source);

    if (variants.length) {
      const template = await keyTemplate();
      for (const v of variants) {
        const { full, second } = results.dumps[v.key]!;
        for (const c of chunkers) results.cells.push(await dedupOf(template, v, c, full!, second!));
        rmSync(full!.file);
      }
      // The variant whose second dump is cheapest at any chunker size: what a change of DUMP_OPTIONS could buy.
      const share = (key: string) => Math.min(...results.cells.filter((c) => c.variant === key).map((c) => c.second.stored / c.full.stored));
      results.best = VARIANTS.filter((v) => v.key !== 'default').sort((x, y) => share(x.key) - share(y.key))[0]!.key;
      for (const v of VARIANTS.filter((x) => x.key === 'default' || x.key === results.best)) results.loads.push(await load(v, results.dumps[v.key]!.second!, source));
    }
  } catch (error) {
    problems.push(`the run stopped: ${(error as Error).message.split('\n').slice(0, 6).join(' | ').slice(0, 1500)}`);
    process.exitCode = 1;
  } finally {
    const text = report(started, load0);
    await cleanup();
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    mkdirSync(benchDir, { recursive: true });
    const json = { agentVersion: process.env.BENCH_AGENT_VERSION ?? null, sizeMiB, chunkers, ...results, problems };
    writeFileSync(path.join(benchDir, `results-mysql-dedup-${stamp}.json`), `${JSON.stringify(json, null, 2)}\n`);
    writeFileSync(path.join(benchDir, `results-mysql-dedup-${stamp}.txt`), `${text}\n`);
    console.log(text);
    log(`results written to ${path.join(benchDir, `results-mysql-dedup-${stamp}.{txt,json}`)}`);
  }
}

await main();
