import { checkName } from '../snapshot/names.ts';
import { runRestore, type RestoreRequest, type RestoreSummary } from '../snapshot/pipeline/restore.ts';
import { createBackup } from './backup.ts';
import { environmentOf } from './config.ts';
import type { OperationContext } from './context.ts';
import { createDriver } from './drivers.ts';
import { loadKeyRing } from './keys.ts';
import { nodeIdOf } from './node-id.ts';
import { backupStorage, openEnvironmentStore } from './stores.ts';

export interface RestoreOptions extends Omit<RestoreRequest, 'target'> {
  /** Environment to restore into; `env` itself when absent. Elements map by service name. */
  target?: string;
}

/**
 * A restore of a backup of a configured environment into one (snapshot/pipeline/restore.ts runs
 * it): the source's store and keys, the target's drivers and its safety backup come from the
 * config here.
 */
export async function restoreBackup(ctx: OperationContext, options: RestoreOptions): Promise<RestoreSummary> {
  const { config } = ctx;
  const env = checkName('environment', options.env);
  const target = checkName('environment', options.target ?? env);
  const targetEnv = environmentOf(config, target);
  const store = await openEnvironmentStore(config, env);
  const keys = await loadKeyRing(config);
  return runRestore(ctx, { ...options, env, target }, {
    // Elements in a repository are read from the source environment's, whatever the target.
    storage: backupStorage(config, store, env),
    keys,
    nodeId: nodeIdOf(config),
    stateDir: config.stateDir,
    driverOf: (element) => {
      const service = targetEnv.services[element];
      return service && createDriver(element, service, { env: target, stateDir: config.stateDir });
    },
    safetyBackup: (elements, id) => createBackup(ctx, { env: target, id, elements, trigger: 'safety', keepForMs: targetEnv.safetyKeepFor }),
  });
}
