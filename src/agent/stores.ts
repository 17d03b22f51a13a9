import { checkName } from '../snapshot/names.ts';
import { effectiveStores, environmentOf, readSecret, type Config } from './config.ts';
import { AgentError } from '../errors.ts';
import { FsObjectStore } from '../transport/stores/fs-store.ts';
import type { ObjectStore } from '../transport/stores/object-store.ts';
import { openRepository, type Repository } from '../transport/repository/repository.ts';
import { UploadJournal } from '../transport/stores/upload-journal.ts';
import type { BackupStorage } from '../snapshot/pipeline/artifacts.ts';
import { loadKeyRing } from './keys.ts';

/** The store of a configured environment (E_UNKNOWN_ENV otherwise). Secrets are read now. */
export async function openEnvironmentStore(config: Config, env: string): Promise<ObjectStore> {
  return openStore(config, environmentStoreName(config, env));
}

/** The name of a configured environment's store (E_UNKNOWN_ENV otherwise). */
export function environmentStoreName(config: Config, env: string): string {
  return environmentOf(config, checkName('environment', env)).store ?? config.defaultStore;
}

export async function openStore(config: Config, name: string): Promise<ObjectStore> {
  const settings = effectiveStores(config)[name];
  if (!settings) throw new AgentError('E_CONFIG_INVALID', `store "${name}" is not defined under stores`);
  if (settings.type === 'fs') return new FsObjectStore(settings.path);
  // The AWS SDK (~35 MiB) loads only for an s3 store.
  const { S3ObjectStore } = await import('../transport/stores/s3-store.ts');
  return new S3ObjectStore({
    name,
    endpoint: settings.endpoint,
    region: settings.region,
    bucket: settings.bucket,
    prefix: settings.prefix,
    forcePathStyle: settings.forcePathStyle,
    accessKeyId: await readSecret(settings.accessKeyId, `stores.${name}.accessKeyId`),
    secretAccessKey: await readSecret(settings.secretAccessKey, `stores.${name}.secretAccessKey`),
    partSize: settings.partSize,
    partsInFlight: settings.partsInFlight,
    maxParts: settings.maxParts,
    maxAttempts: settings.maxAttempts,
    connectTimeout: settings.connectTimeout,
    requestTimeout: settings.requestTimeout,
    journal: new UploadJournal(config.stateDir),
  });
}

/**
 * How a backup of `env` is read: archives from the store, and elements in the environment's
 * repository (issue #13) through it, opened once on first use and never created by a reader.
 */
export function backupStorage(config: Config, store: ObjectStore, env: string): BackupStorage {
  let opened: Promise<Repository> | undefined;
  return {
    store,
    repository: () => (opened ??= loadKeyRing(config).then((keys) => openRepository(store, env, keys, { create: false }))),
  };
}
