import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FsObjectStore } from '../src/transport/stores/fs-store.ts';
import { objectStoreContract } from './object-store.contract.ts';

const roots: string[] = [];
afterAll(async () => {
  await Promise.all(roots.map((root) => rm(root, { recursive: true, force: true })));
});

class SmallFsStore extends FsObjectStore {
  override readonly maxObjectBytes: number;
  constructor(root: string, maxObjectBytes: number) {
    super(root);
    this.maxObjectBytes = maxObjectBytes;
  }
}

objectStoreContract('fs', async () => {
  const root = await mkdtemp(path.join(tmpdir(), 'fs-store-'));
  roots.push(root);
  return {
    store: new FsObjectStore(root),
    withMaxObjectBytes: (bytes) => new SmallFsStore(root, bytes),
    incompleteUploads: async () => (await readdir(path.join(root, '.incomplete')).catch(() => [])).length,
  };
});

describe('fs store', () => {
  it('says it cannot presign, with a stable code', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'fs-store-'));
    roots.push(root);
    await expect(new FsObjectStore(root).presignGet()).rejects.toMatchObject({ code: 'E_PRESIGN_UNSUPPORTED' });
  });
});
