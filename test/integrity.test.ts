import { createHash } from 'node:crypto';
import { lstat, mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { buffer } from 'node:stream/consumers';
import { pack as tarPack, type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/agent/config.ts';
import { openEnvironmentStore } from '../src/agent/stores.ts';
import { createCompressor } from '../src/snapshot/compression.ts';
import { encodeHeader } from '../src/snapshot/files/tar-header.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { cli, cliJson, createSandbox, filesEnv, s3StoreConfig, startCli, type Sandbox } from './support/cli.ts';
import { putSigned } from './support/manifest-keys.ts';
import { createTestBucket } from './support/s3.ts';
import { describeTree, MiB } from './support/tree.ts';

const treeState = (root: string) => Object.fromEntries(describeTree(root));

type Entry = { header: Partial<Header> & Pick<Header, 'name'>; body?: string };

/** `data` zstd-compressed the way backups are (independent frames). */
async function zst(data: Buffer): Promise<Buffer> {
  return buffer(Readable.from([data]).pipe(createCompressor('zstd', { level: 1 })));
}

/** A tar archive built entry by entry, zstd-compressed; rawBytes is the tar's own size. */
async function tarZst(entries: Entry[]): Promise<{ archive: Buffer; rawBytes: number }> {
  const pack = tarPack();
  for (const { header, body } of entries) {
    if (body === undefined) pack.entry(header);
    else pack.entry(header, body);
  }
  pack.finalize();
  const tar = await buffer(pack);
  return { archive: await zst(tar), rawBytes: tar.length };
}

/**
 * A tar of one file of `bytes` zeros, compressed to a few hundred KB: one frame of 64 MiB of
 * zeros repeated (concatenated zstd frames are one stream).
 */
async function zeroBomb(bytes: number): Promise<Buffer> {
  const frameBytes = 64 * MiB;
  const frame = await zst(Buffer.alloc(frameBytes));
  const header = await zst(encodeHeader({ name: 'zeros', type: 'file', mode: 0o644, uid: 0, gid: 0, size: bytes, mtime: 0 }));
  return Buffer.concat([header, ...Array.from({ length: bytes / frameBytes }, () => frame)]);
}

/** Bytes under the restore staging directories in `dir` (`.<mount>.storage-agent-restore-*`). */
async function stagedBytes(dir: string): Promise<number> {
  let total = 0;
  for (const name of await readdir(dir)) {
    if (!name.includes('storage-agent-restore')) continue;
    const root = path.join(dir, name);
    // The restore may remove the directory at any moment: what is gone counts as nothing.
    for (const entry of await readdir(root, { recursive: true }).catch(() => [])) total += (await lstat(path.join(root, entry)).catch(() => undefined))?.size ?? 0;
  }
  return total;
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

    /** Stores `archive` as the backup's only element, under a manifest whose size and sha256 match it, signed with the node's key. */
    async function forge(manifest: Manifest, archive: Buffer, rawBytes: number): Promise<void> {
      const element = manifest.elements[0]!;
      await store.put(element.objects[0]!.key, Readable.from([archive]));
      const sha256 = createHash('sha256').update(archive).digest('hex');
      const forged = { ...manifest, elements: [{ ...element, objects: [{ key: element.objects[0]!.key, bytes: archive.length }], storedBytes: archive.length, rawBytes, sha256 }] };
      await putSigned(store, sandbox.configPath, forged);
    }

    async function expectUnchangedAfter(action: () => Promise<void>): Promise<void> {
      const before = await treeState(mount);
      await action();
      expect(await treeState(mount)).toEqual(before);
      expect((await readdir(sandbox.dir)).filter((n) => n.includes('storage-agent'))).toEqual([]);
    }

    it('a corrupted object → verify and restore fail with E_CHECKSUM_MISMATCH (exit 5), not the decompressor\'s error; the target is unchanged', async () => {
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
      expect(restore.stderr).toContain('E_CHECKSUM_MISMATCH');
      expect(restore.stderr).toContain(`element uploads of backup ${manifest.id}`);
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

    it('a decompression bomb (2 GiB of zeros, its manifest claiming 1 MiB) → E_ARCHIVE_CORRUPT (exit 5) at 1 MiB, within seconds; nothing staged stays', async () => {
      const manifest = await freshBackup();
      await forge(manifest, await zeroBomb(2048 * MiB), MiB);
      await expectUnchangedAfter(async () => {
        const started = Date.now();
        const restore = startCli([...args(), 'backup', 'restore', 'site', manifest.id, '--yes']);
        let running = true;
        void restore.then(() => (running = false));
        let peak = 0;
        while (running) {
          peak = Math.max(peak, await stagedBytes(sandbox.dir));
          await sleep(10);
        }
        const { exitCode, stderr } = await restore;
        expect(exitCode, String(stderr)).toBe(5);
        expect(stderr).toMatch(new RegExp(`E_ARCHIVE_CORRUPT.*element uploads of backup ${manifest.id}: decompressed to more than ${MiB} bytes`));
        expect(Date.now() - started).toBeLessThan(30_000);
        expect(peak).toBeLessThan(2 * MiB);
      });
    });

    it('a truncated archive under a manifest that matches it → E_ARCHIVE_CORRUPT naming the element (exit 5), not the decompressor\'s exit code', async () => {
      const manifest = await freshBackup();
      const stored = await buffer(await store.get(manifest.elements[0]!.objects[0]!.key));
      await forge(manifest, Buffer.from(stored).subarray(0, stored.length - 1000), manifest.elements[0]!.rawBytes);
      await expectUnchangedAfter(async () => {
        const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--yes']);
        expect(restore.exitCode, restore.stderr).toBe(5);
        expect(restore.stderr).toMatch(new RegExp(`E_ARCHIVE_CORRUPT.*element uploads of backup ${manifest.id}: the archive is corrupt`));
        expect(restore.stderr).not.toMatch(/Command failed|exit code/);
      });
    });

    it('a forged manifest naming another backup\'s object, even signed with the key → E_MANIFEST_INVALID (exit 5), nothing read', async () => {
      const victim = await freshBackup();
      const forged = await freshBackup();
      await putSigned(store, sandbox.configPath, { ...forged, elements: [{ ...forged.elements[0]!, objects: victim.elements[0]!.objects }] });
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
        const { archive, rawBytes } = await tarZst([{ header: { name: 'innocent.txt', type: 'file' }, body: 'hello' }, ...entries]);
        await forge(manifest, archive, rawBytes);
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
