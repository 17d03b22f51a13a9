import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { namePattern } from '../src/snapshot/names.ts';
import { cli, cliJson, createSandbox, filesEnv, type CliResult, type Sandbox } from './support/cli.ts';

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
