import { checkName } from '../snapshot/names.ts';
import { deleteBackup, listBackups, type BackupSummary } from './catalog.ts';
import { environmentOf } from './config.ts';
import type { OperationContext } from './context.ts';
import { loadKeyRing } from './keys.ts';
import { ensureOwner } from './ownership.ts';
import { selectRetained } from './retention.ts';
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
}

/**
 * Applies retention: scheduled backups the rules do not keep, expired backups of any trigger,
 * and incomplete ones older than `orphanUploadAge` (younger ones may still be running) are
 * deleted, manifest first. Manual and safety backups live until they expire. Backups with an
 * invalid manifest (a MAC that fails included) are left for a human: they are reported, never
 * deleted automatically. Unsigned ones (made before keys) are pruned like any other: prune only
 * deletes, which whoever can write a manifest into the bucket can do anyway.
 */
export async function pruneBackups(ctx: OperationContext, envName: string, dryRun: boolean, now = new Date()): Promise<PruneResult> {
  const env = checkName('environment', envName);
  const settings = environmentOf(ctx.config, env);
  const store = await openEnvironmentStore(ctx.config, env);
  // A dry run only reads; a prune deletes, which only the environment's owner may (ownership.ts).
  if (!dryRun) await ensureOwner(ctx.config, store, env, ctx.logger);
  // A prune refreshes the environment catalog (a dry run only reads).
  const backups = await listBackups(store, env, await loadKeyRing(ctx.config), now, { updateCatalog: !dryRun });
  const scheduled = backups.filter((b) => b.status === 'ok' && b.manifest?.trigger === 'scheduled');
  const decision = selectRetained(
    scheduled.map((b) => ({ id: b.id, createdAt: new Date(b.createdAt) })),
    settings.retention,
    now,
    settings.timeZone,
  );
  const result: PruneResult = { env, dryRun, deleted: [], kept: [] };
  for (const backup of backups) {
    const why = verdict(backup, decision.keep, decision.reasons, now.getTime() - ctx.config.orphanUploadAge);
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
  return result;
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
      if (backup.manifest?.trigger !== 'scheduled') {
        return { delete: false, reason: `${backup.manifest?.trigger} backup${backup.manifest?.keepUntil ? ` until ${backup.manifest.keepUntil}` : ''}` };
      }
      return keep.has(backup.id)
        ? { delete: false, reason: (reasons.get(backup.id) ?? ['newest']).join(', ') }
        : { delete: true, reason: 'not kept by the retention rules' };
  }
}
