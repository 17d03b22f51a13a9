import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { z } from 'zod';
import { absolutePath, duration, secret, type SecretRef } from '../config-fields.ts';
import { AgentError } from '../errors.ts';
import { readSecretFile } from '../secret-file.ts';
import { compileExcludes } from '../snapshot/files/excludes.ts';
import { freezeSchema } from '../snapshot/freeze/config.ts';
import { mysqlServiceSchema, type MysqlServiceConfig } from '../snapshot/mysql/service-config.ts';
import { namePattern } from '../snapshot/names.ts';
import { redisServiceSchema } from '../snapshot/redis/service-config.ts';
import { parseSize } from '../units.ts';
import { parseRules } from './retention.ts';
import { parseSchedule } from './schedule.ts';

export const DEFAULT_CONFIG_PATH = '/etc/storage-agent/config.yaml';

const name = z.string().regex(namePattern, 'must be 1-63 characters of a-z, 0-9, - and _, starting with a letter or digit');

/** A refinement whose issue is the message `check` throws: the parsers of retention rules, schedules and exclude patterns say what is wrong themselves. */
function thrownAsIssue<T>(check: (value: T) => unknown): (value: T, ctx: z.core.$RefinementCtx<T>) => void {
  return (value, ctx) => {
    try {
      check(value);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: (error as Error).message });
    }
  };
}

/**
 * A record keyed by names from outside (environments, services, stores), without a prototype:
 * "constructor" is a valid name, and every lookup `config.environments[env]` of a name the
 * config does not define must find nothing, never one of Object.prototype's members.
 */
const namedRecord = <T extends z.ZodType>(value: T) =>
  z.record(name, value).transform((record) => Object.assign(Object.create(null) as Record<string, z.output<T>>, record));

const size = (min: number) =>
  z.union([z.string(), z.number()]).transform((value, ctx) => {
    const bytes = parseSize(value);
    if (bytes === undefined || bytes < min) {
      ctx.addIssue({ code: 'custom', message: `must be a size of at least ${min} bytes, such as "8MiB"` });
      return z.NEVER;
    }
    return bytes;
  });

const fsStore = z.object({ type: z.literal('fs'), path: absolutePath }).strict();

const s3Store = z
  .object({
    type: z.literal('s3'),
    endpoint: z.string().url().optional(),
    region: z.string().default('us-east-1'),
    bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be a valid S3 bucket name'),
    prefix: z
      .string()
      .regex(/^(?:[A-Za-z0-9._-]+\/)*$/, 'must be empty or path segments ending with "/", such as "backups/node-7/"')
      .default(''),
    forcePathStyle: z.boolean().default(true),
    accessKeyId: secret,
    secretAccessKey: secret,
    // S3's minimum part is 5 MiB; 8 MiB × 4 in flight measured best on RGW here.
    partSize: size(5 * 1024 * 1024).default(8 * 1024 * 1024),
    partsInFlight: z.number().int().min(1).max(64).default(4),
    maxParts: z.number().int().min(2).max(10_000).default(10_000),
    maxAttempts: z.number().int().min(1).max(20).default(6),
    // Every S3 call: a hung gateway or OSD (connection accepted, then silence) fails the attempt
    // after requestTimeout of silence and is retried, instead of hanging the backup.
    connectTimeout: duration.default(5_000),
    requestTimeout: duration.default(30_000),
  })
  .strict();

const filesService = z
  .object({
    kind: z.literal('files'),
    path: absolutePath,
    // Checked here, not first at backup time: a daemon's SIGHUP must refuse a pattern it could not pack.
    exclude: z.array(z.string().superRefine(thrownAsIssue((pattern) => compileExcludes([pattern])))).default([]),
    // A restore clears setuid/setgid bits unless the mount needs them (issue #10).
    keepSetuid: z.boolean().default(false),
  })
  .strict();

const service = z.discriminatedUnion('kind', [filesService, mysqlServiceSchema, redisServiceSchema]);
export type ServiceConfig = z.infer<typeof service>;

const environment = z
  .object({
    store: name.optional(),
    freeze: freezeSchema.optional(),
    services: namedRecord(service).refine((s) => Object.keys(s).length > 0, 'an environment needs at least one service'),
    /**
     * New backups go into the environment's deduplicating, encrypted repository (issue #13,
     * docs/repository.md) instead of one compressed archive per element; backups of either kind
     * list, restore and verify. Off by default until its benchmark is met: docs/repository.md.
     */
    repository: z.boolean().default(false),
    // ---- retention and schedules (issue #5; docs/decisions.md) ----
    /** Which scheduled backups prune keeps: a tier (essential, advanced, premium) or [{interval: 1d, count: 7}, …]. */
    retention: z
      .unknown()
      .default('essential')
      // '': the issue's path names the field already ("environments.shop.retention: …").
      .superRefine(thrownAsIssue((value) => parseRules(value, '')))
      .transform((value) => parseRules(value, '')),
    /** Periods of the retention rules (and cron schedules) are calendar periods in this IANA time zone. */
    timeZone: z
      .string()
      .default('UTC')
      .refine((zone) => {
        // UTC needs no check, and checking loads ICU's zone data (~6 MiB resident) into every command.
        if (zone === 'UTC') return true;
        try {
          new Intl.DateTimeFormat('en', { timeZone: zone });
          return true;
        } catch {
          return false;
        }
      }, 'must be an IANA time zone such as "Europe/Berlin"'),
    /** Manual backups kept at once (the seeds: 2 for non-production, 4 for production). */
    manualLimit: z.number().int().min(1).max(100).default(4),
    /** Automated backups by the daemon: only environments with a schedule get them. */
    schedule: z
      .object({
        /** A fixed interval ("6h", "1d"; "2s" in tests)… */
        every: z.string().optional(),
        /** …or a 5-field cron expression in the environment's timeZone. */
        cron: z.string().optional(),
        /** Each run starts up to this much later, at an offset fixed per node (spreads a fleet's load). Absent: a tenth of the period, ≤ 15 min. */
        jitter: duration.optional(),
        /** The backups are live (no write pause) rather than consistent. */
        live: z.boolean().default(false),
      })
      .strict()
      .superRefine(thrownAsIssue(parseSchedule))
      .optional(),
    /** Expiry of the safety backup a restore takes of its target first. */
    safetyKeepFor: duration.default(3 * 86_400_000),
    // ---- end of retention and schedules ----
  })
  .strict();
export type EnvironmentConfig = z.infer<typeof environment>;

const configSchema = z
  .object({
    stateDir: absolutePath.default('/var/lib/storage-agent'),
    defaultStore: name.default('default'),
    // prefault, not default: the empty record goes through namedRecord's transform too.
    stores: namedRecord(z.discriminatedUnion('type', [fsStore, s3Store])).prefault({}),
    compression: z
      .object({
        algorithm: z.enum(['zstd', 'gzip', 'none']).default('zstd'),
        // Level 1, the benchmark's choice (docs/benchmarks.md): level 3 ran at 0.81x the speed for 9.6 % smaller output.
        level: z.number().int().min(1).max(19).default(1),
      })
      .strict()
      .default({ algorithm: 'zstd', level: 1 }),
    /**
     * Multipart uploads older than this under an environment this node owns are orphans and get
     * aborted. At least 1 h: a shorter age would abort a running upload (issue #11).
     */
    orphanUploadAge: duration.default(24 * 3_600_000).refine((ms) => ms >= 3_600_000, 'must be at least 1h: a younger upload may still be running'),
    /**
     * prune rewrites a repository pack once more than this share of its bytes belongs to no
     * backup (restic's default, 5 %): lower keeps the store tighter for more rewriting.
     */
    repackUnused: z.number().min(0).max(1).default(0.05),
    // ---- node identity and ownership (issue #11; docs/ownership.md) ----
    /** This node's name in manifests and owner records. Absent: derived from /etc/machine-id (node-id.ts). */
    nodeId: name.optional(),
    /** An owner record not renewed for this long is stale: another node may adopt the environment. */
    ownerStaleAfter: duration.default(3_600_000).refine((ms) => ms >= 60_000, 'must be at least 1m'),
    /**
     * Manifest MAC keys (issue #10, README "Keys"): one signs, every one verifies. Absent: the
     * node's own <stateDir>/keys/default.key, created at first start (src/agent/keys.ts).
     */
    keys: z.array(z.object({ id: name, file: absolutePath, sign: z.literal(true).optional() }).strict()).min(1).optional(),
    // ---- the daemon and the job engine (issue #4; docs/protocol.md) ----
    daemon: z
      .object({
        /** One listener for the WebSocket protocol (/v1), /healthz and /metrics. Port 0: any free port. */
        listen: z
          .object({ host: z.string().min(1).default('127.0.0.1'), port: z.number().int().min(0).max(65535).default(7800) })
          .strict()
          .prefault({}),
        /** PEM files; with them the listener speaks wss:// and https://. */
        tls: z.object({ cert: absolutePath, key: absolutePath }).strict().optional(),
        /** Each file holds one token per line; its role applies to all of them. */
        tokens: z.array(z.object({ file: absolutePath, role: z.enum(['viewer', 'admin']) }).strict()).default([]),
        /**
         * /metrics names environments, byte counts and process details: it asks for a token
         * (any role) unless `requireToken: false` opens it to scrapers without one.
         */
        metrics: z.object({ requireToken: z.boolean().default(true) }).strict().prefault({}),
        /** A larger WebSocket message closes the connection (1009). */
        maxFrameBytes: size(1024).default(1024 * 1024),
        /** SIGTERM: running jobs get this long to end before they are cancelled. */
        shutdownGrace: duration.default(60_000),
        /** Ping interval; a peer that misses a pong for one interval is dropped. */
        heartbeat: duration.default(30_000),
      })
      .strict()
      .prefault({}),
    jobs: z
      .object({
        /** Jobs running at once on this node (daemon and CLI together). */
        concurrency: z.number().int().min(1).max(64).default(2),
        /** A job waits (queued, with the reason) while free disk or memory is below these floors. */
        minFreeDiskBytes: size(0).default(512 * 1024 * 1024),
        minFreeMemoryBytes: size(0).default(128 * 1024 * 1024),
        /** …and fails with E_HOST_RESOURCES after waiting this long. */
        admissionTimeout: duration.default(10 * 60_000),
        /** Finished job records kept in <stateDir>/jobs. */
        history: z.number().int().min(10).max(100_000).default(1000),
      })
      .strict()
      .prefault({}),
    // ---- end of daemon and jobs ----
    environments: namedRecord(environment).prefault({}),
  })
  .strict()
  .superRefine((config, ctx) => {
    if (config.keys) {
      const signing = config.keys.filter((key) => key.sign).length;
      if (signing !== 1) ctx.addIssue({ code: 'custom', path: ['keys'], message: `exactly one key must have sign: true (the one new backups are signed with); ${signing} have it` });
      const ids = config.keys.map((key) => key.id);
      const twice = ids.find((id, i) => ids.indexOf(id) !== i);
      if (twice !== undefined) ctx.addIssue({ code: 'custom', path: ['keys'], message: `key id ${twice} appears twice; each key needs its own id` });
    }
    for (const [envName, env] of Object.entries(config.environments)) {
      const store = env.store ?? config.defaultStore;
      if (!Object.hasOwn(config.stores, store) && store !== 'default') {
        ctx.addIssue({ code: 'custom', path: ['environments', envName, 'store'], message: `names store "${store}", which is not defined under stores` });
      }
    }
  });

export type Config = z.infer<typeof configSchema>;
export type StoreConfig = Config['stores'][string];
export type DaemonConfig = Config['daemon'];

/** The embedded default store when the config defines none named "default" (a record without a prototype, like the config's). */
export function effectiveStores(config: Config): Record<string, StoreConfig> {
  return Object.assign(Object.create(null) as Record<string, StoreConfig>, { default: { type: 'fs', path: path.join(config.stateDir, 'backups') } }, config.stores);
}

export function parseConfig(text: string, source: string): Config {
  let raw: unknown;
  try {
    raw = parseYaml(text, { prettyErrors: true }) ?? {};
  } catch (error) {
    const where = error instanceof YAMLParseError ? ` at line ${error.linePos?.[0]?.line ?? '?'}` : '';
    throw new AgentError('E_CONFIG_INVALID', `${source}: not valid YAML${where}: ${(error as Error).message.split('\n')[0]}`, { cause: error });
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => `${fieldOf(issue.path) || '(top level)'}: ${issue.message}`);
    throw new AgentError('E_CONFIG_INVALID', `${source}: invalid config:\n  ${problems.join('\n  ')}`, { details: { problems } });
  }
  return result.data;
}

/** environments.shop.services.uploads.exclude[0]: the field as it reads in the YAML. */
function fieldOf(at: readonly PropertyKey[]): string {
  return at.map((key, i) => (typeof key === 'number' ? `[${key}]` : `${i === 0 ? '' : '.'}${String(key)}`)).join('');
}

export async function loadConfig(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new AgentError('E_CONFIG_NOT_FOUND', `cannot read config ${file}: ${(error as Error).message}; pass --config FILE`, { cause: error });
  }
  return parseConfig(text, file);
}

export async function readSecret(ref: SecretRef, what: string): Promise<string> {
  if ('env' in ref) {
    const value = process.env[ref.env];
    if (!value) throw new AgentError('E_SECRET_UNAVAILABLE', `${what}: environment variable ${ref.env} is not set`);
    return value;
  }
  const value = (await readSecretFile(ref.file, what)).trim();
  // An empty file is a mistake (a truncated copy, a forgotten echo), never "no password":
  // a service without a password has no `password:` at all.
  if (!value) throw new AgentError('E_SECRET_UNAVAILABLE', `${what}: secret file ${ref.file} is empty: write the secret into it, or remove the setting`, { details: { file: ref.file } });
  return value;
}

export function environmentOf(config: Config, env: string): EnvironmentConfig {
  // Own properties only, also for a Config not built by parseConfig (a test's, a spread copy).
  const found = Object.hasOwn(config.environments, env) ? config.environments[env] : undefined;
  if (!found) {
    const known = Object.keys(config.environments);
    throw new AgentError('E_UNKNOWN_ENV', `unknown environment "${env}"; configured: ${known.length ? known.join(', ') : '(none)'}`, { details: { env } });
  }
  return found;
}

/** The mysql services of an environment whose binlog is streamed (pitr:), with their settings. */
export function pitrServices(environment: EnvironmentConfig): { name: string; pitr: NonNullable<MysqlServiceConfig['pitr']> }[] {
  return Object.entries(environment.services).flatMap(([name, service]) => (service.kind === 'mysql' && service.pitr !== undefined ? [{ name, pitr: service.pitr }] : []));
}
