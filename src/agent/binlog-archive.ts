import { AgentError, isAgentError } from '../errors.ts';
import { BinlogArchive } from '../snapshot/binlog/archive.ts';
import type { KeyRing } from '../snapshot/manifest-mac.ts';
import { openRepositoryKeys } from '../transport/repository/repository-keys.ts';
import type { ObjectStore } from '../transport/stores/object-store.ts';
import { environmentOf, type Config } from './config.ts';

/**
 * The stored binlog of one mysql service of `env` (docs/pitr.md). Where the environment keeps a
 * repository, the writer (the daemon's stream) seals new segments with its binlog key; sealed
 * ones are opened whatever the config says now.
 *
 * Only a backup creates a repository's key, never the stream: two creators racing would each
 * seal with a master of their own, and one of them would be lost with what it sealed. Until the
 * first backup of the environment, the stream's appends fail with E_REPOSITORY_KEY and it
 * retries from the same byte (its backoff); the binlog before a first base is of no use to a
 * restore anyway.
 */
export function binlogArchive(config: Config, store: ObjectStore, env: string, service: string, keys: KeyRing, options: { writer: boolean }): BinlogArchive {
  let key: Promise<Buffer> | undefined;
  const openKey = () =>
    openRepositoryKeys(store, env, keys, { create: false }).then(
      (opened) => opened.binlog,
      (error: unknown) => {
        key = undefined; // a store that failed once is asked again next time
        if (!options.writer || !isAgentError(error, 'E_REPOSITORY_KEY')) throw error;
        throw new AgentError('E_REPOSITORY_KEY', `${error.message}; the binlog of ${service} is sealed with that key, which only a backup creates: it is stored from the first backup of ${env} on ('backup create ${env}')`, { cause: error, details: { env, service } });
      },
    );
  return new BinlogArchive(store, env, service, keys, {
    sealNew: options.writer && environmentOf(config, env).repository,
    key: () => (key ??= openKey()),
  });
}
