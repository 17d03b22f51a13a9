import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Redis } from 'ioredis';
import { AgentError, cancelled, throwIfCancelled, toAgentError, type ErrorCode } from '../../errors.ts';
import { captureAtOnce, handOver, type Capture, type CaptureOptions, type CaptureResult, type Facts, type PreparedCapture, type ServiceDriver, type StagedRestore, type StagedState, type StageOptions } from '../driver.ts';
import { requireFreeSpace } from '../free-space.ts';
import { privateTempDir } from '../private-temp.ts';
import { forkSave, requirePauseWrite, waitForSave } from './bgsave.ts';
import { configGet, connect, describeAddress, disconnect, info, infoNumber, type Info, type RedisAddress } from './connection.ts';
import { checkRdb, readRdbVersion } from './rdb-file.ts';
import { rdbFunctionLibraries } from './rdb-functions.ts';
import { checkTarget, loadThroughReplication, undoInterruptedLoad } from './replica-load.ts';
import { RedisRestoreJournal, tokenDigest, type InterruptedLoad } from './restore-journal.ts';
import type { RedisServiceConfig } from './service-config.ts';

export interface RedisDriverOptions {
  /** The service (element) name, for messages. */
  name: string;
  /** The environment and state directory, for the journal of a restore in progress. */
  env: string;
  stateDir: string;
  config: RedisServiceConfig;
  /** Reads the configured password when a connection needs it; never kept. */
  password: () => Promise<string | undefined>;
}

/**
 * A Redis server on this host. Capture: our own BGSAVE (a fork: the point in time), then the
 * RDB file it wrote, read from Redis's `dir`. Restore: the verified RDB is fed to the target as
 * a replica's full resync from a one-shot master the agent runs (see replica-load.ts): the only
 * way a running Redis loads an RDB, and one that leaves the data on disk with AOF on or off.
 */
export class RedisDriver implements ServiceDriver {
  readonly kind = 'redis';
  readonly format = 'rdb';
  readonly #options: RedisDriverOptions;

  constructor(options: RedisDriverOptions) {
    this.#options = options;
  }

  async estimateBytes(signal: AbortSignal): Promise<number | undefined> {
    let client: Redis | undefined;
    try {
      throwIfCancelled(signal);
      client = await this.#connect('E_CAPTURE_FAILED', 'estimate');
      // The last RDB is the best guess of the next one; memory use overstates it.
      const last = await stat(await rdbPath(client)).catch(() => undefined);
      if (last?.isFile() && last.size > 0) return last.size;
      return infoNumber(await info(client, 'memory'), 'used_memory_dataset') ?? undefined;
    } catch {
      return undefined; // only progress depends on it; capture reports the real problem
    } finally {
      if (client) disconnect(client);
    }
  }

  async capture(options: CaptureOptions): Promise<Capture> {
    return captureAtOnce(await this.prepare(options), options.signal);
  }

  /**
   * Before a consistent backup's freeze: the connection, the server's version (CLIENT PAUSE …
   * WRITE is refused before anything is frozen) and where it writes its RDB. What stays for the
   * freeze is the wait for another child, the log's offset and the pause pipeline (forkSave).
   */
  async prepare({ signal, consistent }: CaptureOptions): Promise<PreparedCapture> {
    throwIfCancelled(signal);
    const client = await this.#connect('E_CAPTURE_FAILED', 'capture');
    // A cancel while preparing ends the connection, and so the command waiting on it.
    const onAbort = () => disconnect(client);
    signal.addEventListener('abort', onAbort, { once: true });
    let server: Info;
    let file: string;
    try {
      server = await info(client, 'server');
      if (consistent) requirePauseWrite(server);
      file = await rdbPath(client);
      throwIfCancelled(signal);
    } catch (error) {
      disconnect(client);
      if (signal.aborted) throw cancelled(signal);
      throw captureError(error, this.#options.name);
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    // Once captured, the capture disconnects once it is done, on every path.
    return handOver(
      (captureSignal) => this.#fork(client, { server, file, consistent }, captureSignal),
      () => disconnect(client),
    );
  }

  /** BGSAVE on the prepared connection (the point in time), then the RDB it wrote, streamed. */
  async #fork(client: Redis, { server, file, consistent }: { server: Info; file: string; consistent: boolean }, signal: AbortSignal): Promise<Capture> {
    const timeoutMs = this.#options.config.saveTimeout;
    const deadline = Date.now() + timeoutMs;
    let handedOver = false;
    try {
      throwIfCancelled(signal);
      const fork = await forkSave(client, {
        consistent,
        signal,
        deadline,
        timeoutMs,
        unpauseElsewhere: async () => {
          const other = await this.#connect('E_CAPTURE_FAILED', 'unpause');
          try {
            await other.call('CLIENT', 'UNPAUSE');
          } finally {
            disconnect(other);
          }
        },
      });
      // From here the snapshot is fixed; the stream waits for the child to finish writing it.
      const stream = new PassThrough({ highWaterMark: 1 << 20 });
      const stop = new AbortController();
      const reading = AbortSignal.any([signal, stop.signal]);
      const result = (async (): Promise<CaptureResult> => {
        try {
          await waitForSave(client, fork, { signal: reading, deadline, timeoutMs });
          // Opened right after completion: a later save renames a new file over the path,
          // the open descriptor keeps reading ours.
          const handle = await open(file, 'r');
          let bytes: number;
          let rdbVersion: number | undefined;
          try {
            bytes = (await handle.stat()).size;
            rdbVersion = await readRdbVersion(handle);
          } catch (error) {
            await handle.close();
            throw error;
          }
          if (rdbVersion === undefined) {
            await handle.close();
            throw new AgentError('E_CAPTURE_FAILED', `${file} is not an RDB file after BGSAVE`);
          }
          await pipeline(handle.createReadStream({ start: 0, highWaterMark: 1 << 20 }), stream, { signal: reading });
          const facts: Facts = {
            redisVersion: server.get('redis_version') ?? null,
            rdbVersion,
            rdbBytes: bytes,
            keys: fork.keys,
            keyspace: fork.keyspace,
            pauseMs: fork.pauseMs,
            forkUsec: fork.forkUsec,
          };
          return { facts, warnings: fork.warnings };
        } catch (error) {
          const failure = captureError(error, this.#options.name);
          // A released (abandoned) capture has no reader left to tell; otherwise the reader
          // gets the failure on the stream as well as from `result`.
          if (stop.signal.aborted) stream.destroy();
          else stream.destroy(failure);
          throw failure;
        } finally {
          disconnect(client);
        }
      })();
      result.catch(() => {}); // the caller awaits it; never an unhandled rejection
      handedOver = true;
      return {
        stream,
        result,
        pointInTime: true, // BGSAVE forked: the RDB's content is fixed, in live mode as well
        release: async () => {
          stop.abort(new AgentError('E_CANCELLED', 'capture released'));
          await result.catch(() => {});
        },
      };
    } catch (error) {
      throw captureError(error, this.#options.name);
    } finally {
      if (!handedOver) disconnect(client);
    }
  }

  /** A Redis server always holds a dataset (maybe empty): there is always something to keep. */
  async targetExists(): Promise<boolean> {
    return true;
  }

  async stage(source: Readable, signal: AbortSignal, options: StageOptions = {}): Promise<StagedRestore> {
    throwIfCancelled(signal);
    const what = `restore of ${this.#options.name}`;
    let target;
    try {
      // A target that cannot take the data fails the restore before any download.
      target = await this.#withClient('E_RESTORE_FAILED', what, (client) => checkTarget(client, this.#address()));
    } catch (error) {
      source.destroy();
      throw error;
    }
    // The verified RDB waits in the state directory (never /tmp: it is the whole dataset),
    // in the restore's own directory, so that a crash after the first swap can still load it.
    const dir = options.stagingDir ?? (await privateTempDir(this.#options.stateDir));
    const file = path.join(dir, `redis-${this.#options.name}-${randomBytes(4).toString('hex')}.rdb`);
    const discard = () => rm(file, { force: true });
    let checked;
    try {
      await options.journal?.({ file });
      await requireFreeSpace(dir, options.rawBytes, `the staged RDB of ${this.#options.name}`);
      await pipeline(source, createWriteStream(file, { flags: 'wx', mode: 0o600, highWaterMark: 1 << 20 }), { signal });
      checked = await checkRdb(file, target.version, signal);
      if (this.#options.config.functions !== 'keep') await refuseFunctions(file, signal);
    } catch (error) {
      source.destroy();
      await discard();
      throw toAgentError(error, 'E_RESTORE_FAILED');
    }
    const facts: Facts = { rdbBytes: checked.bytes, rdbVersion: checked.version, targetVersion: target.version ?? null };
    return {
      facts,
      commit: async () => {
        Object.assign(facts, await this.#commit(file));
      },
      discard,
    };
  }

  /** Loads the staged RDB; the file goes only once it is loaded (a failed load can be retried). */
  async #commit(file: string): Promise<Facts> {
    const bytes = (await stat(file)).size;
    const loaded = await this.#withClient('E_RESTORE_FAILED', `restore of ${this.#options.name}`, (client) => this.#load(client, file, bytes));
    await rm(file, { force: true });
    return loaded;
  }

  /** Loading the RDB again is the whole commit; its file is gone only once it was loaded. */
  async resumeCommit(state: StagedState): Promise<void> {
    const file = this.#checkState(state);
    if (await stat(file).then(() => true, () => false)) await this.#commit(file);
  }

  async discardStaged(state: StagedState): Promise<void> {
    await rm(this.#checkState(state), { force: true });
  }

  #checkState(state: StagedState): string {
    const file = typeof state.file === 'string' ? path.resolve(state.file) : '';
    const ours = path.basename(file).startsWith(`redis-${this.#options.name}-`) && file.startsWith(`${path.resolve(this.#options.stateDir)}/`) && file.endsWith('.rdb');
    if (!ours) throw new AgentError('E_RESTORE_FAILED', `redis service ${this.#options.name}: the journaled restore does not name a staged RDB of the state directory; left alone`);
    return file;
  }

  /**
   * Undoes what a restore interrupted by a crash left on this server (restore-journal.ts);
   * returns whether it was still a replica of the restore.
   */
  async undoInterruptedLoad(record: InterruptedLoad): Promise<boolean> {
    return this.#withClient('E_RESTORE_FAILED', 'recovery of an interrupted restore', (client) => undoInterruptedLoad(client, record));
  }

  #load(client: Redis, file: string, bytes: number): Promise<Facts> {
    const { name, env, stateDir, config } = this.#options;
    const token = randomBytes(24).toString('hex');
    const journal = new RedisRestoreJournal(stateDir);
    return loadThroughReplication(client, {
      file,
      bytes,
      timeoutMs: config.saveTimeout,
      address: this.#address(),
      token,
      journal: async ({ restoreFrom, original }) => {
        const entry = await journal.record(`${env}-${name}-${process.pid}`, {
          pid: process.pid,
          env,
          service: name,
          since: new Date().toISOString(),
          restoreFrom,
          tokenSha256: tokenDigest(token),
          original,
        });
        return () => journal.remove(entry);
      },
    });
  }

  #address(): RedisAddress {
    const { host, port, socket } = this.#options.config;
    return { host, port, socket };
  }

  async #connect(failure: ErrorCode, what: string): Promise<Redis> {
    const password = await this.#options.password();
    return connect({ ...this.#address(), password }, failure, `redis service ${this.#options.name} (${what})`);
  }

  async #withClient<T>(failure: ErrorCode, what: string, use: (client: Redis) => Promise<T>): Promise<T> {
    const client = await this.#connect(failure, what);
    try {
      return await use(client);
    } catch (error) {
      const agentError = toAgentError(error, failure);
      if (agentError === error) throw error;
      throw new AgentError(failure, `redis service ${this.#options.name} at ${describeAddress(this.#address())}: ${agentError.message}`, { cause: error });
    } finally {
      disconnect(client);
    }
  }
}

/** Where this server writes its RDB: CONFIG GET dir + dbfilename (the agent runs on its host). */
async function rdbPath(client: Redis): Promise<string> {
  const [dir, dbfilename] = await Promise.all([configGet(client, 'dir'), configGet(client, 'dbfilename')]);
  return path.resolve(dir, dbfilename);
}

function captureError(error: unknown, name: string): AgentError {
  const failure = toAgentError(error, 'E_CAPTURE_FAILED');
  if (failure.code !== 'E_CAPTURE_FAILED' || failure.message.startsWith('redis service')) return failure;
  return new AgentError('E_CAPTURE_FAILED', `redis service ${name}: ${failure.message}`, { cause: failure.cause ?? error, details: failure.details });
}

/** Loading an RDB replaces the target's function libraries: code, which a restore does not plant unasked (issue #10). */
async function refuseFunctions(file: string, signal: AbortSignal): Promise<void> {
  const libraries = await rdbFunctionLibraries(file, signal);
  if (libraries.length === 0) return;
  throw new AgentError(
    'E_UNSAFE_ARCHIVE_ENTRY',
    `the backup's RDB holds ${libraries.length} function ${libraries.length === 1 ? 'library' : 'libraries'} (${libraries.slice(0, 5).join(', ')}), code the target would run; ` +
      'nothing was loaded. If they are yours, set functions: keep on the redis service and restore again',
  );
}
