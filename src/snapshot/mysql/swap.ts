import type { Connection } from 'mysql2/promise';
import { AgentError } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { queryRows, quoteIdent } from './connection.ts';

/** Stored objects that RENAME TABLE does not carry across databases: recreated from definitions. */
type ObjectKind = 'TRIGGER' | 'VIEW' | 'PROCEDURE' | 'FUNCTION' | 'PACKAGE' | 'PACKAGE BODY' | 'EVENT';

export interface StoredObject {
  kind: ObjectKind;
  name: string;
  /** The CREATE statement, unqualified (read while the object's database was the current one). */
  create: string;
  sqlMode: string | null;
  timeZone: string | null;
  characterSetClient: string | null;
  collationConnection: string | null;
  databaseCollation: string | null;
}

export interface Schema {
  exists: boolean;
  charset: string | null;
  collation: string | null;
  /** Base tables and sequences: everything RENAME TABLE moves. */
  tables: string[];
  triggers: StoredObject[];
  views: StoredObject[];
  routines: StoredObject[];
  events: StoredObject[];
}

export interface SwapPlan {
  staging: string;
  target: string;
  /** Where the target's tables wait until the swap succeeded; dropped after. */
  old: string;
}

export interface SwapResult {
  tables: number;
  views: number;
  routines: number;
  triggers: number;
  events: number;
}

/**
 * Swaps a staged database into its target: one RENAME TABLE statement moves every base table
 * of the target out (to `old`) and every staged one in, atomically. Triggers (which pin a table
 * to its database), views, routines and events do not move with RENAME: the target's are
 * dropped and the staged ones recreated from their SHOW CREATE definitions (`staged`, read when
 * the restore was staged and journaled with it), with their definer, sql_mode, character set
 * and collation. The target ends up with exactly the staged tables; its old tables are dropped
 * only once everything else succeeded. A failure puts the target back as it was before
 * rejecting. The staging database is left for the caller to drop.
 *
 * Run again after a crash at any point, it finishes the swap: the RENAME happened when the
 * staged tables have left staging or the target's originals are in `old`; the objects are then
 * (re)created from `staged`, whatever part of them an earlier run made.
 */
export async function swapDatabase(connection: Connection, plan: SwapPlan, staged: Schema): Promise<SwapResult> {
  await connection.query('SET SESSION foreign_key_checks = 0');
  const now = await readSchema(connection, plan.staging);
  // Staging databases are dropped only once every database of the element is swapped in.
  if (now.exists) {
    const parked = await readSchema(connection, plan.old);
    const renamed = (staged.tables.length > 0 && now.tables.length === 0) || parked.tables.length > 0;
    if (renamed) await installObjects(connection, plan, staged);
    else await swapTables(connection, plan, staged);
    await reachedPhase('restore:mysql:swapped');
    await connection.query(`DROP DATABASE IF EXISTS ${quoteIdent(plan.old)}`);
  }
  return {
    tables: staged.tables.length,
    views: staged.views.length,
    routines: staged.routines.length,
    triggers: staged.triggers.length,
    events: staged.events.length,
  };
}

async function swapTables(connection: Connection, plan: SwapPlan, staged: Schema): Promise<void> {
  const before = await readSchema(connection, plan.target);
  if (!before.exists) {
    await connection.query(`CREATE DATABASE ${quoteIdent(plan.target)}${charsetClause(staged)}`);
  }
  await connection.query(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(plan.old)}`);

  let renamed = false;
  try {
    // Tables with triggers cannot change database, and a view may stand where a table goes.
    await dropObjects(connection, plan.staging, staged.triggers);
    await dropObjects(connection, plan.target, before.triggers);
    await dropObjects(connection, plan.target, before.views);
    const pairs = [
      ...before.tables.map((t) => `${qualified(plan.target, t)} TO ${qualified(plan.old, t)}`),
      ...staged.tables.map((t) => `${qualified(plan.staging, t)} TO ${qualified(plan.target, t)}`),
    ];
    if (pairs.length > 0) await connection.query(`RENAME TABLE ${pairs.join(', ')}`);
    renamed = true;
    await reachedPhase('restore:mysql:renamed');
    await installObjects(connection, plan, staged);
  } catch (error) {
    const reason = (error as { sqlMessage?: string; message?: string }).sqlMessage ?? (error as Error).message;
    try {
      await rollBack(connection, plan, before, staged, renamed);
    } catch (undoError) {
      throw new AgentError(
        'E_RESTORE_FAILED',
        `swapping ${plan.staging} into ${plan.target} failed (${reason}) and so did putting ${plan.target} back ` +
          `(${(undoError as Error).message}); its original tables are kept in database ${plan.old}`,
        { cause: error },
      );
    }
    throw new AgentError('E_RESTORE_FAILED', `swapping ${plan.staging} into ${plan.target} failed: ${reason}; ${plan.target} was put back as it was`, {
      cause: error,
    });
  }
}

/** Once the tables are in: the target's objects replaced by the staged ones. */
async function installObjects(connection: Connection, plan: SwapPlan, staged: Schema): Promise<void> {
  const current = await readSchema(connection, plan.target);
  await dropObjects(connection, plan.target, [...current.triggers, ...current.views, ...current.routines, ...current.events]);
  if (staged.charset && staged.collation) {
    await connection.query(`ALTER DATABASE ${quoteIdent(plan.target)}${charsetClause(staged)}`);
  }
  // Routines before views: a view may call a stored function.
  await createObjects(connection, plan.target, staged.routines, staged.collation);
  await createObjects(connection, plan.target, staged.views, staged.collation);
  await createObjects(connection, plan.target, staged.events, staged.collation);
  await createObjects(connection, plan.target, staged.triggers, staged.collation);
}

/** Puts the target back: the staged tables return to staging, the old ones to the target. */
async function rollBack(connection: Connection, plan: SwapPlan, before: Schema, staged: Schema, renamed: boolean): Promise<void> {
  const now = await readSchema(connection, plan.target);
  await dropObjects(connection, plan.target, [...now.triggers, ...now.views, ...now.routines, ...now.events]);
  if (renamed) {
    const pairs = [
      ...staged.tables.map((t) => `${qualified(plan.target, t)} TO ${qualified(plan.staging, t)}`),
      ...before.tables.map((t) => `${qualified(plan.old, t)} TO ${qualified(plan.target, t)}`),
    ];
    if (pairs.length > 0) await connection.query(`RENAME TABLE ${pairs.join(', ')}`);
  }
  if (!before.exists) {
    await connection.query(`DROP DATABASE ${quoteIdent(plan.target)}`);
  } else {
    if (before.charset && before.collation) await connection.query(`ALTER DATABASE ${quoteIdent(plan.target)}${charsetClause(before)}`);
    await createObjects(connection, plan.target, before.routines, before.collation);
    await createObjects(connection, plan.target, before.views, before.collation);
    await createObjects(connection, plan.target, before.events, before.collation);
    await createObjects(connection, plan.target, before.triggers, before.collation);
  }
  await connection.query(`DROP DATABASE ${quoteIdent(plan.old)}`);
}

function qualified(db: string, name: string): string {
  return `${quoteIdent(db)}.${quoteIdent(name)}`;
}

function charsetClause(schema: Pick<Schema, 'charset' | 'collation'>): string {
  return schema.charset && schema.collation ? ` CHARACTER SET ${schema.charset} COLLATE ${schema.collation}` : '';
}

export async function readSchema(connection: Connection, db: string): Promise<Schema> {
  const [schema] = await queryRows<{ charset: string; collation: string }>(
    connection,
    'SELECT DEFAULT_CHARACTER_SET_NAME AS charset, DEFAULT_COLLATION_NAME AS collation FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?',
    [db],
  );
  if (!schema) return { exists: false, charset: null, collation: null, tables: [], triggers: [], views: [], routines: [], events: [] };
  // SHOW CREATE leaves names in the current database unqualified: read them from inside it.
  await connection.query(`USE ${quoteIdent(db)}`);
  const tables = await queryRows<{ name: string; type: string }>(
    connection,
    'SELECT TABLE_NAME AS name, TABLE_TYPE AS type FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME',
    [db],
  );
  const triggerNames = await queryRows<{ name: string }>(
    connection,
    // The creation order is the firing order of triggers on the same table, timing and event.
    'SELECT TRIGGER_NAME AS name FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER',
    [db],
  );
  const routineNames = await queryRows<{ name: string; type: ObjectKind }>(
    connection,
    'SELECT ROUTINE_NAME AS name, ROUTINE_TYPE AS type FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY ROUTINE_TYPE, ROUTINE_NAME',
    [db],
  );
  const eventNames = await queryRows<{ name: string }>(connection, 'SELECT EVENT_NAME AS name FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY EVENT_NAME', [
    db,
  ]);
  const read = (kind: ObjectKind, names: string[]) => Promise.all(names.map((name) => showCreate(connection, db, kind, name)));
  const result: Schema = {
    exists: true,
    charset: schema.charset,
    collation: schema.collation,
    tables: tables.filter((t) => t.type !== 'VIEW').map((t) => t.name),
    triggers: await read('TRIGGER', triggerNames.map((t) => t.name)),
    views: await read('VIEW', tables.filter((t) => t.type === 'VIEW').map((t) => t.name)),
    routines: [],
    events: await read('EVENT', eventNames.map((e) => e.name)),
  };
  for (const routine of routineNames) result.routines.push(await showCreate(connection, db, routine.type, routine.name));
  await connection.query('USE information_schema');
  return result;
}

async function showCreate(connection: Connection, db: string, kind: ObjectKind, name: string): Promise<StoredObject> {
  const [row] = await queryRows<Record<string, string | null>>(connection, `SHOW CREATE ${kind} ${quoteIdent(name)}`);
  const create = row && (kind === 'TRIGGER' ? row['SQL Original Statement'] : Object.entries(row).find(([k]) => k.startsWith('Create '))?.[1]);
  if (!row || !create) {
    throw new AgentError('E_RESTORE_FAILED', `cannot read the definition of ${kind.toLowerCase()} ${db}.${name} (does the agent's user have the privileges to see it?)`);
  }
  return {
    kind,
    name,
    create,
    sqlMode: row.sql_mode ?? null,
    timeZone: row.time_zone ?? null,
    characterSetClient: row.character_set_client ?? null,
    collationConnection: row.collation_connection ?? null,
    databaseCollation: row['Database Collation'] ?? null,
  };
}

async function dropObjects(connection: Connection, db: string, objects: readonly StoredObject[]): Promise<void> {
  for (const object of objects) {
    await connection.query(`DROP ${object.kind} IF EXISTS ${qualified(db, object.name)}`);
  }
}

/**
 * Recreates objects in `db` from their definitions, in the session context they were created
 * in. Views may depend on views: those that fail are retried while each round makes progress.
 */
async function createObjects(connection: Connection, db: string, objects: readonly StoredObject[], dbCollation: string | null): Promise<void> {
  if (objects.length === 0) return;
  await connection.query(`USE ${quoteIdent(db)}`);
  let pending = [...objects];
  try {
    while (pending.length > 0) {
      const failed: { object: StoredObject; error: unknown }[] = [];
      for (const object of pending) {
        try {
          await createObject(connection, db, object, dbCollation);
        } catch (error) {
          if (object.kind !== 'VIEW') throw error;
          failed.push({ object, error });
        }
      }
      if (failed.length === pending.length) throw failed[0]!.error;
      pending = failed.map((f) => f.object);
    }
  } finally {
    await connection.query("SET NAMES utf8mb4 COLLATE utf8mb4_general_ci, SESSION sql_mode = DEFAULT, SESSION time_zone = DEFAULT");
    await connection.query('USE information_schema');
  }
}

async function createObject(connection: Connection, db: string, object: StoredObject, dbCollation: string | null): Promise<void> {
  await connection.query(`SET SESSION sql_mode = ?`, [object.sqlMode ?? '']);
  if (object.timeZone) await connection.query('SET SESSION time_zone = ?', [object.timeZone]);
  // Our bytes are UTF-8: the object's own client character set is kept when its text is ASCII
  // (identical bytes); the connection collation, which governs its string literals, always.
  const ascii = /^[\x00-\x7f]*$/.test(object.create);
  await connection.query(`SET character_set_client = ?`, [ascii && object.characterSetClient ? object.characterSetClient : 'utf8mb4']);
  if (object.collationConnection) await connection.query('SET collation_connection = ?', [object.collationConnection]);
  // A routine remembers its database's collation at creation: mysqldump's own trick, ALTER around it.
  const switchCollation = object.databaseCollation && dbCollation && object.databaseCollation !== dbCollation;
  if (switchCollation) await connection.query(`ALTER DATABASE ${quoteIdent(db)} COLLATE ${object.databaseCollation}`);
  try {
    await connection.query(object.create);
  } finally {
    if (switchCollation) await connection.query(`ALTER DATABASE ${quoteIdent(db)} COLLATE ${dbCollation}`);
    await connection.query('SET NAMES utf8mb4 COLLATE utf8mb4_general_ci');
  }
}
