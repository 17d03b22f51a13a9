import type { Logger } from 'pino';
import { AgentError, toAgentError } from '../errors.ts';
import { currentProcess } from '../liveness.ts';
import { manifestKey } from '../snapshot/manifest.ts';
import { checkBackupId } from '../snapshot/names.ts';
import { backupObjectKeys } from '../snapshot/pipeline/catalog.ts';
import { RestoreJournal, type ElementEntry, type RestoreRecord } from '../snapshot/pipeline/restore-journal.ts';
import { environmentOf, type Config } from './config.ts';
import { createDriver } from './drivers.ts';
import { environmentLockFile, tryLock } from './jobs/lock.ts';
import { JobStore } from './jobs/store.ts';
import { openEnvironmentStore } from './stores.ts';

export interface RecoveredRestore {
  jobId: string | undefined;
  target: string;
  backupId: string;
  /**
   * rolled-forward: every element is the backup's now; discarded: every target is as before;
   * pending: nothing could be done now (`reason`), the journal stays for the next start or job.
   */
  outcome: 'rolled-forward' | 'discarded' | 'pending';
  /** Elements this recovery swapped in (rolled-forward) or whose staged data it removed; pending: those still to swap in, or to remove. */
  elements: string[];
  /** Pending only: the elements already the backup's (a crash between two swaps), and why recovery waits. */
  swapped?: string[];
  reason?: string;
}

/** In every message of a restore recovery could not act on yet: what a later one corrects. */
const PENDING_MARK = 'recovery could not finish it yet';

/** What recovery did about a restore, as the end of its job's E_INTERRUPTED message. */
export function describeRecovery(restore: RecoveredRestore | undefined): string {
  if (!restore) return 'nothing of the restore was journaled for recovery to act on (it had not begun staging)';
  const retry = `the next agent start, or the next job on ${restore.target} (none runs before), retries`;
  switch (restore.outcome) {
    case 'rolled-forward':
      return `every element had been staged and verified, so recovery finished the restore${restore.elements.length ? ` (swapped in ${restore.elements.join(', ')})` : ''}: the target is entirely the backup's`;
    case 'discarded':
      return `it was still staging, so recovery removed what it had staged (${restore.elements.join(', ') || 'nothing yet'}): the target is unchanged`;
    case 'pending':
      return restore.swapped === undefined
        ? `it was still staging; ${PENDING_MARK} (${restore.reason}): what it staged stays, the target is unchanged; ${retry}`
        : `every element had been staged and verified; ${PENDING_MARK} (${restore.reason}): ${restore.swapped.join(', ') || 'no element'} already the backup's, ${restore.elements.join(', ')} still as before; ${retry}`;
  }
}

/** The journal's restore as still waiting for recovery. */
function pending(record: RestoreRecord, reason: string): RecoveredRestore {
  const summary = { jobId: record.jobId, target: record.target, backupId: record.backupId, outcome: 'pending' as const, reason };
  if (record.phase === 'staging') return { ...summary, elements: record.elements.map((e) => e.name) };
  return { ...summary, elements: record.elements.filter((e) => !e.committed).map((e) => e.name), swapped: record.elements.filter((e) => e.committed).map((e) => e.name) };
}

/**
 * What a restore that died left: a crash while staging → the staged data is removed (the
 * targets were never touched); a crash while committing → the remaining swaps are finished
 * (every element was staged and verified first), so a target is never left part old, part
 * new. Runs at the start of every agent process, under the target environment's lock; what
 * cannot be done now (a server down) stays journaled for the next start.
 */
export async function recoverRestores(config: Config, logger: Logger, signal: AbortSignal): Promise<RecoveredRestore[]> {
  const recovered: RecoveredRestore[] = [];
  for (const { file, record } of await RestoreJournal.leftovers(config.stateDir)) {
    const log = recoveryLogger(logger, record);
    const lock = await tryLock(environmentLockFile(config.stateDir, record.target), {
      ...currentProcess(),
      program: 'cli',
      jobId: record.jobId ?? 'recovery',
      kind: 'restore.recover',
      since: new Date().toISOString(),
    }).catch(() => undefined);
    if (!lock?.held) {
      log.warn('an interrupted restore waits for recovery, but its environment is busy: the next job on it, or the next start, finishes it');
      recovered.push(pending(record, `${record.target} was busy with another job`));
      continue;
    }
    try {
      recovered.push(await recoverLogged(config, file, record, signal, log));
    } finally {
      await lock.release().catch(() => {});
    }
  }
  return recovered;
}

/**
 * The same, for one environment whose lock the caller holds: the job engine runs it before
 * every job on `target`. A restore killed while another process (a daemon) was running would
 * otherwise stay half swapped in until the next start, every job on the target seeing the mix
 * — and a later restore's result undone when that start finally rolled the old one forward.
 * A journal that cannot be finished now (a server down) fails the job: nothing runs on a
 * target that is part old, part new.
 */
export async function recoverRestoresOf(config: Config, target: string, logger: Logger, signal: AbortSignal): Promise<RecoveredRestore[]> {
  const recovered: RecoveredRestore[] = [];
  for (const { file, record } of await RestoreJournal.leftovers(config.stateDir)) {
    if (record.target !== target) continue;
    const done = await recoverLogged(config, file, record, signal, recoveryLogger(logger, record));
    if (done.outcome === 'pending') {
      throw new AgentError('E_RESTORE_FAILED', `an interrupted restore of ${target} (backup ${record.backupId}) could not be finished or undone yet (${done.reason}); ${file} stays, and every job on ${target} waits for it: fix the cause (a server down?) and retry`, {
        details: { env: target, backupId: record.backupId },
      });
    }
    recovered.push(done);
  }
  return recovered;
}

function recoveryLogger(logger: Logger, record: RestoreRecord): Logger {
  return logger.child({ phase: 'recovery', env: record.env, target: record.target, backupId: record.backupId, jobId: record.jobId });
}

async function recoverLogged(config: Config, file: string, record: RestoreRecord, signal: AbortSignal, log: Logger): Promise<RecoveredRestore> {
  let done: RecoveredRestore;
  try {
    done = await recoverOne(config, RestoreJournal.adopt(config.stateDir, file, record), signal, log);
  } catch (error) {
    const reason = toAgentError(error).message;
    log.error({ err: reason }, `could not finish what an interrupted restore of ${record.target} left; ${file} stays and the next start retries`);
    return pending(record, reason);
  }
  await correctInterruptedJob(config, done, log);
  return done;
}

/**
 * A job whose restore an earlier recovery could not finish was failed saying so; once a later
 * one has, its record says what was done in the end, not what was pending.
 */
async function correctInterruptedJob(config: Config, done: RecoveredRestore, log: Logger): Promise<void> {
  if (!done.jobId) return;
  const jobs = new JobStore(config.stateDir);
  const job = await jobs.load(done.jobId).catch(() => undefined);
  if (job?.state !== 'failed' || job.error?.code !== 'E_INTERRUPTED' || !job.error.message.includes(PENDING_MARK)) return;
  const cause = job.error.message.slice(0, job.error.message.indexOf('; ') + 2);
  await jobs.save({ ...job, error: { ...job.error, message: `${cause}${describeRecovery(done)} (by a later recovery, ${new Date().toISOString()})` } });
  log.warn({ jobId: done.jobId }, 'the interrupted job\'s record now says what recovery did in the end');
}


async function recoverOne(config: Config, journal: RestoreJournal, signal: AbortSignal, log: Logger): Promise<RecoveredRestore> {
  const { record } = journal;
  const services = environmentOf(config, record.target).services;
  const driverOf = (entry: ElementEntry) => {
    const service = Object.hasOwn(services, entry.name) ? services[entry.name] : undefined;
    if (service?.kind !== entry.kind) throw new Error(`service ${entry.name} of ${record.target} is no longer a configured ${entry.kind} service`);
    return createDriver(entry.name, service, { env: record.target, stateDir: config.stateDir });
  };
  const summary = { jobId: record.jobId, target: record.target, backupId: record.backupId };
  if (record.phase === 'staging') {
    for (const entry of record.elements) await (await driverOf(entry)).discardStaged(entry.state);
    if (record.safetyBackupId) await removeIncompleteBackup(config, record.target, record.safetyBackupId);
    await journal.finish();
    log.warn({ elements: record.elements.map((e) => e.name) }, 'a restore interrupted while staging: its staged data was removed, every target is as it was');
    return { ...summary, outcome: 'discarded', elements: record.elements.map((e) => e.name) };
  }
  const finished: string[] = [];
  for (const entry of record.elements.filter((e) => !e.committed)) {
    await (await driverOf(entry)).resumeCommit(entry.state, signal);
    entry.committed = true;
    finished.push(entry.name);
    await journal.save();
  }
  await journal.finish();
  log.warn({ finished, elements: record.elements.map((e) => e.name) }, 'a restore interrupted while swapping in was finished: every element is the backup\'s now');
  return { ...summary, outcome: 'rolled-forward', elements: finished };
}

/** A safety backup the crash interrupted has no manifest: its objects are removed. A whole one stays. */
async function removeIncompleteBackup(config: Config, env: string, id: string): Promise<void> {
  const store = await openEnvironmentStore(config, env);
  if (await store.head(manifestKey(env, checkBackupId(id)))) return;
  const keys = await backupObjectKeys(store, env, id);
  if (keys.length > 0) await store.delete(keys);
}
