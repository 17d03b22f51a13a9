import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm, rmdir, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { childEnv } from '../../child-env.ts';
import { AgentError } from '../../errors.ts';

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
 * Snapshots live in `<mount>/.storage-agent-snapshots/`, on the same filesystem.
 */
export async function snapshotMount(mount: string, signal: AbortSignal): Promise<MountSnapshot | undefined> {
  const [fs, root] = await Promise.all([statfs(mount), stat(mount)]);
  const isBtrfs = fs.type === BTRFS_MAGIC;
  if (!isBtrfs && fs.type !== XFS_MAGIC) return undefined;
  const holder = path.join(mount, SNAPSHOT_DIR);
  await makeSnapshotDir(mount, holder, { mayExist: true });
  const target = path.join(holder, randomBytes(6).toString('hex'));
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

async function run(command: string, args: string[], signal?: AbortSignal): Promise<void> {
  try {
    await execa(command, args, { cancelSignal: signal, stdin: 'ignore', env: childEnv(), extendEnv: false });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new AgentError('E_CAPTURE_FAILED', `${command} ${args[0]} failed: ${stderr || (error as Error).message}`, { cause: error });
  }
}
