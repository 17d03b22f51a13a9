import type { Connection } from 'mysql2/promise';
import { AgentError } from '../../errors.ts';
import { queryRows } from './connection.ts';

/** Server facts for the manifest: when binary logging is on, the binlog position (the version: flavour.ts). */
export interface BinlogPosition {
  binlogFile: string;
  binlogPosition: number;
  /** MariaDB's GTID position (gtid_binlog_pos), or MySQL's gtid_executed; null when none. */
  gtid: string | null;
}

/** `SHOW MASTER STATUS` (`SHOW BINARY LOG STATUS` on MySQL 8.4+); undefined without a binlog. */
export async function binlogPosition(connection: Connection): Promise<BinlogPosition | undefined> {
  let rows: { File?: string; Position?: number | string; Executed_Gtid_Set?: string }[];
  try {
    rows = await queryRows(connection, 'SHOW MASTER STATUS');
  } catch {
    rows = await queryRows(connection, 'SHOW BINARY LOG STATUS').catch(() => []);
  }
  const row = rows[0];
  if (!row?.File) return undefined;
  let gtid: string | null = row.Executed_Gtid_Set || null;
  if (gtid === null) {
    const [mariadb] = await queryRows<{ gtid: string | null }>(connection, 'SELECT @@GLOBAL.gtid_binlog_pos AS gtid').catch(() => []);
    gtid = mariadb?.gtid || null;
  }
  return { binlogFile: row.File, binlogPosition: Number(row.Position), gtid };
}

/** Commands of sessions that never hold table locks for long (or are the server's own). */
const IDLE_COMMANDS = new Set(['Sleep', 'Daemon', 'Binlog Dump', 'Binlog Dump GTID', 'Slave_IO', 'Slave_SQL', 'Slave_worker', 'Connect', 'Killed']);

interface ProcessRow {
  ID: number | string;
  USER: string;
  HOST: string;
  DB: string | null;
  COMMAND: string;
  TIME: number | string;
  TIME_MS?: number | string;
  INFO: string | null;
}

/**
 * Refuses FLUSH TABLES WITH READ LOCK while another session runs a statement longer than the
 * threshold: FTWRL would wait for it and every writer would queue behind FTWRL.
 */
export async function checkLongQueries(connection: Connection, thresholdMs: number): Promise<void> {
  const rows = await queryRows<ProcessRow>(connection, 'SELECT * FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()');
  const long = rows
    .filter((r) => !IDLE_COMMANDS.has(r.COMMAND) && r.USER !== 'system user' && r.USER !== 'event_scheduler')
    .map((r) => ({ ...r, ms: r.TIME_MS !== undefined && r.TIME_MS !== null ? Number(r.TIME_MS) : Number(r.TIME) * 1000 }))
    .filter((r) => r.ms >= thresholdMs)
    .sort((a, b) => b.ms - a.ms);
  if (long.length === 0) return;
  const first = long[0]!;
  const statement = (first.INFO ?? '').replace(/\s+/g, ' ').slice(0, 200);
  throw new AgentError(
    'E_CAPTURE_FAILED',
    `consistent MySQL backup refused: ${long.length === 1 ? 'a query has' : `${long.length} queries have`} been running longer than ` +
      `${thresholdMs / 1000}s (longQueryThreshold), and FLUSH TABLES WITH READ LOCK would stall every writer behind it; ` +
      `longest: id ${first.ID} (${first.USER}@${first.HOST}${first.DB ? `, db ${first.DB}` : ''}, ${(first.ms / 1000).toFixed(1)}s): ${statement}. ` +
      `Retry later, end that query, or use --live`,
    { details: { processId: Number(first.ID), user: first.USER, runningMs: Math.round(first.ms), statement } },
  );
}

/** FLUSH TABLES WITH READ LOCK with a bounded wait; on timeout nothing is held. */
export async function flushTablesWithReadLock(connection: Connection, lockWaitTimeoutMs: number): Promise<void> {
  const seconds = Math.max(1, Math.ceil(lockWaitTimeoutMs / 1000));
  await connection.query(`SET SESSION lock_wait_timeout = ${seconds}`);
  try {
    await connection.query('FLUSH TABLES WITH READ LOCK');
  } catch (error) {
    const e = error as { code?: string; sqlMessage?: string };
    if (e.code === 'ER_LOCK_WAIT_TIMEOUT') {
      throw new AgentError(
        'E_CAPTURE_FAILED',
        `FLUSH TABLES WITH READ LOCK did not get the lock within ${seconds}s (lockWaitTimeout): a long transaction or DDL holds it; no lock is held. Retry later or use --live`,
        { cause: error },
      );
    }
    throw error;
  }
}
