import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UploadJournal } from '../src/transport/stores/upload-journal.ts';
import { fullTmpfs } from './support/full-disk.ts';

describe('upload journal in a full state directory', () => {
  let dir: string;
  let stateDir: string;
  let unmount: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'sa-upload-journal-'));
    stateDir = path.join(dir, 'state');
    unmount = await fullTmpfs(stateDir);
  });
  afterAll(async () => {
    await unmount?.();
    await rm(dir, { recursive: true, force: true });
  });

  const entry = { store: 'offsite', bucket: 'backups', key: 'shop/20261122T034600123Z-aaaaaaaa/db.tar.zst', startedAt: new Date().toISOString(), pid: process.pid };

  it('record fails E_NO_SPACE naming the state directory and the entry, and leaves no temp file', async () => {
    const journal = new UploadJournal(stateDir);
    for (const attempt of [1, 2]) {
      const failure = await journal.record(entry).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(failure, `attempt ${attempt}`).toMatchObject({
        code: 'E_NO_SPACE',
        message: expect.stringMatching(new RegExp(`^the state directory ${stateDir} is out of space \\(ENOSPC\\): could not write ${path.join(stateDir, 'uploads')}/[0-9a-f]{32}\\.json; `)),
        details: { stateDir, errno: 'ENOSPC' },
      });
      expect((failure as { exitCode: number }).exitCode).toBe(16);
    }
    expect(await readdir(path.join(stateDir, 'uploads'))).toEqual([]);
    expect(await journal.entries('offsite')).toEqual([]);
  });

  it('with space again the entry is written and read back', async () => {
    await rm(path.join(stateDir, 'filler'));
    const journal = new UploadJournal(stateDir);
    await journal.record(entry);
    expect(await journal.entries('offsite')).toEqual([entry]);
    expect((await readdir(path.join(stateDir, 'uploads'))).filter((name) => name.endsWith('.tmp'))).toEqual([]);
  });
});
