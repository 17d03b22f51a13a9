/**
 * The repository part of the benchmark (issue #13, "Benchmark"): our deduplicating, encrypted
 * repository (`repository: true`) against restic (Debian's 0.14, repository v2, zstd) and
 * `tar | zstd`, in the same run, on the same generated tree (bench/tree.ts), all as real CLIs.
 *
 *   node_modules/.bin/node bench/repository.ts [--only first,second,change,days,restore,pause,rgw] [--rgw-env FILE]
 *   scripts/bench.sh repository [--only ...]     (installs restic, zstd, GNU time if missing;
 *                                                  BENCH_RGW=1 also starts the RGW: section rgw)
 *
 * Sections (fs store; numbered as in the report):
 * 1. first:   first backup of the tree into empty stores: ours (`backup create`, repository),
 *             `restic backup`, `tar -cf - | zstd -1 -T0 > FILE`, and our archive mode
 *             (repository: false) for reference.
 * 2. second:  a second backup, nothing changed: ours vs restic (its parent: same host and path).
 * 3. change:  2 % of the files appended to (4 KiB each), 1 % added, 1 % deleted: ours vs restic.
 * 4. days:    BENCH_REPO_DAYS (21) daily backups into fresh stores, 2 % of the files appended
 *             to before each but the first: total stored against the first (full) backup; ours,
 *             and restic unless BENCH_REPO_RESTIC_DAYS=0. Runs after 1, 2, 3, 5 and rgw.
 * 5. restore: the first backup into an empty directory: ours (`backup restore ... --target` a
 *             second environment, `--no-safety-backup`), `restic restore`, `zstd -dc | tar -x`;
 *             each restored tree is compared with the source (`diff -r`) once.
 * 6. pause:   the pause of consistent backups where the tree cannot be snapshotted (ext4 here):
 *             a writer in a cgroup v2 appends its clock to a file of a fresh copy of the tree
 *             every ~5 ms, and the environments freeze that cgroup. A first backup, a second
 *             with nothing changed and one after section 3's change, with the repository (the
 *             parent snapshot: only the walk and the changed files are read inside the freeze)
 *             and in archive mode (every file read inside it): the manifest's pauseMs, the
 *             writer's longest silence during the backup, wall time, unchanged files. Runs last.
 * rgw (only with --rgw-env, the env file scripts/rgw.sh writes): sections 1, 2, 3 and 5 again
 *     with ours on the s3 store and restic's s3 backend, on the same RGW; the peer is
 *     `tar | zstd -1 -T0 | rclone rcat` (and `rclone cat | zstd -dc | tar -x`).
 *
 * Measured per command: wall s, CPU s (user + sys of the whole process tree) and peak RSS of
 * its largest process (GNU time, bench/timing.ts), and the bytes stored: `du -sb` of the fs
 * store directory (ours: one store per environment) or of the restic repository, or the sum of
 * the object sizes under the prefix on the RGW, after the command less before it. The tree
 * backed up is a copy of the generated tree (`cp -a`, mtimes kept) under the work directory,
 * since sections 3 and 4 change it.
 *
 * Environment: BENCH_DIR (default /var/tmp/storage-agent-bench; trees are shared with
 * bench/run.ts, scratch in BENCH_DIR/repository, ~4 GiB at most, removed at the end unless
 * BENCH_KEEP=1), BENCH_REPO_SIZE (tree, default 1g), BENCH_RUNS (measured runs per command,
 * default 1 here), BENCH_WARMUP (1, the default: one unmeasured run of each first-backup and
 * restore command first; 0: none), BENCH_REPO_DAYS (default 21), BENCH_REPO_RESTIC_DAYS
 * (default 1), RESTIC_PASSWORD (default a fixed bench password), BENCH_STAT (best or median).
 * Results: printed, and saved as BENCH_DIR/results-repository-DATE.{txt,json}.
 */
import { CreateBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { removeCgroup } from './cgroup.ts';
import { rcloneRemoteEnv, readRgwEnv, rgwStoreLines, type S3Settings } from './rgw-env.ts';
import { ensureTree, parseTreeSize, Rng, type TreeInfo } from './tree.ts';
import { agentCommand, closingLines, integerEnv, option, processCpuSeconds, timed as timedRun } from './timing.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
/** The agent's CLI, as installed (its Node flags). */
const AGENT = agentCommand(ROOT);
const MIB = 1024 ** 2;
const RSS_GOAL_MIB = 256;
const BUCKET = 'bench-repository';
/** The pause section's writer cgroup, under the cgroup v2 hierarchy: /sys/fs/cgroup itself, or its `unified` mount on a hybrid host. */
const PAUSE_CGROUP = path.join(existsSync('/sys/fs/cgroup/cgroup.controllers') ? '/sys/fs/cgroup' : '/sys/fs/cgroup/unified', 'storage-agent-bench-pause');

// ------------------------------------------------------------------ options

/** In report order. */
const SECTIONS = ['first', 'second', 'change', 'days', 'restore', 'pause'] as const;
type Section = (typeof SECTIONS)[number];
const benchDir = path.resolve(process.env.BENCH_DIR || '/var/tmp/storage-agent-bench');
const work = path.join(benchDir, 'repository');
const sizeName = process.env.BENCH_REPO_SIZE || '1g';
const runs = integerEnv('BENCH_RUNS', 1, 1);
const warmup = process.env.BENCH_WARMUP !== '0';
const days = Math.min(integerEnv('BENCH_REPO_DAYS', 21, 2), 90);
const resticDays = process.env.BENCH_REPO_RESTIC_DAYS !== '0';
const keep = process.env.BENCH_KEEP === '1';
const statistic = process.env.BENCH_STAT === 'median' ? 'median' : 'best';
const rgwEnvFile = option('--rgw-env') ?? process.env.BENCH_RGW_ENV;
const only = new Set((option('--only') ?? [...SECTIONS, 'rgw'].join(',')).split(',').map((s) => s.trim()));
for (const s of only) if (![...SECTIONS, 'rgw'].includes(s)) throw new Error(`--only ${s}: sections are ${[...SECTIONS, 'rgw'].join(', ')}`);
// Sections 2, 3 and 5 start from the first backups.
if (only.has('second') || only.has('change') || only.has('restore')) only.add('first');
const resticPassword = process.env.RESTIC_PASSWORD || 'storage-agent-bench';

const paths = {
  tree: path.join(work, 'tree'),
  config: path.join(work, 'config.yaml'),
  state: path.join(work, 'state'),
  storeRepo: path.join(work, 'store-repo'),
  storeArchive: path.join(work, 'store-archive'),
  storeDays: path.join(work, 'store-days'),
  storePauseRepo: path.join(work, 'store-pause-repo'),
  storePauseArchive: path.join(work, 'store-pause-archive'),
  /** The pause section's writer appends to this file of the tree. */
  writerLog: path.join(work, 'tree', 'writer.log'),
  restic: path.join(work, 'restic'),
  resticDays: path.join(work, 'restic-days'),
  resticCache: path.join(work, 'restic-cache'),
  peerFile: path.join(work, 'tree.tar.zst'),
  restoreOurs: path.join(work, 'restore-ours'),
  restoreRestic: path.join(work, 'restore-restic'),
  restorePeer: path.join(work, 'restore-peer'),
  timeFile: path.join(work, 'time.out'),
};

// ------------------------------------------------------------------ measuring

type Where = 'fs' | 'rgw';

interface Sample {
  wall: number;
  user: number;
  sys: number;
  maxRssKiB: number;
  /** Bytes the command added to its store (after − before). */
  stored: number;
  /** CPU seconds of radosgw + ceph-osd during the run (RGW only). */
  serverCpu?: number;
  /** 1-minute load average just before the command. */
  load: number;
  stdout: string;
}

interface Row {
  where: Where;
  section: Section;
  /** ours, ours-archive, restic, peer. */
  key: string;
  name: string;
  command: string;
  samples: Sample[];
  /** What the output said, one per measured run (same order as samples). */
  notes: string[];
}

const rows: Row[] = [];
const problems: string[] = [];
const facts: string[] = [];

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

function sh(script: string, ...params: string[]): string[] {
  return ['bash', '-c', script, 'bench', ...params];
}

function run(command: string, argv: string[], env?: NodeJS.ProcessEnv): string {
  const result = spawnSync(command, argv, { cwd: ROOT, encoding: 'utf8', maxBuffer: 256 << 20, env: env ?? process.env });
  if (result.status !== 0) throw new Error(`${command} ${argv.join(' ')} failed (${result.status ?? result.signal}): ${(result.stderr || '').slice(-2000)}`);
  return result.stdout;
}

/** Apparent bytes under a path (du -sb), 0 if absent. */
function du(dir: string): number {
  if (!existsSync(dir)) return 0;
  return Number(run('du', ['-sb', dir]).split('\t')[0]);
}

/** Writes dirty pages back (untimed), so one run's writes do not slow the next one. */
function settle(): void {
  run('sync', []);
}

function row(where: Where, section: Section, key: string, name = '', command = ''): Row {
  const found = rows.find((r) => r.where === where && r.section === section && r.key === key);
  if (found) return found;
  const created: Row = { where, section, key, name, command, samples: [], notes: [] };
  rows.push(created);
  return created;
}

interface Command {
  key: string;
  name: string;
  /** The command as a reader would type it (paths shortened). */
  command: string;
  argv: string[];
  env?: NodeJS.ProcessEnv;
  /** What the store holds now (bytes): its growth is the bytes stored. */
  bytes?: () => Promise<number>;
}

/** Runs one command under GNU time; records it in (where, section) unless `measured` is false (a warm-up; the daily backups and the pause section, reported apart). */
async function measure(where: Where, section: Section, c: Command, measured: boolean, serverPids: number[] = []): Promise<Sample> {
  const before = c.bytes ? await c.bytes() : 0;
  const load = loadavg()[0]!;
  const cpuBefore = serverPids.map(processCpuSeconds);
  const t = await timedRun(c.argv, { cwd: ROOT, timeFile: paths.timeFile, env: c.env ?? process.env });
  const serverCpu = serverPids.length ? serverPids.map((pid, i) => processCpuSeconds(pid) - cpuBefore[i]!).reduce((a, b) => a + b, 0) : undefined;
  const stderr = t.stderr.trim();
  if (stderr && c.key !== 'restic') log(`  stderr of ${c.name}: ${stderr.split('\n').slice(-3).join(' | ').slice(0, 600)}`);
  const sample: Sample = { wall: t.wall, user: t.user, sys: t.sys, maxRssKiB: t.maxRssKiB, stored: c.bytes ? (await c.bytes()) - before : 0, load, stdout: t.stdout };
  if (serverCpu !== undefined) sample.serverCpu = serverCpu;
  log(
    `${where} ${section} ${c.name}: ${measured ? 'measured' : section === 'days' || section === 'pause' ? 'ran' : 'warm-up'} ${t.wall.toFixed(2)} s, CPU ${(t.user + t.sys).toFixed(2)} s, RSS ${(t.maxRssKiB / 1024).toFixed(0)} MiB` +
      (c.bytes ? `, stored +${mib(sample.stored)} MiB` : '') +
      (serverCpu === undefined ? '' : `, RGW+OSD CPU ${serverCpu.toFixed(2)} s`) +
      `, load ${load.toFixed(2)}`,
  );
  if (measured) row(where, section, c.key, c.name, c.command).samples.push(sample);
  settle();
  return sample;
}

function pick(samples: Sample[]): Sample {
  const sorted = [...samples].sort((a, b) => a.wall - b.wall);
  return statistic === 'best' ? sorted[0]! : sorted[Math.floor((sorted.length - 1) / 2)]!;
}

function mib(bytes: number): string {
  const v = bytes / MIB;
  return Math.abs(v) < 10 ? v.toFixed(2) : v.toFixed(0);
}

// ------------------------------------------------------------------ where the backups go

const s3 = only.has('rgw') ? readRgwEnv(rgwEnvFile) : undefined;
const client = s3
  ? new S3Client({
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKey, secretAccessKey: s3.secretKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
    })
  : undefined;

async function listPrefix(prefix: string): Promise<{ key: string; size: number }[]> {
  const found: { key: string; size: number }[] = [];
  let token: string | undefined;
  do {
    const page = await client!.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }));
    found.push(...(page.Contents ?? []).map((o) => ({ key: o.Key!, size: o.Size ?? 0 })));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return found;
}

async function prefixBytes(prefix: string): Promise<number> {
  return (await listPrefix(prefix)).reduce((a, o) => a + o.size, 0);
}

async function deletePrefix(prefix: string): Promise<void> {
  const keys = await listPrefix(prefix);
  for (let i = 0; i < keys.length; i += 1000) {
    await client!.send(new DeleteObjectsCommand({ Bucket: BUCKET, Delete: { Objects: keys.slice(i, i + 1000).map((k) => ({ Key: k.key })), Quiet: true } }));
  }
}

const resticEnv: NodeJS.ProcessEnv = { ...process.env, RESTIC_PASSWORD: resticPassword, RESTIC_CACHE_DIR: paths.resticCache };
for (const name of ['RESTIC_REPOSITORY', 'RESTIC_PASSWORD_FILE', 'RESTIC_PASSWORD_COMMAND', 'AWS_CA_BUNDLE']) delete resticEnv[name];
const resticS3Env: NodeJS.ProcessEnv = s3 ? { ...resticEnv, AWS_ACCESS_KEY_ID: s3.accessKey, AWS_SECRET_ACCESS_KEY: s3.secretKey, AWS_DEFAULT_REGION: s3.region } : resticEnv;
const rcloneEnv: NodeJS.ProcessEnv = s3 ? rcloneRemoteEnv(s3) : process.env;
const agentEnv: NodeJS.ProcessEnv = s3 ? { ...process.env, BENCH_S3_ACCESS_KEY: s3.accessKey, BENCH_S3_SECRET_KEY: s3.secretKey } : process.env;

/** One place the backups go: the fs store and a restic repository on disk, or both on the RGW. */
interface Target {
  where: Where;
  /** Our environment (repository: true). */
  env: string;
  oursBytes: () => Promise<number>;
  resetOurs: () => Promise<void>;
  resticRepo: string;
  resticEnv: NodeJS.ProcessEnv;
  resticBytes: () => Promise<number>;
  /** The classic pipeline: writes the tree's .tar.zst. */
  peerBackup: Command;
  resetPeer: () => Promise<void>;
  /** The classic pipeline's restore of that file into $DIR. */
  peerRestore: (dir: string) => Command;
  serverPids: number[];
}

const fsTarget: Target = {
  where: 'fs',
  env: 'bench-repo',
  oursBytes: async () => du(paths.storeRepo),
  resetOurs: async () => rmSync(paths.storeRepo, { recursive: true, force: true }),
  resticRepo: paths.restic,
  resticEnv,
  resticBytes: async () => du(paths.restic),
  peerBackup: {
    key: 'peer',
    name: 'tar | zstd -1 -T0 > FILE',
    command: 'tar -cf - -C TREE . | zstd -1 -T0 -q > FILE',
    argv: sh('tar -cf - -C "$1" . | zstd -1 -T0 -q > "$2"', paths.tree, paths.peerFile),
    bytes: async () => du(paths.peerFile),
  },
  resetPeer: async () => rmSync(paths.peerFile, { force: true }),
  peerRestore: (dir) => ({
    key: 'peer',
    name: 'zstd -dc FILE | tar -xf -',
    command: 'zstd -dc FILE | tar -xf - -C DIR',
    argv: sh('zstd -dc "$1" | tar -xf - -C "$2"', paths.peerFile, dir),
  }),
  serverPids: [],
};

function rgwTarget(settings: S3Settings): Target {
  const rclone = '--config /dev/null --s3-chunk-size 8M --s3-upload-concurrency 4';
  return {
    where: 'rgw',
    env: 'bench-s3',
    oursBytes: () => prefixBytes('agent/bench-s3/'),
    resetOurs: () => deletePrefix('agent/bench-s3/'),
    resticRepo: `s3:${settings.endpoint}/${BUCKET}/restic`,
    resticEnv: resticS3Env,
    resticBytes: () => prefixBytes('restic/'),
    peerBackup: {
      key: 'peer',
      name: 'tar | zstd -1 -T0 | rclone rcat',
      command: `tar -cf - -C TREE . | zstd -1 -T0 -q | rclone rcat -q ${rclone} benchrgw:${BUCKET}/peer/tree.tar.zst`,
      argv: sh(`tar -cf - -C "$1" . | zstd -1 -T0 -q | rclone rcat -q ${rclone} "benchrgw:$2/peer/tree.tar.zst"`, paths.tree, BUCKET),
      env: rcloneEnv,
      bytes: () => prefixBytes('peer/'),
    },
    resetPeer: () => deletePrefix('peer/'),
    peerRestore: (dir) => ({
      key: 'peer',
      name: 'rclone cat | zstd -dc | tar -xf -',
      command: `rclone cat ${rclone} benchrgw:${BUCKET}/peer/tree.tar.zst | zstd -dc | tar -xf - -C DIR`,
      argv: sh(`rclone cat ${rclone} "benchrgw:$1/peer/tree.tar.zst" | zstd -dc | tar -xf - -C "$2"`, BUCKET, dir),
      env: rcloneEnv,
    }),
    serverPids: settings.pids,
  };
}

function writeConfig(): void {
  // No freeze section but in the pause environments: elsewhere the default (consistent) mode
  // pauses nothing. manualLimit high enough for the daily backups, which are all kept.
  const lines = [
    `stateDir: ${paths.state}`,
    'defaultStore: repo',
    'compression: {algorithm: zstd, level: 1}',
    'stores:',
    `  repo: {type: fs, path: ${paths.storeRepo}}`,
    `  archive: {type: fs, path: ${paths.storeArchive}}`,
    `  days: {type: fs, path: ${paths.storeDays}}`,
    `  pause-repo: {type: fs, path: ${paths.storePauseRepo}}`,
    `  pause-archive: {type: fs, path: ${paths.storePauseArchive}}`,
  ];
  if (s3) lines.push(...rgwStoreLines(s3, BUCKET));
  const env = (name: string, store: string, repository: boolean, freeze = false) => {
    lines.push(`  ${name}:`, `    store: ${store}`, `    repository: ${repository}`, '    manualLimit: 100');
    // The first backups read the whole tree inside the freeze: more than the default 30 s on a loaded machine.
    if (freeze) lines.push(`    freeze: {cgroups: [${PAUSE_CGROUP}], deadline: 2m}`);
    lines.push('    services:', `      files: {kind: files, path: ${paths.tree}}`);
  };
  lines.push('environments:');
  env('bench-repo', 'repo', true);
  env('bench-archive', 'archive', false);
  env('bench-days', 'days', true);
  env('bench-pause-repo', 'pause-repo', true, true);
  env('bench-pause-archive', 'pause-archive', false, true);
  if (s3) env('bench-s3', 'rgw', true);
  lines.push('  bench-restore:', '    store: repo', '    services:', `      files: {kind: files, path: ${paths.restoreOurs}}`);
  writeFileSync(paths.config, `${lines.join('\n')}\n`);
}

function oursCreate(env: string, bytes: () => Promise<number>): Command {
  const archive = env === 'bench-archive' || env === 'bench-pause-archive';
  return {
    key: archive ? 'ours-archive' : 'ours',
    name: archive ? 'ours, archive (repository: false)' : 'ours, repository',
    command: `storage-agent --config CFG backup create ${env} --json`,
    argv: [...AGENT, '--config', paths.config, 'backup', 'create', env, '--json'],
    env: agentEnv,
    bytes,
  };
}

function resticBackup(t: Pick<Target, 'resticRepo' | 'resticEnv' | 'resticBytes'>): Command {
  return {
    key: 'restic',
    name: 'restic 0.14',
    command: 'restic -r REPO backup --compression auto --host bench --json TREE',
    argv: ['restic', '-r', t.resticRepo, 'backup', '--compression', 'auto', '--host', 'bench', '--json', paths.tree],
    env: t.resticEnv,
    bytes: t.resticBytes,
  };
}

async function resticInit(repo: string, env: NodeJS.ProcessEnv, clear: () => Promise<void>): Promise<void> {
  await clear();
  rmSync(paths.resticCache, { recursive: true, force: true });
  run('restic', ['-r', repo, 'init', '--repository-version', '2'], env);
}

interface ManifestLike {
  id: string;
  mode: string;
  pauseMs: number | null;
  elements: {
    storedBytes: number;
    rawBytes: number;
    durationMs: number;
    repository?: { chunks: number; newChunks: number };
    readInsideFreeze?: true;
    warnings: unknown[];
    /** unchangedFiles: repository backups only (files whose parent chunks were reused). */
    facts: { files: number; contentBytes: number; unchangedFiles?: number };
  }[];
}

interface ResticSummary {
  snapshot_id?: string;
  files_new: number;
  files_changed: number;
  files_unmodified: number;
  data_added: number;
  total_files_processed: number;
  total_bytes_processed: number;
}

function manifestOf(sample: Sample, what: string): ManifestLike {
  try {
    return JSON.parse(sample.stdout) as ManifestLike;
  } catch {
    throw new Error(`${what}: stdout is not a manifest: ${sample.stdout.slice(0, 300)}`);
  }
}

function resticSummary(sample: Sample): ResticSummary {
  const line = sample.stdout
    .split('\n')
    .reverse()
    .find((l) => l.includes('"message_type":"summary"'));
  if (!line) throw new Error(`restic backup printed no summary: ${sample.stdout.slice(-300)}`);
  return JSON.parse(line) as ResticSummary;
}

/** The id of the newest restic snapshot (in case the summary lacks snapshot_id). */
function resticLatest(t: Target): string {
  const list = JSON.parse(run('restic', ['-r', t.resticRepo, 'snapshots', '--json'], t.resticEnv)) as { time: string; id: string }[];
  const latest = list.sort((a, b) => a.time.localeCompare(b.time)).at(-1);
  if (!latest) throw new Error(`restic: no snapshot in ${t.resticRepo}`);
  return latest.id;
}

function noteOurs(r: Row | undefined, manifest: ManifestLike): void {
  const e = manifest.elements[0]!;
  const text = `${manifest.mode}, pause ${manifest.pauseMs ?? 'none'}, chunks ${e.repository ? `${e.repository.newChunks} new of ${e.repository.chunks}` : 'n/a (archive)'}, storedBytes ${mib(e.storedBytes)} MiB, element ${(e.durationMs / 1000).toFixed(1)} s`;
  r?.notes.push(text);
  log(`  ${text}`);
  if (e.warnings.length) problems.push(`${manifest.id}: ${e.warnings.length} warnings: ${JSON.stringify(e.warnings).slice(0, 300)}`);
}

function noteRestic(r: Row | undefined, s: ResticSummary): void {
  const text = `files new ${s.files_new}, changed ${s.files_changed}, unmodified ${s.files_unmodified}, data_added ${mib(s.data_added)} MiB (before compression)`;
  r?.notes.push(text);
  log(`  ${text}`);
}

function checkCounts(what: string, files: number, bytes: number, expected: { files: number; bytes: number }): void {
  if (files !== expected.files || bytes !== expected.bytes) problems.push(`${what}: ${files} files / ${bytes} bytes, expected ${expected.files} / ${expected.bytes}`);
}

// ------------------------------------------------------------------ changing the tree

/** New content, roughly like the tree's: log-like lines, one segment in five random bytes. */
function noise(size: number, rng: Rng, seed: string): Buffer {
  const out = Buffer.alloc(size);
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  let at = 0;
  while (at < size) {
    const segment = Math.min(size - at, 1024 + rng.below(8192));
    if (rng.below(5) === 0) {
      cipher.update(out.subarray(at, at + segment)).copy(out, at);
    } else {
      let text = '';
      while (text.length < segment) text += `${1_800_000_000 + rng.below(1e6)} INFO request ${rng.below(1e5)} path /site/${rng.below(40)}/item/${rng.below(1e4)} took ${rng.below(900)} ms\n`;
      out.write(text.slice(0, segment), at, 'latin1');
    }
    at += segment;
  }
  return out;
}

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => path.join(d.parentPath, d.name))
    .sort();
}

/** Appends 4 KiB to `modify` of the files, deletes `remove` of them, adds `add` × as many new files (1–200 KiB) beside others. */
function changeTree(dir: string, share: { modify: number; add: number; remove: number }, seed: number): string {
  const files = listFiles(dir);
  const rng = new Rng(seed);
  const order = files.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const nModify = Math.round(files.length * share.modify);
  const nRemove = Math.round(files.length * share.remove);
  const nAdd = Math.round(files.length * share.add);
  let appended = 0;
  let added = 0;
  for (let k = 0; k < nModify; k++) {
    const bytes = noise(4096, rng, `append-${seed}-${k}`);
    appendFileSync(files[order[k]!]!, bytes);
    appended += bytes.length;
  }
  for (let k = nModify; k < nModify + nRemove; k++) rmSync(files[order[k]!]!);
  for (let k = 0; k < nAdd; k++) {
    const beside = files[order[(nModify + nRemove + k) % files.length]!]!;
    const size = Math.round(1024 * 200 ** rng.next());
    writeFileSync(path.join(path.dirname(beside), `added-${seed}-${String(k).padStart(4, '0')}.dat`), noise(size, rng, `add-${seed}-${k}`));
    added += size;
  }
  return `${nModify} of ${files.length} files appended to (${mib(appended)} MiB), ${nAdd} added (${mib(added)} MiB), ${nRemove} deleted`;
}

function copyTree(source: string): void {
  rmSync(paths.tree, { recursive: true, force: true });
  run('cp', ['-a', source, paths.tree]);
  settle();
}

// ------------------------------------------------------------------ the sections

interface FirstBackups {
  ours: string;
  restic: string;
}

async function first(t: Target, tree: TreeInfo): Promise<FirstBackups> {
  const ids: FirstBackups = { ours: '', restic: '' };
  for (let round = warmup ? 0 : 1; round <= runs; round++) {
    const measured = round > 0;
    const noted = (key: string) => (measured ? row(t.where, 'first', key) : undefined);
    await t.resetOurs();
    const ours = await measure(t.where, 'first', oursCreate(t.env, t.oursBytes), measured, t.serverPids);
    const m = manifestOf(ours, 'ours, first backup');
    checkCounts(`our first backup (${t.where}, manifest facts)`, m.elements[0]!.facts.files, m.elements[0]!.facts.contentBytes, tree);
    noteOurs(noted('ours'), m);
    ids.ours = m.id;

    await resticInit(t.resticRepo, t.resticEnv, t.where === 'fs' ? async () => rmSync(paths.restic, { recursive: true, force: true }) : () => deletePrefix('restic/'));
    const restic = await measure(t.where, 'first', resticBackup(t), measured, t.serverPids);
    const s = resticSummary(restic);
    checkCounts(`restic first backup (${t.where}, summary)`, s.total_files_processed, s.total_bytes_processed, tree);
    noteRestic(noted('restic'), s);
    ids.restic = s.snapshot_id ?? resticLatest(t);

    await t.resetPeer();
    await measure(t.where, 'first', t.peerBackup, measured, t.serverPids);

    if (t.where === 'fs') {
      rmSync(paths.storeArchive, { recursive: true, force: true });
      const archive = await measure(t.where, 'first', oursCreate('bench-archive', async () => du(paths.storeArchive)), measured);
      noteOurs(noted('ours-archive'), manifestOf(archive, 'ours, archive'));
    }
  }
  rmSync(paths.storeArchive, { recursive: true, force: true });
  return ids;
}

async function second(t: Target): Promise<void> {
  for (let round = 1; round <= runs; round++) {
    const ours = await measure(t.where, 'second', oursCreate(t.env, t.oursBytes), true, t.serverPids);
    noteOurs(row(t.where, 'second', 'ours'), manifestOf(ours, 'ours, second backup'));
    const restic = await measure(t.where, 'second', resticBackup(t), true, t.serverPids);
    const s = resticSummary(restic);
    noteRestic(row(t.where, 'second', 'restic'), s);
    if (s.files_unmodified !== s.total_files_processed) problems.push(`restic's second backup (${t.where}) read ${s.files_new + s.files_changed} files: no parent?`);
  }
}

async function change(t: Target): Promise<void> {
  for (let round = 1; round <= runs; round++) {
    const text = changeTree(paths.tree, { modify: 0.02, add: 0.01, remove: 0.01 }, 1000 + round);
    log(`change: ${text}`);
    facts.push(`${t.where}, changed tree, round ${round}: ${text}`);
    const ours = await measure(t.where, 'change', oursCreate(t.env, t.oursBytes), true, t.serverPids);
    noteOurs(row(t.where, 'change', 'ours'), manifestOf(ours, 'ours, changed tree'));
    const restic = await measure(t.where, 'change', resticBackup(t), true, t.serverPids);
    noteRestic(row(t.where, 'change', 'restic'), resticSummary(restic));
  }
}

async function restore(t: Target, ids: FirstBackups, pristine: string): Promise<void> {
  const checked = new Set<string>();
  const check = (key: string, dir: string) => {
    if (checked.has(key)) return;
    checked.add(key);
    const diff = spawnSync('diff', ['-r', '-q', pristine, dir], { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (diff.status !== 0) problems.push(`${t.where} restore by ${key} differs from the source: ${(diff.stdout + diff.stderr).split('\n').slice(0, 5).join(' | ')}`);
    else log(`  ${key}: the restored tree equals the source (diff -r)`);
  };
  const empty = (dir: string) => {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
  };
  for (let round = warmup ? 0 : 1; round <= runs; round++) {
    const measured = round > 0;
    empty(paths.restoreOurs);
    await measure(
      t.where,
      'restore',
      {
        key: 'ours',
        name: 'ours, repository',
        command: `storage-agent --config CFG backup restore ${t.env} ID --target bench-restore --yes --no-safety-backup --json`,
        argv: [...AGENT, '--config', paths.config, 'backup', 'restore', t.env, ids.ours, '--target', 'bench-restore', '--yes', '--no-safety-backup', '--json'],
        env: agentEnv,
      },
      measured,
      t.serverPids,
    );
    check('ours', paths.restoreOurs);
    rmSync(paths.restoreOurs, { recursive: true, force: true });

    empty(paths.restoreRestic);
    await measure(
      t.where,
      'restore',
      {
        key: 'restic',
        name: 'restic 0.14',
        command: 'restic -r REPO restore SNAPSHOT --target DIR',
        argv: ['restic', '-r', t.resticRepo, 'restore', ids.restic, '--target', paths.restoreRestic],
        env: t.resticEnv,
      },
      measured,
      t.serverPids,
    );
    // restic restores the snapshot's absolute paths under the target.
    check('restic', path.join(paths.restoreRestic, paths.tree));
    rmSync(paths.restoreRestic, { recursive: true, force: true });

    empty(paths.restorePeer);
    await measure(t.where, 'restore', t.peerRestore(paths.restorePeer), measured, t.serverPids);
    check('peer', paths.restorePeer);
    rmSync(paths.restorePeer, { recursive: true, force: true });
  }
}

interface DayFigures {
  wall: number;
  cpu: number;
  rssMiB: number;
  stored: number;
  total: number;
}
interface DayRecord {
  day: number;
  ours: DayFigures;
  restic?: DayFigures;
}
const dayRecords: DayRecord[] = [];

async function dailyBackups(pristine: string): Promise<void> {
  copyTree(pristine);
  rmSync(paths.storeDays, { recursive: true, force: true });
  const resticTarget = { resticRepo: paths.resticDays, resticEnv, resticBytes: async () => du(paths.resticDays) };
  if (resticDays) await resticInit(paths.resticDays, resticEnv, async () => rmSync(paths.resticDays, { recursive: true, force: true }));
  const figures = (s: Sample, total: number): DayFigures => ({ wall: s.wall, cpu: s.user + s.sys, rssMiB: s.maxRssKiB / 1024, stored: s.stored, total });
  for (let day = 1; day <= days; day++) {
    if (day > 1) {
      const text = changeTree(paths.tree, { modify: 0.02, add: 0, remove: 0 }, 2000 + day);
      if (day === 2) facts.push(`daily change (each day): ${text}`);
    }
    const o = await measure('fs', 'days', { ...oursCreate('bench-days', async () => du(paths.storeDays)), name: `ours, repository, day ${day}` }, false);
    manifestOf(o, `ours, day ${day}`);
    const record: DayRecord = { day, ours: figures(o, du(paths.storeDays)) };
    if (resticDays) {
      const r = await measure('fs', 'days', { ...resticBackup(resticTarget), name: `restic 0.14, day ${day}` }, false);
      record.restic = figures(r, du(paths.resticDays));
    }
    dayRecords.push(record);
  }
}

interface Writer {
  child: ChildProcess;
  exited: Promise<void>;
}

/**
 * A writer the freeze really stops: a bash loop in its own cgroup v2 appending its clock
 * ($EPOCHREALTIME, µs) to a file of the tree every ~5 ms, so that the longest silence in that
 * file shows the pause from the writer's side. It ends on its own once this process is gone,
 * however this process ends.
 */
async function startWriter(): Promise<Writer> {
  await removePauseCgroup(); // a previous run's, killed before its clean-up
  mkdirSync(PAUSE_CGROUP);
  // The shell joins the cgroup before its first write, so that none escapes the freezer.
  const loop = 'echo $$ > "$1/cgroup.procs" || exit 1; while kill -0 "$2" 2>/dev/null; do echo "$EPOCHREALTIME" >> "$3"; sleep 0.005; done';
  const child = spawn('bash', ['-c', loop, 'writer', PAUSE_CGROUP, String(process.pid), paths.writerLog], { stdio: 'ignore', env: { PATH: process.env.PATH, LC_ALL: 'C' } });
  const writer = { child, exited: new Promise<void>((resolve) => child.once('exit', () => resolve())) };
  await sleep(300);
  const failure = child.exitCode !== null ? `the writer exited at once (${child.exitCode})` : writerClock().length === 0 ? `the writer wrote nothing to ${paths.writerLog}` : undefined;
  if (failure) {
    await stopWriter(writer);
    throw new Error(failure);
  }
  return writer;
}

async function stopWriter(writer: Writer): Promise<void> {
  writer.child.kill('SIGKILL'); // a cgroup v2 freezer lets a fatal signal through; a sleep left over ends within 5 ms
  await Promise.race([writer.exited, sleep(5000)]);
  await removePauseCgroup();
}

/** Thaws and empties the pause cgroup (cgroup.kill: kernel ≥ 5.14), then removes it: rmdir fails (EBUSY) while a process is in it. */
async function removePauseCgroup(): Promise<void> {
  if (!existsSync(PAUSE_CGROUP)) return;
  for (const [file, value] of [
    ['cgroup.freeze', '0'],
    ['cgroup.kill', '1'],
  ] as const) {
    try {
      writeFileSync(path.join(PAUSE_CGROUP, file), value);
    } catch {
      // absent (an older kernel) or the cgroup is gone already
    }
  }
  if (!(await removeCgroup(PAUSE_CGROUP))) throw new Error(`cannot remove the writer's cgroup ${PAUSE_CGROUP}: a process is still in it`);
}

function pauseCgroupFrozen(): boolean {
  return /^frozen 1$/m.test(readFileSync(path.join(PAUSE_CGROUP, 'cgroup.events'), 'utf8'));
}

/** The writer's clock readings, in s. Only whole readings: the change of section 3 may append noise to the file or delete it (the writer starts it again). */
function writerClock(): number[] {
  if (!existsSync(paths.writerLog)) return [];
  return readFileSync(paths.writerLog, 'latin1')
    .split('\n')
    .filter((line) => /^\d{9,}\.\d{6}$/.test(line))
    .map(Number);
}

/** The longest silence of the writer between two of its readings within [from, to] (s), in ms; undefined with fewer than two. */
function writerGapMs(from: number, to: number): number | undefined {
  const clock = writerClock().filter((t) => t >= from && t <= to);
  let gap: number | undefined;
  for (let i = 1; i < clock.length; i++) gap = Math.max(gap ?? 0, (clock[i]! - clock[i - 1]!) * 1000);
  return gap;
}

const PAUSE_STEPS = { first: '6. first backup', second: '6. second, unchanged', change: '6. 2 % mod., 1 % add., 1 % del.' } as const;
type PauseStep = keyof typeof PAUSE_STEPS;

interface PauseRecord {
  step: PauseStep;
  /** ours (repository), ours-archive. */
  key: string;
  contender: string;
  command: string;
  pauseMs: number | null;
  /** The writer's longest silence during the command (ms): the pause as the writer saw it. */
  writerGapMs: number | null;
  wall: number;
  cpu: number;
  rssMiB: number;
  stored: number;
  files: number;
  /** Repository only: files not read, their parent's chunks reused. */
  unchangedFiles: number | null;
  readInsideFreeze: boolean;
}
const pauseRecords: PauseRecord[] = [];
/** The filesystem type of the tree (findmnt): ext4 cannot be snapshotted, so the files are read inside the freeze. */
let pauseFilesystem: string | undefined;

async function pauseSection(pristine: string): Promise<void> {
  copyTree(pristine);
  pauseFilesystem = run('findmnt', ['-n', '-o', 'FSTYPE', '-T', paths.tree]).trim();
  log(`--- pause: consistent backups of the tree on ${pauseFilesystem}, writer frozen in ${PAUSE_CGROUP}`);
  facts.push(`pause: the tree is on ${pauseFilesystem} (findmnt); the writer (cgroup v2 ${PAUSE_CGROUP}) appends its clock to TREE/writer.log every ~5 ms`);
  for (const dir of [paths.storePauseRepo, paths.storePauseArchive]) rmSync(dir, { recursive: true, force: true });
  const contenders = [oursCreate('bench-pause-repo', async () => du(paths.storePauseRepo)), oursCreate('bench-pause-archive', async () => du(paths.storePauseArchive))];
  const writer = await startWriter();
  try {
    for (const step of Object.keys(PAUSE_STEPS) as PauseStep[]) {
      if (step === 'change') {
        const text = changeTree(paths.tree, { modify: 0.02, add: 0.01, remove: 0.01 }, 1001);
        log(`pause change: ${text}`);
        facts.push(`pause, changed tree: ${text}`);
      }
      // Both contenders back up the same tree at each step.
      for (const c of contenders) {
        const from = Date.now() / 1000;
        const sample = await measure('fs', 'pause', c, false);
        const gap = writerGapMs(from, Date.now() / 1000);
        const m = manifestOf(sample, `${c.name}, pause ${step}`);
        const e = m.elements[0]!;
        const record: PauseRecord = {
          step,
          key: c.key,
          contender: c.name,
          command: c.command,
          pauseMs: m.pauseMs,
          writerGapMs: gap === undefined ? null : Math.round(gap * 10) / 10,
          wall: sample.wall,
          cpu: sample.user + sample.sys,
          rssMiB: sample.maxRssKiB / 1024,
          stored: sample.stored,
          files: e.facts.files,
          unchangedFiles: e.facts.unchangedFiles ?? null,
          readInsideFreeze: e.readInsideFreeze === true,
        };
        pauseRecords.push(record);
        log(`  pause ${m.pauseMs} ms, writer's longest gap ${gap?.toFixed(0) ?? 'n/a'} ms, unchanged files ${record.unchangedFiles ?? 'n/a'} of ${record.files}, read inside the freeze: ${record.readInsideFreeze}`);
        if (m.mode !== 'consistent' || m.pauseMs === null) problems.push(`pause ${step}, ${c.name}: mode ${m.mode}, pauseMs ${m.pauseMs}: nothing was frozen`);
        if (!record.readInsideFreeze) problems.push(`pause ${step}, ${c.name}: the tree was snapshotted (${pauseFilesystem}), not read inside the freeze`);
        if (gap === undefined) problems.push(`pause ${step}, ${c.name}: the writer wrote nothing during the backup`);
        if (pauseCgroupFrozen()) problems.push(`pause ${step}, ${c.name}: the writer's cgroup is still frozen after the backup`);
        if (e.warnings.length) problems.push(`${m.id}: ${e.warnings.length} warnings: ${JSON.stringify(e.warnings).slice(0, 300)}`);
      }
    }
  } finally {
    await stopWriter(writer);
  }
  for (const dir of [paths.storePauseRepo, paths.storePauseArchive]) rmSync(dir, { recursive: true, force: true }); // ~2 GiB at 1g
}

// ------------------------------------------------------------------ report

function rowFor(where: Where, section: Section, key: string): Row | undefined {
  const r = rows.find((x) => x.where === where && x.section === section && x.key === key);
  return r && r.samples.length ? r : undefined;
}

/** A markdown table; `|` inside cells escaped. */
function table(headers: string[], body: string[][], leftColumns = 2): string {
  const cells = body.map((r) => r.map((c) => c.replaceAll('|', '\\|')));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (cs: string[]) => `| ${cs.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(headers), `|${widths.map((w, i) => (i < leftColumns ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...cells.map(line)].join('\n');
}

const SECTION_TITLES: Record<Section, string> = {
  first: '1. first backup',
  second: '2. second, unchanged',
  change: '3. 2 % mod., 1 % add., 1 % del.',
  days: '4. daily backups',
  restore: '5. restore (first backup)',
  pause: '6. pause of consistent backups',
};

function title(where: Where, section: Section): string {
  return where === 'rgw' ? `${SECTION_TITLES[section]} · RGW` : SECTION_TITLES[section];
}

function report(started: number, load: number[], tree: TreeInfo | undefined): string {
  const out: string[] = [];
  const treeBytes = tree?.bytes ?? Number.NaN;
  out.push(
    `${statistic === 'best' ? 'Best' : 'Median'} of ${runs} measured run(s)${warmup ? ' (first backup and restore: after one warm-up run each)' : ''}; warm page cache; the fs stores on the same disk as the tree.`,
    'CPU s = user+sys of the whole process tree; cores = CPU s / wall s; RSS = peak of the largest process; stored = what the store (fs: du -sb; RGW: object sizes) grew by; load = 1-min load average before the command.',
    'time ×, stored × = ours (repository) / that row (time × < 1: ours is faster).',
    '',
  );
  const body: string[][] = [];
  const rgwRows = rows.some((r) => r.where === 'rgw' && r.samples.length);
  for (const where of ['fs', 'rgw'] as const) {
    for (const section of SECTIONS) {
      const ours = rowFor(where, section, 'ours');
      for (const r of rows.filter((x) => x.where === where && x.section === section && x.samples.length)) {
        const s = pick(r.samples);
        const rss = Math.max(...r.samples.map((x) => x.maxRssKiB)) / 1024;
        const cpu = s.user + s.sys;
        let timeRatio = '';
        let storedRatio = '';
        if (ours && r !== ours) {
          const o = pick(ours.samples);
          timeRatio = (o.wall / s.wall).toFixed(2);
          if (section !== 'restore') storedRatio = s.stored > 0 ? (o.stored / s.stored).toFixed(2) : o.stored > 0 ? '∞' : '1.00';
        }
        const storedText = section === 'restore' ? '' : section === 'first' ? mib(s.stored) : `${mib(s.stored)} (${((s.stored / treeBytes) * 100).toFixed(2)} %)`;
        const cellsOf = [title(where, section), r.name, s.wall.toFixed(2), cpu.toFixed(2), (cpu / s.wall).toFixed(2), rss.toFixed(0), storedText, timeRatio, storedRatio, s.load.toFixed(2)];
        if (rgwRows) cellsOf.push(s.serverCpu === undefined ? '' : s.serverCpu.toFixed(2));
        body.push(cellsOf);
      }
    }
  }
  const headers = ['section', 'contender', 'wall s', 'CPU s', 'cores', 'RSS MiB', 'stored MiB', 'time ×', 'stored ×', 'load'];
  if (rgwRows) headers.push('RGW+OSD CPU s');
  if (body.length) out.push(table(headers, body), ''); // none with --only days or pause

  if (dayRecords.length) {
    const full = dayRecords[0]!;
    const last = dayRecords.at(-1)!;
    const later = dayRecords.slice(1);
    const mean = (f: (d: DayRecord) => number) => later.reduce((a, d) => a + f(d), 0) / Math.max(1, later.length);
    const rowOf = (who: string, get: (d: DayRecord) => DayFigures | undefined) => [
      who,
      mib(get(full)!.total),
      mib(get(last)!.total),
      (get(last)!.total / get(full)!.total).toFixed(2),
      mib(mean((d) => get(d)!.stored)),
      mean((d) => get(d)!.wall).toFixed(2),
      mean((d) => get(d)!.cpu).toFixed(2),
      Math.max(...dayRecords.map((d) => get(d)!.rssMiB)).toFixed(0),
    ];
    const lines = [rowOf('ours, repository', (d) => d.ours)];
    if (full.restic && last.restic) lines.push(rowOf('restic 0.14', (d) => d.restic));
    out.push(`4. Daily backups (fs): ${dayRecords.length} backups into fresh stores, 2 % of the files appended to (4 KiB each) before each but the first:`);
    out.push('');
    out.push(table(['contender', 'day 1 (full) MiB', `after day ${last.day} MiB`, 'total / full', 'added/day MiB (mean)', 'wall s (mean)', 'CPU s (mean)', 'RSS MiB (max)'], lines, 1));
    out.push('');
  }

  if (pauseRecords.length) {
    out.push(
      `6. Pause of consistent backups on ${pauseFilesystem} (no snapshot: the tree is read inside the freeze) with a writer in a frozen cgroup v2; ` +
        "pause = the manifest's pauseMs; writer gap = the longest silence of the writer (a line every ~5 ms) during the command:",
    );
    out.push('');
    const lines = pauseRecords.map((p) => [
      PAUSE_STEPS[p.step],
      p.contender,
      p.pauseMs === null ? 'n/a' : p.pauseMs.toFixed(0),
      p.writerGapMs === null ? 'n/a' : p.writerGapMs.toFixed(0),
      p.wall.toFixed(2),
      p.unchangedFiles === null ? '' : `${p.unchangedFiles} of ${p.files}`,
    ]);
    out.push(table(['section', 'contender', 'pause ms', 'writer gap ms', 'wall s', 'unchanged files'], lines));
    out.push('');
  }

  // The issue's goals.
  const goals: string[][] = [];
  const w = (where: Where, section: Section, key: string) => {
    const r = rowFor(where, section, key);
    return r ? pick(r.samples) : undefined;
  };
  const speedup = (where: Where, section: Section, key: string) => {
    const o = w(where, section, 'ours');
    const p = w(where, section, key);
    return o && p ? p.wall / o.wall : undefined;
  };
  const slowdown = (where: Where, section: Section, key: string) => {
    const v = speedup(where, section, key);
    return v === undefined ? undefined : 1 / v;
  };
  const goal = (what: string, value: number | undefined, text: (v: number) => string, target: string, ok?: (v: number) => boolean) => {
    const known = value !== undefined && Number.isFinite(value);
    goals.push([what, known ? text(value) : 'n/a', target, known && ok ? (ok(value) ? 'met' : 'MISSED') : '']);
  };
  const x = (v: number) => `${v.toFixed(2)}×`;
  for (const where of ['fs', 'rgw'] as const) {
    if (!rows.some((r) => r.where === where && r.samples.length)) continue;
    const at = where === 'rgw' ? ' (RGW)' : '';
    goal(`first backup${at}: speed ours / restic`, speedup(where, 'first', 'restic'), x, '≥ 3×', (v) => v >= 3);
    if (where === 'fs') goal('first backup: speed ours / tar | zstd -1 -T0 > FILE', speedup(where, 'first', 'peer'), x, '≥ 0.75×', (v) => v >= 0.75);
    else goal('first backup (RGW): speed ours / tar | zstd | rclone rcat', speedup(where, 'first', 'peer'), x, '≥ 1.0×', (v) => v >= 1);
    if (where === 'fs') goal('first backup: speed ours / our archive mode (information)', speedup(where, 'first', 'ours-archive'), x, '');
    goal(`second backup${at}: time ours / restic`, slowdown(where, 'second', 'restic'), x, '≤ 1×', (v) => v <= 1);
    const s2 = w(where, 'second', 'ours');
    goal(`second backup${at}: new bytes ours / tree`, s2 && s2.stored / treeBytes, (v) => `${(v * 100).toFixed(3)} %`, '< 0.1 %', (v) => v < 0.001);
    goal(`changed tree${at}: time ours / restic`, slowdown(where, 'change', 'restic'), x, '≤ 1×', (v) => v <= 1);
    const c3o = w(where, 'change', 'ours');
    const c3r = w(where, 'change', 'restic');
    goal(`changed tree${at}: stored ours / restic`, c3o && c3r && c3o.stored / c3r.stored, x, '≤ 1.1×', (v) => v <= 1.1);
    if (where === 'fs' && dayRecords.length) {
      goal(`${dayRecords.length} daily backups: total stored / one full (ours)`, dayRecords.at(-1)!.ours.total / dayRecords[0]!.ours.total, x, '≤ 1.5×', (v) => v <= 1.5);
      const r = dayRecords.at(-1)!.restic;
      if (r) goal(`${dayRecords.length} daily backups: total stored / one full (restic, information)`, r.total / dayRecords[0]!.restic!.total, x, '');
    }
    goal(`restore${at}: speed ours / restic`, speedup(where, 'restore', 'restic'), x, '≥ 1×', (v) => v >= 1);
    goal(`restore${at}: speed ours / ${where === 'fs' ? 'zstd -dc | tar -x' : 'rclone cat | zstd -dc | tar -x'}`, speedup(where, 'restore', 'peer'), x, where === 'fs' ? '≥ 1.5×' : '', where === 'fs' ? (v) => v >= 1.5 : undefined);
    const rssOf = (sections: Section[]) => {
      const values = rows.filter((r) => r.where === where && r.key === 'ours' && sections.includes(r.section)).flatMap((r) => r.samples.map((s) => s.maxRssKiB / 1024));
      if (where === 'fs' && sections.includes('first')) values.push(...dayRecords.map((r) => r.ours.rssMiB));
      return values.length ? Math.max(...values) : undefined;
    };
    goal(`peak RSS of our backups${at} (MiB)`, rssOf(['first', 'second', 'change']), (v) => v.toFixed(0), `≤ ${RSS_GOAL_MIB}`, (v) => v <= RSS_GOAL_MIB);
    goal(`peak RSS of our restore${at} (MiB)`, rssOf(['restore']), (v) => v.toFixed(0), `≤ ${RSS_GOAL_MIB}`, (v) => v <= RSS_GOAL_MIB);
  }
  if (pauseRecords.length) {
    const pauseOf = (key: string) => pauseRecords.find((p) => p.step === 'second' && p.key === key)?.pauseMs ?? undefined;
    const ms = (v: number) => `${v.toFixed(0)} ms`;
    goal(`second consistent backup on ${pauseFilesystem}: pause`, pauseOf('ours'), ms, '(measure)');
    goal(`second consistent backup on ${pauseFilesystem}: pause, archive mode (information)`, pauseOf('ours-archive'), ms, '');
  }
  if (goals.length) out.push('Goals of issue #13:', '', table(['goal', 'value', 'target', ''], goals, 1), '');

  // One note per measured run, in order: the one of the run that counts.
  const notes = rows.filter((r) => r.notes.length).map((r) => `- ${title(r.where, r.section)}, ${r.name}: ${r.notes[r.samples.indexOf(pick(r.samples))] ?? r.notes.at(-1)}`);
  if (notes.length || facts.length) out.push('Details:', '', ...facts.map((f) => `- ${f}`), ...notes, '');
  out.push('Commands (CFG: the config written to the work dir; TREE: the copy of the tree; REPO: the restic repository, a directory or s3:ENDPOINT/bucket/restic):', '');
  const seen = new Set<string>();
  for (const { name, command } of [...rows.filter((x) => x.samples.length), ...pauseRecords.map((p) => ({ name: `${p.contender} (pause)`, command: p.command }))]) {
    const line = `- ${name}: \`${command}\``;
    if (!seen.has(line)) out.push(line);
    seen.add(line);
  }
  out.push('');
  const restic = spawnSync('restic', ['version'], { encoding: 'utf8' }).stdout?.trim();
  if (process.env.BENCH_AGENT_VERSION) out.push(`Agent: ${process.env.BENCH_AGENT_VERSION}.`);
  if (restic) out.push(`${restic}.`);
  if (tree) out.push(`Tree: ${sizeName} = ${tree.files} files, ${(tree.bytes / MIB).toFixed(0)} MiB.`);
  out.push(...closingLines(load, started, problems));
  return out.join('\n');
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  const started = performance.now();
  const load = loadavg();
  const tools = ['restic', 'zstd', 'tar', 'du', ...(s3 ? ['rclone'] : [])];
  for (const tool of tools) {
    if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).error) throw new Error(`${tool} not found: scripts/bench.sh installs it (apt-get install ${tool})`);
  }
  if (only.has('rgw') && rgwEnvFile && !s3) throw new Error(`--rgw-env ${rgwEnvFile}: no such file`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  log(`BENCH_DIR=${benchDir} tree=${sizeName} runs=${runs} warm-up=${warmup} days=${days} sections=${[...only].join(',')}${s3 ? ` RGW ${s3.endpoint}` : ''}`);
  let tree: TreeInfo | undefined;
  try {
    tree = ensureTree(path.join(benchDir, `tree-${sizeName}`), parseTreeSize(sizeName), log);
    writeConfig();
    // fs: 1, 2, 3, 5 on one tree (5 restores the first backups), then 4 and 6 each on a fresh copy.
    if (only.has('first')) {
      copyTree(tree.dir);
      const ids = await first(fsTarget, tree);
      if (only.has('second')) await second(fsTarget);
      if (only.has('change')) await change(fsTarget);
      if (only.has('restore')) await restore(fsTarget, ids, tree.dir);
    }
    for (const dir of [paths.storeRepo, paths.restic, paths.peerFile]) rmSync(dir, { recursive: true, force: true });
    if (s3) {
      log(`--- RGW ${s3.endpoint}, bucket ${BUCKET}`);
      try {
        await client!.send(new CreateBucketCommand({ Bucket: BUCKET }));
      } catch (error) {
        if (!['BucketAlreadyOwnedByYou', 'BucketAlreadyExists'].includes((error as { name?: string }).name ?? '')) throw error;
      }
      for (const prefix of ['agent/', 'restic/', 'peer/']) await deletePrefix(prefix);
      const rgw = rgwTarget(s3);
      copyTree(tree.dir);
      const ids = await first(rgw, tree);
      await second(rgw);
      await change(rgw);
      await restore(rgw, ids, tree.dir);
      for (const prefix of ['agent/', 'restic/', 'peer/']) await deletePrefix(prefix);
    } else if (only.has('rgw') && process.argv.includes('--only')) {
      problems.push('section rgw skipped: no --rgw-env (scripts/bench.sh repository with BENCH_RGW=1 starts the RGW and passes it)');
    }
    if (only.has('days')) await dailyBackups(tree.dir);
    if (only.has('pause')) await pauseSection(tree.dir);
  } catch (error) {
    problems.push(`the run stopped: ${(error as Error).message.split('\n').slice(0, 6).join(' | ').slice(0, 1500)}`);
    process.exitCode = 1;
  } finally {
    const text = report(started, load, tree);
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const json = { agent: process.env.BENCH_AGENT_VERSION ?? null, statistic, runs, warmup, tree, rows: rows.map((r) => ({ ...r, samples: r.samples.map(({ stdout: _, ...s }) => s) })), days: dayRecords, pause: { filesystem: pauseFilesystem ?? null, cgroup: PAUSE_CGROUP, records: pauseRecords }, facts, problems };
    writeFileSync(path.join(benchDir, `results-repository-${stamp}.json`), `${JSON.stringify(json, null, 2)}\n`);
    writeFileSync(path.join(benchDir, `results-repository-${stamp}.txt`), `${text}\n`);
    console.log(text);
    log(`results written to ${path.join(benchDir, `results-repository-${stamp}.{txt,json}`)}`);
    if (!keep) rmSync(work, { recursive: true, force: true });
  }
}

await main();
