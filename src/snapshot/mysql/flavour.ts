import type { Connection } from 'mysql2/promise';
import { execa } from 'execa';
import { AgentError } from '../../errors.ts';
import { clientProcessOptions, queryRows } from './connection.ts';

/*
 * Which MySQL a capture talks to, and which mysqldump it runs: the two are chosen apart (the
 * agent runs whatever `mysqldump` is on its PATH, Debian's being MariaDB's client), and the
 * options that matter belong to the client: only Oracle's mysqldump (and Percona's, built from
 * it) writes MySQL's GTID state and knows --set-gtid-purged (dump.ts, dumpOptions).
 */

export type Flavour = 'mariadb' | 'mysql' | 'percona';

export interface ServerFlavour {
  flavour: Flavour;
  /** VERSION() as the server says it: `8.0.36`, `10.11.6-MariaDB-0+deb12u1`. */
  version: string;
}

export interface DumpClient {
  /** MariaDB's mysqldump (mariadb-dump), or Oracle's (Percona's reports as Oracle's: same options). */
  flavour: 'mariadb' | 'mysql';
  /** The client's own release: `8.0.36`, `5.7.44`, `10.11.6` (MariaDB's). */
  version: string;
}

/**
 * From VERSION() and @@version_comment: MariaDB says so in its version (`10.11.6-MariaDB`, also
 * when it pretends to be 5.5.5), Percona Server in its comment (`Percona Server (GPL), Release
 * 24`); anything else is Oracle's MySQL.
 */
export function parseServerFlavour(version: string, comment: string): ServerFlavour {
  const flavour: Flavour = /mariadb/i.test(version) ? 'mariadb' : /percona/i.test(comment) ? 'percona' : 'mysql';
  return { flavour, version };
}

export async function serverFlavour(connection: Connection): Promise<ServerFlavour> {
  const [row] = await queryRows<{ version: string; comment: string | null }>(connection, 'SELECT VERSION() AS version, @@version_comment AS comment');
  return parseServerFlavour(row?.version ?? 'unknown', row?.comment ?? '');
}

/**
 * `mysqldump --version`, as the clients print it:
 *   Oracle 8.0+:   `mysqldump  Ver 8.0.36 for Linux on x86_64 (MySQL Community Server - GPL)`
 *   Oracle 5.7:    `mysqldump  Ver 10.13 Distrib 5.7.44, for Linux (x86_64)`
 *   MariaDB:       `mysqldump  Ver 10.19 Distrib 10.11.6-MariaDB, for debian-linux-gnu (x86_64)`
 *   MariaDB 11:    `mariadb-dump from 11.4.5-MariaDB, client 10.19 for debian-linux-gnu (x86_64)`
 * Undefined for anything else.
 */
export function parseDumpClient(output: string): DumpClient | undefined {
  const mariadb = /(?:Distrib|from) (\d+\.\d+\.\d+)-MariaDB/i.exec(output);
  if (mariadb) return { flavour: 'mariadb', version: mariadb[1]! };
  const oracle = /\bVer (\d+\.\d+(?:\.\d+)?)\s+(?:Distrib (\d+\.\d+\.\d+)|for )/.exec(output);
  if (oracle) return { flavour: 'mysql', version: oracle[2] ?? oracle[1]! };
  return undefined;
}

/** Runs `mysqldump --version` (a few ms: once per capture, so an upgraded client is seen). */
export async function dumpClient(signal: AbortSignal): Promise<DumpClient> {
  let output: string;
  try {
    const result = await execa('mysqldump', ['--version'], { ...clientProcessOptions(signal), buffer: true, stdin: 'ignore', stdout: 'pipe' });
    output = result.stdout;
  } catch (error) {
    const e = error as { code?: string };
    if (e.code === 'ENOENT') throw new AgentError('E_CAPTURE_FAILED', 'mysqldump is not installed (install mariadb-client or mysql-client)', { cause: error });
    throw new AgentError('E_CAPTURE_FAILED', `mysqldump --version failed: ${(error as Error).message}`, { cause: error });
  }
  const client = parseDumpClient(output);
  if (!client) {
    throw new AgentError('E_CAPTURE_FAILED', `mysqldump --version printed "${output.trim().slice(0, 120)}", which is neither MariaDB's nor Oracle MySQL's mysqldump; install mariadb-client or mysql-client`);
  }
  return client;
}
