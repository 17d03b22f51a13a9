import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { createTestBucket, s3Client } from './support/s3.ts';
import { buildFixtureTree, describeTree, hardLinkGroups } from './support/tree.ts';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';

const run = promisify(execFile);
const EXCLUDES = ['styles/', 'css/', 'js/', '*.tmp', 'web/cache'];

/** The fixture tree as the backup holds it: everything but the excluded paths. */
function expectedState(root: string) {
  const kept = [...describeTree(root)].filter(([rel]) => !/(^|\/)(styles|css|js)(\/|$)|\.tmp$|^web\/cache(\/|$)/.test(rel));
  return Object.fromEntries(kept);
}

/** As a restore makes it: files without setuid/setgid bits (the target service has no keepSetuid, issue #10). */
function restoredState(root: string) {
  return Object.fromEntries(Object.entries(expectedState(root)).map(([rel, entry]) => [rel, entry.type === 'file' ? { ...entry, mode: entry.mode & ~0o6000 } : entry]));
}

for (const storeKind of ['fs', 's3'] as const) {
  describe(`backup → list → restore → get → delete round trip (${storeKind} store)`, () => {
    let sandbox: Sandbox;
    let source: string;
    let bucket: string;
    const args = () => ['--config', sandbox.configPath];

    beforeAll(async () => {
      sandbox = await createSandbox();
      source = path.join(sandbox.dir, 'source');
      await mkdir(source);
      await buildFixtureTree(source);
      for (const excluded of ['styles/a.css', 'sub/css/b.css', 'js/app.js', 'notes.tmp', 'web/cache/page.html', 'web/index.html', 'jsfile/kept.txt']) {
        await mkdir(path.dirname(path.join(source, excluded)), { recursive: true });
        await writeFile(path.join(source, excluded), excluded);
      }
      await writeFile(path.join(source, 'large-random.bin'), randomBytes(12 * 1024 * 1024));
      bucket = storeKind === 's3' ? await createTestBucket() : '';
      // maxParts 2 × 5 MiB parts: artifacts over 10 MiB are split into segments, as past 10,000 parts.
      const stores = storeKind === 's3' ? { defaultStore: 's3', stores: { s3: s3StoreConfig(bucket, { maxParts: 2 }) } } : {};
      await sandbox.writeConfig({
        ...stores,
        environments: {
          site: filesEnv({ uploads: { path: source, exclude: EXCLUDES } }),
          copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }),
        },
      });
    });
    afterAll(() => sandbox.cleanup());

    it('restores every kind of entry identically, excludes honoured, into another environment', async () => {
      const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site', '--code-ref', 'abc123']);
      expect(manifest).toMatchObject({ env: 'site', trigger: 'manual', mode: 'consistent', codeRef: 'abc123', keepUntil: null });
      const element = manifest.elements[0]!;
      expect(element).toMatchObject({ name: 'uploads', kind: 'files', format: 'tar', compression: 'zstd', warnings: [] });
      expect(element.facts).toMatchObject({ hardlinks: 1, symlinks: 3 });

      const list = await cliJson<{ id: string; restorable: boolean }[]>([...args(), 'backup', 'list', 'site']);
      expect(list).toMatchObject([{ id: manifest.id, restorable: true }]);
      const table = await cli([...args(), 'backup', 'list', 'site']);
      expect(table.stdout).toMatch(new RegExp(`^Created\\s+Backup ID\\s+Node\\s+Restorable[^\\n]*\\n\\S+ \\S+\\s+${manifest.id}\\s+node-[0-9a-f]{12}\\s+yes`));

      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'copy', '--yes']);
      expect(restore.exitCode, restore.stderr).toBe(0);
      const copy = path.join(sandbox.dir, 'copy');
      expect(Object.fromEntries(describeTree(copy))).toEqual(restoredState(source));
      expect(hardLinkGroups(copy)).toEqual(hardLinkGroups(source));
      expect(await readdir(sandbox.dir)).not.toContain(expect.stringMatching(/storage-agent/));
    });

    it('restores over existing data, replacing it, and a second restore is idempotent', async () => {
      const [latest] = await cliJson<{ id: string }[]>([...args(), 'backup', 'list', 'site']);
      const copy = path.join(sandbox.dir, 'copy');
      await writeFile(path.join(copy, 'written-after.txt'), 'goes away');
      for (let i = 0; i < 2; i++) {
        const restore = await cli([...args(), 'backup', 'restore', 'site', latest!.id, '--target', 'copy', '--element', 'uploads', '--yes']);
        expect(restore.exitCode, restore.stderr).toBe(0);
        expect(Object.fromEntries(describeTree(copy))).toEqual(restoredState(source));
      }
    });

    it('get writes a standard archive that GNU tar and zstd open', async () => {
      const [latest] = await cliJson<{ id: string }[]>([...args(), 'backup', 'list', 'site']);
      const out = path.join(sandbox.dir, 'download');
      await mkdir(out);
      const got = await cliJson<{ path: string }>([...args(), 'backup', 'get', 'site', latest!.id, '--element', 'uploads', '--to', out]);
      expect(path.basename(got.path)).toBe('uploads.tar.zst');
      await run('zstd', ['-t', got.path]);
      const extracted = path.join(sandbox.dir, 'extracted');
      await mkdir(extracted);
      await run('tar', ['--zstd', '-xpf', got.path, '-C', extracted]);
      expect(Object.fromEntries(describeTree(extracted))).toEqual(expectedState(source));
    });

    it('verify reads every object back; delete removes the manifest and every object', async () => {
      const [latest] = await cliJson<{ id: string }[]>([...args(), 'backup', 'list', 'site']);
      const verify = await cliJson<{ ok: boolean }>([...args(), 'backup', 'verify', 'site', latest!.id]);
      expect(verify.ok).toBe(true);
      const manifest = await cliJson<Manifest>([...args(), 'backup', 'show', 'site', latest!.id]);
      if (storeKind === 's3') {
        // ~15 MiB stored with at most 2 parts of 5 MiB per object: two segments.
        const objects = manifest.elements[0]!.objects;
        expect(objects.map((o) => o.key.split('/').at(-1))).toEqual(['uploads.tar.zst', 'uploads.tar.zst.0001']);
        expect(objects[0]!.bytes).toBe(10 * 1024 * 1024);
        const url = await cli([...args(), 'backup', 'url', 'site', latest!.id, '--element', 'uploads']);
        expect(url.stderr).toContain('E_PRESIGN_UNSUPPORTED');
      }
      const del = await cli([...args(), 'backup', 'delete', 'site', latest!.id, '--yes']);
      expect(del.exitCode, del.stderr).toBe(0);
      expect(await cliJson([...args(), 'backup', 'list', 'site'])).toEqual([]);
      if (storeKind === 's3') {
        const left = await s3Client().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `agent/site/${latest!.id}/` }));
        expect(left.KeyCount ?? 0).toBe(0);
      } else {
        expect(await readdir(path.join(sandbox.stateDir, 'backups', 'site')).catch(() => [])).not.toContain(latest!.id);
      }
    });
  });
}
