import { mkdir, stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import { AgentError, stateDirWriteError, toAgentError } from '../../errors.ts';
import { FreezeJournal } from '../../snapshot/freeze/journal.ts';
import { thawLeftovers } from '../../snapshot/freeze/recovery.ts';
import type { RedisDriver } from '../../snapshot/redis/driver.ts';
import { RedisRestoreJournal } from '../../snapshot/redis/restore-journal.ts';
import { manifestKey } from '../../snapshot/manifest.ts';
import { backupObjectKeys, readManifest } from '../../snapshot/pipeline/catalog.ts';
import { effectiveStores, type Config, type EnvironmentConfig } from '../config.ts';
import { loadKeyRing } from '../keys.ts';
import { ownsEnvironment } from '../ownership.ts';
import { openEnvironmentStore, openStore } from '../stores.ts';
import { reportOrphanUploadsAborted } from '../../transport/stores/store-telemetry.ts';
import { UploadJournal } from '../../transport/stores/upload-journal.ts';
import { removeDeadTempDirs } from '../../snapshot/private-temp.ts';
import { removeDeadSnapshots } from '../../snapshot/files/snapshot.ts';
import { removeDeadDownloads } from '../../snapshot/pipeline/download-journal.ts';
import { describeRecovery, recoverRestores, type RecoveredRestore } from '../restore-recovery.ts';
import { isAlive } from '../../liveness.ts';
import { removeDeadTempFiles } from '../../state-file.ts';
import { removeStaleLocks } from './lock.ts';
import { JobStore } from './store.ts';
import { isFinished, type JobRecord } from '../../jobs-wire.ts';

export interface RecoveryReport {
  thawed: number;
  interrupted: string[];
  swept: number;
  /** Restores a crash interrupted: finished (rolled forward) or their staged data removed. */
  restores: RecoveredRestore[];
}

/**
 * What an agent does when it starts, before it takes any work, so that a crash (SIGKILL, OOM,
 * power) leaves nothing behind:
 *   1. thaws every cgroup and filesystem a dead agent froze (its freeze journal);
 *   2. promotes a Redis a dead restore left a replica of the agent;
 *   3. finishes or undoes the restores dead processes left (restore-recovery.ts);
 *   4. aborts the multipart uploads journaled by dead processes; with `sweepStores` (the
 *      daemon) also those older than `orphanUploadAge` under each store's prefix;
 *   5. marks the jobs of dead agent processes failed (E_INTERRUPTED), saying what 3 and 4 did,
 *      and removes the objects an interrupted backup had written (no manifest: it was never
 *      Restorable);
 *   6. removes dead processes' temp files (private-temp.ts, half-written state files), the
 *      mount snapshots of their backups (files/snapshot.ts), the partial files of their
 *      `backup get` (download-journal.ts), and their lock files.
 */
export async function recoverAtStart(config: Config, logger: Logger, options: { sweepStores: boolean }): Promise<RecoveryReport> {
  await ensurePrivateStateDir(config.stateDir, logger);
  await loadKeyRing(config, logger); // creates the default key at first start; a bad key file fails here
  const thawed = await thawLeftovers(new FreezeJournal(config.stateDir), logger);
  await undoInterruptedRedisLoads(config, logger);
  const restores = await recoverRestores(config, logger, new AbortController().signal);
  const aborted = await abortOrphanUploads(config, logger, options.sweepStores);
  const interrupted = await failInterruptedJobs(config, logger, restores, aborted);
  await removeDeadTempDirs(config.stateDir);
  await removeDeadTempFiles(config.stateDir);
  await removeLeftoverSnapshots(config, logger);
  await removeDeadDownloads(config.stateDir, logger);
  await removeStaleLocks(config.stateDir);
  const swept = aborted.swept;
  if (thawed > 0 || interrupted.length > 0 || swept > 0 || restores.length > 0) {
    logger.warn({ phase: 'recovery', thawed, interrupted, swept, restores: restores.length }, 'recovered from an earlier run that did not end cleanly');
  }
  return { thawed, interrupted, swept, restores };
}

/**
 * The state directory is private (0700, as the unit's StateDirectoryMode makes it): it holds the
 * job records, the journals, the manifest key and the embedded store's backups. Every agent
 * start creates it so, a CLI run's as much as the daemon's. One that exists keeps its mode (an
 * operator may have reasons), with a warning when group or others may enter it.
 */
async function ensurePrivateStateDir(stateDir: string, logger: Logger): Promise<void> {
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw stateDirWriteError(error, stateDir, stateDir);
  }
  const mode = (await stat(stateDir)).mode & 0o777;
  if ((mode & 0o077) !== 0) {
    const octal = `0${mode.toString(8)}`;
    logger.warn({ stateDir, mode: octal }, `the state directory ${stateDir} is accessible by group or others (mode ${octal}); it holds job records, journals and the embedded store's backups: chmod 700 ${stateDir}`);
  }
}

/**
 * The btrfs/XFS snapshots a killed consistent backup left in its files mounts: every configured
 * files service's mount is looked at (on btrfs or XFS only). One that cannot be deleted now is
 * retried at the next start.
 */
async function removeLeftoverSnapshots(config: Config, logger: Logger): Promise<void> {
  const mounts = Object.values(config.environments).flatMap((env) => Object.values(env.services).flatMap((service) => (service.kind === 'files' ? [service.path] : [])));
  const { removed, failures } = await removeDeadSnapshots(mounts);
  if (removed.length > 0) logger.warn({ phase: 'recovery', snapshots: removed }, 'removed the mount snapshots of backups whose process is gone');
  for (const failure of failures) logger.error({ phase: 'recovery', ...failure }, `could not remove the snapshot ${failure.path} a killed backup left; retried at the next start`);
}

/**
 * A Redis restore the agent did not live to finish left its target a replica of the agent's
 * closed port (read-only, with a one-time masterauth): promote it and set its settings back.
 * What cannot be undone now stays journaled, for the next start.
 */
async function undoInterruptedRedisLoads(config: Config, logger: Logger): Promise<void> {
  const journal = new RedisRestoreJournal(config.stateDir);
  for (const { file, record } of await journal.leftovers()) {
    const log = logger.child({ phase: 'recovery', env: record.env, service: record.service, since: record.since });
    const service = config.environments[record.env]?.services[record.service];
    if (service?.kind !== 'redis') {
      log.error(`an interrupted restore may have left redis service ${record.service} of ${record.env} a replica of ${record.restoreFrom.host}:${record.restoreFrom.port}, and it is no longer configured: run REPLICAOF NO ONE on it; ${file} stays until then`);
      continue;
    }
    try {
      const { createDriver } = await import('../drivers.ts');
      const driver = (await createDriver(record.service, service, { env: record.env, stateDir: config.stateDir })) as RedisDriver;
      const promoted = await driver.undoInterruptedLoad(record);
      await journal.remove(file);
      log.warn({ promoted }, promoted ? 'a restore interrupted by a crash had left Redis a replica of the agent: promoted back to a writable master, settings set back' : 'checked Redis after a restore interrupted by a crash: no longer a replica of the agent');
    } catch (error) {
      log.error({ err: toAgentError(error).message }, 'could not undo what an interrupted restore left on Redis; retried at the next start');
    }
  }
}

async function failInterruptedJobs(config: Config, logger: Logger, restores: readonly RecoveredRestore[], uploads: { failed: boolean }): Promise<string[]> {
  const store = new JobStore(config.stateDir);
  const found: string[] = [];
  // Freezes the thaw above could not release (their entries stay): a job's message must not say "thawed".
  const stillFrozen = new Set((await new FreezeJournal(config.stateDir).entries()).map((e) => e.record.pid));
  for (const record of await store.all()) {
    if (isFinished(record.state) || isAlive(record.owner)) continue;
    found.push(record.id);
    const log = logger.child({ jobId: record.id, kind: record.kind, env: record.env });
    const finished: JobRecord = { ...record, finishedAt: new Date().toISOString(), cancelRequested: undefined, position: undefined, waitingFor: undefined };
    let removed = true;
    if (record.state === 'running' && record.kind === 'backup.create' && record.backupId) {
      const committed = await backupCommitted(config, record, log);
      if (committed) {
        // The manifest was written (the commit point) before the agent died: the backup is good.
        await store.save({ ...finished, state: 'succeeded', result: committed });
        log.warn({ phase: 'recovery', backupId: record.backupId }, 'job found running after a crash had already written its manifest: marked succeeded');
        await store.clearCancelRequest(record.id);
        continue;
      }
      removed = await removePartialBackup(config, record.env, record.backupId, log);
    }
    const error = new AgentError(
      'E_INTERRUPTED',
      record.state === 'running'
        ? `interrupted: the agent process (pid ${record.owner.pid}) ended while this job was running; ${whatRecoveryDid(record, restores, { ...uploads, removed, stillFrozen: stillFrozen.has(record.owner.pid) })}`
        : `interrupted: the agent process (pid ${record.owner.pid}) ended while this job was queued; it never started`,
    );
    await store.save({ ...finished, state: 'failed', error: { code: error.code, message: error.message } });
    await store.clearCancelRequest(record.id);
    log.warn({ phase: 'recovery', state: 'failed', code: error.code, was: record.state }, 'job interrupted by an agent crash: marked failed');
  }
  return found;
}

async function backupCommitted(config: Config, record: JobRecord, logger: Logger): Promise<unknown> {
  try {
    const store = await openEnvironmentStore(config, record.env);
    if (!(await store.head(manifestKey(record.env, record.backupId!)))) return undefined;
    // The manifest this very job wrote, signed: one that does not verify was not committed by it.
    return await readManifest(store, record.env, record.backupId!, { keys: await loadKeyRing(config) });
  } catch (error) {
    logger.warn({ err: toAgentError(error).message }, 'could not check whether an interrupted backup was committed');
    return undefined;
  }
}

/** Whether the objects an interrupted backup wrote are gone. */
async function removePartialBackup(config: Config, env: string, backupId: string, logger: Logger): Promise<boolean> {
  try {
    const store = await openEnvironmentStore(config, env);
    const keys = await backupObjectKeys(store, env, backupId);
    if (keys.length > 0) await store.delete(keys);
    return true;
  } catch (error) {
    // Without a manifest the objects are never Restorable; a later prune removes them.
    logger.warn({ backupId, err: toAgentError(error).message }, 'could not remove the objects of an interrupted backup');
    return false;
  }
}

/** The part of an interrupted job's message that says what recovery did about it. */
function whatRecoveryDid(record: JobRecord, restores: readonly RecoveredRestore[], done: { failed: boolean; removed: boolean; stillFrozen: boolean }): string {
  if (record.kind === 'backup.restore') return describeRecovery(restores.find((r) => r.jobId === record.id));
  if (record.kind === 'backup.create') {
    const later = '(retried at the next start; prune removes objects without a manifest)';
    return [
      done.stillFrozen ? 'what it froze could NOT be thawed yet (THAW FAILED in the log; retried until it succeeds)' : 'anything it froze was thawed',
      done.failed ? 'its incomplete uploads could not be aborted now' : 'its incomplete uploads were aborted',
      done.removed ? 'its objects removed' : 'its objects could not be removed now',
    ].join(', ') + (done.failed || !done.removed ? ` ${later}` : '');
  }
  return 'nothing it did needs undoing';
}

/**
 * Multipart uploads journaled by dead processes of this node are aborted by every start (a
 * request only when there are some); the daemon also sweeps those older than
 * `orphanUploadAge` (a crash before the journal entry) under each environment this node owns —
 * never under the whole prefix: other nodes' uploads there are theirs (issue #11).
 */
async function abortOrphanUploads(config: Config, logger: Logger, byAge: boolean): Promise<{ swept: number; failed: boolean }> {
  const journal = new UploadJournal(config.stateDir);
  const storeOf = (env: EnvironmentConfig) => env.store ?? config.defaultStore;
  const used = new Set([config.defaultStore, ...Object.values(config.environments).map(storeOf)]);
  let swept = 0;
  let failed = false;
  for (const name of used) {
    if (!Object.hasOwn(effectiveStores(config), name)) continue;
    if (!byAge && (await journal.orphans(name, new Set())).length === 0) continue;
    let aborted = 0;
    try {
      const store = await openStore(config, name);
      aborted += await store.sweepIncomplete('', new Date(0)); // the journal's entries only
      if (byAge) {
        const olderThan = new Date(Date.now() - config.orphanUploadAge);
        for (const [env, settings] of Object.entries(config.environments)) {
          if (storeOf(settings) === name && (await ownsEnvironment(config, store, env))) aborted += await store.sweepIncomplete(`${env}/`, olderThan);
        }
      }
    } catch (error) {
      failed = true;
      logger.warn({ store: name, err: toAgentError(error).message }, 'could not abort incomplete uploads at start; the next start retries');
    }
    swept += aborted;
    if (aborted > 0) reportOrphanUploadsAborted({ store: name, count: aborted });
  }
  return { swept, failed };
}
