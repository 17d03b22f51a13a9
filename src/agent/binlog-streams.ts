import path from 'node:path';
import type { Logger } from 'pino';
import { setTimeout as sleepFor } from 'node:timers/promises';
import { AgentError, toAgentError } from '../errors.ts';
import { binlogArchive } from './binlog-archive.ts';
import { checkBinlogRequirements } from '../snapshot/binlog/requirements.ts';
import { closeConnection, openConnection } from '../snapshot/mysql/connection.ts';
import { BinlogStreamer, type BinlogStreamStatus } from '../snapshot/binlog/stream.ts';
import type { MysqlServiceConfig } from '../snapshot/mysql/service-config.ts';
import type { Config } from './config.ts';
import { secretReader } from './drivers.ts';
import { loadKeyRing } from './keys.ts';
import { ensureOwner, ownsEnvironment } from './ownership.ts';
import { openEnvironmentStore } from './stores.ts';
import type { ObjectStore } from '../transport/stores/object-store.ts';

const RETRY_FIRST_MS = 5_000;
const RETRY_MAX_MS = 5 * 60_000;

async function sleep(ms: number, signal: AbortSignal): Promise<void> {
  await sleepFor(ms, undefined, { signal }).catch(() => {});
}

/** How often a running stream checks that this node still owns its environment. */
const OWNERSHIP_CHECK_MS = 60_000;

/**
 * Aborts `lost` with E_ENV_OWNED once the environment's owner is another node; a store that
 * cannot be read is no proof of that (the stream goes on, the next check decides).
 */
async function watchOwnership(config: Config, store: ObjectStore, env: string, lost: AbortController, until: AbortSignal): Promise<void> {
  for (;;) {
    await sleep(OWNERSHIP_CHECK_MS, until);
    if (until.aborted) return;
    const owns = await ownsEnvironment(config, store, env).catch(() => true);
    if (!owns) {
      lost.abort(new AgentError('E_ENV_OWNED', `environment ${env} is now owned by another node: its binlog stream stopped here ('env owner ${env}')`));
      return;
    }
  }
}

/** One stream as `status` and the metrics show it. */
export interface BinlogStreamView extends BinlogStreamStatus {
  env: string;
  service: string;
  flushEveryMs: number;
}

interface Running {
  key: string;
  env: string;
  service: string;
  config: MysqlServiceConfig;
  streamer: BinlogStreamer | undefined;
  /** Why the stream could not start, until it does. */
  failure: string | null;
  abort: AbortController;
  done: Promise<void>;
}

/**
 * The daemon's binlog streams (docs/pitr.md): one per mysql service with `pitr:`, into its
 * environment's store, for as long as the daemon runs. A stream that cannot start (store or keys
 * unavailable) is retried by the streamer's own backoff once it runs, or here at the next reload;
 * a stream never stops the daemon. SIGHUP: streams of removed or changed services stop, new ones start.
 */
export class BinlogStreams {
  readonly #logger: Logger;
  readonly #running = new Map<string, Running>();

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  start(config: Config): void {
    const wanted = new Map<string, { env: string; service: string; config: MysqlServiceConfig }>();
    for (const [env, environment] of Object.entries(config.environments)) {
      for (const [service, settings] of Object.entries(environment.services)) {
        if (settings.kind === 'mysql' && settings.pitr) wanted.set(`${env}/${service}`, { env, service, config: settings });
      }
    }
    for (const [key, running] of this.#running) {
      const next = wanted.get(key);
      if (!next || JSON.stringify(next.config) !== JSON.stringify(running.config)) this.#stopOne(running);
    }
    for (const [key, want] of wanted) if (!this.#running.has(key)) this.#startOne(config, key, want);
  }

  /** Stops every stream; resolves once their children are gone. */
  async stop(): Promise<void> {
    const all = [...this.#running.values()];
    for (const running of all) this.#stopOne(running);
    await Promise.all(all.map((r) => r.done));
  }

  status(): BinlogStreamView[] {
    return [...this.#running.values()].map((r) => ({
      env: r.env,
      service: r.service,
      flushEveryMs: r.config.pitr!.flushEvery,
      ...(r.streamer?.status() ?? { state: 'starting', file: null, end: null, lastEventMs: null, lastAppendAt: null, lagMs: 0, lastError: r.failure, pid: null }),
    }));
  }

  #stopOne(running: Running): void {
    running.abort.abort(new Error('the stream was stopped'));
    this.#running.delete(running.key);
  }

  async #run(config: Config, want: { env: string; service: string; config: MysqlServiceConfig }, running: Running, log: Logger): Promise<void> {
    running.streamer = undefined; // until this attempt's checks pass, status shows why it cannot start
    const [store, keys] = await Promise.all([openEnvironmentStore(config, want.env), loadKeyRing(config)]);
    // Storing the binlog is a write to the environment: only its owner streams (docs/ownership.md),
    // or two nodes with the same config would both append to its chain. E_ENV_OWNED otherwise,
    // retried with the backoff: a node that adopts the environment starts where storage ends.
    await ensureOwner(config, store, want.env, log);
    const { host, port, socket, user, password, pitr } = want.config;
    const readPassword = secretReader(password, `services.${want.service}.password`);
    const endpoint = async () => ({ host, port, socket, user, password: await readPassword() });
    // What the server must provide, said by name before the first attempt (E_CONFIG_INVALID).
    const connection = await openConnection(await endpoint(), 'E_BINLOG_STREAM', `mysql service ${want.service}`);
    try {
      await checkBinlogRequirements(connection, { replay: true });
    } finally {
      closeConnection(connection);
    }
    running.failure = null;
    running.streamer = new BinlogStreamer({
      endpoint,
      stateDir: config.stateDir,
      spoolDir: path.join(config.stateDir, 'binlog', want.env, want.service),
      sink: binlogArchive(config, store, want.env, want.service, keys, { writer: true }),
      flushEveryMs: pitr!.flushEvery,
      connectionServerId: pitr!.serverId,
      logger: log,
    });
    log.info({ flushEveryMs: pitr!.flushEvery }, 'binlog stream started');
    const lost = new AbortController();
    const streaming = AbortSignal.any([running.abort.signal, lost.signal]);
    const watching = watchOwnership(config, store, want.env, lost, streaming);
    let ended: unknown;
    try {
      await running.streamer.run(streaming);
    } catch (error) {
      ended = error;
    } finally {
      lost.abort(new Error('the stream ended'));
      await watching;
    }
    // The environment moved to another node (env adopt there): stopped for that, and tried again later.
    if (lost.signal.reason instanceof AgentError) throw lost.signal.reason;
    if (ended !== undefined) throw ended;
  }

  #startOne(config: Config, key: string, want: { env: string; service: string; config: MysqlServiceConfig }): void {
    const abort = new AbortController();
    const log = this.#logger.child({ env: want.env, service: want.service, stream: 'binlog' });
    const running: Running = { key, ...want, streamer: undefined, failure: null, abort, done: Promise.resolve() };
    running.done = (async () => {
      // Until the daemon stops the stream: a store, key or server that is not ready yet is tried again.
      for (let delay = RETRY_FIRST_MS; !abort.signal.aborted; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
        try {
          await this.#run(config, want, running, log);
        } catch (error) {
          if (abort.signal.aborted) break;
          const failure = toAgentError(error);
          running.failure = failure.message;
          log.error({ code: failure.code, err: failure.message, retryInMs: delay }, 'the binlog stream cannot run; trying again');
          await sleep(delay, abort.signal);
        }
      }
    })();
    this.#running.set(key, running);
  }
}
