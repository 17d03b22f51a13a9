import path from 'node:path';
import { AgentError, throwIfCancelled, toAgentError } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { newBackupId } from '../backup-id.ts';
import type { BinlogArchive } from '../binlog/archive.ts';
import { gatherBinlog, type ReplayStop } from '../binlog/gather.ts';
import type { BinlogReplayPlan, ServiceDriver, StagedRestore } from '../driver.ts';
import type { Manifest } from '../manifest.ts';
import type { KeyRing } from '../manifest-mac.ts';
import { consumeElement, findElement, type BackupStorage } from './artifacts.ts';
import { readManifest } from './catalog.ts';
import type { RunContext } from './context.ts';
import { checkBase, chooseBase } from './point-in-time.ts';
import { RestoreJournal } from './restore-journal.ts';

/** What to restore: a backup of `env` (its name checked), into `target`, and how. */
export interface RestoreRequest {
  env: string;
  /** The backup; with `toPoint` it may be left out: the newest base before that point. */
  id?: string;
  /**
   * Point-in-time restore (docs/pitr.md): the mysql elements whose service streams its binlog,
   * restored from a base backup and replayed to this point. Only those elements are restored.
   */
  toPoint?: ReplayStop;
  /** Environment to restore into (its name checked). Elements map by service name. */
  target: string;
  elements?: readonly string[];
  /** Back up the target's restored elements first (default true; `--no-safety-backup`). */
  safetyBackup?: boolean;
  /** Accept a manifest without a MAC (made before keys existed); an invalid MAC is always refused. */
  allowUnauthenticated?: boolean;
  /** The node that made the backup, when not this one: the explicit choice to bring its data here. */
  fromNode?: string;
}

/**
 * What a restore runs with, built by the caller from the config (agent/restore.ts): the
 * pipeline opens, reads and decides nothing of the config itself.
 */
export interface RestoreSetup {
  /** Where the backup is read from: `env`'s store and repository, whatever the target. */
  storage: BackupStorage;
  /** The keys the manifest must verify under. */
  keys: KeyRing;
  /** This node's id: a backup another node made is restored only when the request names it (fromNode). */
  nodeId: string;
  /** The state directory: the restore journal's. */
  stateDir: string;
  /** The driver of the target's service named so; undefined when the target has none. */
  driverOf(element: string): Promise<ServiceDriver | undefined>;
  /** The stored binlog of `env`'s service named so, when it streams one (pitr:); undefined otherwise. */
  binlogOf(element: string): BinlogArchive | undefined;
  /** The names of `env`'s services with a binlog stream (pitr:). */
  streamedElements(): string[];
  /** The pre-restore safety backup of those of the target's elements under that id (an ordinary backup, trigger 'safety'). */
  safetyBackup(elements: string[], id: string): Promise<Manifest>;
}

export interface SafetyBackupSummary {
  /** The safety backup's id, or null when none was taken (nothing to keep, or skipped). */
  id: string | null;
  keepUntil: string | null;
  elements: string[];
  /** Elements left out because their target does not exist yet (nothing to keep). */
  skipped: string[];
}

export interface RestoreSummary {
  env: string;
  id: string;
  target: string;
  elements: { name: string; facts: StagedRestore['facts'] }[];
  /** Absent when the restore was run with --no-safety-backup. */
  safetyBackup?: SafetyBackupSummary;
  /**
   * Databases with pitr: restored: the base backup taken right after, since the binlog from
   * before the restore cannot be replayed across it (docs/pitr.md). Its id, or why it failed.
   */
  baseBackup?: { id: string | null; elements: string[]; error?: string };
}

/**
 * Another node's backup (same env name on two hosts, or an environment moved here) is restored
 * only when the caller names that node: a listing merged from two nodes must never bring the
 * other's data in by mistake. Manifests from before node ids carry none, and pass.
 */
function checkMadeHere(nodeId: string, manifest: Manifest, target: string, fromNode: string | undefined): void {
  const madeBy = manifest.agent.nodeId;
  if (madeBy === undefined || madeBy === nodeId || madeBy === fromNode) return;
  throw new AgentError(
    'E_FOREIGN_BACKUP',
    `backup ${manifest.env}/${manifest.id} was made by node ${madeBy} (host ${manifest.agent.host}), not this node (${nodeId}); restoring it brings that node's data into ${target}: if that is what you want, pass --from-node ${madeBy}`,
    { details: { env: manifest.env, id: manifest.id, madeBy, nodeId } },
  );
}

/**
 * Restores in two phases: every element is downloaded, verified and staged beside its target
 * first; only when all are staged are they swapped in. A failure or cancel before the swap
 * leaves every target exactly as it was.
 */
export async function runRestore(ctx: RunContext, options: RestoreRequest, setup: RestoreSetup): Promise<RestoreSummary> {
  const { logger, signal } = ctx;
  const { env, target } = options;
  const { storage } = setup;
  const { manifest, selected } = await chooseBackup(options, setup);
  checkMadeHere(setup.nodeId, manifest, target, options.fromNode);
  const plan = await Promise.all(selected.map(async (element) => {
    const driver = await setup.driverOf(element.name);
    if (!driver) {
      throw new AgentError('E_UNKNOWN_ELEMENT', `target environment ${target} has no service "${element.name}" to restore element ${element.name} into`, {
        details: { env: target, element: element.name },
      });
    }
    if (driver.kind !== element.kind) {
      throw new AgentError('E_RESTORE_FAILED', `element ${element.name} is a ${element.kind} backup but service ${element.name} of ${target} is ${driver.kind}`);
    }
    return { element, driver };
  }));
  const log = logger.child({ env, backupId: manifest.id, target });
  log.info({ phase: 'start', elements: plan.map((p) => p.element.name) }, 'restore started');

  // Journaled before anything is written (restore-journal.ts): a crash during the safety
  // backup or while staging leaves every target as it was (and the safety backup's partial
  // objects are removed); one while committing is rolled forward by the next start.
  const safetyBackupId = options.safetyBackup === false ? undefined : newBackupId();
  const journal = await RestoreJournal.begin(setup.stateDir, { jobId: ctx.jobId, env, target, backupId: manifest.id, safetyBackupId });
  let safety: SafetyBackupSummary | undefined;
  try {
    if (safetyBackupId) safety = await takeSafetyBackup(ctx, setup, target, plan, safetyBackupId);
  } catch (error) {
    await journal.finish().catch(() => {});
    throw error;
  }
  const staged: { name: string; restore: StagedRestore }[] = [];
  try {
    for (const { element, driver } of plan) {
      throwIfCancelled(signal);
      ctx.onProgress?.({ phase: 'stage', element: element.name, totalBytes: element.rawBytes });
      // Point in time: the binlog is gathered (read, authenticated, written under the staging
      // dir) while the dump loads, which mysqld bounds; a gather that fails stops the load.
      const gatherFailed = new AbortController();
      const loadFailed = new AbortController();
      const staging = AbortSignal.any([signal, gatherFailed.signal]);
      const replay =
        options.toPoint &&
        gatherReplay(setup, manifest, element, options.toPoint, journal.stagingDir, AbortSignal.any([signal, loadFailed.signal])).then(async (gathered) => {
          log.info({ phase: 'binlog', element: element.name, files: gathered.files.length, from: gathered.start }, 'binlog gathered for the replay');
          await reachedPhase(`restore:binlog-gathered:${element.name}`);
          return gathered;
        });
      replay?.catch((error: unknown) => gatherFailed.abort(error));
      let restore: StagedRestore;
      try {
        restore = await consumeElement(
          storage,
          manifest,
          element,
          staging,
          (source) =>
            driver.stage(source, staging, {
              rawBytes: element.rawBytes,
              facts: element.facts,
              stagingDir: journal.stagingDir,
              journal: journal.stagingOf(element.name, element.kind),
              ...(replay && { replay }),
            }),
          { onBytes: (bytes) => ctx.onProgress?.({ phase: 'stage', element: element.name, bytes, totalBytes: element.rawBytes }) },
        );
      } catch (error) {
        loadFailed.abort(error);
        // The load stopped for the gather's failure: that is the error (E_BINLOG_CHAIN…), not the cancel it caused.
        throw gatherFailed.signal.aborted && !signal.aborted ? gatherFailed.signal.reason : error;
      } finally {
        await replay?.catch(() => {}); // never left writing into the staging dir
      }
      staged.push({ name: element.name, restore });
      log.info({ phase: 'staged', element: element.name }, 'element staged');
      if (typeof restore.facts.warning === 'string') log.warn({ phase: 'staged', element: element.name, warning: restore.facts.warning }, `element ${element.name}: ${restore.facts.warning}`);
      await reachedPhase(`restore:staged:${element.name}`);
    }
    throwIfCancelled(signal);
    journal.record.phase = 'committing';
    await journal.save();
  } catch (error) {
    const discarded = await Promise.allSettled(staged.map((s) => s.restore.discard()));
    // What could not be removed now stays journaled: the next start removes it.
    if (discarded.every((d) => d.status === 'fulfilled')) await journal.finish().catch(() => {});
    const failure = toAgentError(error, 'E_RESTORE_FAILED');
    log.error({ phase: 'failed', code: failure.code, err: failure.message }, 'restore failed before any change to the target');
    throw failure;
  }
  await reachedPhase('restore:committing');
  // Past this point the swap runs to the end: a cancel now would leave elements half swapped.
  for (const [index, { name, restore }] of staged.entries()) {
    ctx.onProgress?.({ phase: 'commit', element: name });
    try {
      await restore.commit();
    } catch (error) {
      const done = staged.slice(0, index).map((s) => s.name);
      const left = staged.slice(index).map((s) => s.name);
      throw new AgentError(
        'E_RESTORE_FAILED',
        // The driver's message says what state this element's target was left in.
        `could not swap in element ${name}: ${toAgentError(error).message}; ${done.length ? `already restored: ${done.join(', ')}; ` : ''}` +
          `the restore stays journaled and the next start of the agent (any storage-agent command, or the daemon) finishes swapping in ${left.join(', ')}`,
        { cause: error },
      );
    }
    journal.record.elements.find((e) => e.name === name)!.committed = true;
    await journal.save();
    await reachedPhase(`restore:committed:${name}`);
  }
  await journal.finish();
  log.info({ phase: 'done' }, 'restore completed');
  return {
    env,
    id: manifest.id,
    target,
    elements: staged.map((s) => ({ name: s.name, facts: s.restore.facts })),
    ...(safety ? { safetyBackup: safety } : {}),
  };
}

/**
 * The backup and elements a restore reads: the named ones; for a point-in-time restore, the
 * mysql elements with a binlog stream (all of them, or those named), from the named backup or
 * else the newest that can start a replay to the point.
 */
async function chooseBackup(options: RestoreRequest, setup: RestoreSetup): Promise<{ manifest: Manifest; selected: Manifest['elements'] }> {
  const { env, toPoint } = options;
  const access = { keys: setup.keys, allowUnauthenticated: options.allowUnauthenticated };
  if (!toPoint) {
    if (!options.id) throw new AgentError('E_USAGE', 'a restore names a backup id (or a point in time: --to-time, --to-position)');
    const manifest = await readManifest(setup.storage.store, env, options.id, access);
    return { manifest, selected: options.elements?.length ? options.elements.map((name) => findElement(manifest, name)) : manifest.elements };
  }
  const named = options.id ? await readManifest(setup.storage.store, env, options.id, access) : undefined;
  const streamed = options.elements?.length ? [...options.elements] : [];
  if (streamed.length === 0) {
    // Which elements stream is the config's: the services with pitr: (that the named backup has).
    for (const name of named ? named.elements.map((e) => e.name) : setup.streamedElements()) if (setup.binlogOf(name)) streamed.push(name);
  }
  const unstreamed = streamed.filter((name) => !setup.binlogOf(name));
  if (streamed.length === 0 || unstreamed.length) {
    throw new AgentError(
      'E_USAGE',
      `a point-in-time restore replays the binlog of mysql services with pitr: in ${env}'s config; ${unstreamed.length ? `${unstreamed.join(', ')} has none` : 'none has it'}: restore a backup as it is (by its id, without --to-time/--to-position)`,
    );
  }
  const manifest = named ?? (await chooseBase(setup.storage.store, env, setup.keys, toPoint, streamed));
  const selected = streamed.map((name) => findElement(manifest, name));
  for (const element of selected) checkBase(manifest, element, toPoint);
  return { manifest, selected };
}

/** A mysql element's binlog from its base position to the point, verified, under the restore's staging directory. */
async function gatherReplay(setup: RestoreSetup, manifest: Manifest, element: Manifest['elements'][number], stop: ReplayStop, stagingDir: string, signal: AbortSignal): Promise<BinlogReplayPlan> {
  const archive = setup.binlogOf(element.name)!;
  const gathered = await gatherBinlog(archive, checkBase(manifest, element, stop), stop, path.join(stagingDir, `binlog-${element.name}`), signal);
  return { files: gathered.files, start: gathered.start, stop };
}

/**
 * The pre-restore safety backup (SPEC §7): an ordinary backup of the target's elements about to
 * be overwritten, trigger 'safety', expiring after the target's `safetyKeepFor`, not counted
 * against manualLimit. An element whose target holds nothing yet (a mount path or a database
 * that does not exist) has nothing to keep and is left out; when none is left, no backup is
 * taken. A failed safety backup fails the restore before anything is touched.
 */
async function takeSafetyBackup(
  ctx: RunContext,
  setup: RestoreSetup,
  target: string,
  plan: { element: { name: string }; driver: { targetExists(signal: AbortSignal): Promise<boolean> } }[],
  id: string,
): Promise<SafetyBackupSummary> {
  const elements: string[] = [];
  const skipped: string[] = [];
  for (const { element, driver } of plan) {
    throwIfCancelled(ctx.signal);
    if (await driver.targetExists(ctx.signal)) elements.push(element.name);
    else skipped.push(element.name);
  }
  const log = ctx.logger.child({ env: target });
  if (elements.length === 0) {
    log.info({ phase: 'safety', skipped }, 'no safety backup: the target holds nothing yet');
    return { id: null, keepUntil: null, elements, skipped };
  }
  log.info({ phase: 'safety', elements, skipped }, 'taking the pre-restore safety backup');
  let manifest;
  try {
    manifest = await setup.safetyBackup(elements, id);
  } catch (error) {
    const failure = toAgentError(error, 'E_RESTORE_FAILED');
    if (failure.code === 'E_CANCELLED') throw failure;
    throw new AgentError(
      'E_RESTORE_FAILED',
      `the pre-restore safety backup of ${target} failed (${failure.code}), so nothing was restored: ${failure.message} (--no-safety-backup restores without one)`,
      { cause: error, details: { ...failure.details, env: target, safetyBackupError: failure.code } },
    );
  }
  return { id: manifest.id, keepUntil: manifest.keepUntil, elements, skipped };
}
