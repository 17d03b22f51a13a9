/**
 * The benchmark behind `npm run bench` (scripts/bench.sh starts the RGW and calls this):
 * our agent, run as the real CLI, against the classic pipelines on the same generated trees.
 *
 *   node bench/run.ts [--only tar,stages,fs,restore,rgw] [--rgw-env FILE]
 *
 * Environment: BENCH_DIR (trees and scratch, default /var/tmp/storage-agent-bench),
 * BENCH_SIZES (default 1g,3g), BENCH_RUNS (measured runs per command, default 3; RGW at most
 * 3), BENCH_LEVELS_SIZE (tree of the zstd level 1 vs 3 comparison, default the first size),
 * BENCH_RGW_SIZES (trees sent to the RGW, default those of at most 1 GiB). The level
 * comparison and the `stages` section (our pipeline without the store) run on one tree.
 *
 * Every command runs as a child under GNU `/usr/bin/time -f '%e %U %S %M'`: wall seconds,
 * user and system CPU seconds of the whole process tree (bash, tar, zstd, rclone, node and its
 * threads), and the peak RSS of the largest single process in it. Each command runs once to
 * warm up (page cache, RGW), then BENCH_RUNS times, the commands of a section taking turns so
 * that drift on a shared machine hits all alike. Reported: the fastest run (BENCH_STAT=best,
 * the default: other work on a shared machine only ever slows a run down) or the median one
 * (BENCH_STAT=median), and the highest peak RSS of all runs.
 */
import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  DeleteObjectsCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { rcloneRemoteEnv, readRgwEnv, rgwStoreLines, type S3Settings } from './rgw-env.ts';
import { ensureTree, parseTreeSize, type TreeInfo } from './tree.ts';
import { agentCommand, closingLines, option, processCpuSeconds, timed as timedRun } from './timing.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const NODE = process.execPath;
/** The agent's CLI, as installed (its Node flags). */
const AGENT = agentCommand(ROOT);
const PACK_SINK = path.join(ROOT, 'bench/pack-sink.ts');
const RSS_GOAL_MIB = 256;
const RGW_MAX_RUNS = 3;
const BUCKET = 'bench';

// ------------------------------------------------------------------ options

const benchDir = path.resolve(process.env.BENCH_DIR || '/var/tmp/storage-agent-bench');
const sizeNames = (process.env.BENCH_SIZES || '1g,3g').split(',').map((s) => s.trim()).filter(Boolean);
const runs = Math.max(1, Number(process.env.BENCH_RUNS || 3));
const sections = new Set((option('--only') ?? 'tar,stages,fs,restore,rgw').split(','));
const levelsSize = process.env.BENCH_LEVELS_SIZE || sizeNames[0]!;
const rgwSizes = process.env.BENCH_RGW_SIZES ? process.env.BENCH_RGW_SIZES.split(',') : sizeNames.filter((s) => parseTreeSize(s) <= 1024 ** 3);
const rgwEnvFile = option('--rgw-env') ?? process.env.BENCH_RGW_ENV;
const work = path.join(benchDir, 'work');

// ------------------------------------------------------------------ measuring

interface Sample {
  wall: number;
  user: number;
  sys: number;
  maxRssKiB: number;
  /** CPU seconds of radosgw + ceph-osd during the run (RGW runs only). */
  serverCpu?: number;
  stdout: string;
}

interface Row {
  section: string;
  /** Which contender: ours, peer, peer-sync, ours-l3. */
  key: string;
  size: string;
  name: string;
  inputBytes: number;
  samples: Sample[];
  note?: string;
}

const rows: Row[] = [];
const problems: string[] = [];

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

/** Runs argv under /usr/bin/time; rejects with its stderr if it fails. */
async function timed(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<Sample> {
  const run = await timedRun(argv, { cwd: ROOT, timeFile: path.join(work, 'time.out'), env });
  if (run.stderr.trim()) log(`  stderr of ${path.basename(argv[0]!)}: ${run.stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 600)}`);
  return { wall: run.wall, user: run.user, sys: run.sys, maxRssKiB: run.maxRssKiB, stdout: run.stdout };
}

function sh(script: string, ...params: string[]): string[] {
  return ['bash', '-c', script, 'bench', ...params];
}

function mbps(bytes: number, seconds: number): number {
  return bytes / 1e6 / seconds;
}

const statistic = process.env.BENCH_STAT === 'median' ? 'median' : 'best';

/** The run that counts: the fastest, or the median by wall time. */
function pick(samples: Sample[]): Sample {
  const sorted = [...samples].sort((a, b) => a.wall - b.wall);
  return statistic === 'best' ? sorted[0]! : sorted[Math.floor((sorted.length - 1) / 2)]!;
}

function record(row: Omit<Row, 'samples'>): Row {
  const found = rows.find((r) => r.section === row.section && r.size === row.size && r.key === row.key);
  if (found) return found;
  const created = { ...row, samples: [] };
  rows.push(created);
  return created;
}

interface Contender {
  row: Omit<Row, 'samples'>;
  argv: () => string[];
  env?: NodeJS.ProcessEnv;
  /** Untimed, before each run (e.g. an empty target). */
  before?: () => void | Promise<void>;
  /** Untimed, after each run: checks of the output, then clean-up. */
  after?: (sample: Sample, measured: boolean) => void | Promise<void>;
  serverPids?: () => number[];
}

/** One warm-up run of each, then `count` rounds in which each runs once. */
async function compete(contenders: Contender[], count: number): Promise<void> {
  for (let round = 0; round <= count; round++) {
    for (const c of contenders) {
      await c.before?.();
      const pids = c.serverPids?.() ?? [];
      const cpuBefore = pids.map(processCpuSeconds);
      const sample = await timed(c.argv(), c.env);
      if (pids.length) sample.serverCpu = pids.map((pid, i) => processCpuSeconds(pid) - cpuBefore[i]!).reduce((a, b) => a + b, 0);
      const measured = round > 0;
      const label = measured ? `run ${round}/${count}` : 'warm-up';
      log(
        `${c.row.size} ${c.row.name}: ${label} ${sample.wall.toFixed(2)} s, ${mbps(c.row.inputBytes, sample.wall).toFixed(0)} MB/s, CPU ${(sample.user + sample.sys).toFixed(2)} s, RSS ${(sample.maxRssKiB / 1024).toFixed(0)} MiB` +
          (sample.serverCpu === undefined ? '' : `, RGW+OSD CPU ${sample.serverCpu.toFixed(2)} s`),
      );
      if (measured) record(c.row).samples.push(sample);
      await c.after?.(sample, measured);
      settle();
    }
  }
}

/** Writes dirty pages back (untimed), so one run's writes do not slow the next one. */
function settle(): void {
  spawnSyncChecked('sync', []);
}

function spawnSyncChecked(command: string, argv: string[]): string {
  const result = spawnSync(command, argv, { cwd: ROOT, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (result.status !== 0) throw new Error(`${command} ${argv.join(' ')} failed (${result.status ?? result.signal}): ${result.stderr}`);
  return result.stdout;
}

/** utime + stime of a process, from /proc (clock ticks are 100 Hz on Linux). */

// ------------------------------------------------------------------ the agent's config


function writeConfig(file: string, tree: string, level: number, s3: S3Settings | undefined): void {
  const lines = [
    `stateDir: ${path.join(work, 'state')}`,
    'defaultStore: local',
    `compression: {algorithm: zstd, level: ${level}}`,
    'stores:',
    `  local: {type: fs, path: ${path.join(work, 'store')}}`,
  ];
  if (s3) lines.push(...rgwStoreLines(s3, BUCKET));
  lines.push('environments:', '  bench-fs:', '    services:', `      files: {kind: files, path: ${tree}}`);
  if (s3) lines.push('  bench-s3:', '    store: rgw', '    services:', `      files: {kind: files, path: ${tree}}`);
  lines.push('  bench-restore:', '    services:', `      files: {kind: files, path: ${path.join(work, 'restore-ours')}}`);
  writeFileSync(file, `${lines.join('\n')}\n`);
}

interface ManifestLike {
  id: string;
  elements: { storedBytes: number; rawBytes: number; objects: { key: string; bytes: number }[]; facts: { files: number; contentBytes: number } }[];
}

function manifestOf(sample: Sample): ManifestLike {
  return JSON.parse(sample.stdout) as ManifestLike;
}

// ------------------------------------------------------------------ S3 helpers


function s3Client(s3: S3Settings): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKey, secretAccessKey: s3.secretKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
  });
}

async function ensureBucket(client: S3Client): Promise<void> {
  try {
    await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
  } catch (error) {
    if ((error as { name?: string }).name !== 'BucketAlreadyOwnedByYou' && (error as { name?: string }).name !== 'BucketAlreadyExists') throw error;
  }
}

/** Deletes every object and aborts every multipart upload in the bench bucket; returns what it found. */
async function emptyBucket(client: S3Client): Promise<{ objects: { key: string; size: number }[]; uploads: string[] }> {
  const objects: { key: string; size: number }[] = [];
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, ContinuationToken: token }));
    const keys = (page.Contents ?? []).map((o) => ({ key: o.Key!, size: o.Size ?? 0 }));
    objects.push(...keys);
    if (keys.length) await client.send(new DeleteObjectsCommand({ Bucket: BUCKET, Delete: { Objects: keys.map((k) => ({ Key: k.key })), Quiet: true } }));
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  const uploads = (await client.send(new ListMultipartUploadsCommand({ Bucket: BUCKET }))).Uploads ?? [];
  for (const u of uploads) await client.send(new AbortMultipartUploadCommand({ Bucket: BUCKET, Key: u.Key!, UploadId: u.UploadId! }));
  return { objects, uploads: uploads.map((u) => `${u.Key}:${u.UploadId}`) };
}

// ------------------------------------------------------------------ the sections

const compressed: Record<string, { ours?: number; oursL3?: number; zstd?: number }> = {};

async function tarStage(size: string, tree: TreeInfo): Promise<void> {
  await compete(
    [
      {
        row: { section: 'tar', key: 'peer', size, name: 'GNU tar -cf - | cat > /dev/null', inputBytes: tree.bytes },
        argv: () => sh('tar -cf - -C "$1" . | cat > /dev/null', tree.dir),
      },
      {
        row: { section: 'tar', key: 'ours', size, name: 'ours: packTree → discarding Writable', inputBytes: tree.bytes },
        argv: () => [NODE, PACK_SINK, tree.dir],
        after: (sample) => {
          const out = JSON.parse(sample.stdout) as { files: number; contentBytes: number };
          if (out.files !== tree.files || out.contentBytes !== tree.bytes) problems.push(`packTree of ${size}: ${out.files} files / ${out.contentBytes} bytes, expected ${tree.files} / ${tree.bytes}`);
        },
      },
    ],
    runs,
  );
}

/** Where the time of a backup goes: our pipeline without the store, next to tar | zstd. */
async function stages(size: string, tree: TreeInfo): Promise<void> {
  await compete(
    [
      {
        row: { section: 'stages', key: 'peer', size, name: 'tar -cf - | zstd -1 -T0 > /dev/null', inputBytes: tree.bytes },
        argv: () => sh('tar -cf - -C "$1" . | zstd -1 -T0 -q > /dev/null', tree.dir),
      },
      {
        row: { section: 'stages', key: 'ours-zstd', size, name: 'ours: packTree → createCompressor(zstd 1) → discard', inputBytes: tree.bytes },
        argv: () => [NODE, PACK_SINK, tree.dir, '--zstd', '1'],
      },
      {
        row: { section: 'stages', key: 'ours', size, name: 'ours: same + ByteCounter, DigestStream (backup create minus store)', inputBytes: tree.bytes },
        argv: () => [NODE, PACK_SINK, tree.dir, '--zstd', '1', '--agent'],
      },
    ],
    runs,
  );
}

async function fsEndToEnd(size: string, tree: TreeInfo, withLevels: boolean): Promise<string> {
  const store = path.join(work, 'store');
  const peerFile = path.join(work, 'peer.tar.zst');
  const configs = { 1: path.join(work, 'config-l1.yaml'), 3: path.join(work, 'config-l3.yaml') };
  const s3 = readRgwEnv(rgwEnvFile);
  writeConfig(configs[1], tree.dir, 1, s3);
  writeConfig(configs[3], tree.dir, 3, s3);
  rmSync(store, { recursive: true, force: true });
  let keep = ''; // the last level-1 backup: restored in the restore section
  const sizes = (compressed[size] ??= {});
  let checked = false;
  const ours = (level: 1 | 3): Contender => ({
    row: { section: level === 1 ? 'fs' : 'levels', key: 'ours', size, name: `ours: backup create → fs store (zstd level ${level})`, inputBytes: tree.bytes },
    argv: () => [...AGENT, '--config', configs[level], 'backup', 'create', 'bench-fs', '--json'],
    after: (sample) => {
      const manifest = manifestOf(sample);
      const element = manifest.elements[0]!;
      if (element.facts.files !== tree.files || element.facts.contentBytes !== tree.bytes) {
        problems.push(`backup of ${size}: manifest says ${element.facts.files} files / ${element.facts.contentBytes} bytes, expected ${tree.files} / ${tree.bytes}`);
      }
      if (level === 1) sizes.ours = element.storedBytes;
      else sizes.oursL3 = element.storedBytes;
      const object = path.join(store, element.objects[0]!.key);
      if (level === 1 && !checked) {
        // Once per tree: the stored object is a plain .tar.zst that the standard tools read.
        checked = true;
        const entries = Number(spawnSyncChecked('bash', ['-c', 'zstd -dc "$1" | tar -tf - | wc -l', 'bench', object]).trim());
        if (entries !== tree.files + tree.directories) problems.push(`zstd -dc ${element.objects[0]!.key} | tar -t of ${size}: ${entries} entries, expected ${tree.files + tree.directories}`);
      }
      if (level === 1) {
        if (keep) rmSync(path.join(store, 'bench-fs', keep), { recursive: true, force: true });
        keep = manifest.id;
      } else {
        rmSync(path.join(store, 'bench-fs', manifest.id), { recursive: true, force: true });
      }
    },
  });
  const contenders: Contender[] = [
    ours(1),
    {
      row: { section: 'fs', key: 'peer', size, name: 'tar -cf - | zstd -1 -T0 > FILE', inputBytes: tree.bytes },
      argv: () => sh('tar -cf - -C "$1" . | zstd -1 -T0 -q > "$2"', tree.dir, peerFile),
      after: () => {
        sizes.zstd = statSync(peerFile).size;
      },
    },
    {
      row: { section: 'fs', key: 'peer-sync', size, name: 'tar -cf - | zstd -1 -T0 > FILE; sync FILE', inputBytes: tree.bytes, note: 'with an fsync, as our fs store does' },
      argv: () => sh('tar -cf - -C "$1" . | zstd -1 -T0 -q > "$2" && sync "$2"', tree.dir, peerFile),
    },
  ];
  if (withLevels) contenders.push(ours(3));
  await compete(contenders, runs);
  return keep;
}

async function restore(size: string, tree: TreeInfo, backupId: string): Promise<void> {
  const oursTarget = path.join(work, 'restore-ours');
  const peerTarget = path.join(work, 'restore-peer');
  const peerFile = path.join(work, 'peer.tar.zst');
  let checked = false;
  await compete(
    [
      {
        row: { section: 'restore', key: 'ours', size, name: 'ours: backup restore (fs store) → DIR', inputBytes: tree.bytes },
        argv: () => [...AGENT, '--config', path.join(work, 'config-l1.yaml'), 'backup', 'restore', 'bench-fs', backupId, '--target', 'bench-restore', '--yes', '--json'],
        before: () => rmSync(oursTarget, { recursive: true, force: true }),
        after: () => {
          if (!checked) {
            // Once per tree: the restored tree equals the source, byte for byte.
            checked = true;
            const diff = spawnSync('diff', ['-r', '-q', tree.dir, oursTarget], { encoding: 'utf8', maxBuffer: 64 << 20 });
            if (diff.status !== 0) problems.push(`restore of ${size} differs from the source: ${(diff.stdout + diff.stderr).split('\n').slice(0, 5).join(' | ')}`);
          }
          rmSync(oursTarget, { recursive: true, force: true });
        },
      },
      {
        row: { section: 'restore', key: 'peer', size, name: 'zstd -dc FILE | tar -xf - -C DIR', inputBytes: tree.bytes },
        argv: () => sh('zstd -dc "$1" | tar -xf - -C "$2"', peerFile, peerTarget),
        before: () => {
          rmSync(peerTarget, { recursive: true, force: true });
          mkdirSync(peerTarget);
        },
        after: () => rmSync(peerTarget, { recursive: true, force: true }),
      },
    ],
    runs,
  );
}

async function rgw(size: string, tree: TreeInfo): Promise<void> {
  const s3 = readRgwEnv(rgwEnvFile);
  if (!s3) {
    problems.push(`RGW section skipped: no RGW env file (${rgwEnvFile ?? 'none given'})`);
    return;
  }
  const client = s3Client(s3);
  await ensureBucket(client);
  await emptyBucket(client);
  const config = path.join(work, 'config-l1.yaml');
  writeConfig(config, tree.dir, 1, s3);
  const agentEnv = { ...process.env, BENCH_S3_ACCESS_KEY: s3.accessKey, BENCH_S3_SECRET_KEY: s3.secretKey };
  const rcloneEnv = rcloneRemoteEnv(s3);
  const afterEach = (who: string) => async () => {
    const found = await emptyBucket(client);
    if (found.uploads.length) problems.push(`${who} to RGW left multipart uploads behind: ${found.uploads.join(', ')}`);
    if (found.objects.length === 0) problems.push(`${who} to RGW: the bucket was empty after the upload`);
  };
  const count = Math.min(runs, RGW_MAX_RUNS);
  await compete(
    [
      {
        row: { section: 'rgw', key: 'ours', size, name: 'ours: backup create → RGW (s3 store)', inputBytes: tree.bytes },
        argv: () => [...AGENT, '--config', config, 'backup', 'create', 'bench-s3', '--json'],
        env: agentEnv,
        serverPids: () => s3.pids,
        after: afterEach('our backup'),
      },
      {
        row: { section: 'rgw', key: 'peer', size, name: 'tar | zstd -1 -T0 | rclone rcat', inputBytes: tree.bytes },
        argv: () =>
          sh(
            'tar -cf - -C "$1" . | zstd -1 -T0 -q | rclone rcat -q --config /dev/null --s3-chunk-size 8M --s3-upload-concurrency 4 "benchrgw:$2/peer/tree.tar.zst"',
            tree.dir,
            BUCKET,
          ),
        env: rcloneEnv,
        serverPids: () => s3.pids,
        after: afterEach('rclone rcat'),
      },
    ],
    count,
  );
}

// ------------------------------------------------------------------ report

function rowFor(section: string, size: string, key: string): Row | undefined {
  return rows.find((r) => r.section === section && r.size === size && r.key === key);
}

function speed(row: Row | undefined): number {
  return row ? mbps(row.inputBytes, pick(row.samples).wall) : Number.NaN;
}

function peakMiB(row: Row | undefined): number {
  return row ? Math.max(...row.samples.map((s) => s.maxRssKiB)) / 1024 : Number.NaN;
}

function table(headers: string[], body: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  return [line(headers), `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}

function verdict(value: number, goal: number, atLeast: boolean): string {
  if (!Number.isFinite(value)) return 'n/a';
  return (atLeast ? value >= goal : value <= goal) ? 'met' : 'MISSED';
}

function report(started: number, load: number[]): string {
  const out: string[] = [];
  const body = rows.map((r) => {
    const m = pick(r.samples);
    const speeds = r.samples.map((s) => mbps(r.inputBytes, s.wall));
    const cpu = m.user + m.sys;
    return [
      `${r.size} ${r.section}: ${r.name}`,
      mbps(r.inputBytes, m.wall).toFixed(0),
      cpu.toFixed(2),
      peakMiB(r).toFixed(0),
      (cpu / m.wall).toFixed(2),
      `${Math.min(...speeds).toFixed(0)}–${Math.max(...speeds).toFixed(0)}`,
      m.serverCpu === undefined ? '' : m.serverCpu.toFixed(2),
    ];
  });
  out.push(
    `${statistic === 'best' ? 'Best' : 'Median'} of ${runs} runs (RGW: ${Math.min(runs, RGW_MAX_RUNS)}) after one warm-up run each, warm page cache; MB/s of input = file content bytes of the tree / wall seconds.`,
  );
  out.push(`CPU s = user+sys of the whole process tree (that run); peak RSS = largest single process, highest of all runs; cores = CPU s / wall s (2 = both cores busy).`);
  out.push('');
  out.push(table(['name', 'MB/s', 'CPU s', 'peak RSS MiB', 'cores', 'MB/s range', 'RGW+OSD CPU s'], body));
  out.push('');

  const goals: string[][] = [];
  for (const size of sizeNames) {
    const tarRatio = speed(rowFor('tar', size, 'ours')) / speed(rowFor('tar', size, 'peer'));
    const fsRatio = speed(rowFor('fs', size, 'ours')) / speed(rowFor('fs', size, 'peer'));
    const fsSyncRatio = speed(rowFor('fs', size, 'ours')) / speed(rowFor('fs', size, 'peer-sync'));
    const rgwRatio = speed(rowFor('rgw', size, 'ours')) / speed(rowFor('rgw', size, 'peer'));
    const restoreRatio = speed(rowFor('restore', size, 'ours')) / speed(rowFor('restore', size, 'peer'));
    if (Number.isFinite(tarRatio)) goals.push([`${size} tar stage: ours / GNU tar`, tarRatio.toFixed(2), '≥ 0.80', verdict(tarRatio, 0.8, true)]);
    if (Number.isFinite(fsRatio)) goals.push([`${size} fs end to end: ours / (tar | zstd -1 -T0 > FILE)`, fsRatio.toFixed(2), '≥ 0.90', verdict(fsRatio, 0.9, true)]);
    const stagesRatio = speed(rowFor('stages', size, 'ours')) / speed(rowFor('stages', size, 'peer'));
    if (Number.isFinite(stagesRatio)) goals.push([`${size} no store: ours (pack → zstd → sha256) / (tar | zstd -1 -T0 > /dev/null), for information`, stagesRatio.toFixed(2), '', '']);
    if (Number.isFinite(fsSyncRatio)) goals.push([`${size} fs end to end: ours / (same + sync FILE), for information`, fsSyncRatio.toFixed(2), '', '']);
    if (Number.isFinite(rgwRatio)) goals.push([`${size} RGW: ours / (tar | zstd -1 -T0 | rclone rcat)`, rgwRatio.toFixed(2), '≥ 1.00', verdict(rgwRatio, 1, true)]);
    if (Number.isFinite(restoreRatio)) goals.push([`${size} restore: ours / (zstd -dc | tar -x)`, restoreRatio.toFixed(2), '', '']);
    for (const [section, what] of [
      ['fs', 'backup → fs'],
      ['rgw', 'backup → RGW'],
      ['restore', 'restore'],
      ['tar', 'tar stage'],
    ] as const) {
      const rss = peakMiB(rowFor(section, size, 'ours'));
      if (Number.isFinite(rss)) goals.push([`${size} peak RSS of our process, ${what} (MiB)`, rss.toFixed(0), `≤ ${RSS_GOAL_MIB}`, verdict(rss, RSS_GOAL_MIB, false)]);
    }
  }
  out.push(table(['ratio', 'value', 'goal', ''], goals));
  out.push('');

  const ratios: string[][] = [];
  for (const size of sizeNames) {
    const info = treeInfos[size];
    const c = compressed[size];
    if (!info || !c) continue;
    const r = (bytes: number | undefined) => (bytes ? `${(info.bytes / bytes).toFixed(3)} (${(bytes / 1024 ** 2).toFixed(0)} MiB)` : 'n/a');
    ratios.push([`${size} ours, zstd level 1 (3 MiB frames)`, r(c.ours)]);
    ratios.push([`${size} zstd -1 -T0 CLI`, r(c.zstd)]);
    if (c.oursL3) ratios.push([`${size} ours, zstd level 3`, r(c.oursL3)]);
  }
  if (ratios.length) {
    out.push('Compression ratio = tree content bytes / compressed bytes:');
    out.push('');
    out.push(table(['', 'ratio (size)'], ratios));
    out.push('');
  }

  const l1 = rowFor('fs', levelsSize, 'ours');
  const l3 = rowFor('levels', levelsSize, 'ours');
  const c = compressed[levelsSize];
  if (l1 && l3 && c?.ours && c.oursL3) {
    const info = treeInfos[levelsSize]!;
    out.push(`Compression level for our pipeline (${levelsSize}, fs store):`);
    out.push('');
    out.push(
      table(
        ['level', 'MB/s', 'CPU s', 'ratio'],
        [
          ['1', speed(l1).toFixed(0), (pick(l1.samples).user + pick(l1.samples).sys).toFixed(2), (info.bytes / c.ours).toFixed(3)],
          ['3', speed(l3).toFixed(0), (pick(l3.samples).user + pick(l3.samples).sys).toFixed(2), (info.bytes / c.oursL3).toFixed(3)],
        ],
      ),
    );
    out.push('');
    out.push(
      `Level 3 vs 1: ${(speed(l3) / speed(l1)).toFixed(2)}× the speed for ${(((c.ours - c.oursL3) / c.ours) * 100).toFixed(1)} % smaller output.`,
    );
    out.push('');
  }
  if (process.env.BENCH_AGENT_VERSION) out.push(`Agent: ${process.env.BENCH_AGENT_VERSION}.`);
  out.push(`Trees: ${sizeNames.map((s) => `${s} = ${treeInfos[s]?.files} files, ${((treeInfos[s]?.bytes ?? 0) / 1024 ** 2).toFixed(0)} MiB`).join('; ')}.`);
  out.push(...closingLines(load, started, problems));
  return out.join('\n');
}

// ------------------------------------------------------------------ main

const treeInfos: Record<string, TreeInfo> = {};

async function main(): Promise<void> {
  const started = performance.now();
  const load = loadavg();
  mkdirSync(work, { recursive: true });
  log(`BENCH_DIR=${benchDir} sizes=${sizeNames.join(',')} runs=${runs} sections=${[...sections].join(',')}`);
  for (const size of sizeNames) treeInfos[size] = ensureTree(path.join(benchDir, `tree-${size}`), parseTreeSize(size), log);
  try {
    for (const size of sizeNames) {
      const tree = treeInfos[size]!;
      log(`--- ${size}: ${tree.files} files, ${(tree.bytes / 1024 ** 2).toFixed(0)} MiB in ${tree.dir}`);
      if (sections.has('tar')) await tarStage(size, tree);
      if (sections.has('stages') && size === levelsSize) await stages(size, tree);
      let backupId = '';
      if (sections.has('fs') || sections.has('restore')) backupId = await fsEndToEnd(size, tree, size === levelsSize);
      if (sections.has('restore')) await restore(size, tree, backupId);
      if (sections.has('rgw') && rgwSizes.includes(size)) await rgw(size, tree);
      rmSync(path.join(work, 'store'), { recursive: true, force: true });
      rmSync(path.join(work, 'peer.tar.zst'), { force: true });
    }
  } catch (error) {
    problems.push(`the run stopped: ${(error as Error).message}`);
    throw error;
  } finally {
    const text = report(started, load);
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    writeFileSync(path.join(benchDir, `results-${stamp}.json`), `${JSON.stringify({ agent: process.env.BENCH_AGENT_VERSION ?? null, statistic, runs, sizes: sizeNames, trees: treeInfos, rows, compressed, problems }, null, 2)}\n`);
    writeFileSync(path.join(benchDir, `results-${stamp}.txt`), `${text}\n`);
    console.log(text);
    log(`results written to ${path.join(benchDir, `results-${stamp}.{txt,json}`)}`);
  }
}

await main();
