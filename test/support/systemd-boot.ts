import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { sleep, waitFor } from './daemon.ts';

/**
 * A real systemd (PID 1 of private pid, mount, uts and cgroup namespaces) to run units in,
 * on a machine whose own init is not systemd (a container, a CI VM) as well as on one whose
 * is: the host's systemd and its units are never touched.
 *
 * What the boot shares with the host: the network (a unit's listener is on the host's
 * loopback), the kernel, and the root filesystem. So that nothing there changes, /run, /srv
 * and /home are private tmpfs, the directories a unit under test owns (`private`) are bind mounts of
 * directories under `dir`, and only `storage-agent-test.target` — which wants nothing — is
 * started: no getty, no network setup, no tmpfiles. Its cgroups live under one cgroup of its
 * own, removed at stop. Killing PID 1 ends every process of the boot.
 */
export interface SystemdBoot {
  /** PID 1 of the boot, as the host sees it. */
  readonly pid: number;
  /** The boot's cgroup root (cgroup v2) as the host sees it. */
  readonly cgroup: string;
  /** Unit files and drop-ins go here (the boot's /run/systemd/system); then `reload()`. */
  readonly unitDir: string;
  /** A path inside the boot (/srv and /home are the boot's own tmpfs), as the host can open it. */
  hostPath(inside: string): string;
  /** Runs a command inside the boot's namespaces (systemctl, mount…). */
  run(command: string, args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** Starts a long-running command inside the boot; it ends with the boot. */
  spawn(command: string, args: string[]): ResultPromise;
  systemctl(...args: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  reload(): Promise<void>;
  stop(): Promise<void>;
}

const SYSTEMD = '/lib/systemd/systemd';

/** Why systemd cannot be booted here (undefined when it can). */
export function cannotBootSystemd(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  for (const tool of [SYSTEMD, '/usr/bin/unshare', '/usr/bin/nsenter', '/usr/bin/systemctl']) if (!existsSync(tool)) return `${tool} is missing`;
  if (!cgroup2Root()) return 'no cgroup v2 hierarchy';
  return undefined;
}

/** Where cgroup v2 is mounted: the whole tree (unified) or beside the v1 controllers (hybrid). */
function cgroup2Root(): string | undefined {
  for (const root of ['/sys/fs/cgroup/unified', '/sys/fs/cgroup']) if (existsSync(path.join(root, 'cgroup.subtree_control'))) return root;
  return undefined;
}

/**
 * Boots systemd. `private`: directories the unit under test uses on the host (its state,
 * config, cache, the binary's directory), each replaced inside the boot by `dir/<name>`.
 */
export async function bootSystemd(dir: string, privateDirs: Record<string, string>): Promise<SystemdBoot> {
  const cgroup = path.join(cgroup2Root()!, `storage-agent-systemd-${path.basename(dir)}`);
  await mkdir(cgroup);
  const unitDir = path.join(dir, 'units');
  await mkdir(unitDir, { recursive: true });
  await writeFile(path.join(unitDir, 'storage-agent-test.target'), '[Unit]\nDescription=storage-agent test boot\nDefaultDependencies=no\n');
  // Mount points the binds need on the host; removed at stop if this boot made them.
  const created: string[] = [];
  const binds: string[] = [];
  for (const [name, target] of Object.entries(privateDirs)) {
    await mkdir(path.join(dir, name), { recursive: true });
    if (!existsSync(target)) {
      await mkdir(target, { recursive: true });
      created.push(target);
    }
    binds.push(`mount --bind ${quote(path.join(dir, name))} ${quote(target)}`);
  }
  const inner = [
    'set -euo pipefail',
    `exec 3>${quote(path.join(dir, 'pid1.log'))}`,
    'mount -t tmpfs tmpfs /run',
    'mount -t tmpfs tmpfs /srv',
    'mount -t tmpfs tmpfs /home',
    // A cgroup2 mount made inside the cgroup namespace is rooted at the boot's own cgroup.
    'umount -R /sys/fs/cgroup',
    'mount -t cgroup2 cgroup2 /sys/fs/cgroup',
    'mkdir -p /run/systemd/system',
    `mount --bind ${quote(unitDir)} /run/systemd/system`,
    ...binds,
    `exec env -i container=storage-agent-test PATH=/usr/sbin:/usr/bin:/sbin:/bin ${SYSTEMD} --system --unit=storage-agent-test.target --log-target=console --show-status=no >&3 2>&3 </dev/null`,
  ].join('\n');
  // The shell joins the boot's cgroup first: the cgroup namespace unshare makes is rooted where it runs.
  const unshare = execa(
    'bash',
    ['-c', `echo $$ > ${quote(path.join(cgroup, 'cgroup.procs'))} && exec unshare --pid --fork --kill-child --mount --uts --cgroup --propagation private --mount-proc bash -c "$0"`, inner],
    { reject: false, stdin: 'ignore' },
  );
  const pid = await waitFor('systemd to start', async () => {
    if (unshare.exitCode !== null && unshare.exitCode !== undefined) throw new Error(`the boot ended: ${String((await unshare).stderr)}${await readFile(path.join(dir, 'pid1.log'), 'utf8').catch(() => '')}`);
    const child = (await readFile(`/proc/${unshare.pid}/task/${unshare.pid}/children`, 'utf8').catch(() => '')).trim();
    return child && (await readFile(`/proc/${child}/comm`, 'utf8').catch(() => '')).trim() === 'systemd' ? Number(child) : undefined;
  });
  const run = async (command: string, args: string[]) => {
    const result = await execa('nsenter', ['-t', String(pid), '-m', '-p', '-C', '--', command, ...args], { reject: false, stdin: 'ignore' });
    return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
  };
  const systemctl = (...args: string[]) => run('systemctl', ['--no-pager', ...args]);
  await waitFor('systemd to be running', async () => ['running', 'degraded'].includes((await systemctl('is-system-running')).stdout.trim()));
  return {
    pid,
    cgroup,
    unitDir,
    hostPath: (inside) => path.join(`/proc/${pid}/root`, inside),
    run,
    spawn: (command, args) => execa('nsenter', ['-t', String(pid), '-m', '-p', '-C', '--', command, ...args], { reject: false, stdin: 'ignore' }),
    systemctl,
    async reload() {
      const answer = await systemctl('daemon-reload');
      if (answer.exitCode !== 0) throw new Error(`daemon-reload failed: ${answer.stderr}`);
    },
    async stop() {
      unshare.kill('SIGKILL'); // --kill-child: PID 1 goes with it, and every process of the boot with PID 1
      await unshare;
      await waitFor('the boot to end', () => !existsSync(`/proc/${pid}`));
      await removeCgroupTree(cgroup);
      for (const target of created) await rmdir(target).catch(() => {});
    },
  };
}

/** Removes a cgroup and its children, deepest first (a cgroup goes once its processes are gone). */
async function removeCgroupTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.isDirectory()) await removeCgroupTree(path.join(dir, entry.name));
  }
  for (let attempt = 0; attempt < 100; attempt++) {
    try {
      await rmdir(dir);
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      await sleep(20);
    }
  }
}

function quote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}
