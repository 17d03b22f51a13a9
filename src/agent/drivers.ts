import type { SecretRef } from '../config-fields.ts';
import { readSecret, type ServiceConfig } from './config.ts';
import type { ServiceDriver } from '../snapshot/driver.ts';

/** Where a driver runs: its environment, and the state directory for what it must journal. */
export interface DriverContext {
  env: string;
  stateDir: string;
}

/**
 * The driver for a configured service: what runs and what is read comes from config only. Each
 * kind's modules load when a service of that kind is first used: a command that runs no driver
 * (list, show, verify, prune) starts without the ~40 modules of all three and execa.
 */
export async function createDriver(name: string, service: ServiceConfig, context: DriverContext): Promise<ServiceDriver> {
  switch (service.kind) {
    case 'files': {
      const { FilesDriver } = await import('../snapshot/files/driver.ts');
      return new FilesDriver({ path: service.path, exclude: service.exclude, keepSetuid: service.keepSetuid });
    }
    case 'mysql': {
      const { MysqlDriver } = await import('../snapshot/mysql/driver.ts');
      return new MysqlDriver({ name, config: service, stateDir: context.stateDir, password: secretReader(service.password, `services.${name}.password`) });
    }
    case 'redis': {
      const { RedisDriver } = await import('../snapshot/redis/driver.ts');
      return new RedisDriver({ name, ...context, config: service, password: secretReader(service.password, `services.${name}.password`) });
    }
  }
}

/** Secrets are read when a driver needs them, never kept in the config object. */
export function secretReader(ref: SecretRef | undefined, what: string): () => Promise<string | undefined> {
  return async () => (ref === undefined ? undefined : readSecret(ref, what));
}
