import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, filesEnv, s3StoreConfig, startCli, type Sandbox } from './support/cli.ts';
import { createTestBucket, multipartUploads } from './support/s3.ts';
import { s3TestServer } from './support/servers.ts';

const run = promisify(execFile);
const RGW = path.resolve(import.meta.dirname, '../scripts/rgw.sh');
const rgw = (command: 'stop-gateway' | 'start-gateway') => run('bash', [RGW, command], { env: { ...process.env, RGW_DIR: s3TestServer().dir, RGW_PORT: new URL(s3TestServer().endpoint).port } });
/** The size of each of the 8 files of `big`. */
const BLOB_BYTES = 40 * 1024 * 1024;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe().catch(() => undefined);
    if (value) return value;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('S3 faults: outages and cancel leave no manifest and no multipart upload', () => {
  let sandbox: Sandbox;
  let bucket: string;
  const args = () => ['--config', sandbox.configPath];
  const uploadsInFlight = async () => ((await multipartUploads(bucket)).length > 0 ? true : undefined);

  beforeAll(async () => {
    sandbox = await createSandbox();
    bucket = await createTestBucket();
    const big = path.join(sandbox.dir, 'big');
    const small = path.join(sandbox.dir, 'small');
    await mkdir(big);
    await mkdir(small);
    // Incompressible data, large enough that the upload is still running when the faults hit.
    for (let i = 0; i < 8; i++) await writeFile(path.join(big, `blob-${i}.bin`), randomBytes(BLOB_BYTES));
    await writeFile(path.join(small, 'note.txt'), 'small');
    await configure(5);
  });

  /**
   * The store retries each request `maxAttempts` times (backoff 1, 2, 4, 8 s): 5 rides out a
   * 3-second outage; a lasting one is given up on sooner with fewer: 2 (one retry, after 1 s)
   * still retries before it gives up, and each of the upload, its abort and the sweep's listing
   * retries in turn, so every attempt more costs seconds and proves nothing more.
   */
  const configure = (maxAttempts: number) =>
    sandbox.writeConfig({
      defaultStore: 's3',
      stores: { s3: s3StoreConfig(bucket, { partsInFlight: 2, maxAttempts }) },
      environments: { big: filesEnv({ data: path.join(sandbox.dir, 'big') }), small: filesEnv({ data: path.join(sandbox.dir, 'small') }) },
    });
  afterAll(async () => {
    await rgw('start-gateway').catch(() => {});
    await sandbox.cleanup();
  });

  it('an outage of a few seconds mid-upload: parts are retried and the backup completes', async () => {
    const backup = startCli([...args(), '--json', 'backup', 'create', 'big']);
    await waitFor('a multipart upload', uploadsInFlight);
    await rgw('stop-gateway');
    await sleep(3000);
    await rgw('start-gateway');
    const result = await backup;
    expect(result.exitCode, String(result.stderr)).toBe(0);
    const manifest = JSON.parse(String(result.stdout)) as Manifest;
    expect(manifest.elements[0]!.rawBytes).toBeGreaterThan(8 * BLOB_BYTES);
    const verify = await cli([...args(), 'backup', 'verify', 'big', manifest.id]);
    expect(verify.exitCode).toBe(0);
    expect(await multipartUploads(bucket)).toEqual([]);
  });

  it('a lasting outage fails the backup with a clear error and no manifest; the next run aborts the orphaned upload', async () => {
    await configure(2);
    const backup = startCli([...args(), 'backup', 'create', 'big']);
    await waitFor('a multipart upload', uploadsInFlight);
    await rgw('stop-gateway');
    const result = await backup.finally(() => configure(5));
    expect(result.exitCode, String(result.stderr)).toBe(6);
    expect(String(result.stderr)).toMatch(/E_STORE_UNAVAILABLE.*(cannot upload|cannot list).*127\.0\.0\.1/s);
    const journal = await readdir(path.join(sandbox.stateDir, 'uploads'));
    expect(journal.length, 'journal entries').toBeGreaterThan(0); // the abort could not reach S3: remembered for later
    await rgw('start-gateway');
    expect((await multipartUploads(bucket)).length, 'orphaned uploads').toBeGreaterThan(0);
    // The next run, of any environment on this store, sweeps what the crash left behind.
    await cliJson([...args(), 'backup', 'create', 'small']);
    expect(await multipartUploads(bucket)).toEqual([]);
    expect(await readdir(path.join(sandbox.stateDir, 'uploads'))).toEqual([]);
    const list = await cliJson<{ restorable: boolean }[]>([...args(), 'backup', 'list', 'big']);
    expect(list.filter((b) => b.restorable)).toHaveLength(1); // only the first test's backup
  });

  it('cancel (SIGTERM) mid-upload: exit 9, no manifest, no objects, no multipart upload', async () => {
    const before = await cliJson<{ id: string }[]>([...args(), 'backup', 'list', 'big']);
    const backup = startCli([...args(), 'backup', 'create', 'big']);
    await waitFor('a multipart upload', uploadsInFlight);
    backup.kill('SIGTERM');
    const result = await backup;
    expect(result.exitCode).toBe(9);
    expect(String(result.stderr)).toContain('E_CANCELLED');
    expect(await multipartUploads(bucket)).toEqual([]);
    const after = await cliJson<{ id: string }[]>([...args(), 'backup', 'list', 'big']);
    expect(after.map((b) => b.id)).toEqual(before.map((b) => b.id));
  });
});
