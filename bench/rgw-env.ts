import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** The benchmark's RGW, as scripts/rgw.sh describes it in its env file. */
export interface S3Settings {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
  /** The gateway's and the OSD's processes (their CPU counts with the store's). */
  pids: number[];
}

export function readRgwEnv(file: string | undefined): S3Settings | undefined {
  if (!file || !existsSync(file)) return undefined;
  const vars = Object.fromEntries(
    readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  const dir = path.dirname(file);
  const pids = ['rgw', 'osd']
    .map((name) => path.join(dir, `${name}.pid`))
    .filter((f) => existsSync(f))
    .map((f) => Number(readFileSync(f, 'utf8').trim()));
  return { endpoint: vars.S3_ENDPOINT!, accessKey: vars.S3_ACCESS_KEY!, secretKey: vars.S3_SECRET_KEY!, region: vars.S3_REGION || 'us-east-1', pids };
}

/** The agent config's store entry (under `stores:`) for the benchmark's RGW: keys through the environment. */
export function rgwStoreLines(s3: S3Settings, bucket: string): string[] {
  return [
    '  rgw:',
    '    type: s3',
    `    endpoint: ${s3.endpoint}`,
    `    region: ${s3.region}`,
    `    bucket: ${bucket}`,
    '    prefix: agent/',
    '    accessKeyId: {env: BENCH_S3_ACCESS_KEY}',
    '    secretAccessKey: {env: BENCH_S3_SECRET_KEY}',
    '    partSize: 8MiB',
    '    partsInFlight: 4',
  ];
}

/**
 * rclone's environment for the remote `benchrgw:` (it reads RCLONE_CONFIG_<NAME>_*). Without
 * AWS_CA_BUNDLE, set on this machine, which makes rclone fail: removed for rclone only.
 */
export function rcloneRemoteEnv(s3: S3Settings): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    RCLONE_CONFIG_BENCHRGW_TYPE: 's3',
    RCLONE_CONFIG_BENCHRGW_PROVIDER: 'Ceph',
    RCLONE_CONFIG_BENCHRGW_ENV_AUTH: 'false',
    RCLONE_CONFIG_BENCHRGW_ENDPOINT: s3.endpoint,
    RCLONE_CONFIG_BENCHRGW_REGION: s3.region,
    RCLONE_CONFIG_BENCHRGW_ACCESS_KEY_ID: s3.accessKey,
    RCLONE_CONFIG_BENCHRGW_SECRET_ACCESS_KEY: s3.secretKey,
  };
  delete env.AWS_CA_BUNDLE;
  return env;
}
