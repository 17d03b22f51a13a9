import { spawn } from 'node:child_process';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

/**
 * An `fsfreeze` first on PATH that holds `--freeze` back for `delayMs` before it runs the real
 * one, ignoring SIGTERM/SIGINT meanwhile (as the real one does while FIFREEZE runs in the
 * kernel: a kill lands only after the freeze has). It appends its pid to `started` as it begins.
 * Put `binDir` first on the PATH of the agent under test (childEnv passes PATH on).
 */
export async function delayedFsfreeze(dir: string, delayMs: number): Promise<{ binDir: string; started: string }> {
  const real = (await execa('sh', ['-c', 'command -v fsfreeze'])).stdout.trim();
  const binDir = path.join(dir, 'slow-fsfreeze-bin');
  const started = path.join(dir, 'slow-fsfreeze-started');
  await mkdir(binDir, { recursive: true });
  const script = path.join(binDir, 'fsfreeze');
  await writeFile(
    script,
    [
      '#!/bin/sh',
      'if [ "$1" = --freeze ]; then',
      "  trap '' TERM INT HUP",
      `  echo $$ >> '${started}'`,
      `  sleep ${delayMs / 1000}`,
      'fi',
      `exec '${real}' "$@"`,
      '',
    ].join('\n'),
  );
  await chmod(script, 0o755);
  return { binDir, started };
}

/** Pids of `fsfreeze --freeze <mount>` processes (the wrapper's shell included), from /proc. */
export async function fsfreezeFreezing(mount: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const args = (await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (args.some((a) => path.basename(a) === 'fsfreeze') && args.includes('--freeze') && args.includes(mount)) pids.push(Number(name));
  }
  return pids;
}

/**
 * Whether a write to `file` completes within `timeoutMs`. It runs in a child: a write to a
 * frozen filesystem blocks (uninterruptibly) until it is thawed, and must not block the test.
 */
export async function writesWithin(file: string, timeoutMs: number): Promise<boolean> {
  const child = spawn('sh', ['-c', 'echo written > "$1"', 'sh', file], { stdio: 'ignore' });
  const done = new Promise<boolean>((resolve) => child.once('exit', (code) => resolve(code === 0)));
  const timer = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref());
  return Promise.race([done, timer]);
}
