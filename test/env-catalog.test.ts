import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createBackup } from '../src/agent/backup.ts';
import { deleteBackup, listBackups, type BackupSummary } from '../src/snapshot/pipeline/catalog.ts';
import { loadConfig, type Config } from '../src/agent/config.ts';
import type { OperationContext } from '../src/agent/context.ts';
import { catalogKey, MAX_CATALOG_BYTES, readCatalog, type CatalogEntry } from '../src/snapshot/pipeline/env-catalog.ts';
import { loadKeyRing } from '../src/agent/keys.ts';
import { createLogger } from '../src/agent/logger.ts';
import { pruneBackups } from '../src/agent/prune.ts';
import { openStore } from '../src/agent/stores.ts';
import { newBackupId } from '../src/snapshot/backup-id.ts';
import { elementKey, manifestKey, type Manifest } from '../src/snapshot/manifest.ts';
import type { KeyRing } from '../src/snapshot/manifest-mac.ts';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { cliJson, createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { CountingStore, openedStores, type StoreMethod } from './support/counting-store.ts';
import { putSigned, TINY_ELEMENT, tinyManifest } from './support/manifest-keys.ts';
import { createTestBucket } from './support/s3.ts';

// Every store the agent opens for an environment (prune, backup create) is counted.
vi.mock('../src/agent/stores.ts', async (importOriginal) => {
  const original = await importOriginal<typeof import('../src/agent/stores.ts')>();
  const { countOpened } = await import('./support/counting-store.ts');
  return { ...original, openEnvironmentStore: async (config: Config, env: string) => countOpened(await original.openEnvironmentStore(config, env)) };
});

const SIZES = { one: 1, many: 44 } as const;
const HOUR = 3_600_000;

type Entry = CatalogEntry;

const put = (store: ObjectStore, key: string, body: string | Buffer) => store.put(key, Readable.from([Buffer.from(body)]));

/** Calls that read or write backups' manifests, the catalog or the environment's listing (ownership records and element objects left out). */
function listingCalls(store: CountingStore, env: string): Partial<Record<StoreMethod, number>> {
  const counts: Partial<Record<StoreMethod, number>> = {};
  for (const { method, key } of store.calls) {
    const relevant = key === catalogKey(env) || (key.startsWith(`${env}/`) && key.endsWith('/manifest.json')) || (method === 'list' && key === `${env}/`);
    if (relevant) counts[method] = (counts[method] ?? 0) + 1;
  }
  return counts;
}

/** The one store the agent opened during `work`, counted. */
async function opened(work: () => Promise<unknown>): Promise<{ store: CountingStore; outcome: unknown }> {
  openedStores.length = 0;
  const outcome = await work().catch((error: unknown) => error);
  expect(openedStores).toHaveLength(1);
  return { store: openedStores[0]!, outcome };
}

/** Measured request counts, printed at the end (the numbers of issue #11). */
const measured: string[] = [];
const record = (storeKind: string, what: string, b: number, counts: Partial<Record<StoreMethod, number>>) =>
  measured.push(`${storeKind.padEnd(3)} B=${String(b).padEnd(3)} ${what.padEnd(46)} ${JSON.stringify(counts)}`);
afterAll(() => console.log(`request counts per operation:\n${measured.join('\n')}`));

for (const storeKind of ['fs', 's3'] as const) {
  describe(`environment catalog (${storeKind} store)`, () => {
    let sandbox: Sandbox;
    let config: Config;
    let keys: KeyRing;
    let raw: ObjectStore;
    let ctx: OperationContext;
    const ids: Record<string, string[]> = {};

    /** Signed manifests of `count` backups of `env` (one tiny element object each), an hour apart, oldest first. */
    async function seed(env: string, count: number, start = Date.UTC(2026, 0, 1)): Promise<string[]> {
      const made: string[] = [];
      for (let i = 0; i < count; i++) {
        const id = newBackupId(new Date(start + i * HOUR));
        await put(raw, elementKey(env, id, 'uploads', '.tar'), TINY_ELEMENT);
        await putSigned(raw, sandbox.configPath, tinyManifest(env, id));
        made.push(id);
      }
      return made;
    }

    /** What the manifests say, read the old way: the catalog object removed first. */
    async function truth(env: string): Promise<BackupSummary[]> {
      await raw.delete([catalogKey(env)]);
      return listBackups(raw, env, keys);
    }

    beforeAll(async () => {
      sandbox = await createSandbox();
      const mount = path.join(sandbox.dir, 'mount');
      await mkdir(mount);
      await writeFile(path.join(mount, 'a.txt'), 'a few bytes');
      const stores = storeKind === 's3' ? { stores: { s3: s3StoreConfig(await createTestBucket()) }, defaultStore: 's3' } : {};
      const env = (manualLimit?: number) => ({ ...filesEnv({ uploads: mount }), ...(manualLimit ? { manualLimit } : {}) });
      await sandbox.writeConfig({
        ...stores,
        environments: { one: env(SIZES.one), many: env(SIZES.many), mixed: env(), forged: env(), gone: env() },
      });
      config = await loadConfig(sandbox.configPath);
      keys = await loadKeyRing(config);
      raw = await openStore(config, config.defaultStore);
      ctx = { config, logger: createLogger('silent'), signal: new AbortController().signal };
      for (const [env, count] of Object.entries(SIZES)) ids[env] = await seed(env, count);
    });
    afterAll(() => sandbox.cleanup());

    it.each(Object.entries(SIZES))('%s (B = %i): without a catalog 1 LIST + 2B; the listing that may write writes it; then 1 LIST + 1 GET, the same backups', async (env, b) => {
      const store = new CountingStore(raw);
      const before = await listBackups(store, env, keys);
      expect(store.counts()).toEqual({ list: 1, head: b, get: b });
      record(storeKind, 'listBackups, no catalog', b, store.counts());
      expect(before.map((s) => s.id)).toEqual([...ids[env]!].reverse());
      expect(before.every((s) => s.status === 'ok' && s.authenticated)).toBe(true);
      expect(await raw.head(catalogKey(env))).toBeUndefined(); // a reader never writes

      store.reset();
      expect(await listBackups(store, env, keys, new Date(), { updateCatalog: true })).toEqual(before);
      expect(store.counts()).toEqual({ list: 1, head: b, get: b, put: 1 });
      expect(store.keysOf('put')).toEqual([catalogKey(env)]);
      record(storeKind, 'listBackups updateCatalog, no catalog', b, store.counts());
      expect([...(await readCatalog(raw, env))!.keys()].sort()).toEqual([...ids[env]!].sort());

      store.reset();
      expect(await listBackups(store, env, keys)).toEqual(before);
      expect(store.counts()).toEqual({ list: 1, get: 1 });
      expect(store.keysOf('get')).toEqual([catalogKey(env)]);
      record(storeKind, 'listBackups, with catalog', b, store.counts());

      store.reset();
      expect(await listBackups(store, env, keys, new Date(), { updateCatalog: true })).toEqual(before);
      expect(store.counts()).toEqual({ list: 1, get: 1 }); // nothing changed: nothing written
      record(storeKind, 'listBackups updateCatalog, with catalog', b, store.counts());
    });

    it('prune, its dry run and the manual-limit check list for 1 LIST + 1 GET at B = 1 as at B = 44', async () => {
      const totals: Record<string, Partial<Record<StoreMethod, number>>[]> = { prune: [], limit: [] };
      for (const [env, b] of Object.entries(SIZES)) {
        const dry = await opened(() => pruneBackups(ctx, env, true));
        expect(dry.store.counts()).toEqual({ list: 1, get: 1 });
        record(storeKind, 'prune --dry-run', b, dry.store.counts());

        const prune = await opened(() => pruneBackups(ctx, env, false));
        // Manual backups are kept: nothing to delete, and the catalog is current.
        expect(prune.outcome).toMatchObject({ deleted: [], kept: expect.arrayContaining([expect.objectContaining({ id: ids[env]![0] })]) });
        expect((prune.outcome as { kept: unknown[] }).kept).toHaveLength(b);
        expect(listingCalls(prune.store, env)).toEqual({ list: 1, get: 1 });
        record(storeKind, 'prune (listing part)', b, listingCalls(prune.store, env));
        record(storeKind, 'prune (all, ownership included)', b, prune.store.counts());
        totals.prune!.push(prune.store.counts());

        // The limit is B: a manual backup is refused after the check, before any capture.
        const limit = await opened(() => createBackup(ctx, { env }));
        expect(limit.outcome).toMatchObject({ code: 'E_MANUAL_LIMIT' });
        expect(listingCalls(limit.store, env)).toEqual({ list: 1, get: 1 });
        expect(limit.store.keysOf('put').filter((key) => !key.includes('/owners/'))).toEqual([]);
        record(storeKind, 'backup create: manual-limit check (listing)', b, listingCalls(limit.store, env));
        totals.limit!.push(limit.store.counts());
      }
      // Whatever else they do (ownership records), it does not grow with B either.
      expect(totals.prune![0]).toEqual(totals.prune![1]);
      expect(totals.limit![0]).toEqual(totals.limit![1]);
    });

    it('a commit writes the new backup into the catalog at a cost independent of B; deleting it drops its entry', async () => {
      const commits: Partial<Record<StoreMethod, number>>[] = [];
      for (const [env, b] of Object.entries(SIZES)) {
        const commit = await opened(() => createBackup(ctx, { env, trigger: 'scheduled', live: true }));
        const manifest = commit.outcome as Manifest;
        expect(manifest.trigger).toBe('scheduled');
        // The commit's refresh: list and catalog (the new manifest's text it has: no head or get of it), the catalog written.
        expect(listingCalls(commit.store, env)).toEqual({ list: 1, get: 1, put: 2 });
        expect(commit.store.keysOf('put').filter((key) => !key.includes('/owners/')).slice(-2)).toEqual([manifestKey(env, manifest.id), catalogKey(env)]);
        record(storeKind, 'backup create --scheduled (listing part)', b, listingCalls(commit.store, env));
        commits.push(commit.store.counts());
        expect((await readCatalog(raw, env))!.has(manifest.id)).toBe(true);

        const store = new CountingStore(raw);
        const listed = await listBackups(store, env, keys);
        expect(store.counts()).toEqual({ list: 1, get: 1 });
        expect(listed.map((s) => s.id)).toEqual([manifest.id, ...[...ids[env]!].reverse()]);
        expect(listed[0]).toMatchObject({ status: 'ok', authenticated: true, manifest: { trigger: 'scheduled' } });

        store.reset();
        await deleteBackup(store, env, manifest.id);
        expect(listingCalls(store, env)).toEqual({ get: 1, put: 1, delete: 1 });
        record(storeKind, 'deleteBackup (catalog + manifest part)', b, listingCalls(store, env));
        expect((await readCatalog(raw, env))!.has(manifest.id)).toBe(false);
        store.reset();
        expect((await listBackups(store, env, keys)).map((s) => s.id)).toEqual([...ids[env]!].reverse());
        expect(store.counts()).toEqual({ list: 1, get: 1 });
      }
      expect(commits[0]).toEqual(commits[1]);
    });

    it('the real CLI: backup create adds its backup to the catalog, backup delete removes it', async () => {
      const args = (...rest: string[]) => ['--config', sandbox.configPath, ...rest];
      const created = await cliJson<Manifest>(args('backup', 'create', 'many', '--scheduled'));
      expect((await readCatalog(raw, 'many'))!.has(created.id)).toBe(true);
      const store = new CountingStore(raw);
      const listed = await listBackups(store, 'many', keys);
      expect(store.counts()).toEqual({ list: 1, get: 1 });
      expect(listed).toHaveLength(45);
      expect(listed[0]).toMatchObject({ id: created.id, status: 'ok', authenticated: true });
      expect(listed).toEqual(await cliJson<BackupSummary[]>(args('backup', 'list', 'many')));

      await cliJson(args('backup', 'delete', 'many', created.id, '--yes'));
      const catalog = (await readCatalog(raw, 'many'))!;
      expect(catalog.has(created.id)).toBe(false);
      expect(catalog.size).toBe(44);
      store.reset();
      expect((await listBackups(store, 'many', keys)).map((s) => s.id)).toEqual([...ids.many!].reverse());
      expect(store.counts()).toEqual({ list: 1, get: 1 });
    });

    it('whatever the statuses, the listing is the same with the catalog as without; only signed, valid manifests are taken from it', async () => {
      const env = 'mixed';
      const [manual, scheduled, safety, expired, unsigned, badMac, outside, incomplete] = Array.from({ length: 8 }, (_, i) => newBackupId(new Date(Date.UTC(2026, 1, 1, i))));
      const inFuture = new Date(Date.now() + 30 * 86_400_000).toISOString();
      await putSigned(raw, sandbox.configPath, tinyManifest(env, manual!));
      await putSigned(raw, sandbox.configPath, tinyManifest(env, scheduled!, 'scheduled'));
      await putSigned(raw, sandbox.configPath, tinyManifest(env, safety!, 'safety', inFuture));
      await putSigned(raw, sandbox.configPath, tinyManifest(env, expired!, 'manual', '2026-02-02T00:00:00.000Z'));
      await put(raw, manifestKey(env, unsigned!), JSON.stringify(tinyManifest(env, unsigned!)));
      // Signed, then changed: its MAC fails.
      await putSigned(raw, sandbox.configPath, tinyManifest(env, badMac!));
      const changed = JSON.parse(await text(await raw.get(manifestKey(env, badMac!)))) as Manifest;
      await put(raw, manifestKey(env, badMac!), JSON.stringify({ ...changed, trigger: 'scheduled' }));
      // Signed by the key, but naming another backup's object: parseManifest refuses it.
      const foreign = tinyManifest(env, outside!);
      foreign.elements[0]!.objects[0]!.key = elementKey(env, manual!, 'uploads', '.tar');
      await putSigned(raw, sandbox.configPath, foreign);
      await put(raw, elementKey(env, incomplete!, 'uploads', '.tar'), TINY_ELEMENT);

      const expected = await truth(env);
      expect(Object.fromEntries(expected.map((s) => [s.id, `${s.status}${s.authenticated ? '+mac' : ''}`]))).toEqual({
        [manual!]: 'ok+mac',
        [scheduled!]: 'ok+mac',
        [safety!]: 'ok+mac',
        [expired!]: 'expired+mac',
        [unsigned!]: 'ok',
        [badMac!]: 'invalid',
        [outside!]: 'invalid',
        [incomplete!]: 'incomplete',
      });
      expect(await listBackups(raw, env, keys, new Date(), { updateCatalog: true })).toEqual(expected);
      expect([...(await readCatalog(raw, env))!.keys()].sort()).toEqual([manual, scheduled, safety, expired].sort());

      const store = new CountingStore(raw);
      expect(await listBackups(store, env, keys)).toEqual(expected);
      // The unsigned and the two invalid ones are read from their manifests, every time.
      expect(store.counts()).toEqual({ list: 1, get: 4, head: 3 });
      expect(store.keysOf('head').sort()).toEqual([unsigned, badMac, outside].map((id) => manifestKey(env, id!)).sort());
      store.reset();
      expect(await listBackups(store, env, keys, new Date(), { updateCatalog: true })).toEqual(expected);
      expect(store.counts().put).toBeUndefined(); // stable: they never make the catalog differ
    });

    describe('a forged catalog never changes the listing', () => {
      const env = 'forged';
      let backups: string[];
      let genuine: Record<string, Entry>;
      let expected: BackupSummary[];

      beforeAll(async () => {
        backups = await seed(env, 5, Date.UTC(2026, 2, 1));
        expected = await truth(env);
        await listBackups(raw, env, keys, new Date(), { updateCatalog: true });
        genuine = (JSON.parse(await text(await raw.get(catalogKey(env)))) as { entries: Record<string, Entry> }).entries;
      });

      /** Writes the catalog `entries` (id → entry) with the envelope a catalog has. */
      const forge = (entries: Record<string, unknown>) => put(raw, catalogKey(env), JSON.stringify({ schema: 'storage-agent/env-catalog', version: 1, entries }));
      const entry = (id: string): Entry => genuine[id]!;
      const edit = (id: string, change: (m: Manifest) => unknown): Entry => ({ ...entry(id), manifest: JSON.stringify(change(JSON.parse(entry(id).manifest) as Manifest)) });

      /** The listing is the truth; `fromManifests` are the ids read from their objects (head + get each). */
      async function expectTruth(fromManifests: string[]): Promise<void> {
        const store = new CountingStore(raw);
        expect(await listBackups(store, env, keys)).toEqual(expected);
        expect(store.keysOf('head').sort()).toEqual(fromManifests.map((id) => manifestKey(env, id)).sort());
        expect(store.keysOf('get').filter((key) => key !== catalogKey(env)).sort()).toEqual(fromManifests.map((id) => manifestKey(env, id)).sort());
        // The next write path repairs it: then the catalog is trusted for every backup again.
        await listBackups(raw, env, keys, new Date(), { updateCatalog: true });
        store.reset();
        expect(await listBackups(store, env, keys)).toEqual(expected);
        expect(store.counts()).toEqual({ list: 1, get: 1 });
      }

      it('an entry whose manifest text is altered (MAC fails): the backup is what its manifest says', async () => {
        const [a, b] = backups;
        await forge({ ...genuine, [a!]: edit(a!, (m) => ({ ...m, keepUntil: '2026-03-02T00:00:00.000Z' })), [b!]: edit(b!, (m) => ({ ...m, trigger: 'scheduled' })) });
        await expectTruth([a!, b!]);
      });

      it('an entry claiming a signed backup is unsigned, or an entry holding another backup’s genuine manifest: ignored', async () => {
        const [a, b] = backups;
        const withoutMac = edit(a!, (m) => ({ ...m, mac: undefined }));
        await forge({ ...genuine, [a!]: withoutMac, [b!]: { ...entry(b!), manifest: entry(backups[2]!).manifest } });
        await expectTruth([a!, b!]);
      });

      it('an entry that does not match the listing (stale size or time) is read from its manifest', async () => {
        const [a, b] = backups;
        await forge({ ...genuine, [a!]: { ...entry(a!), lastModified: entry(a!).lastModified - 1000 }, [b!]: { ...entry(b!), size: entry(b!).size + 1 } });
        await expectTruth([a!, b!]);
      });

      it('entries for backups the listing does not show (a genuine manifest of a deleted backup) are not listed', async () => {
        const ghost = newBackupId(new Date(Date.UTC(2026, 2, 9)));
        await putSigned(raw, sandbox.configPath, tinyManifest(env, ghost));
        const info = (await raw.head(manifestKey(env, ghost)))!;
        const ghostEntry = { size: info.size, lastModified: info.lastModified.getTime(), manifest: await text(await raw.get(manifestKey(env, ghost))) };
        await raw.delete([manifestKey(env, ghost)]);
        await forge({ ...genuine, [ghost]: ghostEntry });
        await expectTruth([]);
        expect((await readCatalog(raw, env))!.has(ghost)).toBe(false);
      });

      it.each([
        ['not JSON', () => '{"schema": "storage-agent/env-catalog", '],
        ['of another version', () => JSON.stringify({ schema: 'storage-agent/env-catalog', version: 2, entries: genuine })],
        ['of the wrong shape', () => JSON.stringify({ schema: 'storage-agent/env-catalog', version: 1, entries: Object.values(genuine) })],
        ['with an entry under a key that is no backup id', () => JSON.stringify({ schema: 'storage-agent/env-catalog', version: 1, entries: { ...genuine, 'catalog.json': entry(backups[0]!) } })],
      ])('a catalog %s is ignored: every backup read from its manifest', async (_name, body) => {
        await put(raw, catalogKey(env), body());
        await expectTruth(backups);
      });

      it('a catalog over the bound is not even fetched', async () => {
        await put(raw, catalogKey(env), Buffer.alloc(MAX_CATALOG_BYTES + 1, 0x20));
        const store = new CountingStore(raw);
        expect(await listBackups(store, env, keys)).toEqual(expected);
        expect(store.keysOf('get')).not.toContain(catalogKey(env));
        expect(store.counts()).toEqual({ list: 1, head: 5, get: 5 });
        await expectTruth(backups);
      });
    });

    it('deleting the last backup removes the catalog: an environment without backups keeps no object for it', async () => {
      const [only] = await seed('gone', 1, Date.UTC(2026, 3, 1));
      await listBackups(raw, 'gone', keys, new Date(), { updateCatalog: true });
      expect(await raw.head(catalogKey('gone'))).toBeDefined();
      await deleteBackup(raw, 'gone', only!);
      expect(await raw.head(catalogKey('gone'))).toBeUndefined();
      const store = new CountingStore(raw);
      expect(await listBackups(store, 'gone', keys, new Date(), { updateCatalog: true })).toEqual([]);
      expect(store.counts()).toEqual({ list: 1 });
    });
  });
}
