import { readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { childEnv } from '../child-env.ts';
import { AgentError, toAgentError } from '../errors.ts';
import { FreezeJournal } from '../snapshot/freeze/journal.ts';
import { watchFreezes } from '../snapshot/freeze/watch.ts';
import { logStoreRetries } from '../transport/stores/store-telemetry.ts';
import { TokenRing } from '../transport/ws/auth.ts';
import { PROTOCOL_PATH } from '../transport/ws/protocol.ts';
import { ProtocolServer, serveHttp } from '../transport/ws/server.ts';
import { loadConfig, readSecret, type Config } from './config.ts';
import { LocalAgent } from './jobs/api.ts';
import { JobEngine } from './jobs/engine.ts';
import { createMetrics } from './jobs/metrics.ts';
import { recoverAtStart } from './jobs/recovery.ts';
import { createLogger } from './logger.ts';
import { renewOwnedEnvironments } from './ownership.ts';
import { openEnvironmentStore } from './stores.ts';
import { Scheduler } from './scheduler.ts';
import { BinlogStreams } from './binlog-streams.ts';
import { AGENT_VERSION } from './version.ts';
import { writeStateFile } from '../state-file.ts';

/** After the grace period, cancelled jobs get this long to clean up (thaw, abort uploads). */
const CANCEL_CLEANUP_MS = 30_000;

export interface Daemon {
  readonly address: AddressInfo;
  readonly agent: LocalAgent;
  /** SIGHUP: loads the config again; a bad one is logged and the running one kept. */
  reload(): Promise<boolean>;
  /** SIGTERM: no new work, running jobs get the grace period, then are cancelled cleanly. */
  shutdown(reason: string): Promise<void>;
}

/**
 * `storage-agent daemon`: starts, then runs until SIGTERM/SIGINT; returns the exit code (0 for
 * a clean stop). Logs are pino JSON lines on stdout (journald).
 */
export async function runDaemon(options: { configPath: string; logLevel: string }): Promise<number> {
  const logger = createLogger(options.logLevel, 1);
  logStoreRetries(logger);
  // Signals are ours from the first moment: a SIGTERM during start-up stops cleanly once started.
  let daemon: Daemon | undefined;
  let requested: string | undefined;
  let done!: () => void;
  const stopped = new Promise<void>((resolve) => (done = resolve));
  const stop = (signal: string) => {
    requested ??= signal;
    if (daemon) void daemon.shutdown(`${signal} received`).then(done, done);
  };
  const onTerm = () => stop('SIGTERM');
  const onInt = () => stop('SIGINT');
  const onHup = () => {
    if (daemon) void daemon.reload();
    else logger.warn({}, 'SIGHUP during start-up: ignored');
  };
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  process.on('SIGHUP', onHup);
  try {
    daemon = await startDaemon({ configPath: options.configPath, logger });
  } catch (error) {
    const failure = toAgentError(error);
    logger.fatal({ code: failure.code, err: failure.message }, 'the daemon could not start');
    throw failure;
  }
  if (requested) stop(requested);
  await stopped;
  process.off('SIGTERM', onTerm);
  process.off('SIGINT', onInt);
  process.off('SIGHUP', onHup);
  return 0;
}

export async function startDaemon(options: { configPath: string; logger: Logger; config?: Config }): Promise<Daemon> {
  const { configPath, logger } = options;
  let config = options.config ?? (await loadConfig(configPath));
  logger.info({ version: AGENT_VERSION, stateDir: config.stateDir }, 'daemon starting'); // pid: in every line already

  const engine = new JobEngine({ config, logger, program: 'daemon' });
  // Before recovery, so that the orphan uploads its sweep aborts are counted.
  const streams = new BinlogStreams(logger);
  const metrics = createMetrics(engine, logger, () => streams.status());
  const recovery = await recoverAtStart(config, logger, { sweepStores: true });
  // From now on, a freeze whose owner dies (a CLI run, or this daemon's own job) is thawed
  // within a fraction of a second, even when its guard died too.
  const stopWatchingFreezes = watchFreezes(new FreezeJournal(config.stateDir), logger);
  let tokens = await TokenRing.load(config.daemon.tokens);
  if (tokens.size === 0) logger.warn({}, 'no tokens configured (daemon.tokens): every protocol client will be refused');

  await engine.init();
  const agent = new LocalAgent(config, engine, 'daemon');
  const scheduler = new Scheduler({ agent, logger, stateDir: config.stateDir });
  agent.schedules = () => scheduler.status();
  agent.binlogStreams = () => streams.status();
  const protocol = new ProtocolServer({
    agent,
    tokens: () => tokens,
    logger,
    maxFrameBytes: config.daemon.maxFrameBytes,
    heartbeatMs: config.daemon.heartbeat,
  });

  let draining = false;
  const tls = config.daemon.tls;
  // The private key is a secret like any other (mode, owner, not empty: readSecret), refused at
  // start naming the file: whoever reads it can pose as this daemon and take the tokens sent to it.
  const server = tls
    ? https.createServer({ cert: await readPem(tls.cert, 'daemon.tls.cert'), key: await readSecret({ file: tls.key }, 'daemon.tls.key') })
    : http.createServer();
  server.on('request', (request, response) =>
    void serveHttp(request, response, { metrics, agent, version: AGENT_VERSION, tokens: () => tokens, metricsNeedToken: () => config.daemon.metrics.requireToken, draining: () => draining }),
  );
  server.on('upgrade', (request, socket, head) => protocol.handleUpgrade(request, socket, head));
  server.on('clientError', (_error, socket) => socket.destroy());

  const listen = config.daemon.listen;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(new AgentError('E_CONFIG_INVALID', `cannot listen on ${listen.host}:${listen.port} (daemon.listen): ${error.code ?? error.message}`, { cause: error })),
    );
    server.listen(listen.port, listen.host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  const url = `${tls ? 'wss' : 'ws'}://${address.address}:${address.port}${PROTOCOL_PATH}`;
  await writeStateFile(config.stateDir, path.join(config.stateDir, 'daemon.json'), JSON.stringify({ pid: process.pid, url, startedAt: new Date().toISOString() }));
  logger.info({ host: address.address, port: address.port, tls: Boolean(tls), url, recovered: recovery }, 'daemon listening');
  await scheduler.start(config);
  streams.start(config);
  const stopRenewing = renewOwnership(() => config, logger);
  await notifySystemd(['--ready', `--status=listening on ${url}`], logger);

  let stopping: Promise<void> | undefined;
  return {
    address,
    agent,
    async reload() {
      let next: Config;
      let nextTokens: TokenRing;
      try {
        next = await loadConfig(configPath);
        nextTokens = await TokenRing.load(next.daemon.tokens);
      } catch (error) {
        const failure = toAgentError(error);
        logger.error({ code: failure.code, err: failure.message }, 'SIGHUP: the new config is rejected; the running config stays in force');
        return false;
      }
      if (JSON.stringify(next.daemon.listen) !== JSON.stringify(config.daemon.listen) || JSON.stringify(next.daemon.tls) !== JSON.stringify(config.daemon.tls)) {
        logger.warn({}, 'SIGHUP: daemon.listen and daemon.tls take effect at the next restart');
      }
      if (next.stateDir !== config.stateDir) {
        logger.warn({}, 'SIGHUP: stateDir takes effect at the next restart; keeping the running one');
        next = { ...next, stateDir: config.stateDir };
      }
      config = next;
      tokens = nextTokens;
      agent.reload(config);
      await scheduler.reload(config);
      streams.start(config);
      logger.info({ environments: Object.keys(config.environments).length, tokens: tokens.size }, 'SIGHUP: config reloaded');
      return true;
    },
    shutdown(reason: string) {
      stopping ??= (async () => {
        draining = true;
        scheduler.stop();
        const streamsStopped = streams.stop();
        const grace = config.daemon.shutdownGrace;
        const running = engine.summary().running;
        logger.info({ reason, running, graceMs: grace }, 'stopping: no new work; running jobs get the grace period');
        await notifySystemd(['STOPPING=1', `--status=stopping (${running} jobs running)`], logger);
        await engine.stopAccepting('cancelled: the agent is stopping');
        const ended = await Promise.race([engine.idle().then(() => true), sleep(grace).then(() => false)]);
        if (!ended) {
          logger.warn({ running: engine.summary().running }, 'grace period over: cancelling the running jobs (thaw, abort uploads, no manifest)');
          await engine.cancelAll(`cancelled: the agent is stopping and the ${Math.round(grace / 1000)} s grace period ended`);
          const cleaned = await Promise.race([engine.idle().then(() => true), sleep(CANCEL_CLEANUP_MS).then(() => false)]);
          if (!cleaned) logger.error({}, 'jobs did not end after cancel; the next start marks them interrupted and cleans up');
        }
        await protocol.close();
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        });
        await engine.close();
        await streamsStopped;
        stopWatchingFreezes();
        stopRenewing();
        await rm(path.join(config.stateDir, 'daemon.json'), { force: true });
        logger.info({}, 'daemon stopped');
      })();
      return stopping;
    },
  };
}

/**
 * Renews the owner records of the environments this node owns, at start and every quarter of
 * ownerStaleAfter (a round that is still running is not doubled), so they never look stale
 * while the daemon runs, whatever the schedules (ownership.ts).
 */
function renewOwnership(config: () => Config, logger: Logger): () => void {
  let round: Promise<unknown> | undefined;
  const renew = () => {
    round ??= renewOwnedEnvironments(config(), (env) => openEnvironmentStore(config(), env), logger).finally(() => (round = undefined));
  };
  renew();
  const timer = setInterval(renew, config().ownerStaleAfter / 4).unref();
  return () => clearInterval(timer);
}

/** sd_notify through systemd-notify (Type=notify, NotifyAccess=all), when systemd asked for it. */
async function notifySystemd(args: string[], logger: Logger): Promise<void> {
  const socket = process.env.NOTIFY_SOCKET;
  if (!socket) return;
  try {
    await execa('systemd-notify', args, { stdin: 'ignore', timeout: 10_000, env: childEnv({ NOTIFY_SOCKET: socket }), extendEnv: false });
  } catch (error) {
    logger.warn({ err: (error as Error).message.split('\n')[0] }, 'systemd-notify failed');
  }
}

/** A certificate is public: any file the agent can read. */
async function readPem(file: string, what: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (error) {
    throw new AgentError('E_CONFIG_INVALID', `${what}: cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { cause: error });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
