import { AgentError } from '../errors.ts';
import type { JobRecord } from '../jobs-wire.ts';
import type { Manifest } from '../snapshot/manifest.ts';
import { checkName } from '../snapshot/names.ts';
import { runBackup, type BackupRequest } from '../snapshot/pipeline/backup.ts';
import { openRepository } from '../transport/repository/repository.ts';
import { environmentOf, type Config } from './config.ts';
import type { OperationContext } from './context.ts';
import { createDriver } from './drivers.ts';
import { JobStore } from './jobs/store.ts';
import { loadKeyRing } from './keys.ts';
import { nodeIdOf } from './node-id.ts';
import { ensureOwner } from './ownership.ts';
import { environmentStoreName, openEnvironmentStore } from './stores.ts';
import { AGENT_VERSION, HOST } from './version.ts';

export interface CreateBackupOptions extends BackupRequest {
  /** Element (service) names; all of the environment's when absent. */
  elements?: readonly string[];
}

/**
 * A backup of a configured environment: what the pipeline (snapshot/pipeline/backup.ts) runs
 * with — store, keys, repository, drivers and settings — is built here from the config, once
 * the node is known to own the environment.
 */
export async function createBackup(ctx: OperationContext, options: CreateBackupOptions): Promise<Manifest> {
  const { config, logger } = ctx;
  const { elements, ...request } = options;
  const env = checkName('environment', options.env);
  const services = selectServices(config, env, elements);
  const store = await openEnvironmentStore(config, env);
  // Before any work: a backup that could not be signed could never be restored.
  const keys = await loadKeyRing(config, logger);
  // Only the environment's owner writes its backups (ownership.ts): another node's prune and
  // limits must never act on ours, nor ours on theirs.
  await ensureOwner(config, store, env, logger);

  const environment = environmentOf(config, env);
  // Opened (and made, the first time) before anything is captured: a key problem fails now.
  const repository = environment.repository ? await openRepository(store, env, keys, { create: true, level: config.compression.level }) : undefined;
  return runBackup(ctx, { ...request, env }, {
    store,
    storeName: environmentStoreName(config, env),
    repository,
    keys,
    elements: await Promise.all(services.map(async ([name, service]) => ({ name, driver: await createDriver(name, service, { env, stateDir: config.stateDir }) }))),
    freeze: environment.freeze,
    manualLimit: environment.manualLimit,
    compression: config.compression,
    orphanUploadAge: config.orphanUploadAge,
    stateDir: config.stateDir,
    agent: { version: AGENT_VERSION, host: HOST, nodeId: nodeIdOf(config) },
    previousSizes: () => previousElementSizes(config.stateDir, env),
  });
}

function selectServices(config: Config, env: string, elements: readonly string[] | undefined) {
  const services = Object.entries(environmentOf(config, env).services);
  if (!elements || elements.length === 0) return services;
  return elements.map((name) => {
    const found = services.find(([serviceName]) => serviceName === checkName('element', name));
    if (!found) {
      throw new AgentError('E_UNKNOWN_ELEMENT', `environment ${env} has no service "${name}"; its services: ${services.map(([n]) => n).join(', ')}`, {
        details: { env, element: name },
      });
    }
    return found;
  });
}


/**
 * Each element's raw size in this node's newest successful backup of `env`, from the local job
 * records (no store request): files have no cheap estimate, and last time's size is a good one.
 */
async function previousElementSizes(stateDir: string, env: string): Promise<Map<string, number>> {
  // Newest first, read one by one: the last backup is near the end, and a backup start must not
  // parse the whole job history (up to jobs.history records) to find it.
  const jobs = new JobStore(stateDir);
  let last: JobRecord | undefined;
  for (const id of (await jobs.ids()).reverse()) {
    const record = await jobs.load(id);
    if (record?.kind === 'backup.create' && record.env === env && record.state === 'succeeded') {
      last = record;
      break;
    }
  }
  const elements = (last?.result as Partial<Manifest> | undefined)?.elements;
  return new Map(Array.isArray(elements) ? elements.filter((e) => typeof e?.name === 'string' && Number.isFinite(e.rawBytes)).map((e) => [e.name, e.rawBytes]) : []);
}
