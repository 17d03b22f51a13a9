import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { loopMount } from './support/cgroup.ts';
import { cli, cliJson, cliTracked, createSandbox, filesEnv, killCliAt, s3StoreConfig, startCli, type Sandbox } from './support/cli.ts';
import { daemonSection, sleep, startDaemon, waitFor, writeTokens } from './support/daemon.ts';
import { createTestBucket, multipartUploads, s3Client } from './support/s3.ts';
import { tempEntries } from './support/worker-tmp.ts';

const killAt = (sandbox: Sandbox, args: string[], phase: string) => killCliAt(sandbox.dir, args, phase);

async function agentEntries(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.includes('.storage-agent-')).sort();
}

describe('a restore into a mount point killed mid-swap is finished by the next command', () => {
  let sandbox: Sandbox;
  let source: string;
  let mountPoint: string;
  let unmount: () => Promise<void>;
  let backupId: string;
  const args = () => ['--config', sandbox.configPath];

  async function generation(root: string, gen: string) {
    for (const name of await readdir(root)) if (name !== 'lost+found') await rm(path.join(root, name), { recursive: true, force: true });
    await writeFile(path.join(root, 'gen'), gen);
    await writeFile(path.join(root, `only-${gen}`), gen);
    await mkdir(path.join(root, 'shared'));
    await writeFile(path.join(root, 'shared', 'file'), gen.repeat(5000));
  }

  beforeAll(async () => {
    sandbox = await createSandbox();
    source = path.join(sandbox.dir, 'source');
    mountPoint = path.join(sandbox.dir, 'mnt');
    await mkdir(source);
    unmount = await loopMount('ext4', path.join(sandbox.dir, 'mnt.img'), mountPoint, '64M');
    await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: source }), mounted: filesEnv({ uploads: mountPoint }) } });
    await generation(source, 'B');
    backupId = (await cliJson<Manifest>([...args(), 'backup', 'create', 'site'])).id;
  });
  afterAll(async () => {
    await unmount?.();
    await sandbox?.cleanup();
  });

  it.each([
    ['restore:staged:uploads', 'A'],
    ['restore:files:old-moved', 'B'],
    ['restore:committed:uploads', 'B'],
  ])('killed at %s → the mount holds generation %s only, and nothing of the agent', async (phase, gen) => {
    await generation(mountPoint, 'A');
    await killAt(sandbox, [...args(), 'backup', 'restore', 'site', backupId, '--target', 'mounted', '--yes', '--no-safety-backup'], phase);
    expect((await cli([...args(), 'backup', 'list', 'site'])).exitCode).toBe(0);
    expect((await readdir(mountPoint)).sort()).toEqual(['gen', 'lost+found', `only-${gen}`, 'shared']);
    expect(await readFile(path.join(mountPoint, 'gen'), 'utf8')).toBe(gen);
    expect(await readFile(path.join(mountPoint, 'shared', 'file'), 'utf8')).toBe(gen.repeat(5000));
    expect(await agentEntries(mountPoint)).toEqual([]);
    expect(await readdir(path.join(sandbox.stateDir, 'restores'))).toEqual([]);
  });
});

describe('what a killed process leaves is cleaned up by the next start of a daemon, too', () => {
  let sandbox: Sandbox;
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    sandbox = await createSandbox();
  });
  afterAll(async () => {
    await sandbox?.cleanup();
  });

  it('a restore killed as it began swapping in is finished when the daemon starts', async () => {
    const source = path.join(sandbox.dir, 'src');
    const target = path.join(sandbox.dir, 'new', 'parent', 'target');
    await mkdir(source);
    await writeFile(path.join(source, 'data'), 'new data');
    const tokens = await writeTokens(sandbox);
    await sandbox.writeConfig({ daemon: daemonSection(tokens), environments: { site: filesEnv({ uploads: source }), fresh: filesEnv({ uploads: target }) } });
    const { id } = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    // The target's parents do not exist: the restore creates them.
    await killAt(sandbox, [...args(), 'backup', 'restore', 'site', id, '--target', 'fresh', '--yes'], 'restore:committing');
    expect(existsSync(target)).toBe(false);
    const daemon = await startDaemon(sandbox.configPath);
    try {
      const line = await daemon.waitForLog('the roll-forward', (l) => /was finished: every element is the backup's now/.test(String(l.msg)));
      expect(line).toMatchObject({ target: 'fresh', backupId: id });
      expect(await readFile(path.join(target, 'data'), 'utf8')).toBe('new data');
      expect(await agentEntries(path.dirname(target))).toEqual([]);
      expect(await readdir(path.join(sandbox.stateDir, 'restores'))).toEqual([]);
    } finally {
      await daemon.stop();
    }
  });

  it('with a daemon running, a CLI restore killed between two swaps is finished before the daemon\'s next job on the target, which is then not undone', async () => {
    const write = async (dir: string, text: string) => {
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, 'data'), text);
    };
    const read = (dir: string) => readFile(path.join(dir, 'data'), 'utf8');
    const [srcUp, srcAs, tgtUp, tgtAs] = ['src-up', 'src-as', 'tgt-up', 'tgt-as'].map((name) => path.join(sandbox.dir, 'mixed', name)) as [string, string, string, string];
    await write(tgtUp, 'A');
    await write(tgtAs, 'A');
    const tokens = await writeTokens(sandbox);
    await sandbox.writeConfig({
      daemon: daemonSection(tokens),
      environments: { src: filesEnv({ up: srcUp, as: srcAs }), tgt: filesEnv({ up: tgtUp, as: tgtAs }) },
    });
    await write(srcUp, 'B');
    await write(srcAs, 'B');
    const b = await cliJson<Manifest>([...args(), 'backup', 'create', 'src']);
    await write(srcUp, 'C');
    await write(srcAs, 'C');
    const c = await cliJson<Manifest>([...args(), 'backup', 'create', 'src']);
    const daemon = await startDaemon(sandbox.configPath);
    try {
      await killAt(sandbox, [...args(), 'backup', 'restore', 'src', b.id, '--target', 'tgt', '--yes', '--no-safety-backup'], 'restore:committed:up');
      expect([await read(tgtUp), await read(tgtAs)]).toEqual(['B', 'A']); // the kill left it mixed
      const remote = await cli([...args(), '--remote', daemon.url, '--token-file', tokens.adminFile, 'backup', 'restore', 'src', c.id, '--target', 'tgt', '--yes', '--no-safety-backup']);
      expect(remote.exitCode).toBe(0);
      const finished = await daemon.waitForLog('the roll-forward', (l) => /was finished: every element is the backup's now/.test(String(l.msg)));
      expect(finished).toMatchObject({ target: 'tgt', backupId: b.id });
      expect([await read(tgtUp), await read(tgtAs)]).toEqual(['C', 'C']);
      expect((await cli([...args(), 'backup', 'list', 'src'])).exitCode).toBe(0);
      expect([await read(tgtUp), await read(tgtAs)]).toEqual(['C', 'C']); // nothing left to roll forward over it
      expect(await readdir(path.join(sandbox.stateDir, 'restores'))).toEqual([]);
    } finally {
      await daemon.stop();
    }
  });

  it('a restore killed while staging into a missing parent removes its staging and the parents it made', async () => {
    const source = path.join(sandbox.dir, 'src2');
    await mkdir(source);
    await writeFile(path.join(source, 'data'), 'x');
    await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: source }), fresh: filesEnv({ uploads: path.join(sandbox.dir, 'made', 'by', 'restore') }) } });
    const { id } = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    await killAt(sandbox, [...args(), 'backup', 'restore', 'site', id, '--target', 'fresh', '--yes'], 'restore:staged:uploads');
    expect(existsSync(path.join(sandbox.dir, 'made'))).toBe(true);
    expect((await cli([...args(), 'backup', 'list', 'site'])).exitCode).toBe(0);
    expect(existsSync(path.join(sandbox.dir, 'made'))).toBe(false);
  });

  it('a restore killed during its safety backup: the next command removes the incomplete safety backup, the target is unchanged', async () => {
    const source = path.join(sandbox.dir, 'src3');
    const target = path.join(sandbox.dir, 'target3');
    await mkdir(source);
    await mkdir(target);
    await writeFile(path.join(source, 'data'), 'new');
    await writeFile(path.join(target, 'data'), 'old');
    await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: source }), other: filesEnv({ uploads: target }) } });
    const { id } = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    // Every element of the safety backup is stored; only its manifest is missing.
    await killAt(sandbox, [...args(), 'backup', 'restore', 'site', id, '--target', 'other', '--yes'], 'backup:manifest');
    const list = await cliJson<{ id: string; status: string }[]>([...args(), 'backup', 'list', 'other']);
    expect(list).toEqual([]);
    expect(await readFile(path.join(target, 'data'), 'utf8')).toBe('old');
    expect(await agentEntries(sandbox.dir)).toEqual([]);
    expect(await readdir(path.join(sandbox.stateDir, 'restores'))).toEqual([]);
  });

  it('daemon restores that fail while staging leave no child process (of the daemon, or of the CLI that asked, which exits on its own), and SIGTERM then ends the daemon', async () => {
    const source = path.join(sandbox.dir, 'src4');
    await mkdir(source);
    for (let i = 0; i < 4; i++) await writeFile(path.join(source, `blob-${i}`), randomBytes(4 << 20));
    const tokens = await writeTokens(sandbox);
    // The target mount sits under a regular file: staging fails after the download began.
    await writeFile(path.join(sandbox.dir, 'a-file'), 'x');
    await sandbox.writeConfig({
      daemon: daemonSection(tokens),
      environments: { site: filesEnv({ uploads: source }), broken: filesEnv({ uploads: path.join(sandbox.dir, 'a-file', 'mount') }) },
    });
    const { id } = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const daemon = await startDaemon(sandbox.configPath);
    const children = async () => (await readFile(`/proc/${daemon.child.pid}/task/${daemon.child.pid}/children`, 'utf8')).trim().split(/\s+/).filter(Boolean);
    try {
      const before = await children();
      for (let i = 0; i < 3; i++) {
        const restore = await cliTracked([...args(), '--remote', daemon.url, '--token-file', tokens.adminFile, 'backup', 'restore', 'site', id, '--target', 'broken', '--yes', '--no-safety-backup'], { timeoutMs: 30_000 });
        expect(restore.exitCode, restore.stderr).toBe(8);
        // The CLI ends once it has printed the outcome, not by its 2 s exit grace (main.ts), and leaves nothing running.
        expect(restore.afterOutputMs, 'ended by the exit grace, not on its own').toBeLessThan(1_000);
        expect(restore.outlived, `children seen: ${JSON.stringify(restore.children)}`).toEqual([]);
      }
      // No zstd (or any other) child left behind by the failed restores.
      expect(await children()).toEqual(before);
    } finally {
      daemon.child.kill('SIGTERM');
    }
    expect(await Promise.race([daemon.exited, sleep(10_000).then(() => 'still running')])).toMatchObject({ exitCode: 0 });
  });

  it('a backup killed mid-upload leaves no multipart upload after the next CLI command, and its job says so', async () => {
    const bucket = await createTestBucket();
    const source = path.join(sandbox.dir, 'big');
    await mkdir(source);
    for (let i = 0; i < 6; i++) await writeFile(path.join(source, `blob-${i}`), randomBytes(8 << 20));
    await sandbox.writeConfig({ stores: { s3: s3StoreConfig(bucket) }, environments: { big: filesEnv({ uploads: source }, 's3') } });
    const backup = startCli([...args(), 'backup', 'create', 'big']);
    await waitFor('an open multipart upload', async () => (await multipartUploads(bucket)).length > 0, 60_000);
    backup.kill('SIGKILL');
    await backup;
    expect((await multipartUploads(bucket)).length).toBeGreaterThan(0);
    const list = await cli([...args(), 'backup', 'list', 'big']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(await multipartUploads(bucket)).toEqual([]);
    const jobs = await cliJson<{ kind: string; error?: { code: string; message: string } }[]>([...args(), 'jobs', 'list']);
    expect(jobs.find((j) => j.kind === 'backup.create')?.error).toMatchObject({ code: 'E_INTERRUPTED', message: expect.stringMatching(/incomplete uploads were aborted/) });
  });
});

describe('a killed `backup get` leaves no partial file behind after the next command', () => {
  let sandbox: Sandbox;
  let out: string;
  let backupId: string;
  const args = () => ['--config', sandbox.configPath];
  const getArgs = () => [...args(), 'backup', 'get', 'site', backupId, '--element', 'uploads', '--to', out];
  const partials = async () => (await readdir(out)).filter((name) => name.includes('.partial-'));

  beforeAll(async () => {
    sandbox = await createSandbox();
    const source = path.join(sandbox.dir, 'src');
    await mkdir(source);
    // Incompressible, so that writing the downloaded archive takes a while.
    for (let i = 0; i < 4; i++) await writeFile(path.join(source, `blob-${i}`), randomBytes(32 << 20));
    await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: source }) } });
    backupId = (await cliJson<Manifest>([...args(), 'backup', 'create', 'site'])).id;
  });
  afterAll(async () => {
    await sandbox?.cleanup();
  });

  async function expectCleanedByNextCommand(): Promise<void> {
    const list = await cli([...args(), 'backup', 'list', 'site']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(await readdir(out)).toEqual([]);
    expect(await readdir(path.join(sandbox.stateDir, 'downloads'))).toEqual([]);
  }

  it('killed with the file written but not yet renamed into place (get:written)', async () => {
    out = path.join(sandbox.dir, 'out-written');
    await mkdir(out);
    await killAt(sandbox, getArgs(), 'get:written');
    expect(await partials()).toHaveLength(1);
    await expectCleanedByNextCommand();
  });

  it('killed mid-write', async () => {
    out = path.join(sandbox.dir, 'out-mid-write');
    await mkdir(out);
    const get = startCli(getArgs());
    let partial: string | undefined;
    while (get.exitCode === null) {
      [partial] = await partials();
      if (partial && (await stat(path.join(out, partial)).catch(() => undefined))?.size) break;
      await sleep(2);
    }
    get.kill('SIGKILL');
    const result = await get;
    expect(result.signal, `the get ended before it was killed: ${String(result.stderr)}`).toBe('SIGKILL');
    expect(await readdir(out)).toEqual([partial]); // the archive itself never appeared
    await expectCleanedByNextCommand();
  });
});

describe('a restore killed while its safety backup uploads to S3 leaves nothing', () => {
  let sandbox: Sandbox;
  let bucket: string;
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    sandbox = await createSandbox();
    bucket = await createTestBucket();
  });
  afterAll(async () => {
    await sandbox?.cleanup();
  });

  async function objectKeys(): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await s3Client().send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
      keys.push(...(page.Contents ?? []).map((o) => o.Key!));
      token = page.NextContinuationToken;
    } while (token);
    return keys;
  }

  it('after one command: no multipart upload, no object of the safety backup, the target unchanged, nothing new in /tmp', async () => {
    const tmpBefore = new Set(await tempEntries());
    const source = path.join(sandbox.dir, 'src');
    const target = path.join(sandbox.dir, 'target');
    await mkdir(source);
    await mkdir(target);
    await writeFile(path.join(source, 'data'), 'new');
    // The target is big and incompressible: its safety backup is a multipart upload that takes a while.
    const blobs: Buffer[] = [];
    for (let i = 0; i < 6; i++) {
      blobs.push(randomBytes(8 << 20));
      await writeFile(path.join(target, `blob-${i}`), blobs[i]!);
    }
    await writeFile(path.join(target, 'data'), 'old');
    await sandbox.writeConfig({ stores: { s3: s3StoreConfig(bucket) }, environments: { site: filesEnv({ uploads: source }, 's3'), other: filesEnv({ uploads: target }, 's3') } });
    const { id } = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const keysBefore = await objectKeys();

    const restore = startCli([...args(), 'backup', 'restore', 'site', id, '--target', 'other', '--yes']);
    await waitFor('the safety backup\'s multipart upload', async () => restore.exitCode === null && (await multipartUploads(bucket)).length > 0, 60_000);
    const [journal] = (await readdir(path.join(sandbox.stateDir, 'restores'))).filter((name) => name.endsWith('.json'));
    const { safetyBackupId } = JSON.parse(await readFile(path.join(sandbox.stateDir, 'restores', journal!), 'utf8')) as { safetyBackupId?: string };
    expect(safetyBackupId).toMatch(/\S/);
    restore.kill('SIGKILL');
    const killed = await restore;
    expect(killed.signal, `the restore ended before it was killed: ${String(killed.stderr)}`).toBe('SIGKILL');
    expect((await objectKeys()).some((key) => key.includes(safetyBackupId!)) || (await multipartUploads(bucket)).length > 0).toBe(true);

    const list = await cli([...args(), 'backup', 'list', 'other']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(await multipartUploads(bucket)).toEqual([]);
    expect((await objectKeys()).filter((key) => key.includes(safetyBackupId!))).toEqual([]);
    expect(await cliJson<unknown[]>([...args(), 'backup', 'list', 'other'])).toEqual([]);
    // Nothing but what the site backup wrote is left in the bucket (and the node's claim on the environment).
    expect((await objectKeys()).filter((key) => !keysBefore.includes(key) && !/^agent\/other\/owners\/[^/]+\.json$/.test(key))).toEqual([]);
    // The target is exactly as it was.
    expect((await readdir(target)).sort()).toEqual(['blob-0', 'blob-1', 'blob-2', 'blob-3', 'blob-4', 'blob-5', 'data']);
    expect(await readFile(path.join(target, 'data'), 'utf8')).toBe('old');
    for (let i = 0; i < 6; i++) expect((await readFile(path.join(target, `blob-${i}`))).equals(blobs[i]!)).toBe(true);
    expect(await agentEntries(sandbox.dir)).toEqual([]);
    expect(await readdir(path.join(sandbox.stateDir, 'restores'))).toEqual([]);
    expect(await readdir(path.join(sandbox.stateDir, 'uploads')).catch(() => [])).toEqual([]);
    // Nothing new in a temp directory at all, whatever its name (this worker's own: worker-tmp.ts).
    expect((await tempEntries()).filter((name) => !tmpBefore.has(name))).toEqual([]);
  });
});
