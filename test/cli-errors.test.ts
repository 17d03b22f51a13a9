import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, cliJson, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/agent/main.ts');

let sandbox: Sandbox;
let backupId: string;

beforeAll(async () => {
  sandbox = await createSandbox();
  const mount = path.join(sandbox.dir, 'mount');
  await mkdir(mount);
  await writeFile(path.join(mount, 'file.txt'), 'data');
  await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: mount }) } });
  backupId = (await cliJson<{ id: string }>(['--config', sandbox.configPath, 'backup', 'create', 'site'])).id;
});
afterAll(() => sandbox.cleanup());

async function withConfig(text: string): Promise<string> {
  const file = path.join(sandbox.dir, `config-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, text);
  return file;
}

describe('bad input gets a stable exit code and a message naming it', () => {
  it('a missing config file → exit 3, E_CONFIG_NOT_FOUND, names the file', async () => {
    const result = await cli(['--config', '/nonexistent/config.yaml', 'backup', 'list', 'site']);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('E_CONFIG_NOT_FOUND');
    expect(result.stderr).toContain('/nonexistent/config.yaml');
  });

  it('invalid YAML → exit 3 with the line', async () => {
    const result = await cli(['--config', await withConfig('environments:\n  site: [unclosed\n'), 'backup', 'list', 'site']);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toMatch(/E_CONFIG_INVALID.*not valid YAML at line \d/);
  });

  it.each([
    ['an unknown field', 'environments:\n  site:\n    services:\n      up: { kind: files, path: /srv, colour: red }\n', /environments\.site\.services\.up: .*colour/],
    ['a relative mount path', 'environments:\n  site:\n    services:\n      up: { kind: files, path: srv/up }\n', /environments\.site\.services\.up\.path: must be an absolute path/],
    ['an unknown service kind', 'environments:\n  site:\n    services:\n      up: { kind: ftp, path: /srv }\n', /environments\.site\.services\.up\.kind/],
    ['a bad environment name', 'environments:\n  "Bad Name!":\n    services:\n      up: { kind: files, path: /srv }\n', /environments\.Bad Name!/],
    ['an undefined store', 'environments:\n  site:\n    store: nowhere\n    services:\n      up: { kind: files, path: /srv }\n', /environments\.site\.store: names store "nowhere"/],
    ['a secret written inline', 'stores:\n  s3:\n    type: s3\n    bucket: backups\n    accessKeyId: AKIA\n    secretAccessKey: { env: X }\n', /stores\.s3\.accessKeyId/],
    ['a part size under 5 MiB', 'stores:\n  s3:\n    type: s3\n    bucket: backups\n    partSize: 1MiB\n    accessKeyId: { env: X }\n    secretAccessKey: { env: X }\n', /stores\.s3\.partSize: must be a size/],
  ])('%s → exit 3 and the field is named', async (_what, text, message) => {
    const result = await cli(['--config', await withConfig(text), 'backup', 'list', 'site']);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('E_CONFIG_INVALID');
    expect(result.stderr).toMatch(message);
  });

  it('an exclude pattern the packer refuses → exit 3 at config load (not at backup time), naming the file, the field and the pattern', async () => {
    const config = await withConfig(`stateDir: ${sandbox.stateDir}\nenvironments:\n  site:\n    services:\n      up: { kind: files, path: /srv, exclude: [cache/, "!keep"] }\n`);
    const result = await cli(['--config', config, 'backup', 'list', 'site']);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain(`error [E_CONFIG_INVALID]: ${config}: invalid config:`);
    expect(result.stderr).toMatch(/environments\.site\.services\.up\.exclude\[1\]: exclude pattern "!keep" is not supported/);
  });

  it('a secret from an unset environment variable → exit 3 naming the variable', async () => {
    const config = await withConfig(
      `stateDir: ${sandbox.stateDir}\ndefaultStore: s3\nstores:\n  s3:\n    type: s3\n    bucket: backups\n    accessKeyId: { env: SA_TEST_UNSET_KEY }\n    secretAccessKey: { env: SA_TEST_UNSET_KEY }\nenvironments:\n  site:\n    services:\n      up: { kind: files, path: /srv }\n`,
    );
    const result = await cli(['--config', config, 'backup', 'list', 'site']);
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('E_SECRET_UNAVAILABLE');
    expect(result.stderr).toContain('SA_TEST_UNSET_KEY');
  });

  it('an unknown environment → exit 4 naming it and the configured ones', async () => {
    const result = await cli(['--config', sandbox.configPath, 'backup', 'list', 'nosuchenv']);
    expect(result.exitCode).toBe(4);
    expect(result.stderr).toContain('E_UNKNOWN_ENV');
    expect(result.stderr).toContain('"nosuchenv"');
    expect(result.stderr).toContain('configured: site');
  });

  it('an unknown backup id → exit 4; a malformed one → exit 2', async () => {
    const unknown = await cli(['--config', sandbox.configPath, 'backup', 'show', 'site', '20200101T000000000Z-aaaaaaaa']);
    expect(unknown.exitCode).toBe(4);
    expect(unknown.stderr).toContain('E_BACKUP_NOT_FOUND');
    expect(unknown.stderr).toContain('20200101T000000000Z-aaaaaaaa');
    const malformed = await cli(['--config', sandbox.configPath, 'backup', 'show', 'site', '../../etc']);
    expect(malformed.exitCode).toBe(2);
    expect(malformed.stderr).toContain('E_INVALID_NAME');
  });

  it('an unknown element → exit 4 naming it, for create, get and restore', async () => {
    const create = await cli(['--config', sandbox.configPath, 'backup', 'create', 'site', '--element', 'nope']);
    expect(create.exitCode).toBe(4);
    expect(create.stderr).toMatch(/E_UNKNOWN_ELEMENT.*"nope".*uploads/);
    const get = await cli(['--config', sandbox.configPath, 'backup', 'get', 'site', backupId, '--element', 'nope', '--to', sandbox.dir]);
    expect(get.exitCode).toBe(4);
    expect(get.stderr).toMatch(/E_UNKNOWN_ELEMENT.*"nope"/);
    const restore = await cli(['--config', sandbox.configPath, 'backup', 'restore', 'site', backupId, '--element', 'nope', '--yes']);
    expect(restore.exitCode).toBe(4);
  });

  it('a destructive command without a TTY and without --yes fails at once (no hang), changing nothing', async () => {
    const restore = await cli(['--config', sandbox.configPath, 'backup', 'restore', 'site', backupId]);
    expect(restore.exitCode).toBe(2);
    expect(restore.stderr).toMatch(/E_CONFIRMATION_REQUIRED.*--yes/);
    const del = await cli(['--config', sandbox.configPath, 'backup', 'delete', 'site', backupId]);
    expect(del.exitCode).toBe(2);
    const list = await cliJson<{ id: string; restorable: boolean }[]>(['--config', sandbox.configPath, 'backup', 'list', 'site']);
    expect(list.map((b) => [b.id, b.restorable])).toEqual([[backupId, true]]);
  });

  it('a closed stdout (`| (exit 0)`) ends the CLI quietly: no stack trace, the exit code is the command\'s own', async () => {
    // The reader is gone before the agent writes: its write fails with EPIPE.
    const piped = (args: string[]) =>
      execa('bash', ['-c', '"$@" | (exit 0); exit "${PIPESTATUS[0]}"', 'bash', process.execPath, MAIN, '--config', sandbox.configPath, '--json', ...args], { reject: false, stdin: 'ignore' });
    const shown = await piped(['backup', 'show', 'site', backupId]);
    expect(shown.stderr).toBe('');
    expect(shown.exitCode).toBe(0);
    const missing = await piped(['backup', 'show', 'site', '20200101T000000000Z-aaaaaaaa']);
    expect(missing.stderr).toMatch(/^error \[E_BACKUP_NOT_FOUND\]: [^\n]+$/);
    expect(missing.exitCode).toBe(4);
  });

  it('usage errors → exit 2; --json errors are JSON on stdout', async () => {
    expect((await cli(['backup', 'frobnicate'])).exitCode).toBe(2);
    expect((await cli(['--config', sandbox.configPath, 'backup', 'create', 'site', '--keep-for', 'forever'])).exitCode).toBe(2);
    const json = await cli(['--json', '--config', sandbox.configPath, 'backup', 'list', 'nosuchenv']);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: 'E_UNKNOWN_ENV' } });
  });
});
