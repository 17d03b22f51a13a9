/**
 * The element's bytes: one line of ours, then the unmodified output of ONE
 * `mysqldump --databases A B …` run (one transaction: one point in time across the databases),
 * so the artifact stays a standard dump an SRE can load with `mysql < db.sql`:
 *
 *   -- storage-agent mysql dump {"format":1,"databases":["shop","crm"]}
 *   /*M!999999\- enable the sandbox mode *\/
 *   -- MariaDB dump 10.19 …
 *   CREATE DATABASE /*!32312 IF NOT EXISTS*\/ `shop` …;
 *   USE `shop`;
 *   …
 *   -- Dump completed on …
 *
 * The restore does not split the stream: it rewrites the few statements that name a database
 * (CREATE/ALTER DATABASE, USE) to the staging databases, statement-aware (rewrite.ts).
 */
export const DUMP_FORMAT = 1;
const HEADER_PREFIX = '-- storage-agent mysql dump ';
/** mysqldump's last line (it writes it unless --skip-comments): proof the dump is whole. */
export const DUMP_TRAILER = '-- Dump completed';

export interface DumpHeader {
  format: number;
  databases: string[];
}

export function dumpHeaderLine(databases: readonly string[]): string {
  return `${HEADER_PREFIX}${JSON.stringify({ format: DUMP_FORMAT, databases })}\n`;
}

/** Parses the first line; undefined when it is not our header. */
export function parseDumpHeader(line: string): DumpHeader | undefined {
  if (!line.startsWith(HEADER_PREFIX)) return undefined;
  try {
    const value = JSON.parse(line.slice(HEADER_PREFIX.length)) as Partial<DumpHeader>;
    if (typeof value.format !== 'number' || !Array.isArray(value.databases) || value.databases.length === 0) return undefined;
    if (!value.databases.every((d) => typeof d === 'string' && /^[A-Za-z0-9_$]{1,64}$/.test(d))) return undefined;
    return { format: value.format, databases: value.databases };
  } catch {
    return undefined;
  }
}
