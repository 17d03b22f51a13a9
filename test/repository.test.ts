import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { FsObjectStore } from '../src/transport/stores/fs-store.ts';
import { repositoryContract } from './repository.contract.ts';
import { createS3Store, createTestBucket } from './support/s3.ts';

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}

repositoryContract('fs', async () => new FsObjectStore(await tempDir('repository-fs-')));
repositoryContract('s3 (Ceph RGW)', async () => createS3Store(await createTestBucket(), await tempDir('repository-s3-state-')));
