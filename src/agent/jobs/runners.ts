import { AgentError, throwIfCancelled } from '../../errors.ts';
import type { JobRequest, JobSpec } from '../../jobs-wire.ts';
import { checkBackupId, checkName } from '../../snapshot/names.ts';
import { verifyBackup } from '../../snapshot/pipeline/artifacts.ts';
import { createBackup } from '../backup.ts';
import { deleteBackup, readManifest } from '../../snapshot/pipeline/catalog.ts';
import { ensureOwner } from '../ownership.ts';
import { environmentOf, type Config } from '../config.ts';
import { loadKeyRing } from '../keys.ts';
import type { OperationContext } from '../context.ts';
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
      checkBackupId(request.id);
      if (request.target !== undefined) environmentOf(config, checkName('environment', request.target));
      for (const name of request.elements ?? []) checkName('element', name);
      return request;
    }
    case 'backup.delete':
    case 'backup.verify':
      checkBackupId(request.id);
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
        id: spec.id,
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
      const manifest = await readManifest(store, spec.env, spec.id, { keys: await loadKeyRing(ctx.config), allowUnauthenticated: spec.allowUnauthenticated === true });
      ctx.onProgress?.({ phase: 'verify' });
      const checks = await verifyBackup(backupStorage(ctx.config, store, spec.env), manifest, ctx.signal, { readData: spec.readData === true });
      return { id: spec.id, ok: checks.every((c) => c.ok), elements: checks };
    }
    case 'backup.prune':
      ctx.onProgress?.({ phase: 'delete' });
      return pruneBackups(ctx, spec.env, spec.dryRun === true);
  }
}
