import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { namePattern } from '../src/snapshot/names.ts';
import { cli, cliJson, createSandbox, filesEnv, type CliResult, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';

/**
 * Names from outside (the command line, the protocol) that are also keys of Object.prototype:
 * every lookup of one in a plain object finds the prototype's member instead of nothing.
 * Only those the name rule lets through can reach a lookup at all.
 */
const PROTOTYPE_NAMES = Object.getOwnPropertyNames(Object.prototype).filter((key) => namePattern.test(key));

let sandbox: Sandbox;
let mount: string;
let backupId: string;

beforeAll(async () => {
  sandbox = await createSandbox();
  mount = path.join(sandbox.dir, 'mount');
  await mkdir(mount);
  await writeFile(path.join(mount, 'file.txt'), 'data');
  await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: mount }) } });
  backupId = (await cliJson<{ id: string }>(['--config', sandbox.configPath, 'backup', 'create', 'site'])).id;
});
afterAll(() => sandbox.cleanup());

/** Runs the commands `size` at a time (one process each; the machine has few cores). */
async function inBatches(commands: readonly (readonly string[])[], size = 4): Promise<CliResult[]> {
  const results: CliResult[] = [];
  for (let i = 0; i < commands.length; i += size) {
    results.push(...(await Promise.all(commands.slice(i, i + size).map((args) => cli(['--config', sandbox.configPath, ...args])))));
  }
  return results;
}

describe("names that are Object.prototype's keys", () => {
  it('the name rule lets some through (so the cases below are not empty)', () => {
    expect(PROTOTYPE_NAMES).toContain('constructor');
  });

  it.each(PROTOTYPE_NAMES)('%s, not configured, is an unknown environment for every command (exit 4), and no job is accepted', async (name) => {
    const commands = [
      ['backup', 'create', name],
      ['backup', 'list', name],
      ['backup', 'show', name, backupId],
      ['backup', 'get', name, backupId, '--element', 'uploads', '--to', sandbox.dir],
      ['backup', 'url', name, backupId, '--element', 'uploads'],
      ['backup', 'restore', name, backupId, '--yes'],
      ['backup', 'restore', 'site', backupId, '--target', name, '--yes'],
      ['backup', 'delete', name, backupId, '--yes'],
      ['backup', 'verify', name, backupId],
      ['backup', 'prune', name],
    ];
    const results = await inBatches(commands);
    for (const [i, result] of results.entries()) {
      const what = `${commands[i]!.join(' ')}: ${result.stderr}`;
      expect(result.exitCode, what).toBe(4);
      expect(result.stderr, what).toBe(`error [E_UNKNOWN_ENV]: unknown environment "${name}"; configured: site`);
    }
    const jobs = await cliJson<{ env: string }[]>(['--config', sandbox.configPath, 'jobs', 'list']);
    expect(jobs.filter((job) => job.env === name)).toEqual([]);
    // The backup the restore named is untouched.
    const list = await cliJson<{ id: string; restorable: boolean }[]>(['--config', sandbox.configPath, 'backup', 'list', 'site']);
    expect(list.map((b) => [b.id, b.restorable])).toEqual([[backupId, true]]);
  });

  it('an environment (and a service) really named constructor works: backup, list, verify, restore', async () => {
    const own = await createSandbox();
    try {
      const files = path.join(own.dir, 'files');
      await mkdir(files);
      await writeFile(path.join(files, 'file.txt'), 'data');
      await own.writeConfig({ environments: { constructor: filesEnv({ constructor: files }), site: filesEnv({ uploads: mount }) } });
      const args = ['--config', own.configPath, 'backup'];
      const created = await cliJson<{ id: string; env: string; elements: { name: string }[] }>([...args, 'create', 'constructor']);
      expect(created).toMatchObject({ env: 'constructor', elements: [{ name: 'constructor' }] });
      const list = await cliJson<{ id: string; restorable: boolean }[]>([...args, 'list', 'constructor']);
      expect(list.map((b) => [b.id, b.restorable])).toEqual([[created.id, true]]);
      expect(await cliJson<unknown[]>([...args, 'list', 'site'])).toEqual([]);
      expect(await cliJson([...args, 'verify', 'constructor', created.id])).toMatchObject({ ok: true });
      await writeFile(path.join(files, 'file.txt'), 'changed');
      await cliJson([...args, 'restore', 'constructor', created.id, '--yes', '--no-safety-backup']);
      expect(await readFile(path.join(files, 'file.txt'), 'utf8')).toBe('data');
    } finally {
      await own.cleanup();
    }
  });
});

describe('an environment (and a service) really named constructor, through the daemon (--remote)', () => {
  let own: Sandbox;
  let tokens: Tokens;
  let daemon: RunningDaemon;
  let files: string;
  /** A well-formed id of no backup. */
  const missing = '20200101T000000000Z-abcdefgh';

  beforeAll(async () => {
    own = await createSandbox();
    tokens = await writeTokens(own);
    files = path.join(own.dir, 'files');
    await mkdir(files);
    await writeFile(path.join(files, 'file.txt'), 'data');
    await own.writeConfig({ daemon: daemonSection(tokens), environments: { constructor: filesEnv({ constructor: files }), site: filesEnv({ uploads: mount }) } });
    daemon = await startDaemon(own.configPath);
  });
  afterAll(async () => {
    await daemon?.stop();
    await own?.cleanup();
  });

  const remote = (...args: string[]) => cli(['--config', own.configPath, '--remote', daemon.url, '--token-file', tokens.adminFile, '--json', ...args]);
  const succeeds = async <T>(...args: string[]): Promise<T> => {
    const result = await remote(...args);
    expect(result.exitCode, `${args.join(' ')}: ${result.stderr}`).toBe(0);
    return JSON.parse(result.stdout) as T;
  };
  const failsWith = async (code: string, exitCode: number, ...args: string[]): Promise<string> => {
    const result = await remote(...args);
    const what = `${args.join(' ')}: ${result.stderr}`;
    expect(result.exitCode, what).toBe(exitCode);
    expect(JSON.parse(result.stdout), what).toMatchObject({ error: { code } });
    expect(result.stderr, what).toContain(`error [${code}]: `);
    return result.stderr;
  };

  it('verify, restore and delete of its backup succeed; of a backup it lacks (or no longer has) each fail E_BACKUP_NOT_FOUND, across environments E_UNKNOWN_ELEMENT (exit 4); never E_INTERNAL, the daemon alive', async () => {
    const [created, site] = await Promise.all([
      succeeds<{ id: string; env: string; elements: { name: string }[] }>('backup', 'create', 'constructor'),
      succeeds<{ id: string }>('backup', 'create', 'site'),
    ]);
    expect(created).toMatchObject({ env: 'constructor', elements: [{ name: 'constructor' }] });

    const [verified, verifiedAll] = await Promise.all([
      succeeds<{ id: string; ok: boolean }>('backup', 'verify', 'constructor', created.id),
      succeeds<{ backups: { id: string; ok: boolean }[] } | { id: string; ok: boolean }[]>('backup', 'verify', 'constructor', 'all'),
    ]);
    expect(verified).toMatchObject({ id: created.id, ok: true });
    expect(JSON.stringify(verifiedAll)).toContain(created.id);
    const [verifyMissing, restoreMissing, deleteMissing] = await Promise.all([
      failsWith('E_BACKUP_NOT_FOUND', 4, 'backup', 'verify', 'constructor', missing),
      failsWith('E_BACKUP_NOT_FOUND', 4, 'backup', 'restore', 'constructor', missing, '--yes'),
      failsWith('E_BACKUP_NOT_FOUND', 4, 'backup', 'delete', 'constructor', missing, '--yes'),
    ]);
    for (const stderr of [verifyMissing, restoreMissing, deleteMissing]) expect(stderr).toContain(missing);
    // Across environments, each side's service is missing on the other (no prototype member found instead).
    const [intoSite, intoConstructor] = await Promise.all([
      failsWith('E_UNKNOWN_ELEMENT', 4, 'backup', 'restore', 'constructor', created.id, '--target', 'site', '--yes'),
      failsWith('E_UNKNOWN_ELEMENT', 4, 'backup', 'restore', 'site', site.id, '--target', 'constructor', '--yes'),
    ]);
    expect(intoSite).toContain('target environment site has no service "constructor"');
    expect(intoConstructor).toContain('target environment constructor has no service "uploads"');

    await writeFile(path.join(files, 'file.txt'), 'changed');
    const restored = await succeeds<{ safetyBackup?: { id: string } }>('backup', 'restore', 'constructor', created.id, '--yes');
    expect(await readFile(path.join(files, 'file.txt'), 'utf8')).toBe('data');
    expect(restored.safetyBackup?.id).toBeDefined(); // the state before, kept as a backup of constructor

    expect(await succeeds<{ id: string }>('backup', 'delete', 'constructor', created.id, '--yes')).toMatchObject({ id: created.id });
    await Promise.all([
      failsWith('E_BACKUP_NOT_FOUND', 4, 'backup', 'delete', 'constructor', created.id, '--yes'),
      failsWith('E_BACKUP_NOT_FOUND', 4, 'backup', 'verify', 'constructor', created.id),
      failsWith('E_BACKUP_NOT_FOUND', 4, 'backup', 'restore', 'constructor', created.id, '--yes'),
    ]);
    const left = await succeeds<{ id: string }[]>('backup', 'list', 'constructor');
    expect(left.map((b) => b.id)).toEqual([restored.safetyBackup!.id]);

    // Every job the daemon ran for constructor ended with a stable outcome, none E_INTERNAL.
    const jobs = await succeeds<{ env: string; state: string; kind: string; error?: { code: string } }[]>('jobs', 'list', '--env', 'constructor');
    expect(jobs.length).toBeGreaterThanOrEqual(5);
    expect(jobs.filter((j) => j.error?.code === 'E_INTERNAL')).toEqual([]);
    expect(jobs.every((j) => ['succeeded', 'failed'].includes(j.state))).toBe(true);
    expect(daemon.logs().filter((l) => l.code === 'E_INTERNAL' || String(l.msg).includes('internal error'))).toEqual([]);
    expect(daemon.child.exitCode ?? null).toBeNull();
    expect(await succeeds('status')).toMatchObject({ agent: { program: 'daemon' } });
  });
});
