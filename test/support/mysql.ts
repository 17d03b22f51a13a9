import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createConnection, type Connection, type RowDataPacket } from 'mysql2/promise';
import { MysqlDriver } from '../../src/snapshot/mysql/driver.ts';
import type { MysqlTestServer } from './global-setup.ts';
import { mysqlTestServer } from './servers.ts';

/**
 * The test MariaDB started by scripts/mariadb.sh: this worker's of the vitest global setup (servers.ts),
 * or, for a run without it, the one in $MARIADB_DIR (started if needed). Address, socket and the
 * agent user's credentials: the global setup's shape.
 */
export type MariadbTestServer = MysqlTestServer;

const ROOT = path.resolve(import.meta.dirname, '../..');
const SCRIPT = path.join(ROOT, 'scripts/mariadb.sh');

/** A driver of `databases` on the test server, as the agent's user, its state under `stateDir`. */
export function testMysqlDriver(server: MariadbTestServer, databases: string[], stateDir: string): MysqlDriver {
  return new MysqlDriver({
    name: 'db',
    config: { kind: 'mysql', host: server.host, port: server.port, socket: undefined, user: server.user, databases, lockWaitTimeout: 5_000, longQueryThreshold: 10_000 },
    stateDir,
    password: async () => server.password,
  });
}

/** The global setup's server, else $MARIADB_DIR's (started unless it runs). */
export function mariadbServer(): MariadbTestServer {
  const provided = mysqlTestServer();
  if (provided?.host) return provided;
  mariadbScript('start', { dir: process.env.MARIADB_DIR ?? '/tmp/storage-agent-test-mariadb', port: Number(process.env.MARIADB_PORT ?? 13306) });
  return readServerEnv(process.env.MARIADB_DIR ?? '/tmp/storage-agent-test-mariadb');
}

/**
 * Runs `scripts/mariadb.sh COMMAND` for that server: `kill` SIGKILLs it (a crash; the data
 * stays), `start` brings it back on the same data (and is a no-op while it runs).
 */
export function mariadbScript(command: 'start' | 'stop' | 'status' | 'kill', server: Pick<MariadbTestServer, 'dir' | 'port'>): void {
  execFileSync('bash', [SCRIPT, command], {
    env: { ...process.env, MARIADB_DIR: server.dir, MARIADB_PORT: String(server.port) },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

function readServerEnv(dir: string): MariadbTestServer {
  const vars = Object.fromEntries(
    readFileSync(path.join(dir, 'env'), 'utf8')
      .split('\n')
      .filter((line) => line.includes('='))
      .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
  );
  return {
    dir,
    host: vars.MYSQL_HOST!,
    port: Number(vars.MYSQL_PORT),
    user: vars.MYSQL_USER!,
    password: vars.MYSQL_PASSWORD!,
    socket: vars.MYSQL_SOCKET!,
  };
}

/** A connection as the agent user (or as root over the socket: unix_socket auth, tests run as root). */
export async function connect(server: MariadbTestServer, options: { root?: boolean; database?: string } = {}): Promise<Connection> {
  const connection = await createConnection({
    ...(options.root ? { socketPath: server.socket, user: 'root' } : { host: server.host, port: server.port, user: server.user, password: server.password }),
    database: options.database,
    charset: 'utf8mb4_general_ci',
    multipleStatements: true,
    supportBigNumbers: true,
    dateStrings: true,
  });
  connection.on('error', () => {}); // a killed server is reported by the next query
  return connection;
}

/** A database name no other test uses: `<prefix>_<8 hex>`. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${randomBytes(4).toString('hex')}`;
}

export async function createDatabase(connection: Connection, prefix: string): Promise<string> {
  const name = uniqueName(prefix);
  await connection.query(`CREATE DATABASE \`${name}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`);
  return name;
}

export async function rows<T = Record<string, unknown>>(connection: Connection, sql: string, values?: unknown[]): Promise<T[]> {
  const [result] = await connection.query<RowDataPacket[]>(sql, values);
  return result as unknown as T[];
}

/** Runs SQL (several statements allowed; no DELIMITER needed through the API). */
export async function runSql(connection: Connection, sql: string): Promise<void> {
  await connection.query(sql);
}

/** `CHECKSUM TABLE … EXTENDED` of every base table of `db`, by table name. */
export async function checksums(connection: Connection, db: string): Promise<Record<string, string | null>> {
  const tables = await rows<{ name: string }>(
    connection,
    "SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE <> 'VIEW' ORDER BY TABLE_NAME",
    [db],
  );
  if (tables.length === 0) return {};
  const result = await rows<{ Table: string; Checksum: string | null }>(
    connection,
    `CHECKSUM TABLE ${tables.map((t) => `\`${db}\`.\`${t.name}\``).join(', ')} EXTENDED`,
  );
  return Object.fromEntries(result.map((r) => [r.Table.slice(db.length + 1), r.Checksum === null ? null : String(r.Checksum)]));
}

export interface Definitions {
  tables: Record<string, string>;
  views: Record<string, string>;
  triggers: Record<string, unknown>;
  routines: Record<string, unknown>;
  events: Record<string, unknown>;
  collation: string;
}

/**
 * The definitions of everything in `db`, read from inside it so that they do not name it
 * (comparable across databases): SHOW CREATE TABLE/VIEW/TRIGGER/PROCEDURE/FUNCTION/EVENT with
 * the session context they keep (sql_mode, character sets, database collation).
 */
export async function definitions(connection: Connection, db: string): Promise<Definitions> {
  await connection.query(`USE \`${db}\``);
  const tables = await rows<{ name: string; type: string }>(
    connection,
    'SELECT TABLE_NAME AS name, TABLE_TYPE AS type FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME',
    [db],
  );
  const show = async (kind: string, name: string) => (await rows<Record<string, unknown>>(connection, `SHOW CREATE ${kind} \`${name}\``))[0]!;
  const result: Definitions = { tables: {}, views: {}, triggers: {}, routines: {}, events: {}, collation: '' };
  for (const table of tables) {
    if (table.type === 'VIEW') result.views[table.name] = String((await show('VIEW', table.name))['Create View']);
    else result.tables[table.name] = String((await show('TABLE', table.name))['Create Table']).replace(/ AUTO_INCREMENT=\d+/, '');
  }
  for (const { name } of await rows<{ name: string }>(connection, 'SELECT TRIGGER_NAME AS name FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?', [db])) {
    const { Created: _created, ...rest } = await show('TRIGGER', name);
    result.triggers[name] = rest;
  }
  for (const { name, type } of await rows<{ name: string; type: string }>(
    connection,
    'SELECT ROUTINE_NAME AS name, ROUTINE_TYPE AS type FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?',
    [db],
  )) {
    result.routines[`${type} ${name}`] = await show(type, name);
  }
  for (const { name } of await rows<{ name: string }>(connection, 'SELECT EVENT_NAME AS name FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ?', [db])) {
    result.events[name] = await show('EVENT', name);
  }
  const [schema] = await rows<{ collation: string }>(connection, 'SELECT DEFAULT_COLLATION_NAME AS collation FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?', [db]);
  result.collation = schema!.collation;
  await connection.query('USE information_schema');
  return result;
}

/** Databases whose name marks them as a restore's staging or old copy. */
export async function leftoverDatabases(connection: Connection): Promise<string[]> {
  const found = await rows<{ name: string }>(
    connection,
    "SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '%\\_\\_sa\\_stage\\_%' OR SCHEMA_NAME LIKE '%\\_\\_sa\\_old\\_%'",
  );
  return found.map((r) => r.name);
}

export async function databaseExists(connection: Connection, db: string): Promise<boolean> {
  return (await rows(connection, 'SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?', [db])).length > 0;
}

/** A mysql service entry for the agent's config; the password reaches it through `passwordEnv`. */
export function mysqlServiceConfig(server: MariadbTestServer, databases: string[], passwordEnv: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { kind: 'mysql', host: server.host, port: server.port, user: server.user, password: { env: passwordEnv }, databases, ...extra };
}

/**
 * The feature zoo a restore must reproduce: binary BLOBs with all 256 byte values, utf8mb4 with
 * emoji, NULLs, DECIMAL(30,10), JSON, temporal types, foreign keys, views (one on another),
 * triggers, procedures, functions, an event, a routine created under NO_BACKSLASH_ESCAPES, and
 * string literals that look like the statements a restore rewrites (USE, CREATE DATABASE).
 */
export async function createFixture(connection: Connection, db: string): Promise<void> {
  const all256 = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
  await connection.query(`USE \`${db}\``);
  await runSql(
    connection,
    `
    CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL) ENGINE=InnoDB;
    CREATE TABLE child (
      id INT PRIMARY KEY AUTO_INCREMENT,
      parent_id INT NOT NULL,
      amount DECIMAL(30,10),
      doc JSON,
      note TEXT,
      happened DATETIME(6),
      seen TIMESTAMP NULL DEFAULT NULL,
      ratio DOUBLE,
      flags BIT(8),
      CONSTRAINT fk_child_parent FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE
    ) ENGINE=InnoDB;
    CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB, bin VARBINARY(300)) ENGINE=InnoDB;
    CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, what VARCHAR(200)) ENGINE=InnoDB;
    CREATE TABLE counters (k VARCHAR(20) PRIMARY KEY, v BIGINT UNSIGNED) ENGINE=MyISAM;
    INSERT INTO parent VALUES (1, 'plain'), (2, 'emoji 😀🚀 and ünïcödé'), (3, 'quote '' and backslash \\\\ and newline\\n end'),
      (4, '\nUSE \`mysql\`;\nCREATE DATABASE evil;\n');
    INSERT INTO child (parent_id, amount, doc, note, happened, seen, ratio, flags) VALUES
      (1, 12345678901234567890.0123456789, '{"a": [1, 2, {"b": "😀"}], "n": null}', NULL, '2024-02-29 23:59:59.123456', '2024-01-01 00:00:01', 1.5e-300, b'10100101'),
      (2, -0.0000000001, NULL, 'x', NULL, NULL, NULL, NULL),
      (3, NULL, '[]', '', '1000-01-01 00:00:00', NULL, -0.0, b'0');
    INSERT INTO counters VALUES ('a', 18446744073709551615), ('b', 0);
    CREATE VIEW parent_names AS SELECT id, UPPER(name) AS shout FROM parent WHERE id < 100;
    CREATE VIEW rich_children AS SELECT c.id, p.name, c.amount FROM child c JOIN parent_names n ON n.id = c.parent_id JOIN parent p ON p.id = c.parent_id;
    CREATE TRIGGER parent_audit AFTER INSERT ON parent FOR EACH ROW INSERT INTO audit (what) VALUES (CONCAT('parent ', NEW.id, ' ;\nUSE \`mysql\`;\n'));
    CREATE TRIGGER parent_name BEFORE INSERT ON parent FOR EACH ROW SET NEW.name = TRIM(NEW.name);
    CREATE PROCEDURE add_parent(IN p_id INT, IN p_name VARCHAR(100))
      BEGIN
        -- a comment with a quote ' and a USE \`x\`;
        INSERT INTO parent VALUES (p_id, p_name);
      END;
    CREATE FUNCTION double_it(x DECIMAL(30,10)) RETURNS DECIMAL(30,10) DETERMINISTIC RETURN x * 2;
    CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00' DO DELETE FROM audit WHERE id < 0;
    SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES';
    CREATE PROCEDURE windows_path() SELECT 'C:\\temp\\' AS path, '
CREATE DATABASE evil;
' AS text;
    SET SESSION sql_mode = DEFAULT;
    `,
  );
  await connection.query('INSERT INTO blobs VALUES (1, ?, ?), (2, ?, ?), (3, NULL, NULL), (4, ?, ?)', [
    Buffer.concat([all256, Buffer.from(all256).reverse(), all256]),
    Buffer.from(all256.subarray(0, 255)),
    Buffer.alloc(70_000, 0),
    Buffer.from([0x27, 0x5c, 0x0a, 0x0d, 0x1a, 0x00]),
    randomBytes(200_000),
    randomBytes(300),
  ]);
  // Routines remember their database's collation: make it differ, so the dump carries
  // mysqldump's ALTER DATABASE dance around them.
  await connection.query(`ALTER DATABASE \`${db}\` COLLATE utf8mb4_bin`);
  await connection.query('USE information_schema');
}
