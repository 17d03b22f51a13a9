import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { Readable } from 'node:stream';
import type { Connection } from 'mysql2/promise';
import { AgentError, cancelled, throwIfCancelled, toAgentError } from '../../errors.ts';
import { captureAtOnce, handOver, type Capture, type CaptureOptions, type Facts, type PreparedCapture, type ServiceDriver, type StagedRestore, type StagedState, type StageOptions } from '../driver.ts';
import { privateTempDir } from '../private-temp.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { closeConnection, describeEndpoint, openConnection, queryRows, quoteIdent, serverError, writeDefaultsFile, type DefaultsFile, type MysqlEndpoint } from './connection.ts';
import { dumpHeaderLine } from './dump-format.ts';
import { dumpOptions, startDump, type RunningDump } from './dump.ts';
import { openDumpOutput, type DumpOutput } from './dump-output.ts';
import { dumpClient, serverFlavour, type DumpClient, type ServerFlavour } from './flavour.ts';
import { loadDump } from './load.ts';
import { retarget, StagingRewriter } from './rewrite.ts';
import { gtidPurgedWarning } from './dropped-statements.ts';
import { replayBinlog, type ReplayFacts } from './binlog-replay.ts';
import { binlogPosition, checkLongQueries, flushTablesWithReadLock, type BinlogPosition } from './server.ts';
import type { MysqlServiceConfig } from './service-config.ts';
import { readSchema, swapDatabase, type Schema, type SwapPlan } from './swap.ts';

export interface MysqlDriverOptions {
  /** The service (element) name, for messages. */
  name: string;
  config: MysqlServiceConfig;
  /** Read when needed, never kept. */
  password: () => Promise<string | undefined>;
  /** For the clients' option file (private-temp.ts). */
  stateDir: string;
}

/** How long FTWRL may be held waiting for mysqldump to open its snapshot (normally ~20 ms). */
const SNAPSHOT_TIMEOUT_MS = 15_000;
/** MySQL's identifier limit; staging names are cut to fit. */
const MAX_IDENTIFIER = 64;

/** What prepare() made ready for the point-in-time work: an open session and what was learnt on it. */
interface PreparedSession {
  connection: Connection;
  defaults: DefaultsFile;
  /** Where mysqldump will write, its reader already started (dump-output.ts). */
  output: DumpOutput;
  server: ServerFlavour;
  client: DumpClient;
  databases: readonly string[];
  consistent: boolean;
}

interface DatabasePlan extends SwapPlan {
  source: string;
}

const storedObjectSchema = z.object({
  kind: z.enum(['TRIGGER', 'VIEW', 'PROCEDURE', 'FUNCTION', 'PACKAGE', 'PACKAGE BODY', 'EVENT']),
  name: z.string(),
  create: z.string(),
  sqlMode: z.string().nullable(),
  timeZone: z.string().nullable(),
  characterSetClient: z.string().nullable(),
  collationConnection: z.string().nullable(),
  databaseCollation: z.string().nullable(),
});
const mysqlStateSchema = z.object({
  tag: z.string().regex(/^[0-9a-f]{6}$/),
  plans: z.array(z.object({ source: z.string(), target: z.string(), staging: z.string(), old: z.string() })),
  staged: z.array(
    z.object({
      exists: z.boolean(),
      charset: z.string().nullable(),
      collation: z.string().nullable(),
      tables: z.array(z.string()),
      triggers: z.array(storedObjectSchema),
      views: z.array(storedObjectSchema),
      routines: z.array(storedObjectSchema),
      events: z.array(storedObjectSchema),
    }),
  ),
});
/** A MySQL restore as journaled: its staging tag, and once loaded, the plans and staged schemas. */
type MysqlState = {
  tag: string;
  plans: DatabasePlan[];
  staged: Schema[];
};

/**
 * MySQL/MariaDB: captured as one `mysqldump --single-transaction --databases …` stream (see
 * dump-format.ts), restored by replaying it into staging databases beside the targets and
 * swapping those in with one RENAME TABLE per database (swap.ts).
 *
 * Consistent mode: the connection, versions, databases and option file are made ready before
 * the writers are frozen (prepare); inside the freeze, after checking that no long query would
 * stall writers behind it, the agent's own connection takes FLUSH TABLES WITH READ LOCK,
 * records the binlog position, starts mysqldump, and unlocks as soon as mysqldump's consistent
 * snapshot is open; the lock dies with the connection, and every error path unlocks. Live mode
 * takes no lock.
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
  readonly #stateDir: string;

  constructor(options: MysqlDriverOptions) {
    this.#name = options.name;
    this.#config = options.config;
    this.#password = options.password;
    this.#stateDir = options.stateDir;
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

  async capture(options: CaptureOptions): Promise<Capture> {
    return captureAtOnce(await this.prepare(options), options.signal);
  }

  /**
   * Everything before the lock, run before a consistent backup's freeze: the connection, the
   * server's and mysqldump's versions, the databases, the long-query check and the clients'
   * option file. The check runs here so that a query already too long refuses the backup with
   * nothing frozen, and again under the freeze right before FTWRL (docs/freeze.md says why).
   */
  async prepare({ signal, consistent, partial }: CaptureOptions): Promise<PreparedCapture> {
    throwIfCancelled(signal);
    // Which mysqldump runs decides its options; asked beside the connecting.
    const probe = dumpClient(signal);
    probe.catch(() => {}); // awaited below; a failed connection must not leave it unhandled
    const endpoint = await this.#endpoint();
    const connection = await openConnection(endpoint, 'E_CAPTURE_FAILED', this.#what());
    const onAbort = () => closeConnection(connection, { force: true });
    signal.addEventListener('abort', onAbort, { once: true });
    let defaults: DefaultsFile | undefined;
    let output: DumpOutput | undefined;
    let session: PreparedSession;
    try {
      // Both known before any lock is taken: the options follow from them (dumpOptions).
      const server = await serverFlavour(connection);
      const client = await probe;
      const databases = partial ? await this.#existingDatabases(connection) : await this.#checkDatabasesExist(connection);
      if (consistent) await checkLongQueries(connection, this.#config.longQueryThreshold);
      // The password is on disk (0600, the private temp dir) from here until mysqldump has read it, or the release.
      const tempDir = await privateTempDir(this.#stateDir);
      defaults = await writeDefaultsFile(endpoint, tempDir);
      output = await openDumpOutput(tempDir, dumpHeaderLine(databases), signal);
      throwIfCancelled(signal);
      session = { connection, defaults, output, server, client, databases, consistent };
    } catch (error) {
      closeConnection(connection);
      await defaults?.remove();
      await output?.discard();
      if (signal.aborted) throw cancelled(signal);
      throw serverError(error, 'E_CAPTURE_FAILED', this.#what());
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
    // Once captured, the capture closes the connection and removes the file on every path.
    return handOver(
      (captureSignal) => this.#fixPointInTime(session, captureSignal),
      async () => {
        closeConnection(connection);
        await session.defaults.remove();
        await session.output.discard();
      },
    );
  }

  /**
   * The point-in-time work on a prepared session: consistent, FTWRL (after one more long-query
   * check), the binlog position, mysqldump started, UNLOCK once its snapshot is open.
   */
  async #fixPointInTime({ connection, defaults, output, server, client, databases, consistent }: PreparedSession, signal: AbortSignal): Promise<Capture> {
    // Closing the session is what cancels a pending FTWRL and frees a held one.
    const onAbort = () => closeConnection(connection, { force: true });
    signal.addEventListener('abort', onAbort, { once: true });
    let dump: RunningDump | undefined;
    let locked = false;
    let facts: Facts;
    try {
      throwIfCancelled(signal);
      let binlog: BinlogPosition | undefined;
      let ftwrlMs: number | null = null;
      let ftwrlWaitMs: number | null = null;
      let lockedAt = 0;
      if (consistent) {
        await checkLongQueries(connection, this.#config.longQueryThreshold);
        const asked = performance.now();
        await flushTablesWithReadLock(connection, this.#config.lockWaitTimeout);
        locked = true;
        lockedAt = performance.now();
        ftwrlWaitMs = Math.round((lockedAt - asked) * 100) / 100;
        await reachedPhase('mysql:locked'); // FLUSH TABLES WITH READ LOCK held: no commit until UNLOCK TABLES or the connection's end
      }
      // Under the lock no transaction commits: the position is exactly the snapshot's.
      binlog = await binlogPosition(connection);
      const binlogAt = new Date().toISOString();
      dump = startDump(defaults, dumpOptions(server, client), databases, output, signal);
      await withTimeout(dump.snapshotOpen, SNAPSHOT_TIMEOUT_MS, `mysqldump did not open its snapshot within ${SNAPSHOT_TIMEOUT_MS / 1000}s`);
      if (locked) {
        await connection.query('UNLOCK TABLES');
        locked = false;
        ftwrlMs = Math.round((performance.now() - lockedAt) * 100) / 100;
      }
      await defaults.remove(); // read by mysqldump at its start: the password leaves the disk now
      facts = {
        serverVersion: server.version,
        serverFlavour: server.flavour,
        mysqldump: `${client.flavour} ${client.version}`,
        databases: databases.join(','),
        binlogFile: binlog?.binlogFile ?? null,
        binlogPosition: binlog?.binlogPosition ?? null,
        gtid: binlog?.gtid ?? null,
        // When that position was read: a point-in-time restore takes this backup as its base for later points only.
        binlogAt: binlog ? binlogAt : null,
        // Live: read just before the snapshot opened; commits in between are in the dump, after it.
        binlogExact: binlog ? consistent : null,
        ftwrlMs,
        // How long FLUSH TABLES WITH READ LOCK took to get the lock (flushing tables, waiting for statements).
        ftwrlWaitMs,
      };
    } catch (error) {
      dump?.kill();
      dump?.stream.destroy();
      if (locked) await connection.query('UNLOCK TABLES').catch(() => {});
      closeConnection(connection);
      await defaults.remove();
      await output.discard();
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
        await defaults.remove();
        await output.close();
      },
    };
  }

  /**
   * Whether any configured database exists: a safety backup keeps whatever is there (a partial
   * capture, see capture's `partial`), and only a service with none of its databases holds
   * nothing to keep.
   */
  async targetExists(signal: AbortSignal): Promise<boolean> {
    throwIfCancelled(signal);
    let connection: Connection | undefined;
    try {
      connection = await openConnection(await this.#endpoint(), 'E_RESTORE_FAILED', this.#what());
      return (await this.#existingDatabases(connection)).length > 0;
    } finally {
      closeConnection(connection);
    }
  }

  async #existingDatabases(connection: Connection): Promise<string[]> {
    const rows = await queryRows<{ name: string }>(connection, 'SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (?)', [
      this.#config.databases,
    ]);
    return this.#config.databases.filter((db) => rows.some((r) => r.name === db));
  }

  async stage(source: Readable, signal: AbortSignal, options: StageOptions = {}): Promise<StagedRestore> {
    let connection: Connection | undefined;
    let defaults: DefaultsFile | undefined;
    const tag = randomBytes(3).toString('hex');
    // The staging names follow from the tag and the configured targets: journaled before the
    // load creates any of them, so a crash while loading leaves nothing unnamed.
    const state: MysqlState = { tag, plans: [], staged: [] };
    let plans: DatabasePlan[] = [];
    let gtidPurged: string | undefined;
    let replayed: ReplayFacts | undefined;
    try {
      throwIfCancelled(signal);
      await options.journal?.(state);
      const endpoint = await this.#endpoint();
      connection = await openConnection(endpoint, 'E_RESTORE_FAILED', this.#what());
      await dropStaleStaging(connection, this.#config.databases);
      defaults = await writeDefaultsFile(endpoint, await privateTempDir(this.#stateDir));
      // A dump may name no database on the server but its own (issue #10): those it could see.
      const existing = await queryRows<{ name: string }>(connection, 'SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA');
      const rewriter = new StagingRewriter({
        resolve: (databases) => {
          plans = this.#plan(databases, tag);
          return new Map(plans.map((p) => [p.source, p.staging]));
        },
        existing: existing.map((r) => r.name),
      });
      await loadDump(defaults, source, rewriter, signal);
      gtidPurged = rewriter.gtidPurged;
      // Point in time: the binlog from the dump's position on, onto the same staging databases.
      if (options.replay) {
        const binlog = await options.replay; // gathered while the dump loaded: its failure is the restore's
        await reachedPhase('restore:mysql:replaying');
        const rewrites = new Map(plans.map((p) => [p.source, p.staging]));
        replayed = await replayBinlog(defaults, binlog, rewrites, existing.map((r) => r.name), signal);
      }
      // What the swap recreates (triggers, views, routines, events), read now and journaled:
      // the swap drops the staged triggers before it moves the tables.
      const staged: Schema[] = [];
      for (const plan of plans) staged.push(retarget(await readSchema(connection, plan.staging), plans));
      Object.assign(state, { plans, staged });
      await options.journal?.(state);
    } catch (error) {
      source.destroy();
      if (connection) await dropStaging(connection, this.#stagingNames(tag)).catch(() => {});
      if (signal.aborted) throw cancelled(signal);
      throw error instanceof AgentError ? error : serverError(error, 'E_RESTORE_FAILED', this.#what());
    } finally {
      closeConnection(connection);
      await defaults?.remove();
    }
    return {
      facts: {
        databases: plans.map((p) => (p.source === p.target ? p.target : `${p.source}->${p.target}`)).join(','),
        ...(gtidPurged !== undefined && { gtidPurgedDropped: gtidPurged, warning: gtidPurgedWarning(gtidPurged) }),
        ...(replayed && {
          replayedStatements: replayed.statements,
          replaySkipped: replayed.skipped,
          lastAppliedGtid: replayed.last?.gtid ?? null,
          lastAppliedTime: replayed.last?.time ?? null,
          lastAppliedPosition: replayed.last ? `${replayed.last.file}:${replayed.last.position}` : null,
        }),
      },
      commit: () => this.#commit(state),
      discard: () => this.#discard(tag),
    };
  }

  async resumeCommit(state: StagedState): Promise<void> {
    await this.#commit(this.#checkState(state));
  }

  async discardStaged(state: StagedState): Promise<void> {
    await this.#discard(this.#checkState(state).tag);
  }

  /** A journaled state names databases to rename and drop: only this service's own. */
  #checkState(state: StagedState): MysqlState {
    const parsed = mysqlStateSchema.safeParse(state);
    const names = parsed.success ? this.#stagingNames(parsed.data.tag) : [];
    const ok =
      parsed.success &&
      parsed.data.plans.length === parsed.data.staged.length &&
      parsed.data.plans.every((p) => this.#config.databases.includes(p.target) && names.includes(p.staging) && p.old === derivedName(p.target, `__sa_old_${parsed.data.tag}`));
    if (!ok) throw new AgentError('E_RESTORE_FAILED', `${this.#what()}: the journaled restore does not name this service's own staging databases; left alone`);
    return parsed.data as MysqlState;
  }

  /** Swaps each staged database in; the staging databases are dropped once all are in. */
  async #commit(state: MysqlState): Promise<void> {
    const connection = await openConnection(await this.#endpoint(), 'E_RESTORE_FAILED', this.#what());
    const done: string[] = [];
    try {
      for (const [index, plan] of state.plans.entries()) {
        try {
          await swapDatabase(connection, plan, state.staged[index]!);
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
      await dropStaging(connection, state.plans.map((p) => p.staging));
    } finally {
      closeConnection(connection);
    }
  }

  async #discard(tag: string): Promise<void> {
    const connection = await openConnection(await this.#endpoint(), 'E_RESTORE_FAILED', this.#what());
    try {
      await dropStaging(connection, this.#stagingNames(tag));
    } finally {
      closeConnection(connection);
    }
  }

  #stagingNames(tag: string): string[] {
    return this.#config.databases.map((target) => derivedName(target, `${STAGE_MARK}${tag}`));
  }

  /** The backup's databases onto this service's: by name when the sets agree, else by position. */
  #plan(sources: readonly string[], tag: string): DatabasePlan[] {
    const targets = this.#config.databases;
    if (new Set(targets).size !== targets.length) {
      throw new AgentError('E_CONFIG_INVALID', `${this.#what()}: databases lists a database twice: ${targets.join(', ')}`);
    }
    // A backup of some of the databases (a safety backup of a partly created target) maps by name.
    const byName = sources.every((s) => targets.includes(s));
    if (!byName && sources.length !== targets.length) {
      throw new AgentError(
        'E_RESTORE_FAILED',
        `${this.#what()}: the backup holds ${sources.length} database(s) (${sources.join(', ')}) but the service restored into has ` +
          `${targets.length} (${targets.join(', ')}); databases map by name, or else one to one by position`,
      );
    }
    return sources.map((source, i) => {
      const target = byName ? source : targets[i]!;
      return { source, target, staging: derivedName(target, `${STAGE_MARK}${tag}`), old: derivedName(target, `__sa_old_${tag}`) };
    });
  }

  /** The configured databases, all of which must exist (a dump of a missing one fails). */
  async #checkDatabasesExist(connection: Connection): Promise<readonly string[]> {
    const existing = await this.#existingDatabases(connection);
    const missing = this.#config.databases.filter((db) => !existing.includes(db));
    if (missing.length) {
      throw new AgentError('E_CAPTURE_FAILED', `${this.#what()}: database ${missing.join(', ')} does not exist on ${describeEndpoint(await this.#endpoint())}`);
    }
    return this.#config.databases;
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
