import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Connection, RowDataPacket } from 'mysql2/promise';
import { childEnv } from '../../child-env.ts';
import { AgentError, type ErrorCode } from '../../errors.ts';

/** Where and as whom the agent talks to one MySQL/MariaDB server. */
export interface MysqlEndpoint {
  host: string;
  port: number;
  /** A unix socket wins over host/port when set. */
  socket: string | undefined;
  user: string;
  password: string | undefined;
}

export function describeEndpoint(endpoint: MysqlEndpoint): string {
  return endpoint.socket ? `${endpoint.user}@${endpoint.socket}` : `${endpoint.user}@${endpoint.host}:${endpoint.port}`;
}

/** `name` as a backquoted identifier. */
export function quoteIdent(name: string): string {
  return `\`${name.replaceAll('`', '``')}\``;
}

/**
 * The agent's own control connection (mysql2): locks, processlist, information_schema and the
 * staging databases. Locks taken on it die with it, and so with the agent.
 */
export async function openConnection(endpoint: MysqlEndpoint, code: ErrorCode, what: string): Promise<Connection> {
  try {
    // Loaded on first use: an agent without MySQL services never pays for the client's memory.
    const { createConnection } = await import('mysql2/promise');
    const connection = await createConnection({
      ...(endpoint.socket ? { socketPath: endpoint.socket } : { host: endpoint.host, port: endpoint.port }),
      user: endpoint.user,
      password: endpoint.password ?? '',
      charset: 'utf8mb4_general_ci',
      connectTimeout: 10_000,
      multipleStatements: false,
      supportBigNumbers: true,
      bigNumberStrings: true,
      dateStrings: true,
    });
    // An unexpected drop (server killed) is reported by the next query; without a listener
    // mysql2 would throw it from an event emitter.
    connection.on('error', () => {});
    return connection;
  } catch (error) {
    throw serverError(error, code, `${what}: cannot connect to MySQL as ${describeEndpoint(endpoint)}`);
  }
}

/**
 * Closes the connection: politely (COM_QUIT, so the server logs no aborted connection), or at
 * once with `force` (a cancel while a statement is pending; the server then drops the session
 * and every lock it held). Never throws, never waits.
 */
export function closeConnection(connection: Connection | undefined, options: { force?: boolean } = {}): void {
  if (!connection) return;
  if (options.force) {
    try {
      connection.destroy();
    } catch {
      // already closed
    }
    return;
  }
  // A server that no longer answers does not get to keep the socket open.
  const timer = setTimeout(() => closeConnection(connection, { force: true }), 2_000).unref();
  connection.end().then(
    () => clearTimeout(timer),
    () => {
      clearTimeout(timer);
      closeConnection(connection, { force: true });
    },
  );
}

const AUTH_ERRORS = new Set(['ER_ACCESS_DENIED_ERROR', 'ER_ACCESS_DENIED_NO_PASSWORD_ERROR', 'ER_DBACCESS_DENIED_ERROR']);

/** A mysql2 error as an AgentError whose message says what failed (authentication, refused…). */
export function serverError(error: unknown, code: ErrorCode, context: string): AgentError {
  if (error instanceof AgentError) return error;
  const e = error as { code?: string; errno?: number; sqlMessage?: string; message?: string };
  const detail = e.sqlMessage ?? e.message ?? String(error);
  let hint = '';
  if (e.code && AUTH_ERRORS.has(e.code)) hint = 'authentication failed (check the service user and password): ';
  else if (e.code === 'ECONNREFUSED' || e.code === 'ENOENT') hint = 'the server is not reachable (is it running?): ';
  else if (e.code === 'PROTOCOL_CONNECTION_LOST' || e.code === 'ECONNRESET' || e.code === 'EPIPE') hint = 'the connection to the server was lost: ';
  return new AgentError(code, `${context}: ${hint}${detail}`, { cause: error, details: e.code ? { mysqlCode: e.code } : undefined });
}

export async function queryRows<T extends object>(connection: Connection, sql: string, values?: unknown[]): Promise<T[]> {
  const [rows] = await connection.query<RowDataPacket[]>(sql, values);
  return rows as unknown as T[];
}

/**
 * The option file that carries the credentials to mysqldump and mysql: 0600, in the process's
 * private temp directory under the state dir (private-temp.ts: never /tmp, and removed by the
 * next start if this process is killed), removed by `remove()`. The password never reaches a
 * command line (ps) or a child's environment (/proc/PID/environ).
 */
export interface DefaultsFile {
  path: string;
  remove(): Promise<void>;
}

export async function writeDefaultsFile(endpoint: MysqlEndpoint, tempDir: string): Promise<DefaultsFile> {
  const file = path.join(tempDir, `mysql-${randomBytes(6).toString('hex')}.cnf`);
  const lines = ['[client]', `user=${optionValue(endpoint.user)}`];
  if (endpoint.password !== undefined) lines.push(`password=${optionValue(endpoint.password)}`);
  if (endpoint.socket) {
    lines.push('protocol=SOCKET', `socket=${optionValue(endpoint.socket)}`);
  } else {
    lines.push('protocol=TCP', `host=${optionValue(endpoint.host)}`, `port=${endpoint.port}`);
  }
  let removed = false;
  const remove = async () => {
    if (removed) return;
    removed = true;
    await rm(file, { force: true });
  };
  try {
    await writeFile(file, `${lines.join('\n')}\n`, { mode: 0o600, flag: 'wx' });
  } catch (error) {
    await remove();
    throw error;
  }
  return { path: file, remove };
}

/** An option-file value: double-quoted, with the escapes my_load_defaults understands. */
function optionValue(value: string): string {
  const escaped = value.replace(/[\\"\n\r\t\b]/g, (c) => ({ '\\': '\\\\', '"': '\\"', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\b': '\\b' })[c]!);
  return `"${escaped}"`;
}

/**
 * The first arguments of every client command. `--defaults-file` (not -extra-file): only our
 * file is read, so neither /etc/mysql nor the agent user's ~/.my.cnf can swap the credentials
 * or the server under us.
 */
export function clientArgs(defaults: DefaultsFile): string[] {
  return [`--defaults-file=${defaults.path}`];
}

/**
 * How every client command runs: streamed (no buffering), its stderr read for messages, killed
 * on cancel, and in a clean environment, since the agent's own may hold the very password
 * (`password: {env: …}`) and MYSQL_PWD/MYSQL_HOST would override ours.
 */
export function clientProcessOptions(signal: AbortSignal) {
  return {
    buffer: false,
    stderr: 'pipe',
    env: childEnv(),
    extendEnv: false,
    cancelSignal: signal,
    forceKillAfterDelay: 2_000,
  } as const;
}
