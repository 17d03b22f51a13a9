import { binlogArchive } from './binlog-archive.ts';
import { toAgentError } from '../errors.ts';
import { checkName } from '../snapshot/names.ts';
import { runRestore, type RestoreRequest, type RestoreSummary } from '../snapshot/pipeline/restore.ts';
import { createBackup } from './backup.ts';
import { environmentOf, pitrServices } from './config.ts';
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
  const streamed = pitrServices(environmentOf(config, env)).map((s) => s.name);
  const store = await openEnvironmentStore(config, env);
  const keys = await loadKeyRing(config);
  const targetStreamed = pitrServices(targetEnv).map((s) => s.name);
  // When the restore's writes may begin: after the safety backup, which only reads the target.
  let writesFrom = new Date().toISOString();
  const summary = await runRestore(ctx, { ...options, env, target }, {
    // Elements in a repository are read from the source environment's, whatever the target.
    storage: backupStorage(config, store, env),
    keys,
    nodeId: nodeIdOf(config),
    // The binlog is the source environment's, like the backups.
    binlogOf: (element) => (streamed.includes(element) ? binlogArchive(config, store, env, element, keys, { writer: false }) : undefined),
    streamedElements: () => streamed,
    stateDir: config.stateDir,
    driverOf: async (element) => {
      const service = targetEnv.services[element];
      return service && createDriver(element, service, { env: target, stateDir: config.stateDir });
    },
    safetyBackup: async (elements, id) => {
      const safety = await createBackup(ctx, { env: target, id, elements, trigger: 'safety', keepForMs: targetEnv.safetyKeepFor });
      writesFrom = new Date().toISOString();
      return safety;
    },
  });
  // The restore's own writes (staging loads, the swap) are in the target's binlog now, and a
  // replay cannot cross them: points after the restore start from a base taken right after it.
  const elements = summary.elements.map((e) => e.name).filter((name) => targetStreamed.includes(name));
  if (elements.length === 0) return summary;
  try {
    const base = await createBackup(ctx, { env: target, elements, trigger: 'restore', restoredAt: writesFrom });
    return { ...summary, baseBackup: { id: base.id, elements } };
  } catch (error) {
    const failure = toAgentError(error);
    ctx.logger.warn({ env: target, code: failure.code, err: failure.message }, 'the base backup after the restore failed: points after the restore are not restorable until the next backup');
    return { ...summary, baseBackup: { id: null, elements, error: `${failure.code}: ${failure.message}` } };
  }
}
