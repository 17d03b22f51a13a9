import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig, type Config } from '../src/agent/config.ts';
import { recoverAtStart } from '../src/agent/jobs/recovery.ts';
import { ensureOwner } from '../src/agent/ownership.ts';
import { createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { openedStores } from './support/counting-store.ts';
import { createTestBucket } from './support/s3.ts';

// Every store the agent opens is counted (test/support/counting-store.ts): its sweeps are read off it.
vi.mock('../src/agent/stores.ts', async (importOriginal) => {
  const original = await importOriginal<typeof import('../src/agent/stores.ts')>();
  const { countOpened } = await import('./support/counting-store.ts');
  return {
    ...original,
    openStore: async (config: Config, name: string) => countOpened(await original.openStore(config, name)),
    openEnvironmentStore: async (config: Config, env: string) => countOpened(await original.openEnvironmentStore(config, env)),
  };
});

/** Every sweepIncomplete(prefix, olderThan) asked of the stores opened since `openedStores` was emptied. */
const sweeps = () =>
  openedStores.flatMap((store) => store.calls.filter((c) => c.method === 'sweepIncomplete').map((c) => ({ prefix: c.key, olderThan: c.olderThan!.getTime() })));

describe("one node's sweep never aborts another's upload (issue #11)", () => {
  let mine: Sandbox;
  let other: Sandbox;
  const logger = pino({ level: 'silent' });

  beforeAll(async () => {
    const bucket = await createTestBucket();
    [mine, other] = await Promise.all([createSandbox(), createSandbox()]);
    for (const [sandbox, nodeId] of [[mine, 'node-mine'], [other, 'node-other']] as const) {
      const mount = path.join(sandbox.dir, 'mount');
      await mkdir(mount);
      await sandbox.writeConfig({
        nodeId,
        defaultStore: 's3',
        stores: { s3: s3StoreConfig(bucket) },
        environments: { ours: filesEnv({ uploads: mount }), theirs: filesEnv({ uploads: mount }), unowned: filesEnv({ uploads: mount }) },
      });
    }
    const [configMine, configOther] = await Promise.all([loadConfig(mine.configPath), loadConfig(other.configPath)]);
    const { openEnvironmentStore } = await import('../src/agent/stores.ts');
    await ensureOwner(configMine, await openEnvironmentStore(configMine, 'ours'), 'ours', logger);
    await ensureOwner(configOther, await openEnvironmentStore(configOther, 'theirs'), 'theirs', logger);
  });
  afterAll(async () => {
    await mine.cleanup();
    await other.cleanup();
  });

  it('a daemon start sweeps by age only under the environments its node owns; journaled uploads of its own dead processes are aborted whatever their age', async () => {
    const config = await loadConfig(mine.configPath);
    openedStores.length = 0;
    const before = Date.now();
    await recoverAtStart(config, logger, { sweepStores: true });
    const swept = sweeps();
    // The journal's entries (olderThan the epoch: nothing by age), then by age under `ours/` only:
    // never the whole prefix, never `theirs/` (another node's) nor `unowned/` (nobody's yet).
    expect(swept.map((s) => s.prefix)).toEqual(['', 'ours/']);
    expect(swept[0]!.olderThan).toBe(0);
    expect(swept[1]!.olderThan).toBeLessThanOrEqual(before - config.orphanUploadAge + 1000);
    expect(swept[1]!.olderThan).toBeGreaterThan(before - config.orphanUploadAge - 60_000);
  });

  it('a CLI start (no sweep by age) asks only for the journal, and only when the journal has entries', async () => {
    openedStores.length = 0;
    await recoverAtStart(await loadConfig(mine.configPath), logger, { sweepStores: false });
    expect(sweeps()).toEqual([]);
  });
});
