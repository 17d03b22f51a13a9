import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupSummary } from '../src/snapshot/pipeline/catalog.ts';
import { loadConfig } from '../src/agent/config.ts';
import type { PruneResult } from '../src/agent/prune.ts';
import { openEnvironmentStore } from '../src/agent/stores.ts';
import { newBackupId } from '../src/snapshot/backup-id.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, createSandbox, filesEnv, s3StoreConfig, type CliResult, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, writeTokens } from './support/daemon.ts';
import { putSigned, TINY_ELEMENT, tinyManifest } from './support/manifest-keys.ts';
import { startFaultProxy, type FaultProxy } from './support/s3-fault-proxy.ts';
import { createTestBucket, multipartUploads } from './support/s3.ts';
import { s3TestServer } from './support/servers.ts';

const NODES = 8;
const KEPT = 44; // the premium tier's count

/**
 * A fleet in one bucket under one prefix (issue #11): 8 agents, each its own config, state dir
 * and node id, one shared key; nodes 0 and 1 both configure `migrating`. They back up, prune
 * and restart their daemons all at once, through a proxy that counts every S3 request.
 */
describe('a fleet of 8 nodes sharing one bucket and prefix', () => {
  let bucket: string;
  let proxy: FaultProxy;
  const nodes: Sandbox[] = [];
  const node = (i: number) => (...rest: string[]) => cli(['--json', '--config', nodes[i]!.configPath, ...rest]);
  const json = <T>(result: CliResult): T => {
    if (result.exitCode !== 0) throw new Error(`exit ${result.exitCode}: ${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  };

  beforeAll(async () => {
    bucket = await createTestBucket();
    proxy = await startFaultProxy(s3TestServer().endpoint);
    const first = await createSandbox();
    const keyFile = path.join(first.dir, 'fleet.key');
    await writeFile(keyFile, randomBytes(32).toString('hex'), { mode: 0o600 });
    for (let i = 0; i < NODES; i++) {
      const sandbox = i === 0 ? first : await createSandbox();
      const mount = path.join(sandbox.dir, 'mount');
      await mkdir(mount);
      await writeFile(path.join(mount, 'node.txt'), `node-${i}\n`);
      await writeFile(path.join(mount, 'blob.bin'), randomBytes(64 * 1024));
      const tokens = await writeTokens(sandbox);
      await sandbox.writeConfig({
        nodeId: `node-${i}`,
        keys: [{ id: 'fleet', file: keyFile, sign: true }],
        defaultStore: 's3',
        stores: { s3: s3StoreConfig(bucket, { endpoint: proxy.url, prefix: 'fleet/' }) },
        daemon: daemonSection(tokens),
        environments: {
          [`site-${i}`]: { ...filesEnv({ uploads: mount }), retention: [{ interval: '1h', count: 1 }] },
          ...(i < 2 ? { migrating: { ...filesEnv({ uploads: mount }), retention: [{ interval: '1h', count: 1 }] } } : {}),
          ...(i === 0 ? { kept: { ...filesEnv({ uploads: mount }), manualLimit: 100 } } : {}),
        },
      });
      nodes.push(sandbox);
    }
  });
  afterAll(async () => {
    await proxy?.close();
    await Promise.all(nodes.map((n) => n.cleanup()));
  });

  it('backing up, pruning and restarting at once: no backup of one node deleted or aborted by another, none committed with an object missing, no foreign restore by mistake', async () => {
    const created = new Map<number, string[]>();
    const pruned = new Map<number, string[]>();
    const migrating: CliResult[] = [];
    await Promise.all(
      nodes.map(async (_, i) => {
        const ids: string[] = [];
        for (let run = 0; run < 2; run++) {
          const parallel = [node(i)('backup', 'create', `site-${i}`, '--scheduled')];
          if (i < 2) parallel.push(node(i)('backup', 'create', 'migrating', '--scheduled'));
          const [own, moving] = await Promise.all(parallel);
          ids.push(json<Manifest>(own!).id);
          if (moving) migrating.push(moving);
        }
        created.set(i, ids);
        if (i >= 2 && i < 5) {
          // A daemon (re)start sweeps and renews while the others are uploading.
          const daemon = await startDaemon(nodes[i]!.configPath);
          daemon.child.kill('SIGTERM');
          expect((await daemon.exited).exitCode).toBe(0);
        }
        pruned.set(i, json<PruneResult>(await node(i)('backup', 'prune', `site-${i}`)).deleted.map((d) => d.id));
      }),
    );

    // The checks only read (each node its own environment and state dir): side by side.
    const expectedOf = (i: number) => created.get(i)!.filter((id) => !pruned.get(i)!.includes(id));
    const [listings, verified, ownerView, movingList] = await Promise.all([
      Promise.all(nodes.map((_, i) => node(i)('backup', 'list', `site-${i}`))),
      Promise.all(nodes.map((_, i) => node(i)('backup', 'verify', `site-${i}`, expectedOf(i)[0]!))),
      node(0)('env', 'owner', 'migrating'),
      node(1)('backup', 'list', 'migrating'),
    ]);
    for (let i = 0; i < NODES; i++) {
      // Each node's listing is what it made, less what its own prune deleted (retention: 1 per hour).
      const listed = json<BackupSummary[]>(listings[i]!);
      const expected = expectedOf(i);
      expect(listed.map((b) => [b.id, b.restorable, b.manifest?.agent.nodeId])).toEqual(expected.map((id) => [id, true, `node-${i}`]));
      expect(pruned.get(i)).toEqual([created.get(i)![0]]);
      // Committed means complete: every object there, with its sha256.
      expect(verified[i]!.exitCode).toBe(0);
    }
    // The environment on two nodes: one owner; the other was refused, never merged in.
    const owner = json<{ owner: { nodeId: string } }>(ownerView).owner.nodeId;
    for (const result of migrating.filter((r) => r.exitCode !== 0)) expect(result.stderr).toMatch(/E_ENV_OWNED|E_ENV_CLAIM_CONTENDED/);
    const moving = json<BackupSummary[]>(movingList);
    expect(moving.length).toBeGreaterThan(0);
    expect(new Set(moving.map((b) => b.manifest?.agent.nodeId))).toEqual(new Set([owner]));
    // Nothing left uploading, and no node restores another's backup without naming it.
    expect(await multipartUploads(bucket)).toEqual([]);
    const other = owner === 'node-0' ? 1 : 0;
    const refused = await node(other)('backup', 'restore', 'migrating', moving[0]!.id, '--target', `site-${other}`, '--yes');
    expect(refused.exitCode).toBe(17);
    expect(refused.stderr).toContain('E_FOREIGN_BACKUP');
  });

  it(`requests per operation are the same with 1 and with ${KEPT} backups kept`, async () => {
    const measure = async (...args: string[]) => {
      proxy.resetCounts();
      const result = await node(0)(...args);
      expect(result.exitCode, result.stderr).toBe(0);
      return proxy.counts();
    };
    const config = await loadConfig(nodes[0]!.configPath);
    const store = await openEnvironmentStore(config, 'kept');
    const table: Record<string, Record<string, Record<string, number>>> = {};
    for (const kept of [1, KEPT]) {
      const have = json<BackupSummary[]>(await node(0)('backup', 'list', 'kept')).length;
      // Backups made cheaply: genuine signed manifests of one tiny element each, an hour apart.
      // Written side by side: each its own keys.
      await Promise.all(
        Array.from({ length: Math.max(0, kept - have) }, async (_, k) => {
          const id = newBackupId(new Date(Date.UTC(2026, 0, 1) + (have + k) * 3_600_000));
          await store.put(`kept/${id}/uploads.tar`, Readable.from([TINY_ELEMENT]));
          await putSigned(store, nodes[0]!.configPath, tinyManifest('kept', id));
        }),
      );
      // As after commits: the owner claimed, the catalog up to date (the prune writes it).
      expect((await node(0)('backup', 'prune', 'kept')).exitCode).toBe(0);
      const list = await measure('backup', 'list', 'kept');
      const prune = await measure('backup', 'prune', 'kept');
      const create = await measure('backup', 'create', 'kept');
      table[`B=${kept}`] = { list, prune, create, scheduled: await measure('backup', 'create', 'kept', '--scheduled') };
    }
    const total = (counts: Record<string, number>) => Object.values(counts).reduce((sum, n) => sum + n, 0);
    for (const op of ['list', 'prune', 'create', 'scheduled']) expect(total(table[`B=${KEPT}`]![op]!), `${op}: ${JSON.stringify(table)}`).toBe(total(table['B=1']![op]!));
    if (process.env.FLEET_REPORT) await writeFile(process.env.FLEET_REPORT, JSON.stringify(table, null, 2));
  });
});
