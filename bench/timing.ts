import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';

export interface TimedRun {
  wall: number;
  user: number;
  sys: number;
  /** Peak RSS of the largest single process of the run (GNU time's %M). */
  maxRssKiB: number;
  stdout: string;
  stderr: string;
}

export interface TimedOptions {
  cwd: string;
  /** Where GNU time writes its figures (apart from the command's own stderr). */
  timeFile: string;
  env?: NodeJS.ProcessEnv;
  onSpawn?: (child: ChildProcess) => void;
}

/** Runs argv under GNU `/usr/bin/time -f '%e %U %S %M'`; rejects with its stderr if it fails. */
export function timed(argv: string[], options: TimedOptions): Promise<TimedRun> {
  const { timeFile } = options;
  rmSync(timeFile, { force: true });
  return new Promise((resolve, reject) => {
    const child = spawn('/usr/bin/time', ['-f', '%e %U %S %M', '-o', timeFile, '--', ...argv], {
      cwd: options.cwd,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    options.onSpawn?.(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.once('error', reject);
    child.once('close', (code) => {
      const stderr = Buffer.concat(err).toString();
      const lines = existsSync(timeFile) ? readFileSync(timeFile, 'utf8').trim().split('\n') : [];
      if (code !== 0) {
        reject(new Error(`${argv.join(' ')} exited with ${code}: ${lines.join(' / ')}\n${stderr.slice(-4000)}`));
        return;
      }
      const [wall, user, sys, rss] = (lines.at(-1) ?? '').split(' ').map(Number);
      if ([wall, user, sys, rss].some((n) => n === undefined || !Number.isFinite(n))) {
        reject(new Error(`cannot parse /usr/bin/time output ${JSON.stringify(lines)}`));
        return;
      }
      resolve({ wall: wall!, user: user!, sys: sys!, maxRssKiB: rss!, stdout: Buffer.concat(out).toString(), stderr });
    });
  });
}

/** utime + stime of a process, from /proc (clock ticks are 100 Hz on Linux); 0 when gone. */
export function processCpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

/** The nearest-rank `p`th percentile of `values` (p 99 of 20 values is the largest). */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? Number.NaN;
}

/** The last lines of a report: how loaded the machine was, how long it took, what went wrong. */
export function closingLines(loadAtStart: number[], startedAt: number, problems: readonly string[]): string[] {
  const load = (values: number[]) => values.map((l) => l.toFixed(2)).join(' ');
  const lines = [`Load average at start ${load(loadAtStart)}, at end ${load(loadavg())}; total ${((performance.now() - startedAt) / 60000).toFixed(1)} min.`];
  if (problems.length) lines.push('', 'Problems seen:', ...problems.map((p) => `- ${p}`));
  return lines;
}

/** The value after `name` on the benchmark's command line (`--only fs,tar`), if given. */
export function option(name: string): string | undefined {
  const args = process.argv.slice(2);
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/**
 * How the benchmarks run the agent's CLI: as installed — Node with the flags of the installed
 * entry (the shebang of src/agent/bin.ts, which /usr/bin/storage-agent passes too) — on the
 * sources' main.ts under `root`.
 */
export function agentCommand(root: string): string[] {
  const shebang = readFileSync(path.join(root, 'src/agent/bin.ts'), 'utf8').split('\n', 1)[0]!;
  const prefix = '#!/usr/bin/env -S node';
  const flags = shebang.startsWith(prefix) ? shebang.slice(prefix.length).trim().split(/\s+/).filter(Boolean) : [];
  return [process.execPath, ...flags, path.join(root, 'src/agent/main.ts')];
}

const ROOT = path.resolve(import.meta.dirname, '..');

/** Runs a command to completion in the checkout; throws with the end of its stderr when it fails. */
export function runChecked(command: string, argv: string[], options: { input?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const result = spawnSync(command, argv, { cwd: ROOT, encoding: 'utf8', maxBuffer: 256 << 20, input: options.input, env: options.env ?? process.env });
  if (result.error) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) throw new Error(`${command} ${argv.join(' ')} failed (${result.status ?? result.signal}): ${(result.stderr || result.stdout).trim().slice(-2000)}`);
  return result.stdout;
}

/** An integer setting from the environment (`fallback` when unset), at least `min`. */
export function integerEnv(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) throw new Error(`${name}=${raw}: expected an integer ≥ ${min}`);
  return value;
}

/** Ends the child a benchmark was timing when it is cleaned up: SIGTERM, then 2 s to exit. */
export async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null) return;
  child.kill('SIGTERM');
  await new Promise((resolve) => setTimeout(resolve, 2000));
}

/** On SIGINT and SIGTERM: `cleanup`, then exit as a shell would (130, 143). */
export function cleanUpOnSignals(cleanup: () => Promise<void>, log: (line: string) => void): void {
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    process.once(signal, () => {
      log(`${signal}: cleaning up`);
      void cleanup().finally(() => process.exit(code));
    });
  }
}
