import { createHash } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { pack as tarPack, type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/agent/config.ts';
import { openEnvironmentStore } from '../src/agent/stores.ts';
import { createCompressor } from '../src/snapshot/compression.ts';
import { manifestKey, type Manifest } from '../src/snapshot/manifest.ts';
import type { ObjectStore } from '../src/transport/object-store.ts';
import { cli, cliJson, createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { createTestBucket } from './support/s3.ts';
import { describeTree } from './support/tree.ts';

const treeState = (root: string) => Object.fromEntries(describeTree(root));

type Entry = { header: Partial<Header> & Pick<Header, 'name'>; body?: string };

/** A tar archive built entry by entry, zstd-compressed; rawBytes is the tar's own size. */
async function tarZst(entries: Entry[]): Promise<{ archive: Buffer; rawBytes: number }> {
  const pack = tarPack();
  for (const { header, body } of entries) {
    if (body === undefined) pack.entry(header);
    else pack.entry(header, body);
  }
  pack.finalize();
  const tar = await buffer(pack);
  const out: Buffer[] = [];
  await pipeline(Readable.from([tar]), createCompressor('zstd', { level: 1 }), async function* (source) {
    for await (const chunk of source) out.push(chunk as Buffer);
  });
  return { archive: Buffer.concat(out), rawBytes: tar.length };
}

for (const storeKind of ['fs', 's3'] as const) {
  describe(`stored data is checked before it is trusted (${storeKind} store)`, () => {
    let sandbox: Sandbox;
    let store: ObjectStore;
    let mount: string;
    let outside: string;
    const args = () => ['--config', sandbox.configPath];

    beforeAll(async () => {
      sandbox = await createSandbox();
      mount = path.join(sandbox.dir, 'mount');
      outside = path.join(sandbox.dir, 'outside');
      await mkdir(path.join(mount, 'docs'), { recursive: true });
      await mkdir(outside);
      await writeFile(path.join(mount, 'docs', 'a.txt'), 'original contents '.repeat(1000));
      await writeFile(path.join(mount, 'b.bin'), Buffer.alloc(300_000, 7));
      const stores = storeKind === 's3' ? { stores: { s3: s3StoreConfig(await createTestBucket()) }, defaultStore: 's3' } : {};
      await sandbox.writeConfig({ ...stores, environments: { site: filesEnv({ uploads: mount }) } });
      store = await openEnvironmentStore(await loadConfig(sandbox.configPath), 'site');
    });
    afterAll(() => sandbox.cleanup());

    async function freshBackup(): Promise<Manifest> {
      return cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    }

    async function rewrite(key: string, change: (bytes: Buffer) => Buffer): Promise<void> {
      const bytes = await buffer(await store.get(key));
      await store.put(key, Readable.from([change(Buffer.from(bytes))]));
    }

    it('a corrupted object → verify and restore fail with E_CHECKSUM_MISMATCH (exit 5); the target is unchanged', async () => {
      const manifest = await freshBackup();
      const key = manifest.elements[0]!.objects[0]!.key;
      await rewrite(key, (b) => {
        b[Math.floor(b.length / 2)]! ^= 0xff;
        return b;
      });
      const verify = await cli([...args(), 'backup', 'verify', 'site', manifest.id]);
      expect(verify.exitCode).toBe(5);
      expect(verify.stdout).toContain('E_CHECKSUM_MISMATCH');
      await writeFile(path.join(mount, 'changed-after-backup.txt'), 'keep me');
      const before = await treeState(mount);
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--yes']);
      expect(restore.exitCode).toBe(5);
      expect(restore.stderr).toMatch(/E_CHECKSUM_MISMATCH|E_ARCHIVE_CORRUPT/);
      expect(await treeState(mount)).toEqual(before);
      expect((await readdir(sandbox.dir)).filter((n) => n.includes('storage-agent'))).toEqual([]);
    });

    it('a truncated object → E_SIZE_MISMATCH (exit 5) for verify, restore and get; the target is unchanged', async () => {
      const manifest = await freshBackup();
      await rewrite(manifest.elements[0]!.objects[0]!.key, (b) => b.subarray(0, b.length - 1000));
      const verify = await cli([...args(), 'backup', 'verify', 'site', manifest.id]);
      expect(verify.exitCode).toBe(5);
      expect(verify.stdout).toContain('E_SIZE_MISMATCH');
      const before = await treeState(mount);
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--yes']);
      expect(restore.exitCode).toBe(5);
      expect(await treeState(mount)).toEqual(before);
      const to = path.join(sandbox.dir, 'download.tar.zst');
      const get = await cli([...args(), 'backup', 'get', 'site', manifest.id, '--element', 'uploads', '--to', to]);
      expect(get.exitCode).toBe(5);
      expect((await readdir(sandbox.dir)).filter((n) => n.includes('download'))).toEqual([]);
    });

    it('a forged manifest naming another backup\'s object → E_MANIFEST_INVALID (exit 5), nothing read', async () => {
      const victim = await freshBackup();
      const forged = await freshBackup();
      const text = JSON.stringify({ ...forged, elements: [{ ...forged.elements[0]!, objects: victim.elements[0]!.objects }] });
      await store.put(manifestKey('site', forged.id), Readable.from([Buffer.from(text)]));
      const restore = await cli([...args(), 'backup', 'restore', 'site', forged.id, '--yes']);
      expect(restore.exitCode).toBe(5);
      expect(restore.stderr).toMatch(/E_MANIFEST_INVALID.*outside the backup/);
      const list = await cliJson<{ id: string; status: string }[]>([...args(), 'backup', 'list', 'site']);
      expect(list.find((b) => b.id === forged.id)?.status).toBe('invalid');
    });

    describe('malicious archives are refused on restore; nothing is written outside, the target is unchanged', () => {
      const attacks: [string, Entry[]][] = [
        ['dot-dot traversal (CVE-2018-20834 style)', [{ header: { name: '../outside/pwned', type: 'file' }, body: 'x' }]],
        ['nested dot-dot', [{ header: { name: 'docs/../../outside/pwned', type: 'file' }, body: 'x' }]],
        ['absolute path', [{ header: { name: '/tmp/storage-agent-pwned', type: 'file' }, body: 'x' }]],
        [
          'symlink then write through it (CVE-2021-32804 style)',
          [
            { header: { name: 'escape', type: 'symlink', linkname: '../outside' } },
            { header: { name: 'escape/pwned', type: 'file' }, body: 'x' },
          ],
        ],
        ['hard link to a file outside', [{ header: { name: 'hl', type: 'link', linkname: '../outside/target' } }]],
        ['character device', [{ header: { name: 'dev', type: 'character-device', devmajor: 1, devminor: 3 } }]],
      ];
      it.each(attacks)('%s', async (_name, entries) => {
        const manifest = await freshBackup();
        const element = manifest.elements[0]!;
        const { archive, rawBytes } = await tarZst([{ header: { name: 'innocent.txt', type: 'file' }, body: 'hello' }, ...entries]);
        await store.put(element.objects[0]!.key, Readable.from([archive]));
        const sha256 = createHash('sha256').update(archive).digest('hex');
        const forged = { ...manifest, elements: [{ ...element, objects: [{ key: element.objects[0]!.key, bytes: archive.length }], storedBytes: archive.length, rawBytes, sha256 }] };
        await store.put(manifestKey('site', manifest.id), Readable.from([Buffer.from(JSON.stringify(forged))]));
        await writeFile(path.join(outside, 'target'), 'outside original');
        const before = await treeState(mount);
        const outsideBefore = await treeState(outside);
        const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--yes']);
        expect(restore.exitCode).toBe(10);
        expect(restore.stderr).toContain('E_UNSAFE_ARCHIVE_ENTRY');
        expect(await treeState(mount)).toEqual(before);
        expect(await treeState(outside)).toEqual(outsideBefore);
        await expect(readdir('/tmp')).resolves.not.toContain('storage-agent-pwned');
      });
    });
  });
}
