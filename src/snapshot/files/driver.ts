import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { AgentError } from '../../errors.ts';
import type { Capture, CaptureOptions, ServiceDriver, StagedRestore } from '../driver.ts';
import { extractTree } from './extract.ts';
import { packTree } from './pack.ts';
import { AGENT_ENTRY_PREFIX, snapshotMount } from './snapshot.ts';

export interface FilesServiceOptions {
  path: string;
  exclude: readonly string[];
}

/**
 * A file mount: captured as a tar stream, restored by extracting into a staging directory and
 * swapping it in by rename, so a failed restore leaves the mount as it was.
 */
export class FilesDriver implements ServiceDriver {
  readonly kind = 'files';
  readonly format = 'tar';
  readonly #options: FilesServiceOptions;

  constructor(options: FilesServiceOptions) {
    this.#options = options;
  }

  async estimateBytes(): Promise<number | undefined> {
    return undefined; // a walk would cost as much as half the backup: progress shows bytes only
  }

  async capture({ signal, consistent }: CaptureOptions): Promise<Capture> {
    // Consistent: snapshot inside the freeze where the filesystem can, read it after the thaw.
    const snapshot = consistent ? await snapshotMount(this.#options.path, signal) : undefined;
    const root = snapshot?.path ?? this.#options.path;
    const excludes = [...this.#options.exclude, `/${AGENT_ENTRY_PREFIX}*`];
    const { stream, stats } = packTree(root, { excludes, signal });
    const result = stats.then((s) => ({
      warnings: s.warnings,
      facts: {
        files: s.files,
        directories: s.directories,
        symlinks: s.symlinks,
        hardlinks: s.hardlinks,
        contentBytes: s.bytes,
        snapshot: snapshot?.method ?? null,
      },
    }));
    return { stream, result, pointInTime: snapshot !== undefined, release: async () => snapshot?.remove() };
  }

  /** A mount path that does not exist holds nothing to keep. */
  async targetExists(): Promise<boolean> {
    try {
      return (await stat(this.#options.path)).isDirectory();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw error;
    }
  }

  async stage(source: Readable, signal: AbortSignal): Promise<StagedRestore> {
    const target = this.#options.path;
    const existing = await stat(target).catch(() => undefined);
    if (existing && !existing.isDirectory()) {
      throw new AgentError('E_RESTORE_FAILED', `restore target ${target} exists and is not a directory; move it away first`);
    }
    // A mount point cannot be renamed (EBUSY) and a sibling is on another filesystem (EXDEV):
    // there, stage inside the mount and swap its top-level entries instead of the directory.
    const mountPoint = existing ? await isMountPoint(target) : false;
    const tag = randomBytes(6).toString('hex');
    const staging = mountPoint ? path.join(target, `${AGENT_ENTRY_PREFIX}restore-${tag}`) : siblingOf(target, `restore-${tag}`);
    const discard = () => rm(staging, { recursive: true, force: true });
    await mkdir(staging, { mode: 0o700 });
    let stats;
    try {
      stats = await extractTree(source, staging, { signal });
    } catch (error) {
      await discard();
      throw error;
    }
    return {
      facts: { files: stats.files, directories: stats.directories, symlinks: stats.symlinks, hardlinks: stats.hardlinks, contentBytes: stats.bytes },
      commit: async () => {
        try {
          if (mountPoint) await swapContents(target, staging, tag);
          else await swapDirectory(target, staging, existing, tag);
        } finally {
          await discard();
        }
      },
      discard,
    };
  }
}

function siblingOf(target: string, what: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.storage-agent-${what}`);
}

async function isMountPoint(dir: string): Promise<boolean> {
  const [self, parent] = await Promise.all([stat(dir), stat(path.dirname(dir))]);
  return self.dev !== parent.dev || self.ino === parent.ino;
}

/** staging → target by two renames; the old tree is removed only once the new one is in place. */
async function swapDirectory(target: string, staging: string, existing: Awaited<ReturnType<typeof stat>> | undefined, tag: string): Promise<void> {
  if (!existing) {
    // The archive holds the mount's contents, not its root: a new mount gets the usual 0755.
    await chmod(staging, 0o755);
    await rename(staging, target);
    return;
  }
  // The tree's root keeps the mount's own owner and mode; the archive holds only its contents.
  await chmod(staging, Number(existing.mode) & 0o7777);
  await chown(staging, Number(existing.uid), Number(existing.gid));
  const old = siblingOf(target, `old-${tag}`);
  await rename(target, old);
  try {
    await rename(staging, target);
  } catch (error) {
    await rename(old, target);
    throw new AgentError('E_RESTORE_FAILED', `cannot move the restored tree into ${target}: ${(error as Error).message}`, { cause: error });
  }
  await rm(old, { recursive: true, force: true });
}

const LOST_AND_FOUND = 'lost+found';

/** For a mount point: move the old entries aside inside the mount, then the staged ones up. */
async function swapContents(target: string, staging: string, tag: string): Promise<void> {
  const old = path.join(target, `${AGENT_ENTRY_PREFIX}old-${tag}`);
  await mkdir(old, { mode: 0o700 });
  const stagingName = path.basename(staging);
  const oldName = path.basename(old);
  // A filesystem's own lost+found stays where it is: it belongs to fsck, not to the data.
  const current = (await readdir(target)).filter((n) => n !== stagingName && n !== oldName && n !== LOST_AND_FOUND);
  const moved: string[] = [];
  const placed: string[] = [];
  try {
    for (const name of current) {
      await rename(path.join(target, name), path.join(old, name));
      moved.push(name);
    }
    for (const name of (await readdir(staging)).filter((n) => n !== LOST_AND_FOUND)) {
      await rename(path.join(staging, name), path.join(target, name));
      placed.push(name);
    }
  } catch (error) {
    // Put the mount back as it was before failing.
    let restored = true;
    for (const name of placed) await rename(path.join(target, name), path.join(staging, name)).catch(() => (restored = false));
    for (const name of moved) await rename(path.join(old, name), path.join(target, name)).catch(() => (restored = false));
    // Never delete the old tree unless every entry of it is back in place.
    if (restored) await rm(old, { recursive: true, force: true });
    throw new AgentError('E_RESTORE_FAILED', `cannot swap the restored tree into mount ${target}: ${(error as Error).message}`, { cause: error });
  }
  await rm(old, { recursive: true, force: true });
}
