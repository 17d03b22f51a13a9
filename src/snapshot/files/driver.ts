import { randomBytes } from 'node:crypto';
import { chmod, chown, lstat, mkdir, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { z } from 'zod';
import { AgentError } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { requireFreeSpace } from '../free-space.ts';
import { handOver, type Capture, type CaptureOptions, type PreparedCapture, type ServiceDriver, type StagedRestore, type StagedState, type StageOptions } from '../driver.ts';
import { extractTree } from './extract.ts';
import { packTree } from './pack.ts';
import { AGENT_ENTRY_PREFIX, canSnapshot, snapshotMount, type MountSnapshot } from './snapshot.ts';

export interface FilesServiceOptions {
  path: string;
  exclude: readonly string[];
  /** Restore setuid/setgid bits as archived (default: cleared, with a warning in the facts). */
  keepSetuid?: boolean;
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

  async capture(options: CaptureOptions): Promise<Capture> {
    await this.#checkMountPath();
    return this.#capture(options);
  }

  /**
   * Before the freeze: the mount's checks and, where it cannot be snapshotted (its tree is
   * then read inside the freeze), the pack worker started and waiting, so that the pause
   * holds the walk only, not a thread's start (issue #14 §4).
   */
  async prepare(options: CaptureOptions): Promise<PreparedCapture> {
    await this.#checkMountPath();
    if (await canSnapshot(this.#options.path)) return handOver((signal) => this.#capture({ ...options, signal }), () => {});
    const pack = this.#pack(this.#options.path, { ...options, held: true });
    // A cancel before the capture destroys it with nobody reading yet: not a crash of the process.
    pack.stream.on('error', () => {});
    return handOver(
      async () => {
        pack.begin();
        return this.#captureOf(pack, undefined, options);
      },
      () => {
        pack.stream.destroy();
      },
    );
  }

  async #capture(options: CaptureOptions): Promise<Capture> {
    // Consistent: snapshot inside the freeze where the filesystem can, read it after the thaw.
    const snapshot = options.consistent ? await snapshotMount(this.#options.path, options.signal) : undefined;
    return this.#captureOf(this.#pack(snapshot?.path ?? this.#options.path, options), snapshot, options);
  }

  #pack(root: string, { signal, segments, held }: CaptureOptions & { held?: boolean }): ReturnType<typeof packTree> {
    const excludes = [...this.#options.exclude, `/${AGENT_ENTRY_PREFIX}*`];
    return packTree(root, { excludes, signal, held, ...(segments ? { parent: segments.parent } : {}) });
  }

  #captureOf({ stream, stats }: ReturnType<typeof packTree>, snapshot: MountSnapshot | undefined, { segments }: CaptureOptions): Capture {
    const result = stats.then((s) => ({
      warnings: s.warnings,
      facts: {
        files: s.files,
        directories: s.directories,
        symlinks: s.symlinks,
        hardlinks: s.hardlinks,
        contentBytes: s.bytes,
        allocatedBytes: s.allocatedBytes,
        ...(segments ? { unchangedFiles: s.unchanged } : {}),
        snapshot: snapshot?.method ?? null,
      },
    }));
    return { stream, result, pointInTime: snapshot !== undefined, release: async () => snapshot?.remove() };
  }

  /** The path to back up is a directory: otherwise the error says which and what to do, not a raw errno of statfs or a walk. */
  async #checkMountPath(): Promise<void> {
    const where = this.#options.path;
    const info = await stat(where).catch((error: NodeJS.ErrnoException) => error);
    if (info instanceof Error) {
      const why = info.code === 'ENOENT' ? 'does not exist' : info.code === 'EACCES' ? 'cannot be read (permission denied)' : `cannot be read (${info.code ?? info.message})`;
      throw new AgentError('E_CAPTURE_FAILED', `files path ${where} ${why}: mount it, or fix the service's path in the config`, { details: { path: where, errno: info.code } });
    }
    if (!info.isDirectory()) throw new AgentError('E_CAPTURE_FAILED', `files path ${where} is not a directory: a files service backs up a directory tree`, { details: { path: where } });
  }

  /** A mount path that does not exist holds nothing to keep. */
  async targetExists(): Promise<boolean> {
    try {
      return (await stat(this.#options.path)).isDirectory();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return false;
      throw new AgentError(
        'E_RESTORE_FAILED',
        code === 'ENOTDIR'
          ? `restore target ${this.#options.path}: one of its parents is not a directory; fix the path in the config or move that file away`
          : `cannot look at restore target ${this.#options.path}: ${(error as Error).message}`,
        { cause: error },
      );
    }
  }

  async stage(source: Readable, signal: AbortSignal, options: StageOptions = {}): Promise<StagedRestore> {
    const target = this.#options.path;
    const existing = await stat(target).catch(() => undefined);
    if (existing && !existing.isDirectory()) {
      throw new AgentError('E_RESTORE_FAILED', `restore target ${target} exists and is not a directory; move it away first`);
    }
    // A mount point cannot be renamed (EBUSY) and a sibling is on another filesystem (EXDEV):
    // there, stage inside the mount and swap its top-level entries instead of the directory.
    const mountPoint = existing ? await isMountPoint(target) : false;
    const tag = randomBytes(6).toString('hex');
    const state: SwapState = {
      target,
      mode: mountPoint ? 'mount' : 'directory',
      staging: mountPoint ? path.join(target, `${AGENT_ENTRY_PREFIX}restore-${tag}`) : siblingOf(target, `restore-${tag}`),
      old: mountPoint ? path.join(target, `${AGENT_ENTRY_PREFIX}old-${tag}`) : siblingOf(target, `old-${tag}`),
      // A new mount's missing parents are created (and removed again if the restore fails).
      createdFrom: existing ? null : await firstMissing(path.dirname(target)),
      staged: [],
    };
    await options.journal?.(state);
    try {
      if (state.createdFrom) await mkdir(path.dirname(target), { recursive: true, mode: 0o755 });
      await requireFreeSpace(mountPoint ? target : path.dirname(target), diskBytes(options), `the restore of ${target}`);
      await mkdir(state.staging, { mode: 0o700 });
      const stats = await extractTree(source, state.staging, { signal, keepSetuid: this.#options.keepSetuid ?? false });
      if (mountPoint) {
        // What the commit moves up: it tells a moved-up new entry from an old one of the same name.
        state.staged = (await readdir(state.staging)).filter((n) => n !== LOST_AND_FOUND);
        await options.journal?.(state);
      }
      return {
        facts: {
          files: stats.files,
          directories: stats.directories,
          symlinks: stats.symlinks,
          hardlinks: stats.hardlinks,
          contentBytes: stats.bytes,
          ...(stats.setuidCleared && {
            setuidCleared: stats.setuidCleared.files,
            warning:
              `cleared the setuid/setgid bits of ${stats.setuidCleared.files} files (${stats.setuidCleared.paths.join(', ')}${stats.setuidCleared.files > stats.setuidCleared.paths.length ? ', …' : ''}); ` +
              'set keepSetuid: true on the service to restore them as archived',
          }),
        },
        commit: () => commitSwap(state),
        discard: () => discardSwap(state),
      };
    } catch (error) {
      source.destroy();
      await discardSwap(state);
      throw error;
    }
  }

  async resumeCommit(state: StagedState): Promise<void> {
    await commitSwap(this.#checkState(state));
  }

  async discardStaged(state: StagedState): Promise<void> {
    await discardSwap(this.#checkState(state));
  }

  /** A journaled state names paths this driver will rename and remove: only its own. */
  #checkState(state: StagedState): SwapState {
    const parsed = swapStateSchema.safeParse(state);
    const target = this.#options.path;
    const ours = (p: string) => p.startsWith(`${path.dirname(target)}/.${path.basename(target)}.storage-agent-`) || p.startsWith(`${target}/${AGENT_ENTRY_PREFIX}`);
    if (!parsed.success || parsed.data.target !== target || !ours(parsed.data.staging) || !ours(parsed.data.old)) {
      throw new AgentError('E_RESTORE_FAILED', `the journaled restore of ${target} does not name this mount's own staging paths; left alone`);
    }
    return parsed.data;
  }
}

/**
 * What the restored tree takes on disk: the files' allocated size the backup recorded (sparse
 * files come back sparse) plus a block per entry, or else the archive's raw size. A forged
 * figure only weakens this check: the archive can never write more than its rawBytes.
 */
function diskBytes({ rawBytes, facts }: StageOptions): number | undefined {
  const allocated = facts?.allocatedBytes;
  if (typeof allocated !== 'number' || !Number.isSafeInteger(allocated) || allocated < 0) return rawBytes;
  const entries = [facts?.files, facts?.directories, facts?.symlinks].reduce<number>((sum, n) => sum + (typeof n === 'number' && n > 0 ? n : 0), 0);
  const estimate = allocated + entries * 4096;
  return rawBytes === undefined ? estimate : Math.min(rawBytes, estimate);
}

const swapStateSchema = z.object({
  target: z.string(),
  mode: z.enum(['directory', 'mount']),
  staging: z.string(),
  old: z.string(),
  createdFrom: z.string().nullable(),
  staged: z.array(z.string().refine((n) => n !== '' && !n.includes('/') && n !== '.' && n !== '..')),
});
/** A files restore as journaled: where it stages and keeps the old tree, and what it staged. */
type SwapState = z.infer<typeof swapStateSchema>;

function siblingOf(target: string, what: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.storage-agent-${what}`);
}

async function isMountPoint(dir: string): Promise<boolean> {
  const [self, parent] = await Promise.all([stat(dir), stat(path.dirname(dir))]);
  return self.dev !== parent.dev || self.ino === parent.ino;
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

/** The outermost ancestor of `dir` (itself included) that does not exist, or null. */
async function firstMissing(dir: string): Promise<string | null> {
  let missing: string | null = null;
  for (let current = dir; !(await exists(current)); current = path.dirname(current)) missing = current;
  return missing;
}

/**
 * Swaps the staged tree in. Every step is checked against what is on disk, so the same call
 * finishes a swap that a crash interrupted at any point (journaled by the restore): the old
 * tree is removed only once the new one is in place.
 */
async function commitSwap(state: SwapState): Promise<void> {
  if (state.mode === 'mount') await swapContents(state);
  else await swapDirectory(state);
  await rm(state.old, { recursive: true, force: true });
}

async function discardSwap(state: SwapState): Promise<void> {
  await rm(state.staging, { recursive: true, force: true });
  if (state.createdFrom === null) return;
  // The parents this restore created, deepest first, as long as nothing else was put there.
  for (let dir = path.dirname(state.target); dir.startsWith(state.createdFrom); dir = path.dirname(dir)) {
    if (!(await rmdir(dir).then(() => true, () => false))) break;
    if (dir === state.createdFrom) break;
  }
}

/** staging → target by two renames (target → old first when there is one). */
async function swapDirectory({ target, staging, old }: SwapState): Promise<void> {
  if (!(await exists(staging))) {
    if (await exists(target)) return; // swapped in before a crash: only the old tree is left to remove
    throw new AgentError('E_RESTORE_FAILED', `the staged tree ${staging} of ${target} is gone; restore again`);
  }
  // The tree's root keeps the mount's own owner and mode (the archive holds only its
  // contents); a new mount gets the usual 0755.
  const original = (await stat(target).catch(() => undefined)) ?? (await stat(old).catch(() => undefined));
  if (original) {
    await chmod(staging, Number(original.mode) & 0o7777);
    await chown(staging, Number(original.uid), Number(original.gid));
  } else {
    await chmod(staging, 0o755);
  }
  if (await exists(target)) {
    await rename(target, old);
    await reachedPhase('restore:files:old-moved');
  }
  try {
    await rename(staging, target);
  } catch (error) {
    if (original && !(await exists(target))) await rename(old, target).catch(() => {});
    throw new AgentError('E_RESTORE_FAILED', `cannot move the restored tree into ${target}: ${(error as Error).message}`, { cause: error });
  }
}

const LOST_AND_FOUND = 'lost+found';

/**
 * For a mount point: move the old entries aside inside the mount, then the staged ones up. An
 * entry of the target whose name was staged and is no longer in staging is a new one moved up
 * before a crash; any other is old.
 */
async function swapContents({ target, staging, old, staged }: SwapState): Promise<void> {
  if (!(await exists(staging))) return; // every staged entry was moved up before a crash
  await mkdir(old, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'EEXIST') throw error;
  });
  const ours = new Set([path.basename(staging), path.basename(old), LOST_AND_FOUND]);
  try {
    for (const name of await readdir(target)) {
      if (ours.has(name)) continue;
      if (staged.includes(name) && !(await exists(path.join(staging, name)))) continue;
      await rename(path.join(target, name), path.join(old, name));
    }
    await reachedPhase('restore:files:old-moved');
    // A filesystem's own lost+found stays where it is: it belongs to fsck, not to the data.
    for (const name of (await readdir(staging)).filter((n) => n !== LOST_AND_FOUND)) {
      await rename(path.join(staging, name), path.join(target, name));
    }
  } catch (error) {
    throw new AgentError('E_RESTORE_FAILED', `cannot swap the restored tree into mount ${target}: ${(error as Error).message}; the next agent start finishes the swap (nothing is lost: old entries wait in ${old})`, {
      cause: error,
    });
  }
  await rm(staging, { recursive: true, force: true });
}
