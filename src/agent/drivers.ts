import type { SecretRef } from '../config-fields.ts';
import { readSecret, type ServiceConfig } from './config.ts';
import type { ServiceDriver } from '../snapshot/driver.ts';
import { FilesDriver } from '../snapshot/files/driver.ts';
import { MysqlDriver } from '../snapshot/mysql/driver.ts';
import { RedisDriver } from '../snapshot/redis/driver.ts';

/** Where a driver runs: its environment, and the state directory for what it must journal. */
export interface DriverContext {
  env: string;
  stateDir: string;
}

/** The driver for a configured service: what runs and what is read comes from config only. */
export function createDriver(name: string, service: ServiceConfig, context: DriverContext): ServiceDriver {
  switch (service.kind) {
    case 'files':
      return new FilesDriver({ path: service.path, exclude: service.exclude, keepSetuid: service.keepSetuid });
    case 'mysql':
      return new MysqlDriver({ name, config: service, stateDir: context.stateDir, password: secretReader(service.password, `services.${name}.password`) });
    case 'redis':
      return new RedisDriver({ name, ...context, config: service, password: secretReader(service.password, `services.${name}.password`) });
  }
}

/** Secrets are read when a driver needs them, never kept in the config object. */
export function secretReader(ref: SecretRef | undefined, what: string): () => Promise<string | undefined> {
  return async () => (ref === undefined ? undefined : readSecret(ref, what));
}
