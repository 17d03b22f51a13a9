import type { Connection } from 'mysql2/promise';
import { AgentError } from '../../errors.ts';
import { queryRows } from '../mysql/connection.ts';

/**
 * What point-in-time restore needs of the server and of the agent's account, checked at
 * daemon start and on `status`, all at once: an operator fixing one missing setting at a time
 * would otherwise learn of the next only at the next restart.
 *
 * - `log_bin=ON`: there is a binary log to stream.
 * - `binlog_format=ROW`: a replay of STATEMENT events re-runs statements (NOW(), UUID(),
 *   LIMIT without ORDER BY…) and may land other rows than the original did.
 * - `binlog_row_image=FULL`: the replay runs into staging tables that a MINIMAL image might
 *   not identify a row in.
 * - `server_id ≠ 0`: a server with id 0 refuses every replica, and so the stream.
 * - Grants, global: REPLICATION SLAVE (the binlog dump the stream is), REPLICATION CLIENT —
 *   BINLOG MONITOR on MariaDB ≥ 10.5 — (SHOW MASTER STATUS and SHOW BINARY LOGS, where the
 *   stream starts and whether a file is purged), and with `replay` BINLOG REPLAY (MariaDB ≥
 *   10.5; SUPER before, and on MySQL) to run the `BINLOG '…'` statements of ROW events.
 *   ALL PRIVILEGES covers them all, SUPER covers the last two.
 *
 * Only the account's own grants and those of its active roles (what `SHOW GRANTS` lists) are
 * read; a privilege given through a role the session has not set shows as missing.
 */
export async function checkBinlogRequirements(connection: Connection, options: { replay: boolean }): Promise<void> {
  const [vars] = await queryRows<{ logBin: string | number; format: string | null; rowImage: string | null; serverId: string | number }>(
    connection,
    'SELECT @@GLOBAL.log_bin AS logBin, @@GLOBAL.binlog_format AS format, @@GLOBAL.binlog_row_image AS rowImage, @@GLOBAL.server_id AS serverId',
  );
  const problems: string[] = [];
  if (!vars || !isOn(vars.logBin)) problems.push('log_bin is OFF: start the server with --log-bin (e.g. log_bin=binlog in its [mysqld] section)');
  if (vars && String(vars.format).toUpperCase() !== 'ROW') problems.push(`binlog_format is ${vars.format}: set binlog_format=ROW (SET GLOBAL binlog_format='ROW' and in the server's config)`);
  if (vars && String(vars.rowImage).toUpperCase() !== 'FULL') problems.push(`binlog_row_image is ${vars.rowImage}: set binlog_row_image=FULL`);
  if (vars && Number(vars.serverId) === 0) problems.push('server_id is 0, which refuses every replica: set server_id to a non-zero number unique among the servers');

  const privileges = globalPrivileges(await grants(connection));
  const has = (...names: string[]) => privileges.has('ALL PRIVILEGES') || names.some((name) => privileges.has(name));
  const missing: Array<{ grant: string; why: string }> = [];
  if (!has('REPLICATION SLAVE')) missing.push({ grant: 'REPLICATION SLAVE', why: 'the stream reads the binary log as a replica does' });
  if (!has('REPLICATION CLIENT', 'BINLOG MONITOR', 'SUPER')) missing.push({ grant: 'BINLOG MONITOR', why: 'REPLICATION CLIENT before MariaDB 10.5 and on MySQL: SHOW BINARY LOGS, SHOW MASTER STATUS' });
  if (options.replay && !has('BINLOG REPLAY', 'SUPER')) missing.push({ grant: 'BINLOG REPLAY', why: 'SUPER before MariaDB 10.5 and on MySQL: the restore replays ROW events' });
  if (missing.length > 0) {
    const list = missing.map((m) => `${m.grant} (${m.why})`).join(' and ');
    problems.push(`the account lacks the privilege ${list}: GRANT ${missing.map((m) => m.grant).join(', ')} ON *.* TO the agent's user`);
  }

  if (problems.length > 0) {
    throw new AgentError('E_CONFIG_INVALID', `point-in-time restore (pitr) cannot work with this server: ${problems.join('; ')}`, {
      details: { problems },
    });
  }
}

function isOn(value: string | number): boolean {
  return value === 1 || value === '1' || String(value).toUpperCase() === 'ON';
}

async function grants(connection: Connection): Promise<string[]> {
  const rows = await queryRows<Record<string, string>>(connection, 'SHOW GRANTS');
  return rows.map((row) => String(Object.values(row)[0] ?? ''));
}

/** The privileges of every `GRANT … ON *.* TO …` line, upper-cased (`GRANT role TO user` lines name no privileges and are skipped). */
export function globalPrivileges(lines: readonly string[]): Set<string> {
  const privileges = new Set<string>();
  for (const line of lines) {
    const match = /^GRANT\s+(.+?)\s+ON\s+\*\.\*\s+TO\s/i.exec(line);
    if (!match) continue;
    for (const privilege of match[1]!.split(',')) privileges.add(privilege.trim().replace(/\s+/g, ' ').toUpperCase());
  }
  return privileges;
}
