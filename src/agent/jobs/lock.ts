import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stateDirWriteError } from '../../errors.ts';
import { isAlive, type ProcessIdentity } from '../../liveness.ts';

/** What a lock file says about its holder (shown to whoever waits for it). */
export interface LockHolder extends ProcessIdentity {
  program: 'daemon' | 'cli';
  jobId: string;
  kind: string;
  since: string;
}

export type LockAttempt = { held: true; release: () => Promise<void> } | { held: false; holder: LockHolder | undefined };

/** A guard left by a stealer that died mid-steal is ignored after this long. */
const STEAL_GUARD_STALE_MS = 10_000;

/**
 * An exclusive lock shared by every agent process on the node (the daemon and SREs' CLI runs):
 * a file created atomically with its holder's identity in it (written to a temp file, then
 * hard-linked into place, so the lock file is never seen empty). The kernel does not release it
 * when the holder dies; instead a lock whose holder is gone (pid dead, or reused by a process
 * with another start time) is stale and may be taken over. Taking over is serialised by a
 * guard file, so two waiters never both remove a stale lock and then each other's new one.
 */
export async function tryLock(file: string, holder: LockHolder): Promise<LockAttempt> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  for (let attempt = 0; attempt < 3; attempt++) {
    const temp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      // Inside the try: a write that fails (a full state directory) must not leave its temp file.
      await writeFile(temp, JSON.stringify(holder), { mode: 0o600 });
      await link(temp, file);
      return { held: true, release: () => releaseLock(file, holder) };
    } catch (error) {
      // Locks live in <stateDir>/locks/.
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw stateDirWriteError(error, path.dirname(path.dirname(file)), file);
    } finally {
      await rm(temp, { force: true });
    }
    const current = await readHolder(file);
    if (current === null) continue; // released meanwhile: try again
    if (current !== undefined && isAlive(current)) return { held: false, holder: current };
    if (!(await takeOverStale(file))) return { held: false, holder: current };
  }
  return { held: false, holder: (await readHolder(file)) ?? undefined };
}

/** Holder of a lock file; null when there is none, undefined when it cannot be read. */
export async function readHolder(file: string): Promise<LockHolder | null | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? null : undefined;
  }
  try {
    const value = JSON.parse(text) as LockHolder;
    return typeof value.pid === 'number' && typeof value.jobId === 'string' ? value : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Removes the lock files whose holders are gone (a crash left them): a start leaves no stale
 * lock in the state directory, though the next taker would take one over anyway. A live
 * holder's lock and an unreadable one stay.
 */
export async function removeStaleLocks(stateDir: string): Promise<number> {
  const dir = path.join(stateDir, 'locks');
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return 0;
  }
  let removed = 0;
  for (const name of names.filter((n) => n.endsWith('.lock'))) {
    const holder = await readHolder(path.join(dir, name));
    if (holder && !isAlive(holder) && (await takeOverStale(path.join(dir, name)))) removed++;
  }
  return removed;
}

async function takeOverStale(file: string): Promise<boolean> {
  const guard = `${file}.steal`;
  let handle;
  try {
    handle = await open(guard, 'wx', 0o600);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    const age = await stat(guard).then((s) => Date.now() - s.mtimeMs, () => 0);
    if (age > STEAL_GUARD_STALE_MS) await rm(guard, { force: true });
    return false;
  }
  try {
    await handle.close();
    // Under the guard nobody else removes the lock, and its live holder cannot have been
    // replaced by a fresh one while the file exists: re-read and remove only the stale one.
    const current = await readHolder(file);
    if (current === null) return true;
    if (current !== undefined && isAlive(current)) return false;
    await unlink(file).catch(() => {});
    return true;
  } finally {
    await rm(guard, { force: true });
  }
}

async function releaseLock(file: string, holder: LockHolder): Promise<void> {
  const current = await readHolder(file);
  if (current && current.pid === holder.pid && current.jobId === holder.jobId) await unlink(file).catch(() => {});
}

export function environmentLockFile(stateDir: string, env: string): string {
  return path.join(stateDir, 'locks', `env-${env}.lock`);
}

export function slotLockFile(stateDir: string, slot: number): string {
  return path.join(stateDir, 'locks', `slot-${slot}.lock`);
}

/**
 * One of the node's `concurrency` job slots (shared by every agent process), or who holds them.
 */
export async function tryLockSlot(stateDir: string, concurrency: number, holder: LockHolder): Promise<LockAttempt & { holders?: LockHolder[] }> {
  const holders: LockHolder[] = [];
  for (let slot = 0; slot < concurrency; slot++) {
    const attempt = await tryLock(slotLockFile(stateDir, slot), holder);
    if (attempt.held) return attempt;
    if (attempt.holder) holders.push(attempt.holder);
  }
  return { held: false, holder: holders[0], holders };
}
