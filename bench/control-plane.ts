/**
 * Control-plane overhead of the daemon: the real `storage-agent daemon` process, driven over
 * its WebSocket protocol by real `ws` clients.
 *
 *   node_modules/.bin/node bench/control-plane.ts [--json] [--calls 1000] [--jobs 100]
 *
 * 1. 1,000 `backup.list` calls on one connection, one after the other (an environment with
 *    BENCH_BACKUPS backups, 20 by default, each listed with its manifest), then the same
 *    1,000 from 10 connections at once.
 * 2. 100 jobs at once: 100 clients each create a backup of their own environment (small files,
 *    fs store) and subscribe; latency of backup.create and job.subscribe, time until
 *    job.finished, notifications received, and backup.list latency while all of it runs.
 * Throughout, the daemon's RSS is sampled from /proc every 50 ms.
 *
 * Self-contained: a temp directory (removed after), no RGW, nothing else to start.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { WebSocket } from 'ws';
import { stringify } from 'yaml';
import { percentile } from './timing.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const args = process.argv.slice(2);
const option = (name: string, fallback: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const CALLS = option('--calls', 1000);
const JOBS = option('--jobs', 100);
const BACKUPS = Number(process.env.BENCH_BACKUPS ?? 20);
const json = args.includes('--json');

// ------------------------------------------------------------------ setup

const dir = mkdtempSync(path.join(tmpdir(), 'sa-bench-cp-'));
const token = randomBytes(24).toString('base64url');
writeFileSync(path.join(dir, 'admin.token'), token, { mode: 0o600 });
const environments: Record<string, unknown> = {};
const envNames = ['listed', ...Array.from({ length: JOBS }, (_, i) => `env-${String(i).padStart(3, '0')}`)];
for (const env of envNames) {
  const data = path.join(dir, 'data', env);
  mkdirSync(data, { recursive: true });
  for (let i = 0; i < 5; i++) writeFileSync(path.join(data, `file-${i}.txt`), `${env} ${i}\n`.repeat(100));
  environments[env] = { services: { web: { kind: 'files', path: data } } };
}
const configPath = path.join(dir, 'config.yaml');
writeFileSync(
  configPath,
  stringify({
    stateDir: path.join(dir, 'state'),
    daemon: { listen: { host: '127.0.0.1', port: 0 }, tokens: [{ file: path.join(dir, 'admin.token'), role: 'admin' }] },
    jobs: { concurrency: 2, minFreeDiskBytes: 0, minFreeMemoryBytes: 0 },
    environments,
  }),
);

const daemon = spawn(process.execPath, [path.join(ROOT, 'src/agent/main.ts'), '--config', configPath, '--log-level', 'warn', 'daemon'], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
let daemonOut = '';
daemon.stdout.setEncoding('utf8').on('data', (chunk: string) => {
  daemonOut += chunk;
});
const cleanup = () => {
  daemon.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

// ------------------------------------------------------------------ measuring

function rssBytes(): number {
  const status = readFileSync(`/proc/${daemon.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}
const rss = { idle: 0, peak: 0, phase: 0 };
const sampler = setInterval(() => {
  try {
    const now = rssBytes();
    rss.peak = Math.max(rss.peak, now);
    rss.phase = Math.max(rss.phase, now);
  } catch {
    // not yet, or gone
  }
}, 50);

const summary = (values: number[]) => ({ n: values.length, p50: round(percentile(values, 50)), p99: round(percentile(values, 99)), max: round(Math.max(...values)) });
const round = (ms: number) => Math.round(ms * 100) / 100;
const mib = (bytes: number) => Math.round((bytes / 1024 ** 2) * 10) / 10;

class Client {
  readonly ws: WebSocket;
  #next = 1;
  readonly #pending = new Map<number, (message: { result?: unknown; error?: { message: string } }) => void>();
  readonly #finished = new Map<string, (params: unknown) => void>();
  notifications = 0;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString()) as { id?: number; method?: string; params?: { id?: string }; result?: unknown; error?: { message: string } };
      if (message.method) {
        this.notifications++;
        if (message.method === 'job.finished') this.#finished.get(message.params!.id!)?.(message.params);
        return;
      }
      this.#pending.get(message.id!)?.(message);
      this.#pending.delete(message.id!);
    });
  }

  static connect(url: string): Promise<Client> {
    const ws = new WebSocket(url, { headers: { Authorization: `Bearer ${token}` }, perMessageDeflate: false });
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new Client(ws)));
      ws.once('error', reject);
    });
  }

  /** Resolves with the result and the round-trip time in ms. */
  async call<T>(method: string, params: unknown = {}): Promise<{ result: T; ms: number }> {
    const id = this.#next++;
    const started = performance.now();
    const message = await new Promise<{ result?: unknown; error?: { message: string } }>((resolve) => {
      this.#pending.set(id, resolve);
      this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    });
    if (message.error) throw new Error(`${method}: ${message.error.message}`);
    return { result: message.result as T, ms: performance.now() - started };
  }

  finished(jobId: string): Promise<unknown> {
    return new Promise((resolve) => this.#finished.set(jobId, resolve));
  }

  close(): void {
    this.ws.close();
  }
}

// ------------------------------------------------------------------ run

// The daemon logs at warn here (logging is not what is measured): its state file has the URL.
const url = await new Promise<string>((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`the daemon did not start:\n${daemonOut}`)), 60_000);
  const poll = setInterval(() => {
    try {
      const state = JSON.parse(readFileSync(path.join(dir, 'state', 'daemon.json'), 'utf8')) as { url: string };
      clearInterval(poll);
      clearTimeout(timer);
      resolve(state.url);
    } catch {
      // not yet
    }
  }, 20);
  daemon.once('exit', (code) => reject(new Error(`the daemon exited ${code}:\n${daemonOut}`)));
});
const log = (text: string) => {
  if (!json) process.stderr.write(`${text}\n`);
};

log(`daemon pid ${daemon.pid} on ${url}; seeding ${BACKUPS} backups of "listed"`);
const seeder = await Client.connect(url);
for (let i = 0; i < BACKUPS; i++) {
  const { result } = await seeder.call<{ jobId: string }>('backup.create', { env: 'listed' });
  const done = seeder.finished(result.jobId);
  await seeder.call('job.subscribe', { jobId: result.jobId });
  await done;
}
await new Promise((resolve) => setTimeout(resolve, 500));
rss.idle = rssBytes();

// 1. backup.list, sequential then 10 connections at once
log(`${CALLS} backup.list calls, one connection, sequential`);
rss.phase = 0;
const sequential: number[] = [];
for (let i = 0; i < CALLS; i++) sequential.push((await seeder.call<unknown[]>('backup.list', { env: 'listed' })).ms);
const rssList = rss.phase;

log(`${CALLS} backup.list calls from 10 connections at once`);
const tenClients = await Promise.all(Array.from({ length: 10 }, () => Client.connect(url)));
const parallelStarted = performance.now();
const parallel = (await Promise.all(tenClients.map(async (client) => {
  const times: number[] = [];
  for (let i = 0; i < CALLS / 10; i++) times.push((await client.call('backup.list', { env: 'listed' })).ms);
  return times;
}))).flat();
const parallelSeconds = (performance.now() - parallelStarted) / 1000;

// 2. JOBS concurrent subscribed jobs
log(`${JOBS} concurrent jobs, each with its subscribed client`);
rss.phase = 0;
const jobClients = await Promise.all(Array.from({ length: JOBS }, () => Client.connect(url)));
const createMs: number[] = [];
const subscribeMs: number[] = [];
const finishMs: number[] = [];
const listUnderLoad: number[] = [];
let loadDone = false;
const prober = (async () => {
  while (!loadDone) {
    listUnderLoad.push((await seeder.call('backup.list', { env: 'listed' })).ms);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
})();
const jobsStarted = performance.now();
await Promise.all(
  jobClients.map(async (client, i) => {
    const started = performance.now();
    const created = await client.call<{ jobId: string }>('backup.create', { env: envNames[i + 1] });
    createMs.push(created.ms);
    const done = client.finished(created.result.jobId);
    subscribeMs.push((await client.call('job.subscribe', { jobId: created.result.jobId })).ms);
    const final = (await done) as { state: string };
    if (final.state !== 'succeeded') throw new Error(`job ${created.result.jobId} ended ${final.state}`);
    finishMs.push(performance.now() - started);
  }),
);
const jobsSeconds = (performance.now() - jobsStarted) / 1000;
loadDone = true;
await prober;
const rssJobs = rss.phase;
const notifications = jobClients.reduce((sum, c) => sum + c.notifications, 0);

clearInterval(sampler);
for (const client of [seeder, ...tenClients, ...jobClients]) client.close();

const result = {
  daemon: { pid: daemon.pid, node: process.version },
  backupList: {
    backupsListed: BACKUPS,
    sequentialMs: summary(sequential),
    tenConnectionsMs: summary(parallel),
    tenConnectionsCallsPerSecond: Math.round(CALLS / parallelSeconds),
  },
  jobs: {
    count: JOBS,
    concurrency: 2,
    createMs: summary(createMs),
    subscribeMs: summary(subscribeMs),
    untilFinishedMs: summary(finishMs),
    wallSeconds: round(jobsSeconds),
    notifications,
    backupListUnderLoadMs: summary(listUnderLoad),
  },
  rssMiB: { idle: mib(rss.idle), duringBackupList: mib(rssList), duringJobs: mib(rssJobs), peak: mib(rss.peak) },
};

if (json) {
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} else {
  const b = result.backupList;
  const j = result.jobs;
  const row = (name: string, s: { n: number; p50: number; p99: number; max: number }) => `  ${name.padEnd(44)} n=${String(s.n).padEnd(5)} p50 ${String(s.p50).padStart(8)} ms   p99 ${String(s.p99).padStart(8)} ms   max ${String(s.max).padStart(8)} ms`;
  process.stdout.write(
    [
      `control plane: daemon pid ${daemon.pid}, ${process.version}`,
      `backup.list (${BACKUPS} backups with manifests)`,
      row('sequential, one connection', b.sequentialMs),
      row('10 connections at once', b.tenConnectionsMs),
      `  ${'throughput, 10 connections'.padEnd(44)} ${b.tenConnectionsCallsPerSecond} calls/s`,
      `${JOBS} concurrent subscribed jobs (jobs.concurrency 2, small files, fs store)`,
      row('backup.create (queued, answered at once)', j.createMs),
      row('job.subscribe', j.subscribeMs),
      row('create → job.finished', j.untilFinishedMs),
      row('backup.list meanwhile', j.backupListUnderLoadMs),
      `  ${'all jobs done in'.padEnd(44)} ${j.wallSeconds} s, ${j.notifications} notifications`,
      `daemon RSS: idle ${result.rssMiB.idle} MiB, during backup.list ${result.rssMiB.duringBackupList} MiB, during jobs ${result.rssMiB.duringJobs} MiB, peak ${result.rssMiB.peak} MiB`,
      '',
    ].join('\n'),
  );
}
process.exit(0);
