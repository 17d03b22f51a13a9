import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, startCli, type Sandbox } from './support/cli.ts';
import { createCgroup, loopMount, type TestCgroup } from './support/cgroup.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A writer in the cgroup appending a counter to a file on the mount, every few ms. */
function startWriter(cgroup: TestCgroup, file: string) {
  return cgroup.spawn('sh', ['-c', `n=0; while true; do n=$((n+1)); echo $n >> ${file}; sleep 0.002; done`]);
}

async function lines(file: string): Promise<number> {
  return (await readFile(file, 'utf8')).split('\n').filter(Boolean).length;
}

describe('consistent backups freeze the writers for a short, measured pause and always thaw', () => {
  let sandbox: Sandbox;
  const unmounts: (() => Promise<void>)[] = [];
  const cgroups: TestCgroup[] = [];
  const mounts: Record<string, string> = {};

  beforeAll(async () => {
    sandbox = await createSandbox();
    for (const type of ['btrfs', 'xfs', 'ext4'] as const) {
      mounts[type] = path.join(sandbox.dir, type);
      unmounts.push(await loopMount(type, path.join(sandbox.dir, `${type}.img`), mounts[type]!));
    }
    // Enough data that reading it takes far longer than a snapshot.
    for (const mount of Object.values(mounts)) {
      await mkdir(path.join(mount, 'data'));
      for (let i = 0; i < 4; i++) await writeFile(path.join(mount, 'data', `blob-${i}.bin`), randomBytes(24 * 1024 * 1024));
    }
  });
  afterEach(async () => {
    await Promise.all(cgroups.splice(0).map((c) => c.remove()));
  });
  afterAll(async () => {
    for (const unmount of unmounts) await unmount();
    await sandbox.cleanup();
  });

  async function configure(freeze: Record<string, unknown>, mount: string): Promise<string[]> {
    await sandbox.writeConfig({ environments: { app: { freeze, services: { uploads: { kind: 'files', path: mount } } } } });
    return ['--config', sandbox.configPath];
  }

  it.each([
    ['btrfs', 'v2', 'btrfs-subvolume'],
    ['xfs', 'v1', 'reflink'],
  ] as const)('%s mount, cgroup %s: snapshot inside the freeze (%s), pause under 1 s, writer runs on', async (fsType, version, method) => {
    const cgroup = await createCgroup(version);
    cgroups.push(cgroup);
    const log = path.join(mounts[fsType]!, 'writer.log');
    startWriter(cgroup, log);
    await sleep(200);
    const args = await configure({ cgroups: [cgroup.path] }, mounts[fsType]!);
    const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'app']);
    expect(manifest.mode).toBe('consistent');
    expect(manifest.pauseMs).toBeGreaterThan(0);
    expect(manifest.pauseMs).toBeLessThan(1000);
    expect(manifest.elements[0]!.facts.snapshot).toBe(method);
    expect(await cgroup.isFrozen()).toBe(false);
    const before = await lines(log);
    await sleep(200);
    expect(await lines(log)).toBeGreaterThan(before); // thawed: the writer goes on
    expect(await readdir(mounts[fsType]!)).not.toContain('.storage-agent-snapshots'); // released
    expect(await readdir(path.join(sandbox.stateDir, 'frozen'))).toEqual([]);
  });

  it('ext4 with fsfreeze: the tar runs inside the freeze and the pause it costs is reported', async () => {
    const cgroup = await createCgroup('v2');
    cgroups.push(cgroup);
    const log = path.join(mounts.ext4!, 'writer.log');
    startWriter(cgroup, log);
    await sleep(200);
    const args = await configure({ cgroups: [cgroup.path], filesystems: [mounts.ext4!] }, mounts.ext4!);
    const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'app']);
    expect(manifest.elements[0]!.facts.snapshot).toBeNull();
    expect(manifest.pauseMs).toBeGreaterThan(0);
    // The restored log is one consistent point: complete lines, numbered 1..n without gaps.
    const restoredLog = await restoredFile(args, manifest.id, 'writer.log');
    const numbers = restoredLog.trimEnd().split('\n').map(Number);
    expect(numbers).toEqual(numbers.map((_, i) => i + 1));
    await writeFile(path.join(mounts.ext4!, 'after.txt'), 'the filesystem is thawed');
    expect(await cgroup.isFrozen()).toBe(false);
  });

  it('a freeze past its deadline thaws, fails with E_FREEZE_TIMEOUT (exit 7) and leaves no backup', async () => {
    const cgroup = await createCgroup('v1');
    cgroups.push(cgroup);
    startWriter(cgroup, path.join(mounts.ext4!, 'writer.log'));
    const args = await configure({ cgroups: [cgroup.path], filesystems: [mounts.ext4!], deadline: '30ms' }, mounts.ext4!);
    const before = await cliJson<{ id: string }[]>([...args, 'backup', 'list', 'app']);
    const result = await cli([...args, 'backup', 'create', 'app']);
    expect(result.exitCode, result.stderr).toBe(7);
    expect(result.stderr).toContain('E_FREEZE_TIMEOUT');
    expect(await cgroup.isFrozen()).toBe(false);
    await writeFile(path.join(mounts.ext4!, 'after-deadline.txt'), 'writable');
    expect(await cliJson([...args, 'backup', 'list', 'app'])).toEqual(before);
  });

  it('an agent killed (SIGKILL) while frozen: the next start thaws the cgroup and the filesystem', async () => {
    const cgroup = await createCgroup('v1');
    cgroups.push(cgroup);
    startWriter(cgroup, path.join(mounts.ext4!, 'writer.log'));
    const args = await configure({ cgroups: [cgroup.path], filesystems: [mounts.ext4!], deadline: '5m' }, mounts.ext4!);
    const backup = startCli([...args, 'backup', 'create', 'app']);
    for (let i = 0; i < 500 && !(await cgroup.isFrozen()); i++) await sleep(10);
    expect(await cgroup.isFrozen()).toBe(true);
    backup.kill('SIGKILL');
    await backup;
    await sleep(100);
    expect(await cgroup.isFrozen()).toBe(true); // nobody thawed it: the agent is gone
    const next = await cli([...args, 'backup', 'list', 'app']);
    expect(next.exitCode, next.stderr).toBe(0);
    expect(await cgroup.isFrozen()).toBe(false);
    await writeFile(path.join(mounts.ext4!, 'after-crash.txt'), 'writable');
    expect((await stat(path.join(mounts.ext4!, 'after-crash.txt'))).size).toBe(8);
    expect(await readdir(path.join(sandbox.stateDir, 'frozen'))).toEqual([]);
  });

  async function restoredFile(args: string[], id: string, name: string): Promise<string> {
    const target = path.join(sandbox.dir, `restored-${id}`);
    await sandbox.writeConfig({
      environments: {
        app: { services: { uploads: { kind: 'files', path: mounts.ext4! } } },
        copy: { services: { uploads: { kind: 'files', path: target } } },
      },
    });
    const restore = await cli([...args, 'backup', 'restore', 'app', id, '--target', 'copy', '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    return readFile(path.join(target, name), 'utf8');
  }
});
