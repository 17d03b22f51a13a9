import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, rm, rmdir, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { childEnv } from '../../child-env.ts';
import { AgentError } from '../../errors.ts';
import { currentProcess, isAlive } from '../../liveness.ts';

/** Everything the agent creates inside a mount starts with this, and is never backed up. */
export const AGENT_ENTRY_PREFIX = '.storage-agent-';
const SNAPSHOT_DIR = `${AGENT_ENTRY_PREFIX}snapshots`;

const BTRFS_MAGIC = 0x9123683e;
const XFS_MAGIC = 0x58465342;
/** The root directory of every btrfs subvolume has inode 256. */
const BTRFS_SUBVOLUME_INODE = 256;

export interface MountSnapshot {
  /** The frozen copy to read from. */
  path: string;
  method: 'btrfs-subvolume' | 'reflink';
  remove(): Promise<void>;
}

/**
 * A cheap, point-in-time copy of a mount taken inside the freeze, so the pause does not grow
 * with the mount's size: a read-only btrfs subvolume snapshot (constant time), or a reflink
 * copy on XFS/btrfs (shares every data block; costs metadata only). Undefined where the
 * filesystem offers neither: the caller then reads the live tree inside the freeze.
 * Snapshots live in `<mount>/.storage-agent-snapshots/`, on the same filesystem, named after
 * the process that takes them (`<pid>-<start time>-<random>`): one whose owner is gone is a
 * crash's leftover, which removeDeadSnapshots (at every agent start) deletes.
 */
export async function snapshotMount(mount: string, signal: AbortSignal): Promise<MountSnapshot | undefined> {
  const [fs, root] = await Promise.all([statfs(mount), stat(mount)]);
  if (!snapshotType(fs.type)) return undefined;
  const isBtrfs = fs.type === BTRFS_MAGIC;
  const holder = path.join(mount, SNAPSHOT_DIR);
  await makeSnapshotDir(mount, holder, { mayExist: true });
  const { pid, startTime } = currentProcess();
  const target = path.join(holder, `${pid}-${startTime ?? 'unknown'}-${randomBytes(6).toString('hex')}`);
  if (isBtrfs && root.ino === BTRFS_SUBVOLUME_INODE) {
    await run('btrfs', ['subvolume', 'snapshot', '-r', mount, target], signal);
    return { path: target, method: 'btrfs-subvolume', remove: () => removeSnapshot(holder, () => run('btrfs', ['subvolume', 'delete', target])) };
  }
  await makeSnapshotDir(mount, target, { mayExist: false });
  const entries = (await readdir(mount)).filter((name) => !name.startsWith(AGENT_ENTRY_PREFIX)).map((name) => path.join(mount, name));
  const remove = () => removeSnapshot(holder, () => rm(target, { recursive: true, force: true }));
  try {
    if (entries.length > 0) await run('cp', ['-a', '--reflink=always', '--', ...entries, target], signal);
  } catch (error) {
    await remove();
    // No reflink support (an XFS made without reflink=1): fall back to reading live.
    if ((error as AgentError).message.includes('Operation not supported')) return undefined;
    throw error;
  }
  return { path: target, method: 'reflink', remove };
}

/**
 * Whether snapshotMount may snapshot this mount (btrfs, XFS; an XFS without reflink is only found
 * out by trying). Asked before the freeze: where the answer is yes, the commands' module is then
 * loaded, so that the snapshot inside the freeze does not wait for it.
 */
export async function canSnapshot(mount: string): Promise<boolean> {
  const can = snapshotType((await statfs(mount)).type);
  if (can) await loadExeca();
  return can;
}

/** execa, loaded by the first command (~65 ms; the loader keeps it): not by every agent start, whose leftover sweep imports this module. */
const loadExeca = () => import('execa');

const snapshotType = (type: number) => type === BTRFS_MAGIC || type === XFS_MAGIC;

/**
 * A mount the agent may not write to cannot hold its snapshot. Under systemd that is
 * ProtectSystem=strict without the mount in ReadWritePaths=: fail saying so, rather than fall
 * back to reading the whole mount with the writers frozen (a pause that grows with its size).
 */
async function makeSnapshotDir(mount: string, dir: string, options: { mayExist: boolean }): Promise<void> {
  try {
    // Not { recursive: true }: Node's recursive mkdir reports ENOENT where the mount is read-only.
    await mkdir(dir, { mode: 0o700 });
  } catch (error) {
    const errno = (error as NodeJS.ErrnoException).code;
    if (errno === 'EEXIST' && options.mayExist) return;
    if (errno !== 'EROFS' && errno !== 'EACCES' && errno !== 'EPERM') throw error;
    throw new AgentError(
      'E_CAPTURE_FAILED',
      `cannot create ${dir} for the snapshot of ${mount} (${errno}): snapshots of XFS and btrfs mounts are written inside the mount, so the agent needs write access to it; ` +
        `under systemd (ProtectSystem=strict) add the mount to the unit with a drop-in (systemctl edit storage-agent: [Service] ReadWritePaths=-${mount}), or back it up with --live`,
      { cause: error, details: { mount, errno } },
    );
  }
}

async function removeSnapshot(holder: string, removeTarget: () => Promise<unknown>): Promise<void> {
  await removeTarget();
  await rmdir(holder).catch(() => {}); // only when empty: other jobs' snapshots stay
}

/** Filesystem types whose mounts may hold snapshots of the agent: the only ones removeDeadSnapshots looks into. */
const SNAPSHOT_FILESYSTEMS = new Set(['btrfs', 'xfs']);

/**
 * Deletes the snapshots in `<mount>/.storage-agent-snapshots/` of each of `mounts` whose owner is
 * gone (a backup killed between taking its snapshot and releasing it: SIGKILL, OOM, power),
 * and the holder once empty; returns the paths deleted and those that could not be. A snapshot pins every block it shares
 * with the live tree, so one left behind costs the mount's space for good. Names that are not
 * `<pid>-<start time>-…` (an earlier version's, or unknown) are leftovers too: nothing else
 * writes there. Only mounts on btrfs or XFS are looked into, as /proc/self/mountinfo says —
 * a mount of another type cannot hold one, and a hung network mount must not hang every start.
 */
export async function removeDeadSnapshots(mounts: readonly string[]): Promise<{ removed: string[]; failures: { path: string; error: string }[] }> {
  const types = await mountTypes();
  const removed: string[] = [];
  const failures: { path: string; error: string }[] = [];
  for (const mount of new Set(mounts.map((m) => path.resolve(m)))) {
    const type = fsTypeOf(types, mount);
    if (type === undefined || !SNAPSHOT_FILESYSTEMS.has(type)) continue;
    const holder = path.join(mount, SNAPSHOT_DIR);
    let names: string[];
    try {
      names = await readdir(holder);
    } catch {
      continue; // none: the usual case
    }
    for (const name of names) {
      const match = /^(\d+)-(\d+|unknown)-/.exec(name);
      if (match && isAlive({ pid: Number(match[1]), startTime: match[2] === 'unknown' ? null : Number(match[2]) })) continue;
      const target = path.join(holder, name);
      try {
        await removeSnapshotPath(target);
        removed.push(target);
      } catch (error) {
        failures.push({ path: target, error: (error as Error).message });
      }
    }
    await rmdir(holder).catch(() => {}); // only when empty: live jobs' snapshots stay
  }
  return { removed, failures };
}

/** A read-only btrfs subvolume is deleted as one (rm cannot); anything else is a reflink copy. */
async function removeSnapshotPath(target: string): Promise<void> {
  const [info, fs] = await Promise.all([lstat(target), statfs(target)]);
  if (info.isDirectory() && fs.type === BTRFS_MAGIC && info.ino === BTRFS_SUBVOLUME_INODE) await run('btrfs', ['subvolume', 'delete', target]);
  else await rm(target, { recursive: true, force: true });
}

/** Mount point → filesystem type, from /proc/self/mountinfo (never blocks on a hung mount). */
async function mountTypes(): Promise<Map<string, string>> {
  const types = new Map<string, string>();
  const text = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  for (const line of text.split('\n')) {
    const [before, after] = line.split(' - ');
    const mountPoint = before?.split(' ')[4];
    const type = after?.split(' ')[0];
    // Later lines mount over earlier ones at the same point.
    if (mountPoint && type) types.set(mountPoint.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))), type);
  }
  return types;
}

/** The type of the filesystem `dir` is on: that of its longest mount point prefix. */
function fsTypeOf(types: Map<string, string>, dir: string): string | undefined {
  for (let at = dir; ; at = path.dirname(at)) {
    const type = types.get(at);
    if (type !== undefined) return type;
    if (at === path.dirname(at)) return undefined;
  }
}

async function run(command: string, args: string[], signal?: AbortSignal): Promise<void> {
  const { execa } = await loadExeca();
  try {
    await execa(command, args, { cancelSignal: signal, stdin: 'ignore', env: childEnv(), extendEnv: false });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new AgentError('E_CAPTURE_FAILED', `${command} ${args[0]} failed: ${stderr || (error as Error).message}`, { cause: error });
  }
}
