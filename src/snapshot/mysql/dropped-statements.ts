/*
 * Statements Oracle's and Percona's mysqldump write that a restore drops instead of running
 * (docs/mysql.md, "What a restore drops"). Only these exact forms are dropped; any other
 * statement touching these variables stays for the statement check, which refuses it.
 *
 * For a server with GTIDs, unless told --set-gtid-purged=OFF as the agent now does (dump.ts),
 * so older backups carry them:
 *
 *   SET @MYSQLDUMP_TEMP_LOG_BIN = @@SESSION.SQL_LOG_BIN;
 *   SET @@SESSION.SQL_LOG_BIN= 0;
 *   SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*\/ 'uuid:1-5,\nuuid:1-9';   (5.7: no '+')
 *   SET @@SESSION.SQL_LOG_BIN = @MYSQLDUMP_TEMP_LOG_BIN;
 *
 * GTID_PURGED would add the source's GTIDs to the target server's: on the source itself it
 * fails (they are executed already), elsewhere it marks as applied transactions the target
 * never ran. SQL_LOG_BIN = 0 would keep the restore out of the binary log, so replicas never
 * get it, and needs a privilege (SYSTEM_VARIABLES_ADMIN) the restoring account does not hold.
 *
 * Percona's mysqldump, always: a preamble and a postamble that turn MyRocks' bulk load on and
 * off through dynamic SQL (PREPARE/EXECUTE, which the check refuses anywhere else). Dropped, a
 * MyRocks table loads row by row: slower, the same data.
 */

const SQL_LOG_BIN = [
  /^SET\s+@MYSQLDUMP_TEMP_LOG_BIN\s*=\s*@@SESSION\.SQL_LOG_BIN$/i,
  /^SET\s+@@SESSION\.SQL_LOG_BIN\s*=\s*(?:0|@MYSQLDUMP_TEMP_LOG_BIN)$/i,
];
/** A GTID set as mysqldump quotes it: UUIDs (8.3+: with tags), ranges, commas and newlines. */
const GTID_PURGED = /^SET\s+@@GLOBAL\.GTID_PURGED\s*=\s*(?:\/\*!80000\s+'\+'\s*\*\/\s*)?'([0-9A-Za-z_:,\-\s]*)'$/i;
/** Percona mysqldump's MyRocks bulk-load statements, byte for byte. */
const ROCKSDB_BULK_LOAD = new Set([
  "/*!50717 SELECT COUNT(*) INTO @rocksdb_has_p_s_session_variables FROM INFORMATION_SCHEMA.TABLES WHERE TABLE_SCHEMA = 'performance_schema' AND TABLE_NAME = 'session_variables' */",
  "/*!50717 SET @rocksdb_get_is_supported = IF (@rocksdb_has_p_s_session_variables, 'SELECT COUNT(*) INTO @rocksdb_is_supported FROM performance_schema.session_variables WHERE VARIABLE_NAME=\\'rocksdb_bulk_load\\'', 'SELECT 0') */",
  '/*!50717 PREPARE s FROM @rocksdb_get_is_supported */',
  '/*!50717 EXECUTE s */',
  '/*!50717 DEALLOCATE PREPARE s */',
  "/*!50717 SET @rocksdb_enable_bulk_load = IF (@rocksdb_is_supported, 'SET SESSION rocksdb_bulk_load = 1', 'SET @rocksdb_dummy_bulk_load = 0') */",
  '/*!50717 PREPARE s FROM @rocksdb_enable_bulk_load */',
  "/*!50112 SET @disable_bulk_load = IF (@is_rocksdb_supported, 'SET SESSION rocksdb_bulk_load = @old_rocksdb_bulk_load', 'SET @dummy_rocksdb_bulk_load = 0') */",
  '/*!50112 PREPARE s FROM @disable_bulk_load */',
  '/*!50112 EXECUTE s */',
  '/*!50112 DEALLOCATE PREPARE s */',
]);

export type DroppedStatement = { kind: 'sql_log_bin' } | { kind: 'gtid_purged'; gtids: string } | { kind: 'rocksdb_bulk_load' };

/** One statement (without its delimiter): what it is when a restore drops it, else undefined. */
export function droppedStatement(statement: string): DroppedStatement | undefined {
  const text = statement.trim();
  if (SQL_LOG_BIN.some((pattern) => pattern.test(text))) return { kind: 'sql_log_bin' };
  if (ROCKSDB_BULK_LOAD.has(text)) return { kind: 'rocksdb_bulk_load' };
  const gtid = GTID_PURGED.exec(text);
  if (gtid) return { kind: 'gtid_purged', gtids: gtid[1]!.replace(/\s+/g, '') };
  return undefined;
}

/** The restore's warning for a dump whose GTID_PURGED it dropped. */
export function gtidPurgedWarning(gtids: string): string {
  return (
    `the dump sets GTID_PURGED to ${gtids.length > 120 ? `${gtids.slice(0, 120)}…` : gtids}, as mysqldump does for a server with GTIDs: not applied ` +
    "(it would change the target server's GTID state); the restored data is binary-logged under the target's own GTIDs, so its replicas receive it"
  );
}
