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
import { openEnvironmentStore } from './stores.ts';

export interface RecoveredRestore {
  jobId: string | undefined;
  target: string;
  backupId: string;
  /** rolled-forward: every element is the backup's now; discarded: every target is as before. */
  outcome: 'rolled-forward' | 'discarded';
  /** Elements this recovery swapped in (rolled-forward) or whose staged data it removed. */
  elements: string[];
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
      continue;
    }
    try {
      const done = await recoverLogged(config, file, record, signal, log);
      if (done) recovered.push(done);
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
    if (!done) {
      throw new AgentError('E_RESTORE_FAILED', `an interrupted restore of ${target} (backup ${record.backupId}) could not be finished or undone yet (see the log); ${file} stays, and every job on ${target} waits for it: fix the cause (a server down?) and retry`, {
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

async function recoverLogged(config: Config, file: string, record: RestoreRecord, signal: AbortSignal, log: Logger): Promise<RecoveredRestore | undefined> {
  try {
    return await recoverOne(config, RestoreJournal.adopt(config.stateDir, file, record), signal, log);
  } catch (error) {
    log.error({ err: toAgentError(error).message }, `could not finish what an interrupted restore of ${record.target} left; ${file} stays and the next start retries`);
    return undefined;
  }
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
    for (const entry of record.elements) await driverOf(entry).discardStaged(entry.state);
    if (record.safetyBackupId) await removeIncompleteBackup(config, record.target, record.safetyBackupId);
    await journal.finish();
    log.warn({ elements: record.elements.map((e) => e.name) }, 'a restore interrupted while staging: its staged data was removed, every target is as it was');
    return { ...summary, outcome: 'discarded', elements: record.elements.map((e) => e.name) };
  }
  const finished: string[] = [];
  for (const entry of record.elements.filter((e) => !e.committed)) {
    await driverOf(entry).resumeCommit(entry.state, signal);
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
