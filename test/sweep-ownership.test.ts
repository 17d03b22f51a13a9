import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig, type Config } from '../src/agent/config.ts';
import { recoverAtStart } from '../src/agent/jobs/recovery.ts';
import { ensureOwner } from '../src/agent/ownership.ts';
import type { ObjectStore } from '../src/transport/object-store.ts';
import { createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { createTestBucket } from './support/s3.ts';

/** Every sweepIncomplete(prefix, olderThan) the agent asks of its stores. */
const sweeps: { prefix: string; olderThan: number }[] = [];

vi.mock('../src/agent/stores.ts', async (importOriginal) => {
  const original = await importOriginal<typeof import('../src/agent/stores.ts')>();
  const recording = (store: ObjectStore): ObjectStore =>
    new Proxy(store, {
      get(target, property) {
        if (property !== 'sweepIncomplete') {
          const value: unknown = Reflect.get(target, property, target);
          return typeof value === 'function' ? value.bind(target) : value; // private fields need the real this
        }
        return async (prefix: string, olderThan: Date) => {
          sweeps.push({ prefix, olderThan: olderThan.getTime() });
          return target.sweepIncomplete(prefix, olderThan);
        };
      },
    });
  return {
    ...original,
    openStore: async (config: Config, name: string) => recording(await original.openStore(config, name)),
    openEnvironmentStore: async (config: Config, env: string) => recording(await original.openEnvironmentStore(config, env)),
  };
});

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
    sweeps.length = 0;
    const before = Date.now();
    await recoverAtStart(config, logger, { sweepStores: true });
    // The journal's entries (olderThan the epoch: nothing by age), then by age under `ours/` only:
    // never the whole prefix, never `theirs/` (another node's) nor `unowned/` (nobody's yet).
    expect(sweeps.map((s) => s.prefix)).toEqual(['', 'ours/']);
    expect(sweeps[0]!.olderThan).toBe(0);
    expect(sweeps[1]!.olderThan).toBeLessThanOrEqual(before - config.orphanUploadAge + 1000);
    expect(sweeps[1]!.olderThan).toBeGreaterThan(before - config.orphanUploadAge - 60_000);
  });

  it('a CLI start (no sweep by age) asks only for the journal, and only when the journal has entries', async () => {
    sweeps.length = 0;
    await recoverAtStart(await loadConfig(mine.configPath), logger, { sweepStores: false });
    expect(sweeps).toEqual([]);
  });
});
