import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { createCgroup } from './cgroup.ts';
import { stringify } from 'yaml';
import { s3TestServer } from './servers.ts';

const MAIN = path.resolve(import.meta.dirname, '../../src/agent/main.ts');

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The real CLI, as a child process on the same Node (what an SRE runs). */
export function startCli(args: readonly string[], options: { env?: Record<string, string> } = {}): ResultPromise<{ reject: false; stdin: 'ignore' }> {
  return execa(process.execPath, [MAIN, ...args], { reject: false, stdin: 'ignore', env: options.env });
}

export async function cli(args: readonly string[], options: { env?: Record<string, string> } = {}): Promise<CliResult> {
  const result = await startCli(args, options);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** `cli` with --json, parsed; fails the test with stderr when the command failed. */
export async function cliJson<T = unknown>(args: readonly string[]): Promise<T> {
  const result = await cli(['--json', ...args]);
  if (result.exitCode !== 0) throw new Error(`storage-agent ${args.join(' ')} exited ${result.exitCode}: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

export interface Sandbox {
  dir: string;
  configPath: string;
  stateDir: string;
  /** Writes the config; `environments` maps env → service name → files mount path. */
  writeConfig(config: Record<string, unknown>): Promise<string>;
  cleanup(): Promise<void>;
}

export async function createSandbox(): Promise<Sandbox> {
  const dir = await mkdtemp(path.join(tmpdir(), 'sa-cli-'));
  const stateDir = path.join(dir, 'state');
  const configPath = path.join(dir, 'config.yaml');
  return {
    dir,
    configPath,
    stateDir,
    writeConfig: async (config) => {
      // Tests before issue #5 take many manual backups of one environment: unless a test sets
      // its own manualLimit, lift the limit (default 4) so they are not refused E_MANUAL_LIMIT.
      const environments = config.environments as Record<string, Record<string, unknown>> | undefined;
      if (environments && typeof environments === 'object') {
        config = {
          ...config,
          environments: Object.fromEntries(Object.entries(environments).map(([name, env]) => [name, env && typeof env === 'object' && !('manualLimit' in env) ? { manualLimit: 100, ...env } : env])),
        };
      }
      await writeFile(configPath, stringify({ stateDir, ...config }));
      return configPath;
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}

/** An s3 store entry for the test RGW; the keys reach the agent through the environment. */
export function s3StoreConfig(bucket: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const s3 = s3TestServer();
  process.env.TEST_S3_ACCESS_KEY = s3.accessKeyId;
  process.env.TEST_S3_SECRET_KEY = s3.secretAccessKey;
  return {
    type: 's3',
    endpoint: s3.endpoint,
    region: s3.region,
    bucket,
    prefix: 'agent/',
    accessKeyId: { env: 'TEST_S3_ACCESS_KEY' },
    secretAccessKey: { env: 'TEST_S3_SECRET_KEY' },
    partSize: '5MiB',
    ...extra,
  };
}

export function filesEnv(services: Record<string, string | { path: string; exclude?: string[] }>, store?: string): Record<string, unknown> {
  return {
    ...(store ? { store } : {}),
    services: Object.fromEntries(
      Object.entries(services).map(([name, spec]) => [name, typeof spec === 'string' ? { kind: 'files', path: spec } : { kind: 'files', ...spec }]),
    ),
  };
}

/**
 * Starts the CLI with `args`, stopped at `phase` by the STORAGE_AGENT_PAUSE_AT seam
 * (src/phase-hook.ts), and SIGKILLs it there: a crash at exactly that point.
 */
export async function killCliAt(dir: string, args: readonly string[], phase: string): Promise<void> {
  const pauseFile = path.join(dir, `paused-${process.pid}-${Date.now()}`);
  const child = startCli(args, { env: { STORAGE_AGENT_PAUSE_AT: phase, STORAGE_AGENT_PAUSE_FILE: pauseFile } });
  for (let waited = 0; !existsSync(pauseFile); waited += 20) {
    if (child.exitCode !== null || waited > 90_000) {
      child.kill('SIGKILL');
      throw new Error(`storage-agent ${args.join(' ')} never reached ${phase}: ${String((await child).stderr)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  child.kill('SIGKILL');
  await child;
  await rm(pauseFile, { force: true });
}

/**
 * killCliAt, at the `occurrence`-th time (1-based) the CLI reaches `phase`: a phase reached once
 * per database or per element ('restore:mysql:swapped') is let go on at the earlier times.
 */
export async function killCliAtOccurrence(dir: string, args: readonly string[], phase: string, occurrence: number): Promise<void> {
  const pauseFile = path.join(dir, `paused-${process.pid}-${Date.now()}`);
  const child = startCli(args, { env: { STORAGE_AGENT_PAUSE_AT: phase, STORAGE_AGENT_PAUSE_FILE: pauseFile } });
  for (let reached = 0; reached < occurrence; ) {
    for (let waited = 0; !existsSync(pauseFile); waited += 20) {
      if (child.exitCode !== null || waited > 90_000) {
        child.kill('SIGKILL');
        throw new Error(`storage-agent ${args.join(' ')} reached ${phase} ${reached} time(s), not ${occurrence}: ${String((await child).stderr)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    reached++;
    if (reached < occurrence) await rm(pauseFile, { force: true }); // let it go on to the next time
  }
  child.kill('SIGKILL');
  await child;
  await rm(pauseFile, { force: true });
}

/** The pids of `pid`'s live child processes (its zstd, mysql… children). */
export async function childPids(pid: number): Promise<number[]> {
  const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => '');
  return text.trim().split(/\s+/).filter(Boolean).map(Number);
}

/** Whether process `pid` still runs (a zombie does not). */
export async function processRuns(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return stat !== '' && !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

export interface TrackedRun extends CliResult {
  pid: number;
  ms: number;
  /** From its last output (the outcome it printed) to its exit. */
  afterOutputMs: number;
  /** Every child process seen while the CLI ran (sampled every few ms): pid and name. */
  children: { pid: number; name: string }[];
  /** What outlived the CLI: its sampled children still running, and anything left in its cgroup ("pid: command line"). */
  outlived: string[];
}

/**
 * The CLI in a cgroup of its own (cgroup v2: a process and all it starts stay in it, whatever
 * becomes of their parents), its children sampled (childPids) as it runs. Once it has exited,
 * `outlived` names every process it started that still runs: the sampled children (processRuns)
 * and whatever is still in the cgroup — then those are killed. Fails when the CLI has not
 * exited after `timeoutMs` (it is killed then).
 */
export async function cliTracked(args: readonly string[], { timeoutMs, env }: { timeoutMs: number; env?: Record<string, string> }): Promise<TrackedRun> {
  const group = await createCgroup('v2');
  const cgroup = group.path;
  try {
    const started = Date.now();
    // The shell joins the cgroup and execs the CLI: the same pid, nothing it starts escapes.
    const child = group.spawn(process.execPath, [MAIN, ...args], { env });
    const pid = child.pid!;
    let lastOutput = started;
    for (const stream of [child.stdout, child.stderr]) stream?.on('data', () => (lastOutput = Date.now()));
    const children = new Map<number, string>();
    let exited = false;
    const sampling = (async () => {
      while (!exited) {
        for (const childPid of await childPids(pid)) {
          if (!children.has(childPid)) children.set(childPid, (await readFile(`/proc/${childPid}/comm`, 'utf8').catch(() => '?')).trim());
        }
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    })();
    let timer: NodeJS.Timeout | undefined;
    const result = await Promise.race([
      child,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          child.kill('SIGKILL');
          reject(new Error(`storage-agent ${args.join(' ')} still running after ${timeoutMs} ms`));
        }, timeoutMs);
      }),
    ]).finally(() => {
      clearTimeout(timer);
      exited = true;
    });
    const ms = Date.now() - started;
    const afterOutputMs = Date.now() - lastOutput;
    await sampling;
    const describe = async (p: number) => `${p}: ${(await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '')).replaceAll('\0', ' ').trim()}`;
    const left = new Set<number>();
    for (const childPid of children.keys()) if (await processRuns(childPid)) left.add(childPid);
    const procs = (await readFile(path.join(cgroup, 'cgroup.procs'), 'utf8').catch(() => '')).split('\n').filter(Boolean).map(Number);
    for (const p of procs) if (await processRuns(p)) left.add(p);
    const outlived = await Promise.all([...left].map(describe));
    for (const p of left) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    return {
      pid,
      ms,
      afterOutputMs,
      exitCode: result.exitCode ?? -1,
      stdout: String(result.stdout),
      stderr: String(result.stderr),
      children: [...children].map(([p, name]) => ({ pid: p, name })),
      outlived,
    };
  } finally {
    await group.remove();
  }
}
