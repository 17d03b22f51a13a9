import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BackupSummary } from '../src/snapshot/pipeline/catalog.ts';
import type { PruneResult } from '../src/agent/prune.ts';
import type { RestoreSummary } from '../src/snapshot/pipeline/restore.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, filesEnv, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { createTestBucket, s3Client } from './support/s3.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every object key in the bucket (the truth, not the agent's view). */
async function bucketKeys(bucket: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3Client().send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
    for (const object of page.Contents ?? []) keys.push(object.Key!);
    token = page.NextContinuationToken;
  } while (token);
  return keys.sort();
}

describe('retention from the CLI: manual limit, prune, expiry, safety backups (s3 store)', () => {
  let sandbox: Sandbox;
  let bucket: string;
  let mount: string;
  const args = (...rest: string[]) => ['--config', sandbox.configPath, ...rest];

  beforeAll(async () => {
    sandbox = await createSandbox();
    bucket = await createTestBucket();
    mount = path.join(sandbox.dir, 'mount');
    await mkdir(mount);
    await writeFile(path.join(mount, 'a.txt'), 'first');
    await sandbox.writeConfig({
      defaultStore: 's3',
      stores: { s3: s3StoreConfig(bucket) },
      orphanUploadAge: '1h', // the floor (issue #11); the planted leftover below is from 2020
      environments: {
        limited: { ...filesEnv({ uploads: mount }), manualLimit: 2 },
        pruned: { ...filesEnv({ uploads: mount }), retention: [{ interval: '1h', count: 1 }] },
        app: filesEnv({ uploads: mount }),
        fresh: filesEnv({ uploads: path.join(sandbox.dir, 'not-yet') }),
      },
    });
  });
  afterAll(() => sandbox.cleanup());

  it('refuses one manual backup over the limit, naming it; --replace-oldest replaces the oldest; scheduled ones do not count', async () => {
    const first = await cliJson<Manifest>(args('backup', 'create', 'limited'));
    const second = await cliJson<Manifest>(args('backup', 'create', 'limited'));
    const over = await cli(args('backup', 'create', 'limited'));
    expect(over.exitCode).toBe(15);
    expect(over.stderr).toContain('E_MANUAL_LIMIT');
    expect(over.stderr).toContain('manualLimit: 2');
    expect(over.stderr).toContain('--replace-oldest');

    const scheduled = await cliJson<Manifest>(args('backup', 'create', 'limited', '--scheduled'));
    expect(scheduled.trigger).toBe('scheduled');

    const third = await cliJson<Manifest>(args('backup', 'create', 'limited', '--replace-oldest'));
    const ids = (await cliJson<BackupSummary[]>(args('backup', 'list', 'limited'))).map((b) => b.id);
    expect(ids).toContain(third.id);
    expect(ids).toContain(second.id);
    expect(ids).toContain(scheduled.id);
    expect(ids).not.toContain(first.id);
    expect((await bucketKeys(bucket)).some((k) => k.includes(first.id))).toBe(false);
  });

  it('shows an expired backup as not Restorable; prune deletes exactly the unkept backups, manifest first; --dry-run deletes nothing', async () => {
    // The expiring one first: its second runs out while the others are made.
    const expiring = await cliJson<Manifest>(args('backup', 'create', 'pruned', '--keep-for', '1s'));
    expect(expiring.keepUntil).not.toBeNull();
    const s1 = await cliJson<Manifest>(args('backup', 'create', 'pruned', '--scheduled'));
    const s2 = await cliJson<Manifest>(args('backup', 'create', 'pruned', '--scheduled'));
    const s3 = await cliJson<Manifest>(args('backup', 'create', 'pruned', '--scheduled'));
    const manual = await cliJson<Manifest>(args('backup', 'create', 'pruned'));
    // A failed run's leftovers: objects, no manifest, older than orphanUploadAge.
    const incomplete = '20200101T000000000Z-aaaaaaaa';
    await s3Client().send(new PutObjectCommand({ Bucket: bucket, Key: `agent/pruned/${incomplete}/uploads.tar.zst`, Body: 'partial' }));
    await sleep(Math.max(0, Date.parse(expiring.keepUntil!) - Date.now() + 100));

    // Both listings only read: side by side.
    const [listed, table] = await Promise.all([cliJson<BackupSummary[]>(args('backup', 'list', 'pruned')), cli(args('backup', 'list', 'pruned'))]);
    expect(listed.find((b) => b.id === expiring.id)).toMatchObject({ restorable: false, status: 'expired' });
    expect(listed.find((b) => b.id === incomplete)).toMatchObject({ restorable: false, status: 'incomplete' });
    expect(table.stdout.split('\n')[0]).toMatch(/^Created\s+Backup ID\s+Node\s+Restorable\s+Authenticated\s+Trigger\s+Expires\s+Size\s+Pause$/);
    expect(table.stdout.split('\n').find((l) => l.includes(expiring.id))).toContain('no (expired)');
    expect(table.stdout.split('\n').find((l) => l.includes(s1.id))).toContain('scheduled');

    const before = await bucketKeys(bucket);
    // The dry runs delete nothing (checked below, after both): side by side.
    const [dry, dryTable] = await Promise.all([cliJson<PruneResult>(args('backup', 'prune', 'pruned', '--dry-run')), cli(args('backup', 'prune', 'pruned', '--dry-run'))]);
    expect(dry.dryRun).toBe(true);
    const doomed = [s1.id, s2.id, expiring.id, incomplete].sort();
    expect(dry.deleted.map((e) => e.id).sort()).toEqual(doomed);
    expect(await bucketKeys(bucket)).toEqual(before);
    expect(dryTable.stdout).toMatch(/Backup ID\s+Created\s+Trigger\s+Action\s+Reason/);
    expect(dryTable.stdout).toContain('would delete');

    const human = await cli(args('backup', 'prune', 'pruned'));
    expect(human.exitCode, human.stderr).toBe(0);
    expect(human.stdout).toContain('4 deleted');
    const after = await bucketKeys(bucket);
    const pruneOf = (id: string) => `agent/pruned/${id}/`;
    expect(after).toEqual(before.filter((k) => !doomed.some((id) => k.startsWith(pruneOf(id)))));
    for (const id of [s3.id, manual.id]) expect(after).toContain(`agent/pruned/${id}/manifest.json`);

    const again = await cliJson<PruneResult>(args('backup', 'prune', 'pruned'));
    expect(again.deleted).toEqual([]);
  });

  it('restore takes a safety backup of the target first; restoring it brings back the pre-restore state', async () => {
    const original = await cliJson<Manifest>(args('backup', 'create', 'app'));
    await writeFile(path.join(mount, 'a.txt'), 'changed since');
    await writeFile(path.join(mount, 'new.txt'), 'only after');

    const summary = await cliJson<RestoreSummary>(args('backup', 'restore', 'app', original.id, '--yes'));
    expect(await readFile(path.join(mount, 'a.txt'), 'utf8')).toBe('first');
    const safety = summary.safetyBackup!;
    expect(safety.id).toMatch(/Z-/);
    expect(safety.elements).toEqual(['uploads']);
    const list = await cliJson<BackupSummary[]>(args('backup', 'list', 'app'));
    const listed = list.find((b) => b.id === safety.id)!;
    expect(listed).toMatchObject({ restorable: true });
    expect(listed.manifest).toMatchObject({ trigger: 'safety' });
    const keepFor = new Date(listed.manifest!.keepUntil!).getTime() - new Date(listed.manifest!.createdAt).getTime();
    expect(keepFor).toBe(3 * 86_400_000);

    const back = await cliJson<RestoreSummary>(args('backup', 'restore', 'app', safety.id!, '--yes', '--no-safety-backup'));
    expect(back.safetyBackup).toBeUndefined();
    expect(await readFile(path.join(mount, 'a.txt'), 'utf8')).toBe('changed since');
    expect(await readFile(path.join(mount, 'new.txt'), 'utf8')).toBe('only after');
    // Safety backups do not count against the manual limit, and --no-safety-backup took none.
    expect((await cliJson<BackupSummary[]>(args('backup', 'list', 'app'))).length).toBe(2);
  });

  it('restoring into a target that holds nothing yet skips the safety backup and succeeds', async () => {
    const original = await cliJson<Manifest>(args('backup', 'create', 'app'));
    await rm(path.join(sandbox.dir, 'not-yet'), { recursive: true, force: true });
    const result = await cli(args('backup', 'restore', 'app', original.id, '--target', 'fresh', '--yes'));
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout).toContain('no safety backup: nothing there yet (uploads)');
    expect(await readFile(path.join(sandbox.dir, 'not-yet', 'a.txt'), 'utf8')).toBe('changed since');
    expect(await cliJson<BackupSummary[]>(args('backup', 'list', 'fresh'))).toEqual([]);
  });
});
