import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';

/** The daemon and its client (--remote) read what they are given the same way. */
let sandbox: Sandbox;
let tokens: Tokens;
let daemon: RunningDaemon;
/** A token file as an operator writes one: a comment, a blank line, the token. */
let commentedFile: string;
const commentedToken = `adm-${randomBytes(18).toString('base64url')}`;

const config = (services: Record<string, { path: string; exclude?: string[] }>) => ({
  daemon: {
    ...daemonSection(tokens),
    tokens: [
      { file: commentedFile, role: 'admin' },
      { file: tokens.viewerFile, role: 'viewer' },
    ],
  },
  environments: { site: filesEnv(services) },
});

beforeAll(async () => {
  sandbox = await createSandbox();
  tokens = await writeTokens(sandbox);
  commentedFile = path.join(sandbox.dir, 'commented.token');
  await writeFile(commentedFile, `# admin token of this node, rotated 2026-11\n\n${commentedToken}\n`, { mode: 0o600 });
  const files = path.join(sandbox.dir, 'files');
  await mkdir(files);
  await writeFile(path.join(files, 'file.txt'), 'data');
  await sandbox.writeConfig(config({ uploads: { path: files } }));
  daemon = await startDaemon(sandbox.configPath);
});
afterAll(async () => {
  await daemon?.stop();
  await sandbox.cleanup();
});

const remote = (tokenFile: string, ...args: string[]) => cli(['--remote', daemon.url, '--token-file', tokenFile, '--json', ...args]);

describe('--token-file reads the format of the daemon\'s token files', () => {
  it('a # comment and a blank line before the token: the daemon accepts the file, and so does the client', async () => {
    const status = await remote(commentedFile, 'status');
    expect(status.stderr).toBe('');
    expect(status.exitCode).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ agent: { program: 'daemon' } });
    const created = await remote(commentedFile, 'backup', 'create', 'site');
    expect(created.exitCode, created.stderr).toBe(0);
  });

  it('a file with comments only → exit 3, E_SECRET_UNAVAILABLE naming the file', async () => {
    const empty = path.join(sandbox.dir, 'empty.token');
    await writeFile(empty, '# nothing here yet\n\n', { mode: 0o600 });
    const result = await remote(empty, 'status');
    expect(result.exitCode).toBe(3);
    expect(JSON.parse(result.stdout)).toMatchObject({ error: { code: 'E_SECRET_UNAVAILABLE' } });
    expect(result.stderr).toContain(`--token-file: ${empty} holds no token`);
  });

  it('an environment named after an Object.prototype key is unknown to the daemon too (exit 4)', async () => {
    for (const args of [['backup', 'list', 'constructor'], ['backup', 'create', 'constructor'], ['backup', 'prune', 'constructor']]) {
      const result = await remote(commentedFile, ...args);
      expect(result.exitCode, `${args.join(' ')}: ${result.stderr}`).toBe(4);
      expect(result.stderr).toContain('error [E_UNKNOWN_ENV]: unknown environment "constructor"; configured: site');
    }
  });
});

describe('SIGHUP with an exclude pattern the packer refuses', () => {
  it('is rejected at reload, naming the config file and the pattern; the running config stays', async () => {
    await sandbox.writeConfig(config({ uploads: { path: path.join(sandbox.dir, 'files'), exclude: ['cache/', '!keep'] } }));
    daemon.child.kill('SIGHUP');
    const rejected = await daemon.waitForLog('the rejection', (l) => l.msg.includes('the new config is rejected'));
    expect(rejected).toMatchObject({ level: 50, code: 'E_CONFIG_INVALID' });
    expect(rejected.err).toContain(`${sandbox.configPath}: invalid config`);
    expect(rejected.err).toMatch(/environments\.site\.services\.uploads\.exclude\[1\]: exclude pattern "!keep"/);
    // Still up with the old config: a backup of the environment runs (and would not, with the pattern).
    const created = await remote(commentedFile, 'backup', 'create', 'site');
    expect(created.exitCode, created.stderr).toBe(0);
  });
});
