import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer, text } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { UrlResult } from '../src/agent/jobs/api.ts';
import type { BackupSummary } from '../src/snapshot/pipeline/catalog.ts';
import { loadConfig } from '../src/agent/config.ts';
import type { PruneResult } from '../src/agent/prune.ts';
import { defaultKeyId } from '../src/agent/keys.ts';
import { openEnvironmentStore } from '../src/agent/stores.ts';
import { signManifest } from '../src/snapshot/manifest-mac.ts';
import { elementKey, manifestKey, type Manifest } from '../src/snapshot/manifest.ts';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { cli, cliJson, createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, TestClient, writeTokens, type RunningDaemon } from './support/daemon.ts';
import { putSigned } from './support/manifest-keys.ts';
import { createTestBucket } from './support/s3.ts';
import { describeTree } from './support/tree.ts';

const treeState = (root: string) => Object.fromEntries(describeTree(root));

/** A sandbox with one files environment `site` on the fs store or the test RGW. */
async function siteSandbox(storeKind: 'fs' | 's3', extra: Record<string, unknown> = {}): Promise<{ sandbox: Sandbox; mount: string; config: Record<string, unknown> }> {
  const sandbox = await createSandbox();
  const mount = path.join(sandbox.dir, 'mount');
  await mkdir(path.join(mount, 'docs'), { recursive: true });
  await writeFile(path.join(mount, 'docs', 'a.txt'), 'authentic contents '.repeat(500));
  const stores = storeKind === 's3' ? { stores: { s3: s3StoreConfig(await createTestBucket()) }, defaultStore: 's3' } : {};
  const config = { ...stores, environments: { site: filesEnv({ uploads: mount }) }, ...extra };
  await sandbox.writeConfig(config);
  return { sandbox, mount, config };
}

async function putManifest(store: ObjectStore, env: string, id: string, manifest: unknown): Promise<void> {
  await store.put(manifestKey(env, id), Readable.from([Buffer.from(JSON.stringify(manifest, null, 2))]));
}

/** A key file as an operator makes one (`openssl rand -hex 32`), 0600. */
async function keyFile(dir: string, name: string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return file;
}

/**
 * The file's groups share nothing (each its own sandbox, state dir, keys and bucket or fs store),
 * and their tests spend most of their time waiting on CLI children and the RGW: the fs group,
 * the s3 group and the rest run side by side (describe.concurrent), the tests of each in order
 * (describe.sequential) as they share their sandbox.
 */
for (const storeKind of ['fs', 's3'] as const) {
  describe.concurrent(`${storeKind} store`, () => {
    describe.sequential(`every backup is authenticated (${storeKind} store)`, () => {
      let sandbox: Sandbox;
      let mount: string;
      let config: Record<string, unknown>;
      let store: ObjectStore;
      const args = () => ['--config', sandbox.configPath];
      const backup = () => cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      const stored = async (id: string) => JSON.parse(await text(await store.get(manifestKey('site', id)))) as Manifest;

      beforeAll(async () => {
        ({ sandbox, mount, config } = await siteSandbox(storeKind));
        store = await openEnvironmentStore(await loadConfig(sandbox.configPath), 'site');
      });
      afterAll(() => sandbox.cleanup());

      /**
       * Every command that trusts a manifest refuses this backup with `code` (exit 5: by default
       * E_MANIFEST_UNAUTHENTICATED), the flag or not; the target is unchanged, list says invalid.
       */
      async function expectRefused(id: string, why: RegExp, flags: string[] = [], { code = 'E_MANIFEST_UNAUTHENTICATED', env = 'site', target = mount } = {}): Promise<void> {
        await writeFile(path.join(target, 'changed-after-backup.txt'), 'keep me');
        const before = treeState(target);
        const to = path.join(sandbox.dir, 'download.tar.zst');
        const commands = [
          ['backup', 'restore', env, id, '--yes'],
          ['backup', 'get', env, id, '--element', 'uploads', '--to', to],
          ['backup', 'url', env, id, '--element', 'uploads'],
          ['backup', 'verify', env, id],
        ];
        // Side by side, the listing too: each is refused before it reads or writes anything (and the suite is shorter).
        const [results, listing] = await Promise.all([
          Promise.all(commands.map((command) => cli([...args(), ...command, ...flags]))),
          cliJson<BackupSummary[]>([...args(), 'backup', 'list', env]),
        ]);
        for (const [i, result] of results.entries()) {
          expect(result.exitCode, `${commands[i]![1]}: ${result.stderr}`).toBe(5);
          expect(result.stderr).toContain(`error [${code}]`);
          expect(result.stderr).toMatch(why);
        }
        expect(treeState(target)).toEqual(before);
        await expect(stat(to)).rejects.toThrow();
        const listed = listing.find((b) => b.id === id);
        expect(listed).toMatchObject({ status: 'invalid', authenticated: false, restorable: false });
      }

      it('a backup is signed with the key created 0600 in the state dir at first start; list says authenticated; it restores', async () => {
        const manifest = await backup();
        const key = path.join(sandbox.stateDir, 'keys', 'default.key');
        expect((await stat(key)).mode & 0o777).toBe(0o600);
        expect((await stat(path.dirname(key))).mode & 0o777).toBe(0o700);
        const secret = Buffer.from((await readFile(key, 'utf8')).trim(), 'hex');
        expect(secret.length).toBe(32);
        expect((await stored(manifest.id)).mac).toEqual({ keyId: defaultKeyId(secret), alg: 'HMAC-SHA256', value: expect.stringMatching(/^[0-9a-f]{64}$/) });
        // The key never reaches the bucket: not in the manifest, not in any object of the backup.
        expect(JSON.stringify(await stored(manifest.id))).not.toContain(secret.toString('hex'));
        const listed = (await cliJson<BackupSummary[]>([...args(), 'backup', 'list', 'site'])).find((b) => b.id === manifest.id);
        expect(listed).toMatchObject({ status: 'ok', authenticated: true });
        const table = await cli([...args(), 'backup', 'list', 'site']);
        expect(table.stdout).toMatch(/Authenticated/);
        expect(table.stdout).toMatch(new RegExp(`${manifest.id} +\\S+ +yes +yes`));
        const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--yes', '--no-safety-backup']);
        expect(restore.exitCode, restore.stderr).toBe(0);
        const verify = await cli([...args(), 'backup', 'verify', 'site', manifest.id]);
        expect(verify.exitCode, verify.stderr).toBe(0);
      });

      it('a valid MAC under a wrong key (same key id) → refused, also with --allow-unauthenticated', async () => {
        const manifest = await stored((await backup()).id);
        const wrong = { id: manifest.mac!.keyId, secret: randomBytes(32) };
        await putManifest(store, 'site', manifest.id, signManifest(manifest, { signing: wrong, verifying: new Map([[wrong.id, wrong.secret]]) }));
        await expectRefused(manifest.id, /MAC does not verify under key default-/, ['--allow-unauthenticated']);
      });

      it('a MAC signed with a key this node does not hold → refused, naming the key', async () => {
        const manifest = await stored((await backup()).id);
        const other = { id: 'other-node', secret: randomBytes(32) };
        await putManifest(store, 'site', manifest.id, signManifest(manifest, { signing: other, verifying: new Map([[other.id, other.secret]]) }));
        await expectRefused(manifest.id, /signed with key "other-node", which is not among this node's keys/);
      });

      it("another backup's MAC on a manifest → refused", async () => {
        const first = await stored((await backup()).id);
        const second = await stored((await backup()).id);
        await putManifest(store, 'site', first.id, { ...first, mac: second.mac });
        await expectRefused(first.id, /MAC does not verify/);
      });

      it.each([
        ['keepUntil', (m: Manifest): Manifest => ({ ...m, keepUntil: '2100-01-01T00:00:00.000Z' })],
        // Consistent with itself (storedBytes too): only the MAC tells it from the manifest signed.
        [
          'an object size',
          (m: Manifest): Manifest => ({
            ...m,
            elements: m.elements.map((e) => ({ ...e, storedBytes: e.storedBytes + 1, objects: e.objects.map((o, i) => (i === 0 ? { ...o, bytes: o.bytes + 1 } : o)) })),
          }),
        ],
      ])('a changed manifest (%s) under its original MAC → refused', async (_what, change) => {
        const manifest = await stored((await backup()).id);
        const changed = change(manifest);
        expect(changed.mac).toEqual(manifest.mac);
        expect(changed).not.toEqual(manifest);
        await putManifest(store, 'site', manifest.id, changed);
        await expectRefused(manifest.id, /MAC does not verify/);
      });

      it('an old manifest replayed under a newer backup\'s id → refused: rewritten to the new id it fails the MAC, copied as it is it names the other backup', async () => {
        const old = await stored((await backup()).id);
        await writeFile(path.join(mount, 'docs', 'a.txt'), 'newer contents');
        const newer = await stored((await backup()).id);
        const key = elementKey('site', newer.id, 'uploads', '');
        const replayed = {
          ...old,
          id: newer.id,
          elements: old.elements.map((e) => ({ ...e, objects: e.objects.map((o) => ({ ...o, key: `${key}${o.key.slice(elementKey('site', old.id, 'uploads', '').length)}` })) })),
        };
        // The old archive under the new id too: everything but the MAC would match.
        for (const [i, object] of old.elements[0]!.objects.entries()) await store.put(replayed.elements[0]!.objects[i]!.key, await store.get(object.key));
        await putManifest(store, 'site', newer.id, replayed);
        await expectRefused(newer.id, /MAC does not verify/);

        // Copied as it is (its MAC verifies): restore, get, url and verify all refuse it.
        await putManifest(store, 'site', newer.id, old);
        await expectRefused(newer.id, new RegExp(`manifest of backup site/${newer.id} .*it names backup site/${old.id}`), [], { code: 'E_MANIFEST_INVALID' });
        await expectRefused(newer.id, new RegExp(`it names backup site/${old.id}`), ['--allow-unauthenticated'], { code: 'E_MANIFEST_INVALID' });
      });

      it("a manifest copied from another environment (the same bytes under <other env>/<id>/manifest.json, the objects too) → refused by restore, get, url and verify; the other environment's files unchanged", async () => {
        const other = path.join(sandbox.dir, 'other-mount');
        await mkdir(other, { recursive: true });
        await writeFile(path.join(other, 'mine.txt'), 'the other environment\'s own file');
        await sandbox.writeConfig({ ...config, environments: { ...(config.environments as Record<string, unknown>), other: filesEnv({ uploads: other }) } });
        try {
          const manifest = await backup();
          const bytes = await buffer(await store.get(manifestKey('site', manifest.id)));
          // Both environments share the store: the copy is what a bucket writer would make.
          for (const object of manifest.elements[0]!.objects) {
            await store.put(`other/${object.key.slice('site/'.length)}`, await store.get(object.key));
          }
          await store.put(manifestKey('other', manifest.id), Readable.from([bytes]));
          await expectRefused(manifest.id, new RegExp(`manifest of backup other/${manifest.id} .*it names backup site/${manifest.id}`), [], { code: 'E_MANIFEST_INVALID', env: 'other', target: other });
          // The original stays good.
          const verify = await cli([...args(), 'backup', 'verify', 'site', manifest.id]);
          expect(verify.exitCode, verify.stderr).toBe(0);
        } finally {
          await sandbox.writeConfig(config);
        }
      });

      it('a backup made before keys (no MAC) is refused without --allow-unauthenticated, restores with it; list shows authenticated: false; delete and prune act on it', async () => {
        const backedUp = await readFile(path.join(mount, 'docs', 'a.txt'), 'utf8');
        const manifest = await stored((await backup()).id);
        const { mac: _mac, ...unsigned } = manifest;
        await putManifest(store, 'site', manifest.id, unsigned);
        await writeFile(path.join(mount, 'docs', 'a.txt'), 'changed since');
        const before = treeState(mount);
        // The refusals and the reads side by side: none of them writes to the target or the store.
        const to = path.join(sandbox.dir, 'unsigned.tar.zst');
        const [refusals, listing, table, shown, verify, get] = await Promise.all([
          Promise.all(
            [
              ['backup', 'restore', 'site', manifest.id, '--yes'],
              ['backup', 'get', 'site', manifest.id, '--element', 'uploads', '--to', path.join(sandbox.dir, 'x.tar.zst')],
              ['backup', 'url', 'site', manifest.id, '--element', 'uploads'],
              ['backup', 'verify', 'site', manifest.id],
            ].map((command) => cli([...args(), ...command])),
          ),
          cliJson<BackupSummary[]>([...args(), 'backup', 'list', 'site']),
          cli([...args(), 'backup', 'list', 'site']),
          cliJson<Manifest>([...args(), 'backup', 'show', 'site', manifest.id]),
          cli([...args(), 'backup', 'verify', 'site', manifest.id, '--allow-unauthenticated']),
          cli([...args(), 'backup', 'get', 'site', manifest.id, '--element', 'uploads', '--to', to, '--allow-unauthenticated']),
        ]);
        for (const refused of refusals) {
          expect(refused.exitCode, refused.stderr).toBe(5);
          expect(refused.stderr).toMatch(/E_MANIFEST_UNAUTHENTICATED.*carries no MAC.*--allow-unauthenticated/);
        }
        expect(treeState(mount)).toEqual(before);
        expect(listing.find((b) => b.id === manifest.id)).toMatchObject({ status: 'ok', restorable: true, authenticated: false });
        expect(table.stdout).toMatch(new RegExp(`${manifest.id} +\\S+ +yes +no \\(no MAC\\)`));
        expect(shown).not.toHaveProperty('mac');
        expect(verify.exitCode, verify.stderr).toBe(0);
        expect(get.exitCode, get.stderr).toBe(0);
        const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--yes', '--allow-unauthenticated']);
        expect(restore.exitCode, restore.stderr).toBe(0);
        expect(await readFile(path.join(mount, 'docs', 'a.txt'), 'utf8')).toBe(backedUp);
        // The safety backup the restore took of the target is signed like every backup.
        const safety = (await cliJson<BackupSummary[]>([...args(), 'backup', 'list', 'site'])).find((b) => b.manifest?.trigger === 'safety');
        expect(safety?.authenticated).toBe(true);

        const deleted = await cli([...args(), 'backup', 'delete', 'site', manifest.id, '--yes']);
        expect(deleted.exitCode, deleted.stderr).toBe(0);
        expect((await cliJson<BackupSummary[]>([...args(), 'backup', 'list', 'site'])).map((b) => b.id)).not.toContain(manifest.id);

        // Prune deletes an expired unsigned backup; an expired one whose MAC fails it leaves for inspection.
        const [expiring, tampered] = await Promise.all([0, 1].map(async () => stored((await cliJson<Manifest>([...args(), 'backup', 'create', 'site', '--keep-for', '1s'])).id)));
        const { mac: _expiringMac, ...unsignedExpiring } = expiring!;
        await putManifest(store, 'site', expiring!.id, unsignedExpiring);
        await putManifest(store, 'site', tampered!.id, { ...tampered!, codeRef: 'tampered' });
        await sleep(Math.max(0, new Date(tampered!.keepUntil!).getTime() - Date.now() + 50, new Date(expiring!.keepUntil!).getTime() - Date.now() + 50));
        const pruned = await cliJson<PruneResult>([...args(), 'backup', 'prune', 'site']);
        expect(pruned.deleted.map((e) => e.id)).toContain(expiring!.id);
        expect(pruned.kept.find((e) => e.id === tampered!.id)?.reason).toMatch(/invalid manifest, left for inspection: .*not authenticated/);
      });

      it("verify ENV all names each backup's own problem: a signed manifest that fails its schema E_MANIFEST_INVALID; an unsigned one, or one whose MAC fails, E_MANIFEST_UNAUTHENTICATED", async () => {
        const good = await backup();
        const { mac: _schemaMac, ...schemaBad } = await stored((await backup()).id);
        await putSigned(store, sandbox.configPath, { ...schemaBad, mode: 'sideways' }); // signed with the node's key
        const { mac: _mac, ...unsigned } = await stored((await backup()).id);
        await putManifest(store, 'site', unsigned.id, unsigned);
        const tampered = await stored((await backup()).id);
        await putManifest(store, 'site', tampered.id, { ...tampered, codeRef: 'tampered' });

        const result = await cli([...args(), '--json', 'backup', 'verify', 'site', 'all']);
        expect(result.exitCode, result.stderr).toBe(5);
        const { backups } = JSON.parse(result.stdout) as { backups: { id: string; ok: boolean; code?: string; message?: string }[] };
        const byId = new Map(backups.map((b) => [b.id, b]));
        expect(byId.get(good.id)).toMatchObject({ ok: true });
        expect(byId.get(schemaBad.id)).toMatchObject({ ok: false, code: 'E_MANIFEST_INVALID', message: expect.stringMatching(/is invalid \(mode: /) });
        expect(byId.get(unsigned.id)).toMatchObject({ ok: false, code: 'E_MANIFEST_UNAUTHENTICATED', message: expect.stringMatching(/carries no MAC/) });
        expect(byId.get(tampered.id)).toMatchObject({ ok: false, code: 'E_MANIFEST_UNAUTHENTICATED', message: expect.stringMatching(/MAC does not verify/) });
        const table = await cli([...args(), 'backup', 'verify', 'site', 'all']);
        expect(table.exitCode).toBe(5);
        expect(table.stdout).toMatch(new RegExp(`${schemaBad.id} +- +FAILED E_MANIFEST_INVALID: `));
        // The same backup alone says the same.
        const alone = await cli([...args(), 'backup', 'verify', 'site', schemaBad.id]);
        expect(alone.exitCode).toBe(5);
        expect(alone.stderr).toContain('error [E_MANIFEST_INVALID]');
      });

      it.runIf(storeKind === 's3')(
        "url says what its bytes must be (the manifest's sha256 and size); an object of another size → E_SIZE_MISMATCH (exit 5), no URL; one of the same size → a URL whose bytes do not hash to the sha256 it printed",
        async () => {
          const manifest = await stored((await backup()).id);
          const element = manifest.elements[0]!;
          const object = element.objects[0]!;
          expect(element.objects).toHaveLength(1);
          const original = await buffer(await store.get(object.key));
          const command = [...args(), 'backup', 'url', 'site', manifest.id, '--element', 'uploads'];
          const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
          const download = async (url: string) => {
            const response = await fetch(url);
            expect(response.status).toBe(200);
            return Buffer.from(await response.arrayBuffer());
          };

          const given = await cliJson<UrlResult>(command);
          expect(given).toMatchObject({ sha256: element.sha256, bytes: object.bytes, url: expect.stringMatching(/^https?:\/\//), expiresAt: expect.any(String) });
          expect(sha256(await download(given.url))).toBe(element.sha256);
          // Human output: the URL on its own line, then the sha256 and size, and the check to run.
          const human = await cli(command);
          expect(human.exitCode, human.stderr).toBe(0);
          const [url, facts, check, ...rest] = human.stdout.trimEnd().split('\n');
          expect(rest).toEqual([]);
          expect(url).toMatch(/^https?:\/\/\S+$/);
          expect(facts).toMatch(new RegExp(`^sha256 ${element.sha256}  ${object.bytes} bytes  expires `));
          expect(check).toBe(`check: curl -s '${url}' | sha256sum   must print ${element.sha256}`);
          const checked = await execa('bash', ['-c', check!.slice('check: '.length).split('   must print')[0]!]);
          expect(checked.stdout.split(' ')[0]).toBe(element.sha256);

          try {
            // Another size: refused before a URL is made.
            await store.put(object.key, Readable.from([Buffer.concat([original, Buffer.from('!')])]));
            const longer = await cli(['--json', ...command]);
            expect(longer.exitCode, longer.stderr).toBe(5);
            expect(JSON.parse(longer.stdout)).toMatchObject({ error: { code: 'E_SIZE_MISMATCH', details: { expected: object.bytes, actual: object.bytes + 1 } } });
            expect(longer.stdout).not.toContain('X-Amz-Signature');
            const longerHuman = await cli(command);
            expect(longerHuman.exitCode).toBe(5);
            expect(longerHuman.stdout).toBe('');
            expect(longerHuman.stderr).toContain('error [E_SIZE_MISMATCH]');
            expect(longerHuman.stderr).toContain(`object ${object.key} is ${object.bytes + 1} bytes, the manifest records ${object.bytes}`);

            // The same size: no HEAD can tell, the URL is given — and the sha256 it printed is how
            // the downloader learns the bytes are not the backup's.
            const forged = randomBytes(original.length);
            await store.put(object.key, Readable.from([forged]));
            const served = await cliJson<UrlResult>(command);
            expect(served).toMatchObject({ sha256: element.sha256, bytes: object.bytes });
            const downloaded = await download(served.url);
            expect(downloaded.length).toBe(served.bytes);
            expect(sha256(downloaded)).toBe(sha256(forged));
            expect(sha256(downloaded)).not.toBe(served.sha256);
          } finally {
            await store.put(object.key, Readable.from([original]));
          }
        },
      );
    });

    describe.sequential(`keys rotate without rewriting backups (${storeKind} store)`, () => {
      let sandbox: Sandbox;
      let mount: string;
      let config: Record<string, unknown>;
      const args = () => ['--config', sandbox.configPath];

      beforeAll(async () => {
        ({ sandbox, mount, config } = await siteSandbox(storeKind));
      });
      afterAll(() => sandbox.cleanup());

      it('backups signed with the old key still restore once the new key signs; dropping the old key refuses them', async () => {
        const oldKey = await keyFile(sandbox.dir, 'fleet-2026.key');
        const newKey = await keyFile(sandbox.dir, 'fleet-2027.key');
        await sandbox.writeConfig({ ...config, keys: [{ id: 'fleet-2026', file: oldKey, sign: true }] });
        const old = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
        expect(old.mac?.keyId).toBe('fleet-2026');

        await sandbox.writeConfig({ ...config, keys: [{ id: 'fleet-2026', file: oldKey }, { id: 'fleet-2027', file: newKey, sign: true }] });
        await writeFile(path.join(mount, 'docs', 'a.txt'), 'after rotation');
        const current = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
        expect(current.mac?.keyId).toBe('fleet-2027');
        const listed = await cliJson<BackupSummary[]>([...args(), 'backup', 'list', 'site']);
        expect(listed.map((b) => [b.id, b.authenticated])).toEqual([
          [current.id, true],
          [old.id, true],
        ]);
        const restoreOld = await cli([...args(), 'backup', 'restore', 'site', old.id, '--yes', '--no-safety-backup']);
        expect(restoreOld.exitCode, restoreOld.stderr).toBe(0);
        expect(await readFile(path.join(mount, 'docs', 'a.txt'), 'utf8')).toBe('authentic contents '.repeat(500));

        await sandbox.writeConfig({ ...config, keys: [{ id: 'fleet-2027', file: newKey, sign: true }] });
        const refused = await cli([...args(), 'backup', 'restore', 'site', old.id, '--yes', '--allow-unauthenticated']);
        expect(refused.exitCode).toBe(5);
        expect(refused.stderr).toMatch(/E_MANIFEST_UNAUTHENTICATED.*signed with key "fleet-2026", which is not among this node's keys \(fleet-2027\)/);
        const restoreCurrent = await cli([...args(), 'backup', 'restore', 'site', current.id, '--yes', '--no-safety-backup']);
        expect(restoreCurrent.exitCode, restoreCurrent.stderr).toBe(0);
        expect(await readFile(path.join(mount, 'docs', 'a.txt'), 'utf8')).toBe('after rotation');
      });
    });
  });
}

describe.concurrent('any store', () => {
  describe.sequential('unsigned manifests in the bucket steer nothing (a bucket writer without the key)', () => {
    let sandbox: Sandbox;
    let store: ObjectStore;
    let source: string;
    let other: string;
    const args = () => ['--config', sandbox.configPath];

    beforeAll(async () => {
      sandbox = await createSandbox();
      source = path.join(sandbox.dir, 'source');
      other = path.join(sandbox.dir, 'other');
      await mkdir(source);
      await mkdir(other);
      await writeFile(path.join(source, 'a.txt'), 'the real uploads');
      await writeFile(path.join(other, 'secret-of-other.txt'), 'another service\'s file');
      await sandbox.writeConfig({
        environments: {
          pruned: { ...filesEnv({ uploads: source }), retention: [{ interval: '1h', count: 1 }] },
          limited: { ...filesEnv({ uploads: source }), manualLimit: 2 },
          repo: { ...filesEnv({ uploads: source, other }), repository: true },
          copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy-uploads'), other: path.join(sandbox.dir, 'copy-other') }),
        },
      });
      store = await openEnvironmentStore(await loadConfig(sandbox.configPath), 'pruned');
    });
    afterAll(() => sandbox.cleanup());

    /** `real`'s manifest without its MAC under a newer id (`ms` after it, still in the past): what anyone who can write the bucket can make. */
    async function forgeUnsigned(env: string, real: Manifest, ms: number, change: (m: Manifest) => Manifest = (m) => m): Promise<string> {
      const at = new Date(Date.parse(real.createdAt) + ms);
      const id = `${at.toISOString().replace(/[-:.]/g, '')}-forged${ms}`;
      const { mac: _mac, ...unsigned } = change(real);
      // Its objects' keys under its own id (it is a well-formed backup of its own), none of them written.
      const elements = unsigned.elements.map((e) => ({ ...e, objects: e.objects.map((o) => ({ ...o, key: o.key.replace(`/${real.id}/`, `/${id}/`) })) }));
      await putManifest(store, env, id, { ...unsigned, elements, id, createdAt: at.toISOString(), completedAt: at.toISOString() });
      return id;
    }

    it('prune: two unsigned scheduled backups newer than the signed ones take no period from them; the newest signed one stays and restores', async () => {
      const s1 = await cliJson<Manifest>([...args(), 'backup', 'create', 'pruned', '--scheduled']);
      const s2 = await cliJson<Manifest>([...args(), 'backup', 'create', 'pruned', '--scheduled']);
      const forged = [await forgeUnsigned('pruned', s2, 1), await forgeUnsigned('pruned', s2, 2)];
      const pruned = await cliJson<PruneResult>([...args(), 'backup', 'prune', 'pruned']);
      // The rules run over the signed and the unsigned apart: each set keeps its own newest.
      expect(pruned.deleted.map((e) => e.id).sort()).toEqual([s1.id, forged[0]!].sort());
      expect(pruned.kept.map((e) => e.id)).toContain(s2.id);
      const verify = await cli([...args(), 'backup', 'verify', 'pruned', s2.id]);
      expect(verify.exitCode, verify.stderr).toBe(0);
    });

    it('the manual limit counts signed backups only: unsigned manual manifests neither block a backup nor get a real one replaced', async () => {
      const m1 = await cliJson<Manifest>([...args(), 'backup', 'create', 'limited']);
      await forgeUnsigned('limited', m1, 1);
      await forgeUnsigned('limited', m1, 2);
      const m2 = await cliJson<Manifest>([...args(), 'backup', 'create', 'limited']); // 1 signed of 2: room for one
      const over = await cli([...args(), 'backup', 'create', 'limited']);
      expect(over.exitCode).toBe(15);
      expect(over.stderr).toContain('already has 2 manual backups');
      const replaced = await cliJson<Manifest>([...args(), 'backup', 'create', 'limited', '--replace-oldest']);
      const ids = (await cliJson<BackupSummary[]>([...args(), 'backup', 'list', 'limited'])).map((b) => b.id);
      expect(ids).toEqual(expect.arrayContaining([m2.id, replaced.id]));
      expect(ids).not.toContain(m1.id); // the oldest signed one, not a forgery, made room
    });

    it("the next repository backup takes its parent snapshot from a signed manifest only: an unsigned one pairing uploads' catalog with another element's root changes nothing it stores", async () => {
      const first = await cliJson<Manifest>([...args(), 'backup', 'create', 'repo']);
      const root = (name: string) => first.elements.find((e) => e.name === name)!.repository!;
      await forgeUnsigned('repo', first, 1, (m) => ({
        ...m,
        elements: m.elements.map((e) => (e.name === 'uploads' ? { ...e, repository: { ...e.repository!, root: root('other').root } } : e)),
      }));
      const second = await cliJson<Manifest>([...args(), 'backup', 'create', 'repo']);
      expect(second.elements.find((e) => e.name === 'uploads')!.facts.unchangedFiles).toBe(1); // from the signed first backup
      const restored = await cli([...args(), 'backup', 'restore', 'repo', second.id, '--target', 'copy', '--yes']);
      expect(restored.exitCode, restored.stderr).toBe(0);
      expect(treeState(path.join(sandbox.dir, 'copy-uploads'))).toEqual(treeState(source));
      expect(treeState(path.join(sandbox.dir, 'copy-other'))).toEqual(treeState(other));
    });
  });

  describe.sequential('key files are checked like secrets', () => {
    let sandbox: Sandbox;
    let config: Record<string, unknown>;
    const args = () => ['--config', sandbox.configPath];

    beforeAll(async () => {
      ({ sandbox, config } = await siteSandbox('fs'));
    });
    afterAll(() => sandbox.cleanup());

    it.each([
      ['group-readable', async (file: string) => chmod(file, 0o640), /accessible by group or others.*chmod 600/],
      ['empty', async (file: string) => writeFile(file, '\n'), /is empty/],
      ['shorter than 32 bytes', async (file: string) => writeFile(file, randomBytes(16).toString('hex')), /does not hold 32 or more bytes as hex or base64/],
      ['not hex or base64', async (file: string) => writeFile(file, 'correct horse battery staple, correct horse battery staple'), /does not hold 32 or more bytes/],
    ])('a key file that is %s → E_SECRET_UNAVAILABLE (exit 3) naming it, nothing backed up', async (_name, spoil, message) => {
      const file = await keyFile(sandbox.dir, `spoiled-${Math.random().toString(36).slice(2)}.key`);
      await spoil(file);
      await sandbox.writeConfig({ ...config, keys: [{ id: 'k1', file, sign: true }] });
      const result = await cli([...args(), 'backup', 'create', 'site']);
      expect(result.exitCode, result.stderr).toBe(3);
      expect(result.stderr).toContain('E_SECRET_UNAVAILABLE');
      expect(result.stderr).toContain(file);
      expect(result.stderr).toMatch(message);
      await expect(readdir(path.join(sandbox.stateDir, 'backups', 'site'))).rejects.toThrow(/ENOENT/);
    });

    it('a base64 key works; no signing key, or two → E_CONFIG_INVALID (exit 3) saying so', async () => {
      const file = path.join(sandbox.dir, 'b64.key');
      await writeFile(file, randomBytes(48).toString('base64'), { mode: 0o600 });
      await sandbox.writeConfig({ ...config, keys: [{ id: 'b64', file, sign: true }] });
      expect((await cliJson<Manifest>([...args(), 'backup', 'create', 'site'])).mac?.keyId).toBe('b64');
      for (const keys of [[{ id: 'a', file }], [{ id: 'a', file, sign: true }, { id: 'b', file, sign: true }]]) {
        await sandbox.writeConfig({ ...config, keys });
        const result = await cli([...args(), 'backup', 'list', 'site']);
        expect(result.exitCode).toBe(3);
        expect(result.stderr).toMatch(/E_CONFIG_INVALID[\s\S]*keys: exactly one key must have sign: true/);
      }
    });

    it('the default key is never overwritten: a later start reads the one made first', async () => {
      await sandbox.writeConfig(config);
      const first = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      const key = await readFile(path.join(sandbox.stateDir, 'keys', 'default.key'), 'utf8');
      const second = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      expect(await readFile(path.join(sandbox.stateDir, 'keys', 'default.key'), 'utf8')).toBe(key);
      expect(second.mac?.keyId).toBe(first.mac?.keyId);
    });
  });

  describe.sequential('the protocol says the same (daemon)', () => {
    let sandbox: Sandbox;
    let daemon: RunningDaemon;
    let client: TestClient;
    const args = () => ['--config', sandbox.configPath];

    beforeAll(async () => {
      let config: Record<string, unknown>;
      ({ sandbox, config } = await siteSandbox('fs'));
      await sandbox.writeConfig({ ...config, daemon: daemonSection(await writeTokens(sandbox)) });
      daemon = await startDaemon(sandbox.configPath);
      client = await TestClient.connect(daemon.url, (await readFile(path.join(sandbox.dir, 'admin.token'), 'utf8')).trim());
    });
    afterAll(async () => {
      await client?.close();
      await daemon?.stop();
      await sandbox.cleanup();
    });

    /** Runs a job method to its end: the finished job. */
    async function job(method: string, params: Record<string, unknown>): Promise<{ state: string; error?: { code: string; message: string } }> {
      const { jobId } = await client.call<{ jobId: string }>(method, params);
      await client.call('job.subscribe', { jobId });
      return (await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === jobId)).params as { state: string; error?: { code: string; message: string } };
    }

    it('backup.list says authenticated; restore, verify and url refuse an unsigned backup (-32005 E_MANIFEST_UNAUTHENTICATED) unless allowUnauthenticated: true', async () => {
      const signed = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      const old = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
      const store = await openEnvironmentStore(await loadConfig(sandbox.configPath), 'site');
      const { mac: _mac, ...unsigned } = old;
      await putManifest(store, 'site', old.id, unsigned);

      const listed = await client.call<BackupSummary[]>('backup.list', { env: 'site' });
      expect(listed.map((b) => [b.id, b.authenticated])).toEqual([
        [old.id, false],
        [signed.id, true],
      ]);
      expect(await job('backup.restore', { env: 'site', id: old.id })).toMatchObject({ state: 'failed', error: { code: 'E_MANIFEST_UNAUTHENTICATED' } });
      expect(await job('backup.verify', { env: 'site', id: old.id })).toMatchObject({ state: 'failed', error: { code: 'E_MANIFEST_UNAUTHENTICATED' } });
      expect(await client.request('backup.url', { env: 'site', id: old.id, element: 'uploads' })).toMatchObject({ error: { code: -32005, data: { code: 'E_MANIFEST_UNAUTHENTICATED' } } });

      expect(await job('backup.verify', { env: 'site', id: old.id, allowUnauthenticated: true })).toMatchObject({ state: 'succeeded' });
      expect(await job('backup.restore', { env: 'site', id: old.id, safetyBackup: false, allowUnauthenticated: true })).toMatchObject({ state: 'succeeded' });
      // Past the MAC check: the fs store's own answer.
      expect(await client.request('backup.url', { env: 'site', id: old.id, element: 'uploads', allowUnauthenticated: true })).toMatchObject({ error: { data: { code: 'E_PRESIGN_UNSUPPORTED' } } });
    });
  });
});
