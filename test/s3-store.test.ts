import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { freeNow, offerForRecycling } from '../src/chunk-recycling.ts';
import { objectStoreContract } from './object-store.contract.ts';
import { createS3Store, createTestBucket, multipartUploads } from './support/s3.ts';

const stateDirs: string[] = [];
afterAll(async () => {
  await Promise.all(stateDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function stateDir(): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 's3-state-'));
  stateDirs.push(dir);
  return dir;
}

objectStoreContract('s3 (Ceph RGW)', async () => {
  const bucket = await createTestBucket();
  const state = await stateDir();
  return {
    store: createS3Store(bucket, state),
    withMaxObjectBytes: (bytes) => createS3Store(bucket, state, { maxParts: bytes / (5 * 1024 * 1024) }),
    incompleteUploads: async () => (await multipartUploads(bucket)).length,
  };
});

describe('s3 store', () => {
  it('presigns a GET URL that serves the object until it expires, then answers 403', async () => {
    const bucket = await createTestBucket();
    const store = createS3Store(bucket, await stateDir());
    await store.put('p/object', Readable.from([Buffer.from('presigned bytes')]));
    const url = await store.presignGet('p/object', 2);
    const before = await execa('curl', ['-sS', '-o', '-', '-w', '\n%{http_code}', url]);
    expect(before.stdout).toBe('presigned bytes\n200');
    await new Promise((resolve) => setTimeout(resolve, 3500));
    const after = await execa('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', url]);
    expect(after.stdout).toBe('403');
  });

  it('names a missing bucket and bad credentials in its errors', async () => {
    const state = await stateDir();
    const missing = createS3Store('no-such-bucket-here', state);
    await expect(missing.put('k', Readable.from([Buffer.from('x')]))).rejects.toThrow(/bucket does not exist/);
    const bucket = await createTestBucket();
    const denied = createS3Store(bucket, state, { secretAccessKey: 'wrong-secret' });
    await expect(denied.put('k', Readable.from([Buffer.from('x')]))).rejects.toMatchObject({ code: 'E_STORE_IO', message: /credentials/ });
    expect(await multipartUploads(bucket)).toEqual([]);
  });
});

describe('s3 store memory', () => {
  it('frees each chunk of a multipart body once uploaded, and the object is intact', async () => {
    const bucket = await createTestBucket();
    const store = createS3Store(bucket, await stateDir());
    const pieces = Array.from({ length: 12 }, (_, i) => randomBytes(1_800_000 + i * 1000)); // ~4 parts of 5 MiB
    const chunks = pieces.map((piece) => offerForRecycling(Buffer.from(new Uint8Array(piece).buffer), freeNow));
    await store.put('m/frames', Readable.from(chunks));
    expect(chunks.map((chunk) => chunk.length)).toEqual(pieces.map(() => 0));
    const back = await buffer(await store.get('m/frames'));
    expect(back.equals(Buffer.concat(pieces))).toBe(true);
  });
});
