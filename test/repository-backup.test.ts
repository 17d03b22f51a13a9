import { createHash, randomBytes } from 'node:crypto';
import { appendFile, chmod, link, mkdir, readdir, readFile, rename, rm as rmFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { FsObjectStore } from '../src/transport/stores/fs-store.ts';
import { packsPrefix } from '../src/transport/repository/layout.ts';
import { cli, cliJson, createSandbox, filesEnv, killCliAt, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { checksums, connect, createDatabase, createFixture, mariadbServer, mysqlServiceConfig } from './support/mysql.ts';
import { fillAllTypes, readAll, startRedis, type TestRedis } from './support/redis.ts';
import { createTestBucket } from './support/s3.ts';
import { buildFixtureTree, describeTree } from './support/tree.ts';

/** As a restore makes it: files without setuid/setgid bits (the target service has no keepSetuid). */
function restoredState(root: string) {
  return Object.fromEntries([...describeTree(root)].map(([rel, entry]) => [rel, entry.type === 'file' ? { ...entry, mode: entry.mode & ~0o6000 } : entry]));
}

async function sourceTree(root: string): Promise<void> {
  await mkdir(root, { recursive: true });
  await buildFixtureTree(root);
  // Enough data for many chunks: 24 files of 1 MiB, and one of 12 MiB.
  for (let i = 0; i < 24; i++) await writeFile(path.join(root, `media-${i}.bin`), randomBytes(1 << 20));
  await writeFile(path.join(root, 'large.bin'), randomBytes(12 << 20));
}

for (const storeKind of ['fs', 's3'] as const) {
  describe(`backups in the environment's repository (${storeKind} store)`, () => {
    let sandbox: Sandbox;
    let source: string;
    const args = () => ['--config', sandbox.configPath];

    let stores: Record<string, unknown> = {};
    const currentStores = async () => stores;

    beforeAll(async () => {
      sandbox = await createSandbox();
      source = path.join(sandbox.dir, 'source');
      await sourceTree(source);
      stores = storeKind === 's3' ? { defaultStore: 's3', stores: { s3: s3StoreConfig(await createTestBucket()) } } : {};
      await sandbox.writeConfig({
        ...stores,
        environments: {
          site: { ...filesEnv({ uploads: source }), repository: true },
          copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }),
        },
      });
    });
    afterAll(() => sandbox.cleanup());

    it('stores only new chunks, restores each generation byte for byte, and survives the deletion of the others', async () => {
      const first = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      const element = first.elements[0]!;
      expect(element).toMatchObject({ objects: [], compression: 'zstd', repository: { root: expect.stringMatching(/^[0-9a-f]{64}$/) } });
      expect(element.sha256).toBeUndefined();
      expect(element.repository!.newChunks).toBeGreaterThan(10);
      const tree1 = restoredState(source);

      // Unchanged: nothing new but the tree listing the same chunks.
      const second = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      expect(second.elements[0]!.repository).toMatchObject({ root: element.repository!.root, newChunks: 0 });
      expect(second.elements[0]!.storedBytes).toBe(0);

      // One file appended to, one added: a few chunks, far less than the tree.
      await appendFile(path.join(source, 'media-3.bin'), 'appended');
      await writeFile(path.join(source, 'new.txt'), 'a new file');
      const third = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      expect(third.elements[0]!.repository!.newChunks).toBeLessThanOrEqual(6);
      expect(third.elements[0]!.storedBytes).toBeLessThan(element.storedBytes / 4);
      const tree3 = restoredState(source);

      const listed = await cliJson<{ id: string; authenticated: boolean }[]>([...args(), 'backup', 'list', 'site']);
      expect(listed.map((b) => b.id).sort()).toEqual([first.id, second.id, third.id].sort());
      expect((await cliJson<{ ok: boolean }>([...args(), 'backup', 'verify', 'site', first.id])).ok).toBe(true);

      await cliJson([...args(), 'backup', 'restore', 'site', first.id, '--target', 'copy', '--yes']);
      expect(restoredState(path.join(sandbox.dir, 'copy'))).toEqual(tree1);
      expect((await cli([...args(), 'backup', 'delete', 'site', first.id, '--yes'])).exitCode).toBe(0);
      await cliJson([...args(), 'backup', 'restore', 'site', third.id, '--target', 'copy', '--yes', '--no-safety-backup']);
      expect(restoredState(path.join(sandbox.dir, 'copy'))).toEqual(tree3);
    });

    it('reads only what changed since the parent snapshot, and every change restores', async () => {
      const tree = path.join(sandbox.dir, 'parented');
      await mkdir(path.join(tree, 'dir'), { recursive: true });
      for (let i = 0; i < 20; i++) await writeFile(path.join(tree, 'dir', `f${i}.txt`), `file ${i}\n`.repeat(100 * (i + 1)));
      await writeFile(path.join(tree, 'big.bin'), randomBytes(3 << 20));
      await writeFile(path.join(tree, 'linked'), 'two names');
      await link(path.join(tree, 'linked'), path.join(tree, 'linked-too'));
      await sandbox.writeConfig({
        ...(await currentStores()),
        environments: {
          site: { ...filesEnv({ uploads: source }), repository: true },
          parented: { ...filesEnv({ uploads: tree }), repository: true },
          copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }),
        },
      });
      const facts = (m: Manifest) => m.elements[0]!.facts;
      const first = await cliJson<Manifest>([...args(), 'backup', 'create', 'parented']);
      expect(facts(first)).toMatchObject({ files: 22, hardlinks: 1, unchangedFiles: 0 });
      const second = await cliJson<Manifest>([...args(), 'backup', 'create', 'parented']);
      // Every file linked once is taken from the parent unread; the hard-linked pair is read.
      expect(facts(second)).toMatchObject({ files: 22, unchangedFiles: 21 });
      expect(second.elements[0]!.repository).toMatchObject({ root: first.elements[0]!.repository!.root, files: first.elements[0]!.repository!.files, newChunks: 0 });

      await appendFile(path.join(tree, 'dir', 'f3.txt'), 'appended');
      await chmod(path.join(tree, 'dir', 'f4.txt'), 0o600); // same content, new ctime and mode
      await rename(path.join(tree, 'dir', 'f5.txt'), path.join(tree, 'dir', 'f5-renamed.txt'));
      await rmFile(path.join(tree, 'dir', 'f6.txt'));
      await writeFile(path.join(tree, 'dir', 'added.txt'), 'new');
      const third = await cliJson<Manifest>([...args(), 'backup', 'create', 'parented']);
      // f3 (content), f4 (mode), f5-renamed and added.txt are read; the 17 others are not.
      expect(facts(third)).toMatchObject({ files: 22, unchangedFiles: 17 });
      await cliJson([...args(), 'backup', 'restore', 'parented', third.id, '--target', 'copy', '--yes', '--no-safety-backup']);
      expect(restoredState(path.join(sandbox.dir, 'copy'))).toEqual(restoredState(tree));
      await cliJson([...args(), 'backup', 'restore', 'parented', first.id, '--target', 'copy', '--yes', '--no-safety-backup']);
      expect(await readFile(path.join(sandbox.dir, 'copy', 'dir', 'f6.txt'), 'utf8')).toBe('file 6\n'.repeat(700));
    });

    it('get writes a standard .tar.zst that zstd and tar open', async () => {
      const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      const out = path.join(sandbox.dir, 'download');
      await mkdir(out, { recursive: true });
      const got = await cliJson<{ path: string }>([...args(), 'backup', 'get', 'site', manifest.id, '--element', 'uploads', '--to', out]);
      expect(path.basename(got.path)).toBe('uploads.tar.zst');
      const extracted = path.join(sandbox.dir, 'extracted');
      await mkdir(extracted);
      await execa('bash', ['-c', 'zstd -dc "$0" | tar -xf - -C "$1"', got.path, extracted]);
      // Buffer.equals: a deep toEqual of 12 MiB takes half a minute.
      expect((await readFile(path.join(extracted, 'large.bin'))).equals(await readFile(path.join(source, 'large.bin')))).toBe(true);
      expect(restoredState(extracted)).toEqual(restoredState(source));
      if (storeKind === 'fs') {
        const url = await cli([...args(), 'backup', 'url', 'site', manifest.id, '--element', 'uploads']);
        expect(url.exitCode).toBe(6);
        expect(url.stderr).toMatch(/cannot presign.*backup get/);
        return;
      }
      // The URL serves the same standard archive, written beside the repository until it expires.
      const { url, sha256, bytes } = await cliJson<{ url: string; sha256: string; bytes: number }>([...args(), 'backup', 'url', 'site', manifest.id, '--element', 'uploads', '--expires', '2s']);
      const fetched = path.join(sandbox.dir, 'fetched.tar.zst');
      await execa('curl', ['-sS', '-f', '-o', fetched, url]);
      // The manifest has no sha256 of this archive: the agent says what it wrote.
      const served = await readFile(fetched);
      expect({ sha256: createHash('sha256').update(served).digest('hex'), bytes: served.length }).toEqual({ sha256, bytes });
      const fromUrl = path.join(sandbox.dir, 'from-url');
      await mkdir(fromUrl);
      await execa('bash', ['-c', 'zstd -dc "$0" | tar -xf - -C "$1"', fetched, fromUrl]);
      expect(restoredState(fromUrl)).toEqual(restoredState(source));
      await new Promise((resolve) => setTimeout(resolve, 2500));
      expect(await cliJson([...args(), 'backup', 'prune', 'site'])).toMatchObject({ expiredDownloads: 1 });
      expect(await cliJson([...args(), 'backup', 'prune', 'site'])).toMatchObject({ expiredDownloads: 0 });
    });
  });
}

describe('repository backups: archives from before, damage, databases', () => {
  let sandbox: Sandbox;
  let source: string;
  let redis: TestRedis;
  const args = () => ['--config', sandbox.configPath];
  const server = mariadbServer();

  beforeAll(async () => {
    sandbox = await createSandbox();
    source = path.join(sandbox.dir, 'source');
    await sourceTree(source);
    redis = await startRedis();
  });
  afterAll(async () => {
    await redis?.stop();
    await sandbox.cleanup();
  });

  it('restores a backup made before the repository was enabled, and one made after', async () => {
    await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: source }), copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }) } });
    const archived = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    expect(archived.elements[0]!.objects.length).toBe(1);
    await sandbox.writeConfig({ environments: { site: { ...filesEnv({ uploads: source }), repository: true }, copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }) } });
    const chunked = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    expect(chunked.elements[0]!.repository).toBeDefined();
    for (const id of [archived.id, chunked.id]) {
      await cliJson([...args(), 'backup', 'restore', 'site', id, '--target', 'copy', '--yes', '--no-safety-backup']);
      expect(restoredState(path.join(sandbox.dir, 'copy'))).toEqual(restoredState(source));
    }
  });

  it('refuses a restore from a damaged pack with E_REPOSITORY_CORRUPT and leaves the target as it was', async () => {
    await sandbox.writeConfig({ environments: { site: { ...filesEnv({ uploads: source }), repository: true }, copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }) } });
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const copy = path.join(sandbox.dir, 'copy');
    const before = describeTree(copy);
    const store = new FsObjectStore(path.join(sandbox.stateDir, 'backups'));
    for await (const pack of store.list(packsPrefix('site'))) {
      const bytes = await readFile(path.join(sandbox.stateDir, 'backups', pack.key));
      bytes[bytes.length >> 1]! ^= 0xff;
      await store.put(pack.key, Readable.from([bytes]));
    }
    const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'copy', '--yes', '--no-safety-backup', '--json']);
    expect(restore.exitCode).toBe(5);
    expect(restore.stderr).toContain('E_REPOSITORY_CORRUPT');
    expect(describeTree(copy)).toEqual(before);
    // Every chunk is indexed and every pack there, of its size: only reading the data tells.
    const structure = await cli([...args(), 'backup', 'verify', 'site', manifest.id, '--json']);
    expect(structure.exitCode).toBe(0);
    const verify = await cli([...args(), 'backup', 'verify', 'site', manifest.id, '--read-data', '--json']);
    expect(verify.exitCode).toBe(5);
    expect(verify.stdout + verify.stderr).toContain('E_REPOSITORY_CORRUPT');
    expect(await readdir(copy)).not.toContain('.storage-agent-staging');
  });

  it("verify ENV all --read-data: a damaged pack fails exactly the backups that need it (each restores if and only if verify says ok); the older ones stay ok", async () => {
    const tree = path.join(sandbox.dir, 'ledger');
    await mkdir(tree);
    await writeFile(path.join(tree, 'x.bin'), randomBytes(3 << 20));
    const envs = { ledger: { ...filesEnv({ uploads: tree }), repository: true }, copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }) };
    await sandbox.writeConfig({ environments: envs });
    const store = new FsObjectStore(path.join(sandbox.stateDir, 'backups'));
    const packs = async () => {
      const keys: string[] = [];
      for await (const pack of store.list(packsPrefix('ledger'))) keys.push(pack.key);
      return keys;
    };
    const first = await cliJson<Manifest>([...args(), 'backup', 'create', 'ledger']);
    const packsOfFirst = new Set(await packs());
    await writeFile(path.join(tree, 'y.bin'), randomBytes(3 << 20));
    const second = await cliJson<Manifest>([...args(), 'backup', 'create', 'ledger']);
    const packsOfSecond = (await packs()).filter((k) => !packsOfFirst.has(k));
    await rmFile(path.join(tree, 'x.bin'));
    const third = await cliJson<Manifest>([...args(), 'backup', 'create', 'ledger']);
    const whole = await cliJson<{ ok: boolean; backups: { id: string; ok: boolean }[] }>([...args(), 'backup', 'verify', 'ledger', 'all', '--read-data']);
    // As backup list orders them: newest first.
    expect(whole).toMatchObject({ ok: true, backups: [{ id: third.id, ok: true }, { id: second.id, ok: true }, { id: first.id, ok: true }] });

    // Every pack the second backup wrote loses a byte of its first blob.
    for (const key of packsOfSecond) {
      const bytes = await readFile(path.join(sandbox.stateDir, 'backups', key));
      bytes[20]! ^= 0xff;
      await store.put(key, Readable.from([bytes]));
    }
    const verify = await cli([...args(), 'backup', 'verify', 'ledger', 'all', '--read-data', '--json']);
    expect(verify.exitCode).toBe(5);
    const report = JSON.parse(verify.stdout) as { ok: boolean; backups: { id: string; ok: boolean; elements: { ok: boolean; code?: string }[] }[] };
    expect(report.backups.map((b) => b.id)).toEqual([third.id, second.id, first.id]);
    expect(report.backups.map((b) => b.ok).slice(1)).toEqual([false, true]);
    expect(report.backups[1]!.elements[0]).toMatchObject({ ok: false, code: 'E_REPOSITORY_CORRUPT' });
    for (const backup of report.backups) {
      const restore = await cli([...args(), 'backup', 'restore', 'ledger', backup.id, '--target', 'copy', '--yes', '--no-safety-backup', '--json']);
      expect(restore.exitCode, `backup ${backup.id}: verify said ${backup.ok ? 'ok' : 'damaged'}: ${restore.stdout}${restore.stderr}`).toBe(backup.ok ? 0 : 5);
    }
    // The table names each backup, and the failure.
    const table = await cli([...args(), 'backup', 'verify', 'ledger', 'all', '--read-data']);
    expect(table.stdout).toContain(first.id);
    expect(table.stdout).toMatch(new RegExp(`${second.id}.*FAILED E_REPOSITORY_CORRUPT`));
  });

  it('round-trips a MySQL database and Redis keys through the repository, consistent mode', async () => {
    const root = await connect(server, { root: true });
    const db = await createDatabase(root, 'repo');
    await createFixture(root, db);
    await fillAllTypes(redis, [0, 3]);
    process.env.TEST_MYSQL_PASSWORD = server.password;
    const services = { db: mysqlServiceConfig(server, [db], 'TEST_MYSQL_PASSWORD'), cache: { kind: 'redis', host: '127.0.0.1', port: redis.port } };
    await sandbox.writeConfig({ environments: { shop: { services, repository: true } } });
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'shop']);
    expect(manifest.elements.map((e) => [e.name, e.repository !== undefined])).toEqual([
      ['db', true],
      ['cache', true],
    ]);
    const rowsBefore = await checksums(root, db);
    const keysBefore = await readAll(redis);
    await root.query(`DELETE FROM \`${db}\`.child`);
    await redis.client().flushall();
    await cliJson([...args(), 'backup', 'restore', 'shop', manifest.id, '--yes', '--no-safety-backup']);
    expect(await checksums(root, db)).toEqual(rowsBefore);
    expect([...(await readAll(redis)).keys()].sort()).toEqual([...keysBefore.keys()].sort());
    await root.end();
  });

  it('stores a database dumped again after 1 % of its rows changed as deltas of its last dump; both restore, and the second after the first is pruned', async () => {
    const root = await connect(server, { root: true });
    const db = await createDatabase(root, 'deltas');
    // ~4 MiB of dump, random values: without deltas every chunk of the second dump is new.
    await root.query(`CREATE TABLE \`${db}\`.orders (id INT PRIMARY KEY, ref CHAR(64), amount INT, placed DATETIME)`);
    await root.query(`INSERT INTO \`${db}\`.orders SELECT seq, SHA2(RAND(seq), 256), seq % 1000, '2026-12-01' + INTERVAL seq SECOND FROM \`${db}\`.seq_1_to_40000`);
    process.env.TEST_MYSQL_PASSWORD = server.password;
    await sandbox.writeConfig({ environments: { ledger2: { services: { db: mysqlServiceConfig(server, [db], 'TEST_MYSQL_PASSWORD') }, repository: true } } });
    const first = await cliJson<Manifest>([...args(), 'backup', 'create', 'ledger2']);
    const before = await checksums(root, db);
    await root.query(`UPDATE \`${db}\`.orders SET amount = amount + 1 WHERE id % 100 = 7`);
    const after = await checksums(root, db);
    const second = await cliJson<Manifest>([...args(), 'backup', 'create', 'ledger2']);
    const [full, delta] = [first.elements[0]!, second.elements[0]!];
    expect(delta.repository!.newChunks).toBe(delta.repository!.chunks); // every chunk changed...
    // ...yet stored as small deltas: 0.4–0.8 %; where an edit moves one of the ~3 cuts, the chunk
    // across it is a delta against both parent chunks it overlaps (before, partly new: 15 % once,
    // docs/repository.md, "Deltas"). Bounded at 5 %, against the 100 % of a dump without deltas.
    // The chunk counts say what was stored.
    expect(delta.storedBytes, JSON.stringify({ full: full.repository, delta: delta.repository })).toBeLessThan(full.storedBytes * 0.05);

    await cliJson([...args(), 'backup', 'restore', 'ledger2', first.id, '--yes', '--no-safety-backup']);
    expect(await checksums(root, db)).toEqual(before);
    // The first goes (deleted, then prune collects the repository): its chunks that are the second's bases stay.
    await cliJson([...args(), 'backup', 'delete', 'ledger2', first.id, '--yes']);
    const pruned = await cliJson<{ repository: { deletedPacks: number } }>([...args(), 'backup', 'prune', 'ledger2']);
    expect(pruned.repository).toBeDefined();
    expect((await cliJson<{ ok: boolean }>([...args(), 'backup', 'verify', 'ledger2', second.id, '--read-data'])).ok).toBe(true);
    await cliJson([...args(), 'backup', 'restore', 'ledger2', second.id, '--yes', '--no-safety-backup']);
    expect(await checksums(root, db)).toEqual(after);
    await root.end();
  });

  it('Redis through three generations, each dumped with the last as parent: every one restores its keys', async () => {
    await sandbox.writeConfig({ environments: { cache3: { services: { cache: { kind: 'redis', host: '127.0.0.1', port: redis.port } }, repository: true } } });
    const client = redis.client();
    await client.flushall();
    // ~3 MiB of RDB: several chunks, each with keys changed in the next generations.
    const pipe = client.pipeline();
    for (let i = 0; i < 12_000; i++) pipe.set(`order:${i}`, randomBytes(128).toString('hex'));
    await pipe.exec();
    // What each generation holds, as one digest of every key's type, TTL and content: a deep
    // comparison of 12,000 keys took 6-8 s per restore.
    const keyspace = async () =>
      createHash('sha256')
        .update(JSON.stringify([...(await readAll(redis))].sort(([a], [b]) => (a < b ? -1 : 1)).map(([name, k]) => [name, k.type, k.pttl, k.content ?? k.dump.toString('hex')])))
        .digest('hex');
    const generations: { id: string; keys: string }[] = [];
    for (let generation = 0; generation < 3; generation++) {
      if (generation > 0) {
        const edits = client.pipeline();
        for (let i = generation; i < 12_000; i += 100) edits.set(`order:${i}`, `changed in generation ${generation}`);
        edits.del(`order:${11_999 - generation}`);
        await edits.exec();
      }
      const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'cache3']);
      generations.push({ id: manifest.id, keys: await keyspace() });
    }
    for (const { id, keys } of generations) {
      await client.flushall();
      await cliJson([...args(), 'backup', 'restore', 'cache3', id, '--yes', '--no-safety-backup']);
      expect(await keyspace()).toBe(keys);
    }
  });
});

describe('prune collects the repository, and a prune killed at any phase leaves every remaining backup restorable', () => {
  let sandbox: Sandbox;
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    sandbox = await createSandbox();
  });
  afterAll(() => sandbox.cleanup());

  /** Three generations of a tree; the first expires at once, the next two stay. */
  async function generations(env: string) {
    const source = path.join(sandbox.dir, env);
    await mkdir(source, { recursive: true });
    const envs = { [env]: { ...filesEnv({ uploads: source }), repository: true }, [`${env}-copy`]: filesEnv({ uploads: path.join(sandbox.dir, `${env}-copy`) }) };
    await sandbox.writeConfig({ environments: envs });
    await writeFile(path.join(source, 'gone.bin'), randomBytes(6 << 20));
    await writeFile(path.join(source, 'kept.bin'), randomBytes(3 << 20));
    const expiring = await cliJson<Manifest>([...args(), 'backup', 'create', env, '--keep-for', '1s']);
    await rmFile(path.join(source, 'gone.bin'));
    const kept: { id: string; state: ReturnType<typeof restoredState> }[] = [];
    for (let i = 0; i < 2; i++) {
      await writeFile(path.join(source, `new-${i}.bin`), randomBytes(2 << 20));
      kept.push({ id: (await cliJson<Manifest>([...args(), 'backup', 'create', env])).id, state: restoredState(source) });
    }
    await new Promise((resolve) => setTimeout(resolve, 1100));
    return { expiring: expiring.id, kept };
  }

  async function restoresAll(env: string, kept: { id: string; state: ReturnType<typeof restoredState> }[]) {
    for (const { id, state } of kept) {
      await cliJson([...args(), 'backup', 'restore', env, id, '--target', `${env}-copy`, '--yes', '--no-safety-backup']);
      expect(restoredState(path.join(sandbox.dir, `${env}-copy`))).toEqual(state);
    }
  }

  it('deletes the packs only the pruned backup used, says so, and keeps the rest restorable', async () => {
    const { expiring, kept } = await generations('gc');
    const before = await storedBytes('gc');
    const dry = await cliJson<{ deleted: { id: string }[]; repository: { deletedPacks: number; freedBytes: number } }>([...args(), 'backup', 'prune', 'gc', '--dry-run']);
    expect(dry.deleted.map((d) => d.id)).toEqual([expiring]);
    expect(dry.repository.freedBytes).toBeGreaterThan(5 << 20);
    expect(await storedBytes('gc')).toBe(before);
    const pruned = await cli([...args(), 'backup', 'prune', 'gc']);
    expect(pruned.exitCode).toBe(0);
    expect(pruned.stdout).toMatch(/repository: \d+ packs deleted .* freed/);
    expect(await storedBytes('gc')).toBeLessThan(before - (5 << 20));
    await restoresAll('gc', kept);
  });

  for (const phase of ['gc:repacked', 'gc:indexed', 'gc:indexes-deleted']) {
    it(`killed at ${phase}: every remaining backup restores, and the next prune finishes`, async () => {
      const env = `kill-${phase.split(':')[1]}`;
      const { kept } = await generations(env);
      await killCliAt(sandbox.dir, [...args(), 'backup', 'prune', env], phase);
      await restoresAll(env, kept);
      const again = await cliJson<{ repository: { deletedPacks: number } }>([...args(), 'backup', 'prune', env]);
      expect(again.repository).toBeDefined();
      await restoresAll(env, kept);
    });
  }

  async function storedBytes(env: string): Promise<number> {
    const store = new FsObjectStore(path.join(sandbox.stateDir, 'backups'));
    let total = 0;
    for await (const info of store.list(packsPrefix(env))) total += info.size;
    return total;
  }
});
