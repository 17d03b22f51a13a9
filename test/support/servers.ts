import { inject } from 'vitest';
import type { MysqlTestServer, S3TestServer } from './global-setup.ts';
import { workerNumber } from './workers.ts';

/** This worker's set. */
function mine<T>(sets: readonly T[]): T {
  return sets[(workerNumber() - 1) % sets.length]!;
}

export function s3TestServer(): S3TestServer {
  return mine(inject('s3'));
}

/** Undefined when the run has no global setup's servers (a file run on its own by another runner). */
export function mysqlTestServer(): MysqlTestServer | undefined {
  const sets = inject('mysql') as MysqlTestServer[] | undefined;
  return sets?.length ? mine(sets) : undefined;
}
