import { AgentError, throwIfCancelled } from '../../errors.ts';
import { VERIFY_ALL, type JobRequest, type JobSpec } from '../../jobs-wire.ts';
import type { KeyRing } from '../../snapshot/manifest-mac.ts';
import type { ObjectStore } from '../../transport/stores/object-store.ts';
import { checkBackupId, checkName } from '../../snapshot/names.ts';
import { verifyBackup, verifyBackups } from '../../snapshot/pipeline/artifacts.ts';
import { createBackup } from '../backup.ts';
import { deleteBackup, listBackups, readManifest, type BackupSummary } from '../../snapshot/pipeline/catalog.ts';
import { ensureOwner } from '../ownership.ts';
import { environmentOf, type Config } from '../config.ts';
import { loadKeyRing } from '../keys.ts';
import type { OperationContext } from '../context.ts';
import { parsePoint } from '../../snapshot/pipeline/point-in-time.ts';
import { restoreBackup } from '../restore.ts';
import { pruneBackups } from '../prune.ts';
import { backupStorage, openEnvironmentStore } from '../stores.ts';

/**
 * Checks a request against the node's config before it is queued, so that a bad name, an
 * unknown environment or service fails at once (and over the protocol, as the call's error)
 * instead of as a job that fails later. Returns the request with its names checked.
 */
export function validateRequest(config: Config, request: JobRequest): JobRequest {
  const env = checkName('environment', request.env);
  const services = Object.keys(environmentOf(config, env).services);
  switch (request.kind) {
    case 'backup.create': {
      for (const name of request.elements ?? []) {
        if (!services.includes(checkName('element', name))) {
          throw new AgentError('E_UNKNOWN_ELEMENT', `environment ${env} has no service "${name}"; its services: ${services.join(', ')}`, {
            details: { env, element: name },
          });
        }
      }
      if (request.keepForMs !== undefined && !(Number.isSafeInteger(request.keepForMs) && request.keepForMs > 0)) {
        throw new AgentError('E_USAGE', 'keepFor must be a positive duration');
      }
      return request;
    }
    case 'backup.restore': {
      if (request.id !== undefined) checkBackupId(request.id);
      const point = parsePoint(request); // refuses a malformed point before the job is queued
      if (request.id === undefined && !point) throw new AgentError('E_USAGE', 'a restore names a backup id, or a point in time (--to-time, --to-position, --to-gtid)');
      if (request.target !== undefined) environmentOf(config, checkName('environment', request.target));
      for (const name of request.elements ?? []) checkName('element', name);
      return request;
    }
    case 'backup.delete':
      checkBackupId(request.id);
      return request;
    case 'backup.verify':
      if (request.id !== VERIFY_ALL) checkBackupId(request.id);
      return request;
    case 'backup.prune':
      return request;
  }
}

/** Runs a job's operation; the result is what the CLI prints with --json. */
export async function runOperation(ctx: OperationContext, spec: JobSpec): Promise<unknown> {
  switch (spec.kind) {
    case 'backup.create':
      return createBackup(ctx, {
        env: spec.env,
        live: spec.live,
        elements: spec.elements,
        keepForMs: spec.keepForMs,
        codeRef: spec.codeRef,
        id: spec.backupId,
        trigger: spec.trigger ?? 'manual',
        replaceOldest: spec.replaceOldest,
      });
    case 'backup.restore':
      return restoreBackup(ctx, {
        env: spec.env,
        ...(spec.id ? { id: spec.id } : {}),
        ...(spec.toTime !== undefined || spec.toPosition !== undefined || spec.toGtid !== undefined ? { toPoint: parsePoint(spec) } : {}),
        target: spec.target ?? spec.env,
        elements: spec.elements,
        safetyBackup: spec.safetyBackup !== false,
        allowUnauthenticated: spec.allowUnauthenticated === true,
        ...(spec.fromNode ? { fromNode: spec.fromNode } : {}),
      });
    case 'backup.delete': {
      const store = await openEnvironmentStore(ctx.config, spec.env);
      await ensureOwner(ctx.config, store, spec.env, ctx.logger);
      throwIfCancelled(ctx.signal);
      ctx.onProgress?.({ phase: 'delete' });
      const result = await deleteBackup(store, spec.env, spec.id);
      ctx.logger.info({ phase: 'done', env: spec.env, backupId: spec.id, deletedObjects: result.deletedObjects }, 'backup deleted');
      return { id: spec.id, ...result };
    }
    case 'backup.verify': {
      const store = await openEnvironmentStore(ctx.config, spec.env);
      const keys = await loadKeyRing(ctx.config);
      const options = { readData: spec.readData === true };
      if (spec.id === VERIFY_ALL) return verifyEveryBackup(ctx, store, spec.env, keys, spec.allowUnauthenticated === true, options);
      const manifest = await readManifest(store, spec.env, spec.id, { keys, allowUnauthenticated: spec.allowUnauthenticated === true });
      ctx.onProgress?.({ phase: 'verify' });
      const checks = await verifyBackup(backupStorage(ctx.config, store, spec.env), manifest, ctx.signal, options);
      return { id: spec.id, ok: checks.every((c) => c.ok), elements: checks };
    }
    case 'backup.prune':
      ctx.onProgress?.({ phase: 'delete' });
      return pruneBackups(ctx, spec.env, spec.dryRun === true);
  }
}

/**
 * `backup verify ENV all`: every backup listed, each chunk of the repository read once, so that
 * a damaged chunk names every backup that holds it. A backup whose manifest cannot be trusted
 * (incomplete, invalid, unauthenticated without the flag) fails with what its listing says.
 */
async function verifyEveryBackup(ctx: OperationContext, store: ObjectStore, env: string, keys: KeyRing, allowUnauthenticated: boolean, options: { readData: boolean }) {
  // An incomplete backup (objects, no manifest) is no backup: an orphan for prune, not a failure.
  const listed = (await listBackups(store, env, keys)).filter((b) => b.status !== 'incomplete');
  ctx.onProgress?.({ phase: 'verify' });
  const trusted = listed.filter((b) => b.manifest && b.status !== 'invalid' && (b.authenticated || allowUnauthenticated));
  const checked = new Map((await verifyBackups(backupStorage(ctx.config, store, env), trusted.map((b) => b.manifest!), ctx.signal, options)).map((r) => [r.id, r.elements]));
  const backups = listed.map((b) => {
    const elements = checked.get(b.id);
    if (elements) return { id: b.id, ok: elements.every((c) => c.ok), elements };
    return { id: b.id, ok: false, elements: [], ...untrusted(b) };
  });
  return { id: VERIFY_ALL, ok: backups.every((b) => b.ok), backups };
}

/**
 * Why a listed backup was not checked. An invalid one fails with what its listing found (a
 * wrong MAC, or a manifest that is bad in itself: a signed one that fails its schema is no
 * question of origin). Otherwise it is unsigned and the flag was not given.
 */
function untrusted(b: BackupSummary): { code: 'E_MANIFEST_INVALID' | 'E_MANIFEST_UNAUTHENTICATED'; message: string } {
  if (b.status === 'invalid') return { code: b.problemCode ?? 'E_MANIFEST_INVALID', message: b.problem ?? 'its manifest is invalid' };
  return { code: 'E_MANIFEST_UNAUTHENTICATED', message: 'its manifest carries no MAC: pass --allow-unauthenticated to check it anyway' };
}
