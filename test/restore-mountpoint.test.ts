import { execFile } from 'node:child_process';
import { mkdir, readdir, statfs, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { buildFixtureTree, describeTree, hardLinkGroups } from './support/tree.ts';

const run = promisify(execFile);

/** Restores into a real mount point (a loop-mounted ext4): the directory itself cannot be renamed. */
describe('restore into a mount point (loop-mounted ext4)', () => {
  let sandbox: Sandbox;
  let source: string;
  let mountPoint: string;
  const args = () => ['--config', sandbox.configPath];
  const state = (root: string) => Object.fromEntries([...describeTree(root)].filter(([rel]) => !rel.startsWith('lost+found')));

  beforeAll(async () => {
    sandbox = await createSandbox();
    source = path.join(sandbox.dir, 'source');
    mountPoint = path.join(sandbox.dir, 'mnt');
    await mkdir(source);
    await mkdir(mountPoint);
    await buildFixtureTree(source);
    const image = path.join(sandbox.dir, 'fs.img');
    await run('truncate', ['-s', '64M', image]);
    await run('mkfs.ext4', ['-q', '-F', image]);
    await run('mount', ['-o', 'loop', image, mountPoint]);
    await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: source }), mounted: filesEnv({ uploads: mountPoint }) } });
  });
  afterAll(async () => {
    await run('umount', [mountPoint]).catch(() => {});
    await sandbox.cleanup();
  });

  it('swaps the contents in, keeps lost+found, and a failed restore leaves the mount as it was', async () => {
    await writeFile(path.join(mountPoint, 'old-data.txt'), 'replaced by the restore');
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'mounted', '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    // Files lose setuid/setgid bits: the service has no keepSetuid (issue #10).
    const cleared = Object.fromEntries(Object.entries(state(source)).map(([rel, e]) => [rel, e.type === 'file' ? { ...e, mode: e.mode & ~0o6000 } : e]));
    expect(state(mountPoint)).toEqual(cleared);
    expect(hardLinkGroups(mountPoint)).toEqual(hardLinkGroups(source));
    expect(await readdir(mountPoint)).toContain('lost+found');
    expect((await run('findmnt', ['-n', '-o', 'TARGET', mountPoint])).stdout.trim()).toBe(mountPoint);

    // Fill the mount (root may use the reserved blocks too) so the next restore cannot stage:
    // it must fail and change nothing.
    const free = await statfs(mountPoint);
    await run('fallocate', ['-l', String(free.bfree * free.bsize - 2 * 1024 * 1024), path.join(mountPoint, 'filler.bin')]);
    const before = state(mountPoint);
    const full = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'mounted', '--yes']);
    expect(full.exitCode).not.toBe(0);
    expect(full.stderr, full.stderr).toMatch(/E_RESTORE_FAILED.*(ENOSPC|no space|not enough free space)/is);
    expect(state(mountPoint)).toEqual(before);
    expect((await readdir(mountPoint)).filter((n) => n.startsWith('.storage-agent'))).toEqual([]);
  });
});
