import { text } from 'node:stream/consumers';
import { downloadExpiry, downloadsPrefix, manifestKey } from '../snapshot/manifest.ts';
import { checkName } from '../snapshot/names.ts';
import type { ObjectStore } from '../transport/stores/object-store.ts';
import type { CollectResult } from '../transport/repository/garbage.ts';
import { repositoryKeysPrefix } from '../transport/repository/layout.ts';
import { openRepository } from '../transport/repository/repository.ts';
import { deleteBackup, listBackups, type BackupSummary } from '../snapshot/pipeline/catalog.ts';
import { binlogArchive } from './binlog-archive.ts';
import { pitrAnchors, pruneBinlog, type PitrAnchor } from '../snapshot/pipeline/point-in-time.ts';
import { environmentOf, pitrServices } from './config.ts';
import type { OperationContext } from './context.ts';
import { loadKeyRing } from './keys.ts';
import { ensureOwner } from './ownership.ts';
import { selectRetained, type RetentionDecision } from './retention.ts';
import { openEnvironmentStore } from './stores.ts';

export interface PruneEntry {
  id: string;
  createdAt: string;
  trigger: string | null;
  /** Why it is kept, or why it goes. */
  reason: string;
}

export interface PruneResult {
  env: string;
  dryRun: boolean;
  deleted: PruneEntry[];
  kept: PruneEntry[];
  /** What the environment's repository gave back (issue #13); absent when it has none. */
  repository?: CollectResult;
  /** Expired archives written for `backup url` of repository elements, deleted (or to delete). */
  expiredDownloads: number;
  /** Mysql services with pitr: the base backup each window starts from (kept), and the binlog records before it deleted (or to delete). */
  binlog?: { service: string; base: string; deletedRecords: number }[];
}

/**
 * Applies retention: scheduled backups (and the bases taken after restores, once outside every
 * point-in-time window) the rules do not keep, expired backups of any trigger,
 * and incomplete ones older than `orphanUploadAge` (younger ones may still be running) are
 * deleted, manifest first. Manual and safety backups live until they expire. Backups with an
 * invalid manifest (a MAC that fails included) are left for a human: they are reported, never
 * deleted automatically. Unsigned ones (made before keys) are pruned by the same rules, applied
 * to them apart from the signed ones.
 */
export async function pruneBackups(ctx: OperationContext, envName: string, dryRun: boolean, now = new Date()): Promise<PruneResult> {
  const env = checkName('environment', envName);
  const settings = environmentOf(ctx.config, env);
  const store = await openEnvironmentStore(ctx.config, env);
  // A dry run only reads; a prune deletes, which only the environment's owner may (ownership.ts).
  if (!dryRun) await ensureOwner(ctx.config, store, env, ctx.logger);
  // A prune refreshes the environment catalog (a dry run only reads).
  const backups = await listBackups(store, env, await loadKeyRing(ctx.config), now, { updateCatalog: !dryRun });
  // The rules run over signed and unsigned backups apart: unsigned manifests (pre-key history,
  // or forgeries by anyone who can write the bucket) can then never take a period from a signed
  // backup and get it deleted.
  const decision = mergeDecisions(
    [true, false].map((authenticated) =>
      selectRetained(
        backups.filter((b) => b.status === 'ok' && countedByTiers(b) && b.authenticated === authenticated).map((b) => ({ id: b.id, createdAt: new Date(b.createdAt) })),
        settings.retention,
        now,
        settings.timeZone,
      ),
    ),
  );
  // Point-in-time windows keep their base backup whatever the tiers say (docs/pitr.md).
  const streamed = pitrServices(settings).map(({ name, pitr }) => ({ name, windowMs: pitr.window }));
  const anchors = pitrAnchors(backups, streamed, now);
  const result: PruneResult = { env, dryRun, deleted: [], kept: [], expiredDownloads: 0 };
  for (const backup of backups) {
    let why = verdict(backup, decision.keep, decision.reasons, now.getTime() - ctx.config.orphanUploadAge);
    const windowNeeds = why.delete && backup.status === 'ok' ? pitrKeepReason(backup, anchors, streamed, now) : undefined;
    if (windowNeeds) why = { delete: false, reason: windowNeeds };
    const entry = { id: backup.id, createdAt: backup.createdAt, trigger: backup.manifest?.trigger ?? null, reason: why.reason };
    if (why.delete) result.deleted.push(entry);
    else result.kept.push(entry);
  }
  if (!dryRun) {
    for (const entry of result.deleted) {
      ctx.signal.throwIfAborted();
      await deleteBackup(store, env, entry.id);
      ctx.logger.info({ env, backupId: entry.id, phase: 'pruned', reason: entry.reason }, 'backup pruned');
    }
  }
  if (anchors.length > 0) {
    const keys = await loadKeyRing(ctx.config);
    result.binlog = [];
    for (const anchor of anchors) {
      const deletedRecords = await pruneBinlog(binlogArchive(ctx.config, store, env, anchor.service, keys, { writer: false }), anchor, dryRun, ctx.signal);
      result.binlog.push({ service: anchor.service, base: anchor.backupId, deletedRecords });
      if (deletedRecords) ctx.logger.info({ env, service: anchor.service, phase: 'binlog-pruned', deletedRecords, dryRun }, 'binlog before the window pruned');
    }
  }
  // The repository's garbage, and the archives written for URLs of its elements: only where
  // there is a repository (configured, or holding backups listed now), so that an environment
  // without one costs prune no more requests.
  const usesRepository = settings.repository || backups.some((b) => b.manifest?.elements.some((e) => e.repository));
  if (!usesRepository) return result;
  const expired: string[] = [];
  for await (const info of store.list(downloadsPrefix(env))) if ((downloadExpiry(env, info.key)?.getTime() ?? Infinity) <= now.getTime()) expired.push(info.key);
  if (!dryRun && expired.length > 0) await store.delete(expired);
  result.expiredDownloads = expired.length;
  const deleted = new Set(result.deleted.map((e) => e.id));
  const collected = await collectRepository(ctx, store, env, backups.filter((b) => !deleted.has(b.id)), dryRun);
  if (collected) {
    result.repository = collected;
    ctx.logger.info({ env, phase: 'collected', dryRun, ...collected }, dryRun ? 'repository garbage found' : 'repository garbage collected');
  }
  return result;
}

/**
 * The repository's garbage once the pruned backups are gone: whatever no remaining backup
 * references. Every remaining backup counts, restorable or not — an expired one kept by this
 * run, and one whose manifest is left for inspection (its roots read from its text, a
 * superset at worst): nothing a human may still want is collected.
 */
async function collectRepository(ctx: OperationContext, store: ObjectStore, env: string, remaining: BackupSummary[], dryRun: boolean): Promise<CollectResult | undefined> {
  let exists = false;
  for await (const _ of store.list(repositoryKeysPrefix(env))) exists = true;
  if (!exists) return undefined;
  const roots = new Set<string>();
  for (const backup of remaining) {
    for (const element of backup.manifest?.elements ?? []) {
      if (element.repository) roots.add(element.repository.root);
      if (element.repository?.files) roots.add(element.repository.files);
    }
    if (backup.status === 'invalid') {
      const manifest = await text(await store.get(manifestKey(env, backup.id)));
      for (const [, root] of manifest.matchAll(/"(?:root|files)"\s*:\s*"([0-9a-f]{64})"/g)) roots.add(root!);
    }
  }
  const repository = await openRepository(store, env, await loadKeyRing(ctx.config), { create: false });
  return repository.collectGarbage(roots, { dryRun, repackUnused: ctx.config.repackUnused, orphanAgeMs: ctx.config.orphanUploadAge, signal: ctx.signal });
}

function verdict(backup: BackupSummary, keep: Set<string>, reasons: Map<string, string[]>, incompleteBefore: number): { delete: boolean; reason: string } {
  switch (backup.status) {
    case 'expired':
      return { delete: true, reason: `expired ${backup.manifest?.keepUntil}` };
    case 'incomplete':
      return new Date(backup.createdAt).getTime() < incompleteBefore
        ? { delete: true, reason: 'incomplete (no manifest): left by a failed run' }
        : { delete: false, reason: 'incomplete: may still be running' };
    case 'invalid':
      return { delete: false, reason: `invalid manifest, left for inspection: ${backup.problem}` };
    case 'ok':
      if (!countedByTiers(backup)) {
        return { delete: false, reason: `${backup.manifest?.trigger} backup${backup.manifest?.keepUntil ? ` until ${backup.manifest.keepUntil}` : ''}` };
      }
      return keep.has(backup.id)
        ? { delete: false, reason: (reasons.get(backup.id) ?? ['newest']).join(', ') }
        : { delete: true, reason: 'not kept by the retention rules' };
  }
}

/**
 * Why a point-in-time window needs a backup whatever the tiers say, or undefined: it is the base
 * the window starts from, or the base taken after a restore inside a window (no point after
 * the restore replays from an older one).
 */
function pitrKeepReason(backup: BackupSummary, anchors: readonly PitrAnchor[], streamed: readonly { name: string; windowMs: number }[], now: Date): string | undefined {
  const anchor = anchors.find((a) => a.backupId === backup.id);
  if (anchor) return `the base of ${anchor.service}'s point-in-time window`;
  if (backup.manifest?.trigger !== 'restore') return undefined;
  const inside = streamed.find((s) => Date.parse(backup.createdAt) > now.getTime() - s.windowMs);
  return inside && `the base after a restore inside ${inside.name}'s point-in-time window`;
}

/** Scheduled backups, and the base backups taken after restores: the ones the tiers thin out. */
function countedByTiers(backup: BackupSummary): boolean {
  return backup.manifest?.trigger === 'scheduled' || backup.manifest?.trigger === 'restore';
}

/** Two retention decisions over disjoint sets of backups as one. */
function mergeDecisions(decisions: RetentionDecision[]): Pick<RetentionDecision, 'keep' | 'reasons'> {
  return {
    keep: new Set(decisions.flatMap((d) => [...d.keep])),
    reasons: new Map(decisions.flatMap((d) => [...d.reasons])),
  };
}
