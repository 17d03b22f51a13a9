import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupSummary } from '../src/snapshot/pipeline/catalog.ts';
import { loadConfig } from '../src/agent/config.ts';
import { describeOwner, ensureOwner, type OwnerView } from '../src/agent/ownership.ts';
import { openEnvironmentStore } from '../src/agent/stores.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { cli, cliJson, createSandbox, filesEnv, s3StoreConfig, startCli, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, waitFor, writeTokens } from './support/daemon.ts';
import { createTestBucket, s3Client } from './support/s3.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Two nodes (own config, state dir and node id; one key, as a fleet has) configure the same
 * environment name in one bucket under one prefix: an environment being migrated (issue #11).
 */
describe('many nodes, one bucket: only the owner writes an environment, nobody restores another node\'s data by mistake', () => {
  let bucket: string;
  let a: Sandbox;
  let b: Sandbox;
  let keyFile: string;
  const argsOf = (s: Sandbox) => (...rest: string[]) => ['--config', s.configPath, ...rest];

  async function writeNodeConfig(sandbox: Sandbox, nodeId: string, mount: string, extra: Record<string, unknown> = {}): Promise<void> {
    await sandbox.writeConfig({
      nodeId,
      keys: [{ id: 'fleet', file: keyFile, sign: true }],
      defaultStore: 's3',
      stores: { s3: s3StoreConfig(bucket) },
      environments: { shared: { ...filesEnv({ uploads: mount }), manualLimit: 2 }, other: filesEnv({ uploads: mount }) },
      ...extra,
    });
  }

  beforeAll(async () => {
    bucket = await createTestBucket();
    [a, b] = await Promise.all([createSandbox(), createSandbox()]);
    keyFile = path.join(a.dir, 'fleet.key');
    await writeFile(keyFile, randomBytes(32).toString('hex'), { mode: 0o600 });
    for (const [sandbox, node] of [[a, 'node-a'], [b, 'node-b']] as const) {
      const mount = path.join(sandbox.dir, 'mount');
      await mkdir(mount);
      await writeFile(path.join(mount, 'who.txt'), `data of ${node}\n`);
      await writeNodeConfig(sandbox, node, mount);
    }
  });
  afterAll(async () => {
    await a.cleanup();
    await b.cleanup();
  });

  it('the first node to write owns the environment; the other may not create, prune or delete (E_ENV_OWNED, exit 17, naming the owner), only read', async () => {
    const backup = await cliJson<Manifest>(argsOf(a)('backup', 'create', 'shared'));
    expect(backup.agent.nodeId).toBe('node-a');
    for (const attempt of [
      ['backup', 'create', 'shared'],
      ['backup', 'create', 'shared', '--scheduled'],
      ['backup', 'create', 'shared', '--replace-oldest'],
      ['backup', 'prune', 'shared'],
      ['backup', 'delete', 'shared', backup.id, '--yes'],
    ]) {
      const refused = await cli(argsOf(b)(...attempt));
      expect(refused.exitCode, `${attempt.join(' ')}: ${refused.stderr}`).toBe(17);
      expect(refused.stderr).toContain('E_ENV_OWNED');
      expect(refused.stderr).toContain('owned by node node-a');
      expect(refused.stderr).toContain('env adopt shared --force');
    }
    // Reads work from any node: the listing names who made each backup.
    const listed = await cliJson<BackupSummary[]>(argsOf(b)('backup', 'list', 'shared'));
    expect(listed.map((l) => [l.id, l.manifest?.agent.nodeId, l.restorable])).toEqual([[backup.id, 'node-a', true]]);
    const table = await cli(argsOf(b)('backup', 'list', 'shared'));
    expect(table.stdout.split('\n').find((l) => l.includes(backup.id))).toContain('node-a');
    expect((await cliJson<{ deleted: unknown[] }>(argsOf(b)('backup', 'prune', 'shared', '--dry-run'))).deleted).toEqual([]);
    const owner = await cliJson<OwnerView>(argsOf(b)('env', 'owner', 'shared'));
    expect(owner).toMatchObject({ env: 'shared', nodeId: 'node-b', owner: { nodeId: 'node-a', state: 'owner', epoch: 1, stale: false } });
    // The owner's own manual limit counts only what it made: node b added nothing.
    expect((await cli(argsOf(a)('backup', 'create', 'shared'))).exitCode).toBe(0);
    const over = await cli(argsOf(a)('backup', 'create', 'shared'));
    expect(over.stderr).toContain('E_MANUAL_LIMIT');
  });

  it("a restore of another node's backup needs --from-node naming it (E_FOREIGN_BACKUP, exit 17); with it, that node's bytes arrive", async () => {
    const [backup] = await cliJson<BackupSummary[]>(argsOf(b)('backup', 'list', 'shared'));
    const refused = await cli(argsOf(b)('backup', 'restore', 'shared', backup!.id, '--yes'));
    expect(refused.exitCode, refused.stderr).toBe(17);
    expect(refused.stderr).toContain('E_FOREIGN_BACKUP');
    expect(refused.stderr).toContain('made by node node-a');
    expect(refused.stderr).toContain('--from-node node-a');
    expect(await readFile(path.join(b.dir, 'mount', 'who.txt'), 'utf8')).toBe('data of node-b\n');
    // Naming the wrong node is no choice at all.
    expect((await cli(argsOf(b)('backup', 'restore', 'shared', backup!.id, '--yes', '--from-node', 'node-c'))).stderr).toContain('E_FOREIGN_BACKUP');
    // Into an environment this node owns (its safety backup is written there)…
    await cliJson(argsOf(b)('backup', 'create', 'other'));
    await cliJson(argsOf(b)('backup', 'restore', 'shared', backup!.id, '--target', 'other', '--from-node', 'node-a', '--yes'));
    expect(await readFile(path.join(b.dir, 'mount', 'who.txt'), 'utf8')).toBe('data of node-a\n');
    // …and into one it does not own: its safety backup would be a write there.
    await writeFile(path.join(b.dir, 'mount', 'who.txt'), 'data of node-b\n');
    const unowned = await cli(argsOf(b)('backup', 'restore', 'shared', backup!.id, '--from-node', 'node-a', '--yes'));
    expect(unowned.stderr).toContain('E_ENV_OWNED');
    expect(await readFile(path.join(b.dir, 'mount', 'who.txt'), 'utf8')).toBe('data of node-b\n');
    await cliJson(argsOf(b)('backup', 'restore', 'shared', backup!.id, '--from-node', 'node-a', '--no-safety-backup', '--yes'));
    expect(await readFile(path.join(b.dir, 'mount', 'who.txt'), 'utf8')).toBe('data of node-a\n');
  });

  it('env adopt: refused while the owner is live (exit 17, --force named), forced takes over; the old owner is then refused; a stale owner is adopted without --force', async () => {
    const live = await cli(argsOf(b)('env', 'adopt', 'shared'));
    expect(live.exitCode, live.stderr).toBe(17);
    expect(live.stderr).toContain('--force');
    const forced = await cli(argsOf(b)('--json', '--log-level', 'warn', 'env', 'adopt', 'shared', '--force'));
    expect(forced.exitCode, forced.stderr).toBe(0);
    expect(JSON.parse(forced.stdout)).toMatchObject({ owner: { nodeId: 'node-b', epoch: 2, adoptedFrom: 'node-a' } });
    expect(forced.stderr).toContain('environment adopted from node node-a');
    // node b inherits the backups (prune and limits now act for it); node a may only read.
    expect((await cli(argsOf(b)('backup', 'create', 'shared', '--scheduled'))).exitCode).toBe(0);
    const old = await cli(argsOf(a)('backup', 'create', 'shared', '--scheduled'));
    expect(old.exitCode).toBe(17);
    expect(old.stderr).toContain('owned by node node-b');

    // Node b's record left stale (its host gone for a day): node a adopts it back without --force.
    const key = 'agent/shared/owners/node-b.json';
    const record = JSON.parse(await (await s3Client().send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body!.transformToString());
    record.renewedAt = new Date(Date.now() - 86_400_000).toISOString();
    await s3Client().send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(record) }));
    expect((await cliJson<OwnerView>(argsOf(a)('env', 'owner', 'shared'))).owner).toMatchObject({ nodeId: 'node-b', stale: true });
    const back = await cliJson<OwnerView>(argsOf(a)('env', 'adopt', 'shared'));
    expect(back.owner).toMatchObject({ nodeId: 'node-a', epoch: 3, adoptedFrom: 'node-b', stale: false });
    expect(back.records.map((r) => r.nodeId)).toEqual(['node-a']); // the superseded record is gone
  });

  it("the daemon renews the records of the environments its node owns: its own stale record is fresh again, same epoch and since", async () => {
    const key = 'agent/shared/owners/node-a.json';
    const record = JSON.parse(await (await s3Client().send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body!.transformToString());
    const staleAt = new Date(Date.now() - 86_400_000).toISOString();
    await s3Client().send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify({ ...record, renewedAt: staleAt }) }));
    expect((await cliJson<OwnerView>(argsOf(b)('env', 'owner', 'shared'))).owner).toMatchObject({ nodeId: 'node-a', stale: true });
    const tokens = await writeTokens(a);
    await writeNodeConfig(a, 'node-a', path.join(a.dir, 'mount'), { daemon: daemonSection(tokens) });
    const daemon = await startDaemon(a.configPath);
    try {
      await waitFor('the renewal', async () => (await cliJson<OwnerView>(argsOf(b)('env', 'owner', 'shared'))).owner?.stale === false);
    } finally {
      daemon.child.kill('SIGTERM');
      await daemon.exited;
    }
    const renewed = (await cliJson<OwnerView>(argsOf(b)('env', 'owner', 'shared'))).owner!;
    expect(renewed).toMatchObject({ nodeId: 'node-a', epoch: 3, since: record.since });
    expect(Date.parse(renewed.renewedAt)).toBeGreaterThan(Date.now() - 60_000);
  });

  it('two nodes claiming a new environment at the same moment: never two owners (20 rounds against the RGW)', async () => {
    const [configA, configB] = await Promise.all([loadConfig(a.configPath), loadConfig(b.configPath)]);
    const logger = pino({ level: 'silent' });
    const owners: string[] = [];
    // Each round its own environment (nothing shared between rounds): 5 rounds at a time, the
    // two claims of each at the same moment as before.
    const raceRound = async (round: number) => {
      const env = `race-${round}`;
      const withEnv = (config: typeof configA) => ({ ...config, environments: { ...config.environments, [env]: config.environments.other! } });
      const [ca, cb] = [withEnv(configA), withEnv(configB)];
      const [storeA, storeB] = await Promise.all([openEnvironmentStore(ca, env), openEnvironmentStore(cb, env)]);
      const results = await Promise.allSettled([ensureOwner(ca, storeA, env, logger), ensureOwner(cb, storeB, env, logger)]);
      const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i === 0 ? 'node-a' : 'node-b'] : []));
      expect(won.length).toBeLessThanOrEqual(1);
      for (const r of results) if (r.status === 'rejected') expect((r.reason as { code: string }).code).toMatch(/^E_ENV_(OWNED|CLAIM_CONTENDED)$/);
      // Whoever won (or, when both withdrew, whoever retries first) is the one owner both see.
      if (won.length === 0) await ensureOwner(ca, storeA, env, logger);
      const winner = won[0] ?? 'node-a';
      await expect(ensureOwner(winner === 'node-a' ? cb : ca, winner === 'node-a' ? storeB : storeA, env, logger)).rejects.toMatchObject({ code: 'E_ENV_OWNED' });
      await ensureOwner(winner === 'node-a' ? ca : cb, winner === 'node-a' ? storeA : storeB, env, logger);
      owners.push(winner);
    };
    for (let first = 0; first < 20; first += 5) await Promise.all([0, 1, 2, 3, 4].map((k) => raceRound(first + k)));
    expect(owners).toHaveLength(20);
  });

  it('a node that read the records while another was still claiming does not supersede it once it owns (its claim asks a higher epoch): E_ENV_OWNED, one owner', async () => {
    const [configA, configB] = await Promise.all([loadConfig(a.configPath), loadConfig(b.configPath)]);
    const logger = pino({ level: 'silent' });
    const env = 'race-interleaved';
    const withEnv = (config: typeof configA) => ({ ...config, environments: { ...config.environments, [env]: config.environments.other! } });
    const [ca, cb] = [withEnv(configA), withEnv(configB)];
    const [storeA, storeB] = await Promise.all([openEnvironmentStore(ca, env), openEnvironmentStore(cb, env)]);
    // node-a is mid-claim: its claiming record (epoch 1) is there, no owner yet.
    const now = new Date().toISOString();
    const recordOfA = (state: string) => Readable.from([JSON.stringify({ schema: 'storage-agent/owner', env, nodeId: 'node-a', host: 'a', state, epoch: 1, since: now, renewedAt: now })]);
    await storeA.put(`${env}/owners/node-a.json`, recordOfA('claiming'));
    // node-b reads that, claims at epoch 2; as its claiming record lands, node-a becomes owner.
    const put: typeof storeB.put = async (key, body, options) => {
      if (key === `${env}/owners/node-b.json`) await storeA.put(`${env}/owners/node-a.json`, recordOfA('owner'));
      return storeB.put(key, body, options);
    };
    const interleaved = overriding(storeB, { put });
    await expect(ensureOwner(cb, interleaved, env, logger)).rejects.toMatchObject({ code: 'E_ENV_OWNED', details: { owner: 'node-a' } });
    await ensureOwner(ca, storeA, env, logger);
    const view = await describeOwner(cb, storeB, env);
    expect(view.records.map((r) => [r.nodeId, r.state])).toEqual([['node-a', 'owner']]);
  });

  it('a first write whose claim meets another claim withdraws, pauses and claims again: once the rival withdrew too, it owns', async () => {
    const configB = await loadConfig(b.configPath);
    const logger = pino({ level: 'silent' });
    const env = 'race-both-withdrew';
    const cb = { ...configB, environments: { ...configB.environments, [env]: configB.environments.other! } };
    const storeB = await openEnvironmentStore(cb, env);
    // node-c claims at the moment node-b's first claiming record lands, and withdraws as node-b does.
    const rivalKey = `${env}/owners/node-c.json`;
    let claims = 0;
    const racing = overriding(storeB, {
      put: async (key, body, options) => {
        if (key === `${env}/owners/node-b.json` && ++claims === 1) {
          const now = new Date().toISOString();
          await storeB.put(rivalKey, Readable.from([JSON.stringify({ schema: 'storage-agent/owner', env, nodeId: 'node-c', host: 'c', state: 'claiming', epoch: 1, since: now, renewedAt: now })]));
        }
        return storeB.put(key, body, options);
      },
      delete: async (keys) => {
        if (keys.includes(`${env}/owners/node-b.json`)) await storeB.delete([rivalKey]);
        return storeB.delete(keys);
      },
    });
    await ensureOwner(cb, racing, env, logger);
    const view = await describeOwner(cb, storeB, env);
    expect(view.records.map((r) => [r.nodeId, r.state])).toEqual([['node-b', 'owner']]);
    // Claiming, withdrawn; claiming again, then owner.
    expect(claims).toBe(3);
  });

  it('a rival claim that stays (a node claiming, not yet owner, for longer than the retries): E_ENV_CLAIM_CONTENDED after its retries, nothing of this node left', async () => {
    const configB = await loadConfig(b.configPath);
    const env = 'race-rival-stays';
    const cb = { ...configB, environments: { ...configB.environments, [env]: configB.environments.other! } };
    const storeB = await openEnvironmentStore(cb, env);
    const now = new Date().toISOString();
    await storeB.put(`${env}/owners/node-d.json`, Readable.from([JSON.stringify({ schema: 'storage-agent/owner', env, nodeId: 'node-d', host: 'd', state: 'claiming', epoch: 1, since: now, renewedAt: now })]));
    const started = Date.now();
    await expect(ensureOwner(cb, storeB, env, pino({ level: 'silent' }))).rejects.toMatchObject({ code: 'E_ENV_CLAIM_CONTENDED', details: { rival: 'node-d' } });
    expect(Date.now() - started).toBeGreaterThanOrEqual(300); // it paused twice before giving up
    expect((await describeOwner(cb, storeB, env)).records.map((r) => r.nodeId)).toEqual(['node-d']);
  });

  it('the commit point checks what it commits: an object deleted before the manifest (another prune, an operator) fails the backup E_BACKUP_INCOMPLETE (exit 6), nothing committed or left', async () => {
    const before = (await cliJson<BackupSummary[]>(argsOf(b)('backup', 'list', 'other'))).map((l) => l.id);
    const pauseFile = path.join(b.dir, 'paused-stored');
    const run = startCli(argsOf(b)('--json', 'backup', 'create', 'other'), { env: { STORAGE_AGENT_PAUSE_AT: 'backup:stored', STORAGE_AGENT_PAUSE_FILE: pauseFile } });
    while (!existsSync(pauseFile)) {
      if (run.exitCode !== null) throw new Error(`the backup ended before its commit: ${String((await run).stderr)}`);
      await sleep(20);
    }
    const store = await openEnvironmentStore(await loadConfig(b.configPath), 'other');
    const stored: string[] = [];
    for await (const object of store.list('other/')) {
      const id = /^other\/(\d{8}T[^/]+)\//.exec(object.key)?.[1]; // a backup's object, not the owner record or catalog
      if (id && !before.includes(id)) stored.push(object.key);
    }
    expect(stored, stored.join(", ")).toHaveLength(1);
    await store.delete(stored);
    await rm(pauseFile);
    const result = await run;
    expect(result.exitCode, String(result.stderr)).toBe(6);
    expect(String(result.stderr)).toContain('E_BACKUP_INCOMPLETE');
    expect(String(result.stderr)).toContain('is no longer in the store');
    expect((await cliJson<BackupSummary[]>(argsOf(b)('backup', 'list', 'other'))).map((l) => l.id)).toEqual(before);
  });

  it('config: orphanUploadAge below 1h is refused (a sweep must never abort a running upload); nodeId must be a name', async () => {
    const mount = path.join(b.dir, 'mount');
    await writeNodeConfig(b, 'node-b', mount, { orphanUploadAge: '1s' });
    const short = await cli(argsOf(b)('backup', 'list', 'shared'));
    expect(short.exitCode).toBe(3);
    expect(short.stderr).toContain('orphanUploadAge: must be at least 1h');
    await writeNodeConfig(b, 'Node B/1', mount);
    const bad = await cli(argsOf(b)('backup', 'list', 'shared'));
    expect(bad.exitCode).toBe(3);
    expect(bad.stderr).toContain('nodeId');
    await writeNodeConfig(b, 'node-b', mount);
  });
});

/** `store` with some of its methods replaced (the rest bound to it): a rival's writes interleaved with this node's. */
function overriding(store: ObjectStore, methods: Partial<Pick<ObjectStore, 'put' | 'delete'>>): ObjectStore {
  return new Proxy(store, {
    get: (target, name) => {
      if (name in methods) return methods[name as keyof typeof methods];
      const value = Reflect.get(target, name) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}
