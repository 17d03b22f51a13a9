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

  let manifest: Manifest;

  it('swaps the contents in and keeps lost+found', async () => {
    await writeFile(path.join(mountPoint, 'old-data.txt'), 'replaced by the restore');
    manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'mounted', '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    // Files lose setuid/setgid bits: the service has no keepSetuid (issue #10).
    const cleared = Object.fromEntries(Object.entries(state(source)).map(([rel, e]) => [rel, e.type === 'file' ? { ...e, mode: e.mode & ~0o6000 } : e]));
    expect(state(mountPoint)).toEqual(cleared);
    expect(hardLinkGroups(mountPoint)).toEqual(hardLinkGroups(source));
    expect(await readdir(mountPoint)).toContain('lost+found');
    expect((await run('findmnt', ['-n', '-o', 'TARGET', mountPoint])).stdout.trim()).toBe(mountPoint);
  });

  it('a mount without room is refused by the free-space check before staging: its own message naming the mount (E_RESTORE_FAILED, exit 8), nothing staged, the mount as it was', async () => {
    // Fill the mount (root may use the reserved blocks too) so the next restore cannot stage:
    // the free-space check must refuse it before anything is staged, in its own words, and
    // change nothing. (The tree is far smaller than the check's 16 MiB margin: without the
    // check the restore would stage it into the 2 MiB left and succeed.)
    const free = await statfs(mountPoint);
    await run('fallocate', ['-l', String(free.bfree * free.bsize - 2 * 1024 * 1024), path.join(mountPoint, 'filler.bin')]);
    const before = state(mountPoint);
    const agentEntries = async () => [
      ...(await readdir(mountPoint)).filter((n) => n.startsWith('.storage-agent')),
      ...(await readdir(path.dirname(mountPoint))).filter((n) => n.includes('.storage-agent')),
    ];
    expect(await agentEntries()).toEqual([]);
    const full = await cli(['--json', ...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'mounted', '--yes']);
    expect(full.exitCode, full.stderr).toBe(8); // ExitCode.restore
    const failure = (JSON.parse(full.stdout) as { error: { code: string; message: string; details?: Record<string, unknown> } }).error;
    expect(failure.code).toBe('E_RESTORE_FAILED');
    expect(failure.message).toMatch(
      new RegExp(`^(.*: )?not enough free space for the restore of ${mountPoint} in ${mountPoint}: it needs about \\d+\\.\\d MiB and the filesystem has \\d+\\.\\d MiB free; .*nothing was changed`),
    );
    expect(failure.message).not.toMatch(/ENOSPC|no space left/i);
    expect(failure.details).toMatchObject({ path: mountPoint });
    expect(failure.details!.neededBytes as number).toBeGreaterThan(failure.details!.availableBytes as number);
    expect(full.stderr).toContain(`error [E_RESTORE_FAILED]: `);
    expect(state(mountPoint)).toEqual(before);
    expect(await agentEntries()).toEqual([]);
  });
});
