import { mkdtemp, readFile, readdir, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentError } from '../src/errors.ts';
import { parseConfig, type Config } from '../src/agent/config.ts';
import type { OperationContext } from '../src/agent/context.ts';
import { JobEngine } from '../src/agent/jobs/engine.ts';
import { environmentLockFile, tryLock } from '../src/agent/jobs/lock.ts';
import { processStartTime } from '../src/liveness.ts';
import { recoverAtStart } from '../src/agent/jobs/recovery.ts';
import { JobStore } from '../src/agent/jobs/store.ts';
import type { JobRecord, JobSpec } from '../src/jobs-wire.ts';
import { fullTmpfs } from './support/full-disk.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const silent = pino({ level: 'silent' });

async function until<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/**
 * Operations the tests control: each runs until released (or cancelled), reporting progress.
 * The engine, its locks and its records are the real ones.
 */
class FakeOperations {
  readonly started: string[] = [];
  readonly #releases = new Map<string, (result: unknown) => void>();

  run = async (ctx: OperationContext, spec: JobSpec): Promise<unknown> => {
    const key = `${spec.kind}:${spec.env}`;
    this.started.push(key);
    ctx.onProgress?.({ phase: 'capture', element: 'db', bytes: 0, totalBytes: 10_000_000 });
    return new Promise((resolve, reject) => {
      this.#releases.set(key, resolve);
      ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason), { once: true });
    });
  };

  release(key: string, result: unknown = { ok: key }): void {
    const release = this.#releases.get(key);
    if (!release) throw new Error(`${key} is not running`);
    this.#releases.delete(key);
    release(result);
  }
}

describe('job engine: queue, per-environment lock shared between processes, node-wide slots, admission, cancel, recovery', () => {
  let dir: string;
  let config: Config;
  const engines: JobEngine[] = [];

  function configure(extra = ''): Config {
    return parseConfig(
      `stateDir: ${dir}/state
jobs: { concurrency: 2, minFreeDiskBytes: 0, minFreeMemoryBytes: 0 }
${extra}
environments:
  shop: { services: { db: { kind: files, path: ${dir}/shop } } }
  blog: { services: { db: { kind: files, path: ${dir}/blog } } }
  wiki: { services: { db: { kind: files, path: ${dir}/wiki } } }
`,
      'test',
    );
  }

  function engine(ops: FakeOperations, options: { config?: Config; program?: 'daemon' | 'cli' } = {}): JobEngine {
    const created = new JobEngine({ config: options.config ?? config, logger: silent, program: options.program ?? 'daemon', pollMs: 50, run: ops.run });
    engines.push(created);
    return created;
  }

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'sa-jobs-'));
    config = configure();
  });
  afterEach(async () => {
    for (const e of engines.splice(0)) {
      await e.cancelAll('test over');
      await e.idle();
      await e.close();
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('one job at a time per environment, at most jobs.concurrency at once; the queue shows positions and reasons, in order', async () => {
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const a = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    const b = await jobs.submit({ kind: 'backup.verify', env: 'shop', id: '20261122T034600123Z-aaaaaaaa' });
    const c = await jobs.submit({ kind: 'backup.create', env: 'blog' });
    const d = await jobs.submit({ kind: 'backup.create', env: 'wiki' });
    expect(a.state).toBe('running');
    expect(c.state).toBe('running');
    expect(await jobs.get(b.id)).toMatchObject({ state: 'queued', position: 1, waitingFor: `environment shop is busy with job ${a.id} (backup.create)` });
    expect(await jobs.get(d.id)).toMatchObject({ state: 'queued', position: 2, waitingFor: 'all 2 job slots are busy (jobs.concurrency)' });
    expect(ops.started).toEqual(['backup.create:shop', 'backup.create:blog']);
    expect(jobs.summary()).toMatchObject({ queued: 2, running: 2 });

    ops.release('backup.create:shop');
    expect(await jobs.wait(a.id)).toMatchObject({ state: 'succeeded', result: { ok: 'backup.create:shop' } });
    await until('b to start', async () => (await jobs.get(b.id))?.state === 'running');
    expect(await jobs.get(d.id)).toMatchObject({ state: 'queued', position: 1 }); // moved up, still no slot
    ops.release('backup.create:blog');
    await until('d to start', async () => (await jobs.get(d.id))?.state === 'running');
    expect(ops.started).toEqual(['backup.create:shop', 'backup.create:blog', 'backup.verify:shop', 'backup.create:wiki']);
    ops.release('backup.verify:shop');
    ops.release('backup.create:wiki');
    await jobs.idle();
    // Every job recorded on disk with its fate.
    const records = await new JobStore(config.stateDir).all();
    expect(records.map((r) => r.state)).toEqual(['succeeded', 'succeeded', 'succeeded', 'succeeded']);
  });

  it('two agent processes (here two engines) never run jobs for the same environment at once: the second waits, saying who holds it', async () => {
    const opsDaemon = new FakeOperations();
    const opsCli = new FakeOperations();
    const daemon = engine(opsDaemon, { program: 'daemon' });
    const cli = engine(opsCli, { program: 'cli' });
    const running = await daemon.submit({ kind: 'backup.create', env: 'shop' });
    const waiting = await cli.submit({ kind: 'backup.restore', env: 'blog', id: '20261122T034600123Z-aaaaaaaa', target: 'shop' });
    expect(waiting.state).toBe('queued');
    expect(waiting.waitingFor).toBe(`environment shop is busy: job ${running.id} (backup.create) of the daemon (pid ${process.pid}) holds it`);
    // jobs list from either side shows both (records are shared through the state directory).
    expect((await cli.list()).map((j) => j.id)).toEqual([waiting.id, running.id]);
    await sleep(200);
    expect(opsCli.started).toEqual([]);
    opsDaemon.release('backup.create:shop');
    await until('the CLI job to start', () => opsCli.started.length === 1);
    expect((await cli.get(waiting.id))?.state).toBe('running');
    opsCli.release('backup.restore:blog');
    expect((await cli.wait(waiting.id)).state).toBe('succeeded');
  });

  it('the node-wide slots are shared between processes too', async () => {
    const one = engine(new FakeOperations());
    const opsTwo = new FakeOperations();
    const two = engine(opsTwo, { program: 'cli' });
    await one.submit({ kind: 'backup.create', env: 'shop' });
    await one.submit({ kind: 'backup.create', env: 'blog' });
    const third = await two.submit({ kind: 'backup.create', env: 'wiki' });
    expect(third.state).toBe('queued');
    expect(third.waitingFor).toMatch(/^all 2 job slots of this node are busy: job-.* \(pid \d+\), job-.* \(pid \d+\)$/);
    await one.cancelAll('make room');
    await until('the third job to start', () => opsTwo.started.length === 1);
  });

  it('a lock held by a live process of another agent is waited for; once that process is gone it is taken over', async () => {
    const holder = execa('sleep', ['60']);
    const pid = holder.pid!;
    const lock = await tryLock(environmentLockFile(config.stateDir, 'shop'), {
      pid,
      startTime: processStartTime(pid),
      program: 'cli',
      jobId: 'job-20261122T034600123Z-zzzzzzzz',
      kind: 'backup.restore',
      since: new Date().toISOString(),
    });
    expect(lock.held).toBe(true);
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const job = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    expect(job.waitingFor).toBe(`environment shop is busy: job job-20261122T034600123Z-zzzzzzzz (backup.restore) of the CLI (pid ${pid}) holds it`);
    await sleep(200);
    expect(ops.started).toEqual([]);
    holder.kill('SIGKILL');
    await holder.catch(() => {});
    await until('the job to start', () => ops.started.length === 1);
    const file = JSON.parse(await readFile(environmentLockFile(config.stateDir, 'shop'), 'utf8')) as { pid: number; jobId: string };
    expect(file).toMatchObject({ pid: process.pid, jobId: job.id });
    ops.release('backup.create:shop');
    await jobs.wait(job.id);
    expect(await readdir(path.join(config.stateDir, 'locks'))).toEqual([]); // released
  });

  it('a pid reused by another process does not hold a lock: the start time tells them apart', async () => {
    await mkdir(path.join(config.stateDir, 'locks'), { recursive: true });
    const stale = { pid: process.pid, startTime: 1, program: 'daemon', jobId: 'job-20261122T034600123Z-yyyyyyyy', kind: 'backup.create', since: new Date().toISOString() };
    await writeFile(environmentLockFile(config.stateDir, 'shop'), JSON.stringify(stale));
    const ops = new FakeOperations();
    const jobs = engine(ops);
    expect((await jobs.submit({ kind: 'backup.create', env: 'shop' })).state).toBe('running');
  });

  it('cancel: a queued job ends at once; a running one through its signal; both are cancelled with E_CANCELLED', async () => {
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const running = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    const queued = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    expect(await jobs.cancel(queued.id)).toMatchObject({ state: 'cancelled', error: { code: 'E_CANCELLED' } });
    expect(await jobs.cancel(running.id)).toMatchObject({ state: 'running', cancelRequested: true });
    expect(await jobs.wait(running.id)).toMatchObject({ state: 'cancelled', error: { code: 'E_CANCELLED', message: 'cancelled by request' } });
    expect(ops.started).toEqual(['backup.create:shop']);
    // A cancel request through the state directory (another process's `jobs cancel`) works too.
    const third = await jobs.submit({ kind: 'backup.create', env: 'blog' });
    await new JobStore(config.stateDir).requestCancel(third.id);
    expect(await jobs.wait(third.id)).toMatchObject({ state: 'cancelled' });
  });

  it('admission control: below a free disk or memory floor a job waits with the reason, then fails E_HOST_RESOURCES', async () => {
    const floors = configure('').jobs;
    config = { ...config, jobs: { ...floors, minFreeDiskBytes: 2 ** 50, admissionTimeout: 400 } };
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const job = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    expect(job.state).toBe('queued');
    expect(job.waitingFor).toMatch(/^waiting for host resources: free disk .* is below the floor of 1024\.0 TiB \(jobs.minFreeDiskBytes\)$/);
    const end = await jobs.wait(job.id);
    expect(end).toMatchObject({ state: 'failed', error: { code: 'E_HOST_RESOURCES' } });
    expect(end.error!.message).toContain('could not start within');
    expect(ops.started).toEqual([]);

    jobs.reload({ ...config, jobs: { ...floors, minFreeMemoryBytes: 2 ** 60, admissionTimeout: 60_000 } });
    const second = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    expect(second.waitingFor).toMatch(/free memory .* is below the floor/);
    jobs.reload({ ...config, jobs: floors }); // memory freed up: it starts
    await until('the job to start', () => ops.started.length === 1);
  });

  it('the same requestId gives the same job, also after a restart; reused for another request it is refused', async () => {
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const first = await jobs.submit({ kind: 'backup.create', env: 'shop', codeRef: 'abc' }, { requestId: 'r-1' });
    expect((await jobs.submit({ kind: 'backup.create', env: 'shop', codeRef: 'abc' }, { requestId: 'r-1' })).id).toBe(first.id);
    await expect(jobs.submit({ kind: 'backup.create', env: 'blog' }, { requestId: 'r-1' })).rejects.toMatchObject({ code: 'E_REQUEST_CONFLICT' });
    ops.release('backup.create:shop');
    await jobs.wait(first.id);
    const restarted = engine(new FakeOperations());
    await restarted.init();
    expect((await restarted.submit({ kind: 'backup.create', env: 'shop', codeRef: 'abc' }, { requestId: 'r-1' })).id).toBe(first.id);
  });

  it('a retry with the same requestId while the first record is still being written gets the same job', async () => {
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const [first, retry] = await Promise.all([
      jobs.submit({ kind: 'backup.create', env: 'shop' }, { requestId: 'r-2' }),
      jobs.submit({ kind: 'backup.create', env: 'shop' }, { requestId: 'r-2' }),
    ]);
    expect(retry.id).toBe(first.id);
    expect((await jobs.list()).map((j) => j.id)).toEqual([first.id]);
    ops.release('backup.create:shop');
    await jobs.wait(first.id);
  });

  it('a job submitted while the engine stops taking jobs ends cancelled with the stop reason, never queued', async () => {
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const submitted = jobs.submit({ kind: 'backup.create', env: 'shop' });
    await jobs.stopAccepting('cancelled: the agent is stopping'); // while its record is written
    expect(await submitted).toMatchObject({ state: 'cancelled', error: { code: 'E_CANCELLED', message: 'cancelled: the agent is stopping' } });
    expect(jobs.summary()).toMatchObject({ queued: 0, running: 0 });
    expect(ops.started).toEqual([]);
  });

  it('a full state directory: the submit fails E_NO_SPACE, the job is not listed and never runs, its requestId is free again', async () => {
    const unmount = await fullTmpfs(config.stateDir);
    try {
      const ops = new FakeOperations();
      const jobs = engine(ops);
      await expect(jobs.submit({ kind: 'backup.create', env: 'shop' }, { requestId: 'r-full' })).rejects.toMatchObject({
        code: 'E_NO_SPACE',
        details: { stateDir: config.stateDir, errno: 'ENOSPC' },
      });
      expect(await jobs.list()).toEqual([]);
      expect(jobs.summary()).toMatchObject({ queued: 0, running: 0 });
      expect(await readdir(path.join(config.stateDir, 'jobs'))).toEqual([]); // no record, no temp file

      // Space again: the next job runs alone, and the refused one never starts.
      await rm(path.join(config.stateDir, 'filler'));
      const retried = await jobs.submit({ kind: 'backup.create', env: 'shop' }, { requestId: 'r-full' });
      expect(retried.state).toBe('running');
      const blog = await jobs.submit({ kind: 'backup.create', env: 'blog' });
      expect(blog.state).toBe('running');
      expect((await jobs.list()).map((j) => j.id).sort()).toEqual([retried.id, blog.id].sort());
      ops.release('backup.create:shop');
      ops.release('backup.create:blog');
      await jobs.idle();
      expect(ops.started).toEqual(['backup.create:shop', 'backup.create:blog']);
      await jobs.close();
    } finally {
      await unmount();
    }
  });

  it('requests are checked before they are queued; a failing operation keeps its error code and details', async () => {
    const jobs = engine(new FakeOperations());
    await expect(jobs.submit({ kind: 'backup.create', env: 'nosuch' })).rejects.toMatchObject({ code: 'E_UNKNOWN_ENV' });
    await expect(jobs.submit({ kind: 'backup.create', env: 'shop', elements: ['cache'] })).rejects.toMatchObject({ code: 'E_UNKNOWN_ELEMENT' });
    await expect(jobs.submit({ kind: 'backup.delete', env: 'shop', id: '../x' })).rejects.toMatchObject({ code: 'E_INVALID_NAME' });
    await expect(jobs.submit({ kind: 'backup.restore', env: 'shop', id: '20261122T034600123Z-aaaaaaaa', target: 'nosuch' })).rejects.toMatchObject({ code: 'E_UNKNOWN_ENV' });
    const failing = new JobEngine({
      config,
      logger: silent,
      program: 'cli',
      pollMs: 50,
      run: async () => {
        throw new AgentError('E_STORE_UNAVAILABLE', 'the store is down', { details: { store: 'ceph' } });
      },
    });
    engines.push(failing);
    const job = await failing.submit({ kind: 'backup.create', env: 'shop' });
    expect(await failing.wait(job.id)).toMatchObject({ state: 'failed', error: { code: 'E_STORE_UNAVAILABLE', message: 'the store is down', details: { store: 'ceph' } } });
    expect(failing.failureOf(job.id)?.exitCode).toBe(6);
  });

  it('progress: bytes per element, a rate, and an ETA when the size is known', async () => {
    let report: ((bytes: number) => void) | undefined;
    let finish: (() => void) | undefined;
    const jobs = new JobEngine({
      config,
      logger: silent,
      program: 'daemon',
      run: async (ctx) => {
        report = (bytes) => ctx.onProgress?.({ phase: 'capture', element: 'db', bytes, totalBytes: 100_000_000 });
        await new Promise<void>((resolve) => (finish = resolve));
        return {};
      },
    });
    engines.push(jobs);
    const events: JobRecord[] = [];
    jobs.onEvent((e) => e.type === 'progress' && events.push(e.job));
    const job = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    await until('the job to run', () => report);
    for (let i = 1; i <= 12; i++) {
      report!(i * 1_000_000);
      await sleep(110);
    }
    const last = (await jobs.get(job.id))!.progress!;
    expect(last).toMatchObject({ phase: 'capture', element: 'db', bytes: 12_000_000, elements: { db: { bytes: 12_000_000, totalBytes: 100_000_000 } } });
    expect(last.rate).toBeGreaterThan(3_000_000);
    expect(last.rate).toBeLessThan(20_000_000);
    expect(last.etaSeconds).toBeGreaterThan(3);
    expect(last.etaSeconds).toBeLessThan(40);
    expect(events.length).toBeGreaterThanOrEqual(3);
    expect(events.length).toBeLessThan(12); // throttled
    finish!();
    await jobs.wait(job.id);
  });

  it('stopping: no new jobs (E_SHUTTING_DOWN), queued ones are cancelled, running ones go on', async () => {
    const ops = new FakeOperations();
    const jobs = engine(ops);
    const running = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    const queued = await jobs.submit({ kind: 'backup.create', env: 'shop' });
    await jobs.stopAccepting('cancelled: the agent is stopping');
    await expect(jobs.submit({ kind: 'backup.create', env: 'blog' })).rejects.toMatchObject({ code: 'E_SHUTTING_DOWN' });
    expect(await jobs.get(queued.id)).toMatchObject({ state: 'cancelled', error: { message: 'cancelled: the agent is stopping' } });
    expect((await jobs.get(running.id))?.state).toBe('running');
    ops.release('backup.create:shop');
    await jobs.idle();
    expect((await jobs.get(running.id))?.state).toBe('succeeded');
  });

  it('the job history on disk is trimmed to jobs.history records, newest kept', async () => {
    config = { ...config, jobs: { ...config.jobs, history: 10 } };
    const jobs = new JobEngine({ config, logger: silent, program: 'daemon', run: async () => ({}) });
    engines.push(jobs);
    const ids: string[] = [];
    for (let i = 0; i < 45; i++) {
      const job = await jobs.submit({ kind: 'backup.create', env: 'shop' });
      await jobs.wait(job.id);
      ids.push(job.id);
    }
    await sleep(200);
    const kept = (await new JobStore(config.stateDir).all()).map((r) => r.id);
    expect(kept.length).toBeLessThanOrEqual(10 + 20);
    expect(kept.length).toBeGreaterThanOrEqual(10);
    expect(kept).toEqual(ids.slice(-kept.length));
  });

  it('recovery at start: jobs of a dead process are marked failed (interrupted); a live process keeps its jobs', async () => {
    const child = execa('true');
    const gone = { pid: child.pid };
    await child;
    const store = new JobStore(config.stateDir);
    const base = { kind: 'backup.delete' as const, env: 'shop', createdAt: new Date().toISOString() };
    const spec = { kind: 'backup.delete' as const, env: 'shop', id: '20261122T034600123Z-aaaaaaaa' };
    await store.save({ ...base, id: 'job-20261122T034600123Z-aaaaaaa1', spec, state: 'running', owner: { pid: gone.pid!, startTime: null, program: 'daemon' } });
    await store.save({ ...base, id: 'job-20261122T034600123Z-aaaaaaa2', spec, state: 'queued', owner: { pid: gone.pid!, startTime: null, program: 'daemon' } });
    await store.save({ ...base, id: 'job-20261122T034600123Z-aaaaaaa3', spec, state: 'running', owner: { pid: process.pid, startTime: processStartTime(process.pid), program: 'cli' } });
    await store.save({ ...base, id: 'job-20261122T034600123Z-aaaaaaa4', spec, state: 'succeeded', owner: { pid: gone.pid!, startTime: null, program: 'daemon' } });
    const report = await recoverAtStart(config, silent, { sweepStores: true });
    expect(report.interrupted.sort()).toEqual(['job-20261122T034600123Z-aaaaaaa1', 'job-20261122T034600123Z-aaaaaaa2']);
    const byId = Object.fromEntries((await store.all()).map((r) => [r.id.slice(-1), r]));
    expect(byId['1']).toMatchObject({ state: 'failed', error: { code: 'E_INTERRUPTED' } });
    expect(byId['1']!.error!.message).toContain('ended while this job was running');
    expect(byId['2']).toMatchObject({ state: 'failed', error: { code: 'E_INTERRUPTED' } });
    expect(byId['2']!.error!.message).toContain('never started');
    expect(byId['3']!.state).toBe('running');
    expect(byId['4']!.state).toBe('succeeded');
  });
});
