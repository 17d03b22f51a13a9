import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Connection } from 'mysql2/promise';
import type { MysqlServiceConfig } from '../../agent/config.ts';
import { AgentError, cancelled, throwIfCancelled, toAgentError } from '../../errors.ts';
import type { Capture, CaptureOptions, Facts, ServiceDriver, StagedRestore } from '../driver.ts';
import { closeConnection, describeEndpoint, openConnection, queryRows, quoteIdent, serverError, writeDefaultsFile, type DefaultsFile, type MysqlEndpoint } from './connection.ts';
import { startDump, type RunningDump } from './dump.ts';
import { loadDump } from './load.ts';
import { StagingRewriter } from './rewrite.ts';
import { binlogPosition, checkLongQueries, flushTablesWithReadLock, serverVersion, type BinlogPosition } from './server.ts';
import { swapDatabase, type SwapPlan } from './swap.ts';

export interface MysqlDriverOptions {
  /** The service (element) name, for messages. */
  name: string;
  config: MysqlServiceConfig;
  /** Read when needed, never kept. */
  password: () => Promise<string | undefined>;
}

/** How long FTWRL may be held waiting for mysqldump to open its snapshot (normally ~20 ms). */
const SNAPSHOT_TIMEOUT_MS = 15_000;
/** MySQL's identifier limit; staging names are cut to fit. */
const MAX_IDENTIFIER = 64;

interface DatabasePlan extends SwapPlan {
  source: string;
}

/**
 * MySQL/MariaDB: captured as one `mysqldump --single-transaction --databases …` stream (see
 * dump-format.ts), restored by replaying it into staging databases beside the targets and
 * swapping those in with one RENAME TABLE per database (swap.ts).
 *
 * Consistent mode: after checking that no long query would stall writers behind it, the agent's
 * own connection takes FLUSH TABLES WITH READ LOCK, records the binlog position, starts
 * mysqldump, and unlocks as soon as mysqldump's consistent snapshot is open; the lock dies with
 * the connection, and every error path unlocks. Live mode takes no lock.
 *
 * Restoring into another environment (--target): the backup's databases map onto the target
 * service's `databases` by name when they are the same set, otherwise by position (the i-th
 * backed-up database into the i-th configured one); the counts must match.
 */
export class MysqlDriver implements ServiceDriver {
  readonly kind = 'mysql';
  readonly format = 'sql';
  readonly #name: string;
  readonly #config: MysqlServiceConfig;
  readonly #password: () => Promise<string | undefined>;

  constructor(options: MysqlDriverOptions) {
    this.#name = options.name;
    this.#config = options.config;
    this.#password = options.password;
  }

  /** The configured databases' data size (information_schema): a guide for progress only. */
  async estimateBytes(signal: AbortSignal): Promise<number | undefined> {
    if (signal.aborted) return undefined;
    let connection: Connection | undefined;
    try {
      connection = await openConnection(await this.#endpoint(), 'E_CAPTURE_FAILED', this.#what());
      const [row] = await queryRows<{ bytes: string | null }>(
        connection,
        'SELECT SUM(DATA_LENGTH) AS bytes FROM information_schema.TABLES WHERE TABLE_SCHEMA IN (?)',
        [this.#config.databases],
      );
      return row?.bytes ? Number(row.bytes) : undefined;
    } catch {
      return undefined; // capture() reports what is wrong
    } finally {
      closeConnection(connection);
    }
  }

  async capture({ signal, consistent }: CaptureOptions): Promise<Capture> {
    throwIfCancelled(signal);
    const endpoint = await this.#endpoint();
    const connection = await openConnection(endpoint, 'E_CAPTURE_FAILED', this.#what());
    // Closing the session is what cancels a pending FTWRL and frees a held one.
    const onAbort = () => closeConnection(connection, { force: true });
    signal.addEventListener('abort', onAbort, { once: true });
    let defaults: DefaultsFile | undefined;
    let dump: RunningDump | undefined;
    let locked = false;
    let facts: Facts;
    try {
      const version = await serverVersion(connection);
      await this.#checkDatabasesExist(connection);
      let binlog: BinlogPosition | undefined;
      let ftwrlMs: number | null = null;
      let lockedAt = 0;
      if (consistent) {
        await checkLongQueries(connection, this.#config.longQueryThreshold);
        await flushTablesWithReadLock(connection, this.#config.lockWaitTimeout);
        locked = true;
        lockedAt = performance.now();
      }
      // Under the lock no transaction commits: the position is exactly the snapshot's.
      binlog = await binlogPosition(connection);
      defaults = await writeDefaultsFile(endpoint);
      dump = startDump(defaults, this.#config.databases, signal);
      await withTimeout(dump.snapshotOpen, SNAPSHOT_TIMEOUT_MS, `mysqldump did not open its snapshot within ${SNAPSHOT_TIMEOUT_MS / 1000}s`);
      if (locked) {
        await connection.query('UNLOCK TABLES');
        locked = false;
        ftwrlMs = Math.round((performance.now() - lockedAt) * 100) / 100;
      }
      await defaults.remove(); // read by mysqldump at its start: the password leaves the disk now
      facts = {
        serverVersion: version,
        databases: this.#config.databases.join(','),
        binlogFile: binlog?.binlogFile ?? null,
        binlogPosition: binlog?.binlogPosition ?? null,
        gtid: binlog?.gtid ?? null,
        // Live: read just before the snapshot opened; commits in between are in the dump, after it.
        binlogExact: binlog ? consistent : null,
        ftwrlMs,
      };
    } catch (error) {
      dump?.kill();
      dump?.stream.destroy();
      if (locked) await connection.query('UNLOCK TABLES').catch(() => {});
      closeConnection(connection);
      await defaults?.remove();
      if (signal.aborted) throw cancelled(signal);
      throw serverError(error, 'E_CAPTURE_FAILED', this.#what());
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    closeConnection(connection);
    const running = dump;
    const result = running.done.then(({ warnings }) => ({ facts, warnings }));
    result.catch(() => {}); // the caller awaits it once the stream is done; never unhandled meanwhile
    return {
      stream: running.stream,
      result,
      pointInTime: true, // one REPEATABLE READ snapshot, open now
      release: async () => {
        running.kill(); // a no-op once it has exited; stops an abandoned dump
        await defaults?.remove();
      },
    };
  }

  /**
   * Whether every configured database exists (a dump of a missing one fails). With some
   * missing, the element is left out of the safety backup: there is no complete state to keep.
   */
  async targetExists(signal: AbortSignal): Promise<boolean> {
    throwIfCancelled(signal);
    let connection: Connection | undefined;
    try {
      connection = await openConnection(await this.#endpoint(), 'E_RESTORE_FAILED', this.#what());
      const rows = await queryRows<{ name: string }>(connection, 'SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (?)', [this.#config.databases]);
      return rows.length === new Set(this.#config.databases).size;
    } finally {
      closeConnection(connection);
    }
  }

  async stage(source: Readable, signal: AbortSignal): Promise<StagedRestore> {
    let connection: Connection | undefined;
    let defaults: DefaultsFile | undefined;
    let plans: DatabasePlan[] = [];
    try {
      throwIfCancelled(signal);
      const endpoint = await this.#endpoint();
      connection = await openConnection(endpoint, 'E_RESTORE_FAILED', this.#what());
      await dropStaleStaging(connection, this.#config.databases);
      defaults = await writeDefaultsFile(endpoint);
      const tag = randomBytes(3).toString('hex');
      const rewriter = new StagingRewriter({
        resolve: (databases) => {
          plans = this.#plan(databases, tag);
          return new Map(plans.map((p) => [p.source, p.staging]));
        },
      });
      await loadDump(defaults, source, rewriter, signal);
      await connection.ping();
    } catch (error) {
      source.destroy();
      if (connection) await dropStaging(connection, plans.map((p) => p.staging)).catch(() => {});
      if (signal.aborted) throw cancelled(signal);
      throw error instanceof AgentError ? error : serverError(error, 'E_RESTORE_FAILED', this.#what());
    } finally {
      closeConnection(connection);
      await defaults?.remove();
    }
    const staged = plans;
    return {
      facts: { databases: staged.map((p) => (p.source === p.target ? p.target : `${p.source}->${p.target}`)).join(',') },
      commit: () => this.#commit(staged),
      discard: () => this.#discard(staged),
    };
  }

  /** Swaps each staged database in; the staging databases are gone afterwards, whatever happened. */
  async #commit(plans: readonly DatabasePlan[]): Promise<void> {
    const connection = await openConnection(await this.#endpoint(), 'E_RESTORE_FAILED', this.#what());
    const done: string[] = [];
    try {
      for (const plan of plans) {
        try {
          await swapDatabase(connection, plan);
        } catch (error) {
          const failure = toAgentError(error, 'E_RESTORE_FAILED');
          throw new AgentError(
            'E_RESTORE_FAILED',
            `${this.#what()}: ${failure.message}${done.length ? `; databases already restored: ${done.join(', ')}` : ''}`,
            { cause: error },
          );
        }
        done.push(plan.target);
      }
    } finally {
      await dropStaging(connection, plans.map((p) => p.staging)).catch(() => {});
      closeConnection(connection);
    }
  }

  async #discard(plans: readonly DatabasePlan[]): Promise<void> {
    if (plans.length === 0) return;
    const connection = await openConnection(await this.#endpoint(), 'E_RESTORE_FAILED', this.#what());
    try {
      await dropStaging(connection, plans.map((p) => p.staging));
    } finally {
      closeConnection(connection);
    }
  }

  /** The backup's databases onto this service's: by name when the sets agree, else by position. */
  #plan(sources: readonly string[], tag: string): DatabasePlan[] {
    const targets = this.#config.databases;
    if (new Set(targets).size !== targets.length) {
      throw new AgentError('E_CONFIG_INVALID', `${this.#what()}: databases lists a database twice: ${targets.join(', ')}`);
    }
    if (sources.length !== targets.length) {
      throw new AgentError(
        'E_RESTORE_FAILED',
        `${this.#what()}: the backup holds ${sources.length} database(s) (${sources.join(', ')}) but the service restored into has ` +
          `${targets.length} (${targets.join(', ')}); databases map one to one, by name or else by position`,
      );
    }
    const byName = sources.every((s) => targets.includes(s));
    return sources.map((source, i) => {
      const target = byName ? source : targets[i]!;
      return { source, target, staging: derivedName(target, `${STAGE_MARK}${tag}`), old: derivedName(target, `__sa_old_${tag}`) };
    });
  }

  async #checkDatabasesExist(connection: Connection): Promise<void> {
    const rows = await queryRows<{ name: string }>(connection, 'SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (?)', [
      this.#config.databases,
    ]);
    const missing = this.#config.databases.filter((db) => !rows.some((r) => r.name === db));
    if (missing.length) {
      throw new AgentError('E_CAPTURE_FAILED', `${this.#what()}: database ${missing.join(', ')} does not exist on ${describeEndpoint(await this.#endpoint())}`);
    }
  }

  async #endpoint(): Promise<MysqlEndpoint> {
    const { host, port, socket, user } = this.#config;
    return { host, port, socket, user, password: await this.#password() };
  }

  #what(): string {
    return `mysql service ${this.#name}`;
  }
}

/** `<db><suffix>`, the database name cut so that the whole fits MySQL's 64 characters. */
function derivedName(db: string, suffix: string): string {
  return `${db.slice(0, MAX_IDENTIFIER - suffix.length)}${suffix}`;
}

/** A staging database is `<target>__sa_stage_<6 hex>`, cut to fit (derivedName). */
const STAGE_MARK = '__sa_stage_';
const STAGE_SUFFIX = /__sa_stage_[0-9a-f]{6}$/;

/**
 * Drops the staging databases a crashed restore into these targets left behind (its `mysql`
 * was loading them when the agent died). The environment's lock is held, so no restore into
 * them is running. `__sa_old_` databases are left alone: after a crash mid-swap one may hold
 * the target's original tables (see the README).
 */
async function dropStaleStaging(connection: Connection, targets: readonly string[]): Promise<void> {
  const candidates = await queryRows<{ name: string }>(connection, 'SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?', [`%${STAGE_MARK}%`]);
  const stale = candidates
    .map((row) => row.name)
    .filter((name) => STAGE_SUFFIX.test(name) && targets.some((target) => derivedName(target, name.slice(-(STAGE_MARK.length + 6))) === name));
  await dropStaging(connection, stale);
}

/**
 * Drops the staging databases. A killed `mysql` client's server thread may still be running its
 * last statement: sessions using a staging database are killed first, so none recreates it.
 */
async function dropStaging(connection: Connection, names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  const sessions = await queryRows<{ id: number }>(
    connection,
    'SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB IN (?) AND ID <> CONNECTION_ID()',
    [names],
  );
  for (const { id } of sessions) await connection.query(`KILL ${Number(id)}`).catch(() => {});
  await connection.query('SET SESSION foreign_key_checks = 0');
  for (const name of names) await connection.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)}`);
}

async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new AgentError('E_CAPTURE_FAILED', message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
