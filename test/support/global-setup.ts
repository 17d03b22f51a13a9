import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { TestProject } from 'vitest/node';
import { TEST_WORKERS } from './workers.ts';

export interface S3TestServer {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** Where rgw.sh keeps this cluster (for stop-gateway/start-gateway). */
  dir: string;
}

export interface MysqlTestServer {
  host: string;
  port: number;
  user: string;
  password: string;
  socket: string;
  /** Where mariadb.sh keeps this server (for kill/start). */
  dir: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** One per worker (servers.ts picks a worker's). */
    s3: S3TestServer[];
    mysql: MysqlTestServer[];
  }
}

const run = promisify(execFile);
const root = path.resolve(import.meta.dirname, '../..');

/** A test server of the project's own scripts: started in its own directory, stopped after. */
async function startServer(script: string, dirVar: string, dir: string, extraEnv: Record<string, string>) {
  const env = { ...process.env, [dirVar]: dir, ...extraEnv };
  // A server some other run started (a developer's KEEP_SERVERS, a parallel run) is left running.
  const wasRunning = await run('bash', [path.join(root, 'scripts', script), 'status'], { env }).then(() => true, () => false);
  await run('bash', [path.join(root, 'scripts', script), 'start'], { env });
  const vars = Object.fromEntries(
    (await readFile(path.join(dir, 'env'), 'utf8'))
      .split('\n')
      .filter((line) => line.includes('='))
      .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
  ) as Record<string, string>;
  return { vars, stop: async () => (wasRunning ? undefined : run('bash', [path.join(root, 'scripts', script), 'stop'], { env })) };
}

/**
 * Starts the real servers the tests run against — for each worker (TEST_WORKERS) a single-node
 * Ceph RGW and a MariaDB, each in a directory of the test run's own, all in parallel — and stops
 * them afterwards. KEEP_SERVERS=1 leaves them running for the next run. Redis servers are started
 * per test. Worker i > 0's servers live in `<dir>-i`, on the base port + 20 i (RGW: its monitor
 * takes the port after its own; the benchmarks' is on 7490) and + i (MariaDB).
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Every CLI and daemon a test starts has its compile cache from its first module on, as
  // packaging/storage-agent.sh and the systemd unit give it (main.ts can only enable it after
  // its own module was stripped and compiled: ~55 ms of each start). Workers inherit it.
  process.env.NODE_COMPILE_CACHE ??= path.join(root, 'node_modules', '.cache', 'storage-agent-compile');
  const rgwBase = { dir: process.env.TEST_RGW_DIR ?? '/tmp/storage-agent-test-rgw', port: Number(process.env.TEST_RGW_PORT ?? 7480) };
  const mysqlBase = { dir: process.env.TEST_MARIADB_DIR ?? '/tmp/storage-agent-test-mariadb', port: Number(process.env.TEST_MARIADB_PORT ?? 13306) };
  const sets = await Promise.all(
    Array.from({ length: TEST_WORKERS }, async (_, i) => {
      const rgwDir = i === 0 ? rgwBase.dir : `${rgwBase.dir}-${i}`;
      const mysqlDir = i === 0 ? mysqlBase.dir : `${mysqlBase.dir}-${i}`;
      const [rgw, mariadb] = await Promise.all([
        startServer('rgw.sh', 'RGW_DIR', rgwDir, { RGW_PORT: String(rgwBase.port + 20 * i) }),
        startServer('mariadb.sh', 'MARIADB_DIR', mysqlDir, { MARIADB_PORT: String(mysqlBase.port + i) }),
      ]);
      const s3: S3TestServer = {
        endpoint: rgw.vars.S3_ENDPOINT!,
        accessKeyId: rgw.vars.S3_ACCESS_KEY!,
        secretAccessKey: rgw.vars.S3_SECRET_KEY!,
        region: rgw.vars.S3_REGION ?? 'us-east-1',
        dir: rgwDir,
      };
      const mysql: MysqlTestServer = {
        host: mariadb.vars.MYSQL_HOST!,
        port: Number(mariadb.vars.MYSQL_PORT),
        user: mariadb.vars.MYSQL_USER!,
        password: mariadb.vars.MYSQL_PASSWORD!,
        socket: mariadb.vars.MYSQL_SOCKET!,
        dir: mysqlDir,
      };
      return { s3, mysql, stop: () => Promise.all([rgw.stop(), mariadb.stop()]) };
    }),
  );
  project.provide('s3', sets.map((set) => set.s3));
  project.provide('mysql', sets.map((set) => set.mysql));
  return async () => {
    if (!process.env.KEEP_SERVERS) await Promise.all(sets.map((set) => set.stop()));
  };
}
