import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { fullTmpfs } from './support/full-disk.ts';

let sandbox: Sandbox;
let unmount: (() => Promise<void>) | undefined;

beforeAll(async () => {
  sandbox = await createSandbox();
  const files = path.join(sandbox.dir, 'files');
  await mkdir(files);
  await writeFile(path.join(files, 'file.txt'), 'data');
  // A state directory of its own, tiny, on tmpfs (as root), filled up before the agent runs.
  unmount = await fullTmpfs(sandbox.stateDir);
  // No free-disk floor: the write, not admission, is what this test is about.
  await sandbox.writeConfig({ jobs: { minFreeDiskBytes: 0 }, environments: { site: filesEnv({ uploads: files }) } });
});
afterAll(async () => {
  await unmount?.();
  await sandbox.cleanup();
});

async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).map((name) => path.join(dir, name));
}

describe('a full state directory', () => {
  it('backup create fails with E_NO_SPACE (exit 16) naming the state directory, and leaves no temp files', async () => {
    for (const attempt of [1, 2]) {
      const result = await cli(['--config', sandbox.configPath, 'backup', 'create', 'site']);
      expect(result.exitCode, `attempt ${attempt}: ${result.stderr}`).toBe(16);
      expect(result.stderr).toMatch(/^error \[E_NO_SPACE\]: the state directory \S+ is out of space \(ENOSPC\): could not write \S+; free space/);
      expect(result.stderr).toContain(`the state directory ${sandbox.stateDir} is out of space`);
      expect(result.stderr).not.toMatch(/\n\s+at /); // no stack trace
    }
    expect((await filesUnder(sandbox.stateDir)).filter((file) => file.endsWith('.tmp'))).toEqual([]);
  });

  it('--json carries the code and the state directory', async () => {
    const result = await cli(['--json', '--config', sandbox.configPath, 'backup', 'create', 'site']);
    expect(result.exitCode).toBe(16);
    expect(JSON.parse(result.stdout)).toMatchObject({ error: { code: 'E_NO_SPACE', details: { stateDir: sandbox.stateDir, errno: 'ENOSPC' } } });
  });
});
