import type { ServiceConfig } from './config.ts';
import type { ServiceDriver } from '../snapshot/driver.ts';
import { FilesDriver } from '../snapshot/files/driver.ts';

/** The driver for a configured service: what runs and what is read comes from config only. */
export function createDriver(service: ServiceConfig): ServiceDriver {
  switch (service.kind) {
    case 'files':
      return new FilesDriver({ path: service.path, exclude: service.exclude });
  }
}
