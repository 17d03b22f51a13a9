import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { TestProject } from 'vitest/node';

export interface S3TestServer {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** Where rgw.sh keeps this cluster (for stop-gateway/start-gateway). */
  dir: string;
}

declare module 'vitest' {
  export interface ProvidedContext {
    s3: S3TestServer;
  }
}

const root = path.resolve(import.meta.dirname, '../..');
const rgw = path.join(root, 'scripts/rgw.sh');

/**
 * Starts the real Ceph RGW the S3 tests run against (a cluster of the test run's own, in its
 * own directory) and stops it afterwards. KEEP_RGW=1 leaves it running for the next run.
 */
export default function setup(project: TestProject): () => void {
  const dir = process.env.TEST_RGW_DIR ?? '/tmp/storage-agent-test-rgw';
  const env = { ...process.env, RGW_DIR: dir, RGW_PORT: process.env.TEST_RGW_PORT ?? '7480' };
  execFileSync('bash', [rgw, 'start'], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  const vars = Object.fromEntries(
    readFileSync(path.join(dir, 'env'), 'utf8')
      .split('\n')
      .filter((line) => line.includes('='))
      .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
  );
  project.provide('s3', {
    endpoint: vars.S3_ENDPOINT!,
    accessKeyId: vars.S3_ACCESS_KEY!,
    secretAccessKey: vars.S3_SECRET_KEY!,
    region: vars.S3_REGION ?? 'us-east-1',
    dir,
  });
  return () => {
    if (!process.env.KEEP_RGW) execFileSync('bash', [rgw, 'stop'], { env, stdio: 'inherit' });
  };
}
