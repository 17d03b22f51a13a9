/**
 * The S3 store against the real RGW behind a fault proxy (test/support/s3-fault-proxy.ts):
 * bounded faults are retried, visibly (warn logs, metrics), and the bytes come back identical;
 * faults past the retry budget fail the backup with a clear code, in bounded time, with
 * nothing left behind. A range read resumes where its body broke off. And an upload someone
 * else aborts fails as E_UPLOAD_ABORTED.
 */
import { AbortMultipartUploadCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { JobEngine } from '../src/agent/jobs/engine.ts';
import { createMetrics } from '../src/agent/jobs/metrics.ts';
import { JobStore } from '../src/agent/jobs/store.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { onStoreRequestFailure, type StoreRequestFailure } from '../src/transport/stores/store-telemetry.ts';
import { cli, createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { createS3Store, createTestBucket, multipartUploads, s3Client } from './support/s3.ts';
import { startFaultProxy, type FaultProxy, type ProxiedRequest } from './support/s3-fault-proxy.ts';
import { describeTree, MiB } from './support/tree.ts';
import { s3TestServer } from './support/servers.ts';

/**
 * The keys of backup objects under `prefix`, straight from RGW (not through the proxy). The
 * environment's owner record (`<env>/owners/`, issue #11) is the node's claim, not backup data.
 */
async function backupObjectKeys(bucket: string, prefix: string): Promise<string[]> {
  const answer = await s3Client().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
  return (answer.Contents ?? []).map((object) => object.Key ?? '').filter((key) => !key.includes('/owners/'));
}

/** The CLI's pino lines on stderr that announce a retry. */
function retryLogs(stderr: string): { operation: string; code: string; attempt: number; store: string }[] {
  return stderr
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as { level: number; msg: string; operation: string; code: string; attempt: number; store: string })
    .filter((line) => line.level === 40 && line.msg.endsWith('retrying'));
}

/** A test's own incompressible tree: three parts of 5 MiB once compressed. */
async function writeData(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'a.bin'), randomBytes(7 * MiB));
  await writeFile(path.join(dir, 'b.bin'), randomBytes(5 * MiB));
}

describe('S3 faults through a proxy: retried within the budget, clean failures past it', () => {
  let proxy: FaultProxy;
  let sandbox: Sandbox;
  let bucket: string;
  let source: string;
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    proxy = await startFaultProxy(s3TestServer().endpoint);
    sandbox = await createSandbox();
    bucket = await createTestBucket();
    source = path.join(sandbox.dir, 'source');
    await writeData(source);
    const endpoint = proxy.url;
    await sandbox.writeConfig({
      defaultStore: 'flaky',
      stores: {
        // Backoff 1, 2, 4 s between 4 attempts; a silent request gives up after 2 s.
        flaky: s3StoreConfig(bucket, { endpoint, prefix: 'flaky/', partsInFlight: 2, maxAttempts: 4, requestTimeout: '2s' }),
        // The budget of a store that fails fast: 2 attempts, 1 s of silence each.
        strict: s3StoreConfig(bucket, { endpoint, prefix: 'strict/', partsInFlight: 2, maxAttempts: 2, requestTimeout: '1s', connectTimeout: '1s' }),
      },
      environments: {
        data: filesEnv({ files: source }),
        copy: filesEnv({ files: path.join(sandbox.dir, 'copy') }),
        tight: filesEnv({ files: source }, 'strict'),
        repo: { ...filesEnv({ files: source }), repository: true },
        'repo-copy': filesEnv({ files: path.join(sandbox.dir, 'repo-copy') }),
      },
    });
  });
  afterEach(() => proxy.clear());
  afterAll(async () => {
    await proxy.close();
    await sandbox.cleanup();
  });

  it('forwards signed requests unchanged (RGW verifies SigV4 on the Host the client signed) and counts them by operation', async () => {
    proxy.resetCounts();
    const list = await cli([...args(), '--json', 'backup', 'list', 'data']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual([]);
    expect(proxy.counts()).toMatchObject({ ListObjectsV2: expect.any(Number) });
  });

  it('a backup and a restore ride out 503 SlowDown, resets, cut-off answers and silent gateways; the bytes are identical', async () => {
    const slowDown = proxy.inject({ operation: 'UploadPart', fault: { type: 'slowDown' }, times: 2 });
    const reset = proxy.inject({ operation: 'UploadPart', fault: { type: 'reset', afterBytes: MiB }, times: 1 });
    const silent = proxy.inject({ operation: 'UploadPart', fault: { type: 'stall' }, times: 1 }); // past requestTimeout: that attempt times out
    const slowComplete = proxy.inject({ operation: 'CompleteMultipartUpload', fault: { type: 'stall', ms: 500 }, times: 1 }); // within requestTimeout: no retry
    proxy.resetCounts();
    const backup = await cli([...args(), '--json', 'backup', 'create', 'data']);
    expect(backup.exitCode, backup.stderr).toBe(0);
    const manifest = JSON.parse(backup.stdout) as Manifest;
    expect([slowDown.hits, reset.hits, silent.hits, slowComplete.hits]).toEqual([2, 1, 1, 1]);
    // Three parts, four of their attempts failed: seven UploadPart requests.
    expect(proxy.counts()).toMatchObject({ CreateMultipartUpload: 1, UploadPart: 7, CompleteMultipartUpload: 1 });
    const retried = retryLogs(backup.stderr);
    expect(retried.map((line) => line.code).sort()).toEqual(['ECONNRESET', 'SlowDown', 'SlowDown', 'TimeoutError']);
    expect(new Set(retried.map((line) => `${line.store} ${line.operation}`))).toEqual(new Set(['flaky UploadPart']));
    expect(backup.stderr).not.toContain(s3TestServer().secretAccessKey);
    expect(backup.stderr).not.toContain(s3TestServer().accessKeyId);
    expect(await multipartUploads(bucket)).toEqual([]);

    const element = (request: { key: string }) => request.key.endsWith('.tar.zst');
    const get503 = proxy.inject({ operation: 'GetObject', match: element, fault: { type: 'slowDown' }, times: 1 });
    const cutOff = proxy.inject({ operation: 'GetObject', match: element, fault: { type: 'truncate', afterBytes: 3 * MiB }, times: 1 });
    const silentGet = proxy.inject({ operation: 'GetObject', match: element, fault: { type: 'stall' }, times: 1 });
    const restore = await cli([...args(), '--json', 'backup', 'restore', 'data', manifest.id, '--target', 'copy', '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect([get503.hits, cutOff.hits, silentGet.hits]).toEqual([1, 1, 1]);
    expect(Object.fromEntries(describeTree(path.join(sandbox.dir, 'copy')))).toEqual(Object.fromEntries(describeTree(source)));
    expect(retryLogs(restore.stderr).map((line) => `${line.operation} ${line.code}`).sort()).toEqual(['GetObject ECONNRESET', 'GetObject SlowDown', 'GetObject TimeoutError']);
  });

  it('a repository restore whose pack reads break off resumes each from where it stopped, and rides out a silent gateway; the bytes are identical', async () => {
    const backup = await cli([...args(), '--json', 'backup', 'create', 'repo']);
    expect(backup.exitCode, backup.stderr).toBe(0);
    const manifest = JSON.parse(backup.stdout) as Manifest;
    const rangeOf = (request: ProxiedRequest) => /^bytes=(\d+)-(\d+)$/.exec(String(request.headers.range))!.slice(1).map(Number) as [number, number];
    // Reads of data runs (a MiB and more), not of the small tree blob read first.
    const dataRead = (request: ProxiedRequest) => request.key.includes('/repository/packs/') && rangeOf(request)[1] - rangeOf(request)[0] >= MiB;
    const cutOff = proxy.inject({ operation: 'GetObject', match: dataRead, fault: { type: 'truncate', afterBytes: MiB }, times: 1 });
    const silent = proxy.inject({ operation: 'GetObject', match: dataRead, fault: { type: 'stall' }, times: 1 }); // a gateway gone quiet: past requestTimeout
    proxy.resetCounts();
    const restore = await cli([...args(), '--json', 'backup', 'restore', 'repo', manifest.id, '--target', 'repo-copy', '--yes', '--no-safety-backup']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect([cutOff.hits, silent.hits]).toEqual([1, 1]);
    expect(Object.fromEntries(describeTree(path.join(sandbox.dir, 'repo-copy')))).toEqual(Object.fromEntries(describeTree(source)));
    // The read that broke off asked again for the rest of its range only; the one that met
    // silence (no byte came) for all of it; no other read was made twice.
    const ranges = proxy.requests().filter((r) => r.operation === 'GetObject' && dataRead(r)).map(rangeOf);
    const key = ([start, end]: [number, number]) => `${start}-${end}`;
    const resumed = ranges.filter(([start, end]) => ranges.some(([s, e]) => s + MiB === start && e === end));
    const twice = ranges.filter((range, i) => ranges.findIndex((other) => key(other) === key(range)) !== i);
    expect([ranges.length, resumed.length, twice.length]).toEqual([4, 1, 1]);
  });

  async function expectCleanFailure(result: { exitCode: number; stdout: string }, message: RegExp): Promise<void> {
    expect(result.exitCode).toBe(6);
    const { error } = JSON.parse(result.stdout) as { error: { code: string; message: string } };
    expect(error.code).toBe('E_STORE_UNAVAILABLE');
    expect(error.message).toMatch(message);
    const list = await cli([...args(), '--json', 'backup', 'list', 'tight']);
    expect(JSON.parse(list.stdout)).toEqual([]); // no manifest, and no objects of an incomplete backup either
    expect(await backupObjectKeys(bucket, 'strict/')).toEqual([]);
    expect(await multipartUploads(bucket)).toEqual([]);
  }

  it('every UploadPart answered 503: the backup fails E_STORE_UNAVAILABLE after its 2 attempts, leaving nothing behind', async () => {
    const slowDown = proxy.inject({ operation: 'UploadPart', fault: { type: 'slowDown' } });
    const started = Date.now();
    const backup = await cli([...args(), '--json', 'backup', 'create', 'tight']);
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(slowDown.hits).toBeGreaterThanOrEqual(2);
    await expectCleanFailure(backup, /cannot upload .*the S3 service failed \(503 SlowDown\)/);
    expect(retryLogs(backup.stderr).every((line) => line.operation === 'UploadPart' && line.attempt === 1)).toBe(true);
  });

  it('a gateway that never answers UploadPart: each attempt times out after requestTimeout and the backup fails, saying so', async () => {
    const silent = proxy.inject({ operation: 'UploadPart', fault: { type: 'stall' } });
    const started = Date.now();
    const backup = await cli([...args(), '--json', 'backup', 'create', 'tight']);
    expect(Date.now() - started).toBeLessThan(20_000);
    expect(silent.hits).toBeGreaterThanOrEqual(2);
    await expectCleanFailure(backup, /cannot upload .*timed out \(the S3 endpoint sent nothing for requestTimeout 1 s, 2 attempts\).*check the gateway \(RGW\)/);
    expect(retryLogs(backup.stderr).map((line) => line.code)).toContain('TimeoutError');
  });
});

describe('store telemetry and metrics', () => {
  let proxy: FaultProxy;
  let bucket: string;
  let state: string;
  beforeAll(async () => {
    proxy = await startFaultProxy(s3TestServer().endpoint);
    bucket = await createTestBucket();
    state = await mkdtemp(path.join(tmpdir(), 's3-telemetry-'));
  });
  afterAll(async () => {
    await proxy.close();
    await rm(state, { recursive: true, force: true });
  });

  it('reports every failed attempt with the SDK’s verdict, and /metrics counts failures, retries and timeouts', async () => {
    // Only what /metrics reads of the engine: no jobs.
    const engine = { config: { stateDir: state, environments: {}, stores: {} }, store: new JobStore(state), active: () => [], onEvent: () => () => {} } as unknown as JobEngine;
    const registry = createMetrics(engine, pino({ enabled: false }));
    const seen: StoreRequestFailure[] = [];
    const unsubscribe = onStoreRequestFailure((failure) => seen.push(failure));
    const store = createS3Store(bucket, state, { name: 'metered', endpoint: proxy.url, maxAttempts: 3, requestTimeout: 1000, partsInFlight: 1 });
    try {
      proxy.inject({ operation: 'UploadPart', fault: { type: 'slowDown' }, times: 1 });
      proxy.inject({ operation: 'UploadPart', fault: { type: 'stall' }, times: 1 });
      const bytes = randomBytes(11 * MiB);
      await store.put('t/object', Readable.from([bytes]));
      proxy.clear();
      proxy.inject({ operation: 'GetObject', fault: { type: 'slowDown' } });
      await expect(store.get('t/object')).rejects.toMatchObject({ code: 'E_STORE_UNAVAILABLE', message: /503 SlowDown/ });
      proxy.clear();
      expect((await buffer(await store.get('t/object'))).equals(bytes)).toBe(true); // toEqual walks 11 MiB byte by byte: a minute
    } finally {
      unsubscribe();
    }
    expect(seen.map(({ operation, attempt, code, status, timeout, willRetry }) => ({ operation, attempt, code, status, timeout, willRetry }))).toEqual([
      { operation: 'UploadPart', attempt: 1, code: 'SlowDown', status: 503, timeout: false, willRetry: true },
      { operation: 'UploadPart', attempt: 2, code: 'TimeoutError', status: undefined, timeout: true, willRetry: true },
      { operation: 'GetObject', attempt: 1, code: 'SlowDown', status: 503, timeout: false, willRetry: true },
      { operation: 'GetObject', attempt: 2, code: 'SlowDown', status: 503, timeout: false, willRetry: true },
      { operation: 'GetObject', attempt: 3, code: 'SlowDown', status: 503, timeout: false, willRetry: false },
    ]);
    expect(seen.every((failure) => failure.store === 'metered')).toBe(true);
    const text = await registry.metrics();
    const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
    expect(value('storage_agent_store_request_failures_total{store="metered",operation="UploadPart",code="SlowDown"}')).toBe(1);
    expect(value('storage_agent_store_request_failures_total{store="metered",operation="UploadPart",code="TimeoutError"}')).toBe(1);
    expect(value('storage_agent_store_request_failures_total{store="metered",operation="GetObject",code="SlowDown"}')).toBe(3);
    expect(value('storage_agent_store_retries_total{store="metered",operation="UploadPart"}')).toBe(2);
    expect(value('storage_agent_store_retries_total{store="metered",operation="GetObject"}')).toBe(2);
    expect(value('storage_agent_store_timeouts_total{store="metered",operation="UploadPart"}')).toBe(1);
  });
});

describe('a range read whose connection drops', () => {
  it('resumes from where the body broke off, asking for the rest of the range of the same version; past its attempts it fails saying so', async () => {
    const proxy = await startFaultProxy(s3TestServer().endpoint);
    const bucket = await createTestBucket();
    const state = await mkdtemp(path.join(tmpdir(), 's3-range-'));
    try {
      const store = createS3Store(bucket, state, { endpoint: proxy.url, maxAttempts: 2 });
      const bytes = randomBytes(8 * MiB);
      await store.put('r/object', Readable.from([bytes]));
      const [offset, length, cutAfter] = [MiB + 3, 5 * MiB, 2 * MiB + 5];
      const last = offset + length - 1;
      const cutOff = proxy.inject({ operation: 'GetObject', fault: { type: 'truncate', afterBytes: cutAfter }, times: 1 });
      proxy.resetCounts();
      const read = await buffer(await store.getRange('r/object', offset, length));
      expect(cutOff.hits).toBe(1);
      expect(read.equals(bytes.subarray(offset, offset + length))).toBe(true); // toEqual walks 5 MiB byte by byte: slow
      const gets = proxy.requests().filter((request) => request.operation === 'GetObject');
      expect(gets.map((request) => request.headers.range)).toEqual([`bytes=${offset}-${last}`, `bytes=${offset + cutAfter}-${last}`]);
      expect(gets[0]!.headers['if-match']).toBeUndefined();
      expect(gets[1]!.headers['if-match']).toMatch(/^"?[0-9a-f-]+"?$/);

      // Every answer cut short: after maxAttempts reads the stream fails with the store's error.
      proxy.inject({ operation: 'GetObject', fault: { type: 'truncate', afterBytes: MiB } });
      await expect(buffer(await store.getRange('r/object', offset, length))).rejects.toMatchObject({
        code: 'E_STORE_UNAVAILABLE',
        message: /cannot read r\/object .*broke off after 2097152 of 5242880 bytes, 2 attempts/,
      });
    } finally {
      await proxy.close();
      await rm(state, { recursive: true, force: true });
    }
  });
});

describe('a multipart upload aborted by someone else', () => {
  it('fails the put with E_UPLOAD_ABORTED saying who may have done it, and leaves nothing behind', async () => {
    const bucket = await createTestBucket();
    const state = await mkdtemp(path.join(tmpdir(), 's3-aborted-'));
    try {
      const store = createS3Store(bucket, state, { partsInFlight: 1, maxAttempts: 2 });
      // 48 MiB at 20 MiB/s: still uploading when the other party strikes.
      let chunks = 0;
      const body = new Readable({
        read() {
          if (chunks++ === 12) this.push(null);
          else setTimeout(() => this.push(randomBytes(4 * MiB)), 200);
        },
      });
      const put = store.put('env/backup/files.tar.zst', body);
      put.catch(() => {});
      let uploads: string[] = [];
      for (let waited = 0; uploads.length === 0 && waited < 10_000; waited += 50) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        uploads = await multipartUploads(bucket);
      }
      const [key, uploadId] = uploads[0]!.split(':') as [string, string];
      await s3Client().send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }));
      await expect(put).rejects.toMatchObject({
        code: 'E_UPLOAD_ABORTED',
        exitCode: 6,
        message: /multipart upload was aborted by another party .*orphanUploadAge.*operator.*lifecycle rule.*can be retried/,
      });
      expect(await multipartUploads(bucket)).toEqual([]);
      expect(await store.head('env/backup/files.tar.zst')).toBeUndefined();
    } finally {
      await rm(state, { recursive: true, force: true });
    }
  });
});
