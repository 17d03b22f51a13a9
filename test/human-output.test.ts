import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox, filesEnv, startCli, type Sandbox } from './support/cli.ts';

const MAIN = path.resolve(import.meta.dirname, '../src/agent/main.ts');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The CLI on a real terminal: script(1) gives it a pseudo-terminal, as an SRE's shell would. */
async function onTerminal(args: readonly string[]): Promise<{ exitCode: number; output: string }> {
  const command = [process.execPath, MAIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const result = await execa('script', ['-qefc', command, '/dev/null'], { reject: false, stdin: 'ignore' });
  return { exitCode: result.exitCode ?? -1, output: String(result.stdout) };
}

describe('what a person reads (issue #12 §4)', () => {
  let sandbox: Sandbox;
  const args = (...rest: string[]) => ['--config', sandbox.configPath, ...rest];

  beforeAll(async () => {
    sandbox = await createSandbox();
    const mount = path.join(sandbox.dir, 'mount');
    await mkdir(mount);
    await writeFile(path.join(mount, 'a.txt'), 'a');
    const big = path.join(sandbox.dir, 'big');
    await mkdir(big);
    for (let i = 0; i < 6; i++) await writeFile(path.join(big, `blob-${i}.bin`), randomBytes(32 * 1024 * 1024));
    await sandbox.writeConfig({
      environments: {
        site: filesEnv({ uploads: mount }),
        empty: filesEnv({ uploads: mount }),
        gone: filesEnv({ uploads: path.join(sandbox.dir, 'not-mounted') }),
        big: filesEnv({ uploads: big }),
      },
    });
  });
  afterAll(() => sandbox.cleanup());

  it('on a terminal: human lines only, no JSON log lines (even for a failure); --log-level brings them back', async () => {
    const failed = await onTerminal(args('backup', 'create', 'gone', '--live'));
    expect(failed.exitCode).toBe(7);
    expect(failed.output).toContain('error [E_CAPTURE_FAILED]');
    expect(failed.output).not.toMatch(/^\s*\{"level"/m);
    const logged = await onTerminal(args('--log-level', 'info', 'backup', 'create', 'gone', '--live'));
    expect(logged.output).toMatch(/\{"level":\d+/);
    // Not a terminal (journald, a script): JSON log lines, as before.
    expect((await cli(args('backup', 'create', 'gone', '--live'))).stderr).toMatch(/^\{"level":50/m);
  });

  it('a missing mount says so (no raw ENOENT of statfs), in both modes', async () => {
    for (const mode of [[], ['--live']]) {
      const result = await cli(args('backup', 'create', 'gone', ...mode));
      expect(result.exitCode).toBe(7);
      expect(result.stderr).toContain(`files path ${path.join(sandbox.dir, 'not-mounted')} does not exist: mount it, or fix the service's path in the config`);
      expect(result.stderr).not.toContain('statfs');
    }
  });

  it('create says mode, pause, duration and rate; list of nothing says so; verify shows sizes as list does; no pid twice in a log line', async () => {
    const created = await cli(args('--log-level', 'info', 'backup', 'create', 'site'));
    expect(created.exitCode, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^backup \S+ of site created \(consistent, no write pause\) in \d+\.\d s, [\d.]+ \S+\/s: uploads /);
    for (const line of created.stderr.split('\n').filter((l) => l.startsWith('{'))) expect(line.match(/"pid":/g)?.length ?? 0).toBeLessThanOrEqual(1);
    const succeeded = created.stderr.split('\n').find((l) => l.includes('"job succeeded"'));
    expect(JSON.parse(succeeded!)).toMatchObject({ durationMs: expect.any(Number), bytes: expect.any(Number), bytesPerSecond: expect.any(Number) });
    expect((await cli(args('backup', 'list', 'empty'))).stdout).toBe("no backups of empty yet: 'backup create empty' makes one");
    const [backup] = await cliJson<{ id: string }[]>(args('backup', 'list', 'site'));
    const verified = await cli(args('backup', 'verify', 'site', backup!.id));
    expect(verified.stdout).toMatch(/^uploads\s+ok\s+[\d.]+ (B|KiB|MiB)$/m);
  });

  it('messages read right: confirmation, a bad backup id', async () => {
    const [backup] = await cliJson<{ id: string }[]>(args('backup', 'list', 'site'));
    const unconfirmed = await cli(args('backup', 'delete', 'site', backup!.id));
    expect(unconfirmed.stderr).toContain(`confirmation needed (deleting backup ${backup!.id} of site cannot be undone), and there is no terminal to ask on: pass --yes`);
    const badId = await cli(args('backup', 'show', 'site', 'nope'));
    expect(badId.stderr).toContain('ids look like 20261122T034600123Z-k3j9x2ab');
    expect(/-([a-z0-9]+) \(see/.exec(badId.stderr)?.[1]).toHaveLength(backup!.id.split('-')[1]!.length);
  });

  it('Ctrl-C (SIGINT) mid-backup: exit 130, "cancelled", nothing committed', async () => {
    // Held just before its commit (the phase seam), interrupted there, then let go.
    const pauseFile = path.join(sandbox.dir, 'paused-sigint');
    const running = startCli(args('backup', 'create', 'big', '--live'), { env: { STORAGE_AGENT_PAUSE_AT: 'backup:stored', STORAGE_AGENT_PAUSE_FILE: pauseFile } });
    while (!existsSync(pauseFile)) await sleep(20);
    running.kill('SIGINT');
    await sleep(200);
    await rm(pauseFile);
    const result = await running;
    expect(result.exitCode, String(result.stderr)).toBe(130);
    expect(String(result.stderr)).toContain('cancelled (Ctrl-C)');
    expect(await cliJson<Manifest[]>(args('backup', 'list', 'big'))).toEqual([]);
  });
});
