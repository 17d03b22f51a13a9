import { mkdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { buffer } from 'node:stream/consumers';
import type { Connection } from 'mysql2/promise';
import { pack as tarPack } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/agent/config.ts';
import { openEnvironmentStore } from '../src/agent/stores.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { cli, cliJson, createSandbox, s3StoreConfig, type Sandbox } from './support/cli.ts';
import { forgeElement as forge } from './support/forge.ts';
import { checksums, connect, mariadbServer, mysqlServiceConfig, rows, uniqueName } from './support/mysql.ts';
import { rdbWithLibraryAfterKey } from './support/rdb.ts';
import { diffData, readAll, startRedis, type TestRedis } from './support/redis.ts';
import { createTestBucket } from './support/s3.ts';

/**
 * What a forged dump must not change on the server: every account and its grants, every
 * routine, trigger and event (of any database), the binary logs (RESET MASTER, PURGE).
 */
async function serverState(mysql: Connection): Promise<Record<string, unknown>> {
  const grants: Record<string, string[] | string> = {};
  for (const { User, Host } of await rows<{ User: string; Host: string }>(mysql, 'SELECT User, Host FROM mysql.global_priv ORDER BY User, Host')) {
    grants[`${User}@${Host}`] = await rows<Record<string, string>>(mysql, 'SHOW GRANTS FOR ?@?', [User, Host]).then(
      (found) => found.map((r) => Object.values(r)[0]!),
      (error: Error) => error.message,
    );
  }
  return {
    accounts: await rows(mysql, 'SELECT CONCAT(User, "@", Host) AS who, Priv FROM mysql.global_priv ORDER BY who'),
    grants,
    routines: await rows(mysql, 'SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE, DEFINER, ROUTINE_DEFINITION FROM information_schema.ROUTINES ORDER BY 1, 2, 3'),
    triggers: await rows(mysql, 'SELECT TRIGGER_SCHEMA, TRIGGER_NAME, DEFINER, ACTION_STATEMENT FROM information_schema.TRIGGERS ORDER BY 1, 2'),
    events: await rows(mysql, 'SELECT EVENT_SCHEMA, EVENT_NAME, DEFINER, EVENT_DEFINITION FROM information_schema.EVENTS ORDER BY 1, 2'),
    binlogs: (await rows<{ Log_name: string }>(mysql, 'SHOW BINARY LOGS')).map((r) => r.Log_name),
  };
}
const routine = (sql: string) => `DELIMITER ;;\n${sql};;\nDELIMITER ;`;

/**
 * What a hostile writer of the bucket, holding even the signing key, can make a restore do:
 * nothing beyond the staging of its own element. Each forged element goes into the store
 * (fs and RGW) under a signed manifest and is restored through the real CLI.
 */
for (const storeKind of ['fs', 's3'] as const) {
  describe(`forged elements restored through the ${storeKind} store change nothing outside their target`, () => {
    let sandbox: Sandbox;
    let store: ObjectStore;
    let mysql: Connection;
    let redis: TestRedis;
    let copy: TestRedis;
    const db = uniqueName('forge');
    const victim = uniqueName('victim');
    const mount = () => path.join(sandbox.dir, 'uploads');
    const args = () => ['--config', sandbox.configPath];

    beforeAll(async () => {
      sandbox = await createSandbox();
      const server = mariadbServer();
      mysql = await connect(server, { root: true });
      await mysql.query(`CREATE DATABASE \`${db}\`; CREATE TABLE \`${db}\`.t (n INT); INSERT INTO \`${db}\`.t VALUES (1)`);
      await mysql.query(`CREATE DATABASE \`${victim}\`; CREATE TABLE \`${victim}\`.secrets (s TEXT); INSERT INTO \`${victim}\`.secrets VALUES ('keep me')`);
      process.env.TEST_FORGE_MYSQL_PASSWORD = server.password;
      redis = await startRedis();
      copy = await startRedis();
      await mkdir(mount());
      await writeFile(path.join(mount(), 'a.txt'), 'a');
      const stores = storeKind === 's3' ? { stores: { s3: s3StoreConfig(await createTestBucket()) }, defaultStore: 's3' } : {};
      await sandbox.writeConfig({
        ...stores,
        environments: {
          site: { services: { uploads: { kind: 'files', path: mount() }, db: mysqlServiceConfig(server, [db], 'TEST_FORGE_MYSQL_PASSWORD'), cache: redis.serviceConfig() } },
          copy: { services: { cache: copy.serviceConfig() } },
        },
      });
      store = await openEnvironmentStore(await loadConfig(sandbox.configPath), 'site');
    });
    afterAll(async () => {
      await redis?.stop();
      await copy?.stop();
      await mysql?.query(`DROP DATABASE IF EXISTS \`${db}\`; DROP DATABASE IF EXISTS \`${victim}\``).catch(() => {});
      await mysql?.end();
      await sandbox?.cleanup();
    });

    /** Replaces element `name` of a fresh backup with `raw`, under a manifest signed with the node's key. */
    const forgeElement = (name: string, change: (raw: Buffer) => Buffer): Promise<Manifest> => forge(sandbox.configPath, store, 'site', name, change);

    it.each([
      ['a grant', "GRANT ALL PRIVILEGES ON *.* TO 'evil'@'%' IDENTIFIED BY 'x' WITH GRANT OPTION;"],
      ['a new account', "CREATE USER 'evil'@'%' IDENTIFIED BY 'x';"],
      ['a write into mysql.*', "INSERT INTO mysql.global_priv VALUES ('%', 'evil', '{}');"],
      ['a drop in another database', () => `DROP TABLE \`${victim}\`.secrets;`],
      ['a definer trigger writing another database', () => routine(`/*!50003 CREATE*/ /*!50017 DEFINER=\`root\`@\`localhost\`*/ /*!50003 TRIGGER tr AFTER INSERT ON t FOR EACH ROW DELETE FROM \`${victim}\`.secrets */`)],
      // Restored stored programs run as the restoring account, which holds the backup's global grants.
      ['a definer procedure resetting the binary logs', routine('CREATE DEFINER=`root`@`localhost` PROCEDURE p() SQL SECURITY DEFINER BEGIN RESET MASTER; END')],
      ['an event listing another database', () => routine(`CREATE EVENT e ON SCHEDULE EVERY 1 MINUTE DO SHOW TABLES FROM \`${victim}\``)],
      ['a procedure reading root\'s password hash', routine('CREATE PROCEDURE p() BEGIN SHOW CREATE USER root@localhost; END')],
      // The load itself would run it, as the restoring account.
      ['RESET MASTER after DROP PROCEDURE, under another delimiter', routine('DROP PROCEDURE IF EXISTS p; RESET MASTER')],
    ] as [string, string | (() => string)][])('mysql: %s → E_UNSAFE_ARCHIVE_ENTRY (exit 10), nothing changed', async (_what, statement) => {
      const sql = typeof statement === 'function' ? statement() : statement;
      const manifest = await forgeElement('db', (raw) => {
        const text = raw.toString('utf8');
        const at = text.indexOf('\nLOCK TABLES');
        expect(at).toBeGreaterThan(0);
        return Buffer.from(`${text.slice(0, at)}\n${sql}${text.slice(at)}`);
      });
      const state = async () => ({ db: await checksums(mysql, db), victim: await checksums(mysql, victim), server: await serverState(mysql) });
      const before = await state();
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--element', 'db', '--yes', '--no-safety-backup']);
      expect(restore.exitCode, restore.stderr).toBe(10);
      expect(restore.stderr).toContain('E_UNSAFE_ARCHIVE_ENTRY');
      expect(await state()).toEqual(before);
      expect(await rows(mysql, "SELECT User FROM mysql.user WHERE User = 'evil'")).toEqual([]);
    });

    it('redis: a backup holding a function library is refused by default, the target keeps its keys and has no function', async () => {
      const source = redis.client();
      await source.call('FUNCTION', 'LOAD', 'REPLACE', "#!lua name=planted\nredis.register_function('planted', function() return 1 end)");
      await source.set('k', 'v');
      const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site', '--live', '--element', 'cache']);
      await source.call('FUNCTION', 'FLUSH');
      await copy.client().set('mine', '1');
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'copy', '--element', 'cache', '--yes', '--no-safety-backup']);
      expect(restore.exitCode, restore.stderr).toBe(10);
      expect(restore.stderr).toMatch(/E_UNSAFE_ARCHIVE_ENTRY.*planted/s);
      expect(await copy.client().keys('*')).toEqual(['mine']);
      expect(await copy.client().call('FUNCTION', 'LIST')).toEqual([]);
    });

    it('files: a setuid-root program in a forged tar is restored without its setuid bit, and the result says so', async () => {
      const pack = tarPack();
      pack.entry({ name: 'a.txt', mode: 0o644 }, 'a');
      pack.entry({ name: 'suid-shell', mode: 0o4755, uid: 0, gid: 0 }, '#!/bin/sh\n');
      pack.entry({ name: 'sgid-tool', mode: 0o2755, uid: 0, gid: 0 }, '#!/bin/sh\n');
      pack.finalize();
      const tar = await buffer(pack);
      const manifest = await forgeElement('uploads', () => tar);
      const restored = await cliJson<{ elements: { name: string; facts: Record<string, unknown> }[] }>([...args(), 'backup', 'restore', 'site', manifest.id, '--element', 'uploads', '--yes', '--no-safety-backup']);
      expect((await stat(path.join(mount(), 'suid-shell'))).mode & 0o7777).toBe(0o755);
      expect((await stat(path.join(mount(), 'sgid-tool'))).mode & 0o7777).toBe(0o755);
      expect(restored.elements[0]!.facts).toMatchObject({ setuidCleared: 2 });
    });

    /** A forged uploads tar: one plain file and two programs with setuid/setgid bits. */
    async function setuidTar(): Promise<Buffer> {
      const pack = tarPack();
      pack.entry({ name: 'a.txt', mode: 0o644 }, 'a');
      pack.entry({ name: 'bin', type: 'directory', mode: 0o755 });
      pack.entry({ name: 'bin/suid-shell', mode: 0o4755, uid: 0, gid: 0 }, '#!/bin/sh\n');
      pack.entry({ name: 'sgid-tool', mode: 0o2711, uid: 0, gid: 0 }, '#!/bin/sh\n');
      pack.finalize();
      return buffer(pack);
    }
    const CLEARED = 'cleared the setuid/setgid bits of 2 files (bin/suid-shell, sgid-tool); set keepSetuid: true on the service to restore them as archived';

    it('files: the human output of backup restore names the files whose setuid/setgid bits it cleared; a restore that cleared none says nothing of it', async () => {
      const tar = await setuidTar();
      const manifest = await forgeElement('uploads', () => tar);
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--element', 'uploads', '--yes', '--no-safety-backup']);
      expect(restore.exitCode, restore.stderr).toBe(0);
      expect(restore.stdout).toBe(`restored backup ${manifest.id} into site: uploads\n  warning: uploads: ${CLEARED}`);
      expect((await stat(path.join(mount(), 'bin', 'suid-shell'))).mode & 0o7777).toBe(0o755);

      const plain = await cliJson<Manifest>([...args(), 'backup', 'create', 'site', '--live', '--element', 'uploads']);
      const quiet = await cli([...args(), 'backup', 'restore', 'site', plain.id, '--element', 'uploads', '--yes', '--no-safety-backup']);
      expect(quiet.exitCode, quiet.stderr).toBe(0);
      expect(quiet.stdout).toBe(`restored backup ${plain.id} into site: uploads`);
    });

    it('files: the restore logs the cleared setuid/setgid bits at warn, naming the files (what --log-level and the daemon\'s journal show)', async () => {
      const tar = await setuidTar();
      const manifest = await forgeElement('uploads', () => tar);
      const restore = await cli([...args(), '--log-level', 'warn', 'backup', 'restore', 'site', manifest.id, '--element', 'uploads', '--yes', '--no-safety-backup']);
      expect(restore.exitCode, restore.stderr).toBe(0);
      const warned = restore.stderr
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as { level: number; msg: string; element?: string })
        .filter((line) => line.level === 40);
      expect(warned).toEqual([expect.objectContaining({ element: 'uploads', backupId: manifest.id, msg: expect.stringContaining(CLEARED) })]);
    });

    it('redis: a crafted RDB holding a function library after a key (zero checksum) → E_UNSAFE_ARCHIVE_ENTRY (exit 10), the target\'s keys and functions unchanged', async () => {
      const library = "#!lua name=crafted\nredis.register_function('get', function(keys, args) return redis.call('FLUSHALL') end)";
      const manifest = await forgeElement('cache', () => rdbWithLibraryAfterKey(library));
      const target = redis.client();
      await target.set('kept', 'yes');
      await target.call('FUNCTION', 'LOAD', 'REPLACE', "#!lua name=mine\nredis.register_function('mine', function() return 1 end)");
      const state = async () => ({ data: await readAll(redis), functions: await target.call('FUNCTION', 'LIST') });
      const before = await state();
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--element', 'cache', '--yes', '--no-safety-backup']);
      expect(restore.exitCode, restore.stderr).toBe(10);
      expect(restore.stderr).toMatch(/E_UNSAFE_ARCHIVE_ENTRY.*holds 1 function library \(crafted\).*functions: keep/s);
      const after = await state();
      expect(diffData(before.data, after.data)).toEqual([]);
      expect(after.functions).toEqual(before.functions);
      await target.call('FUNCTION', 'DELETE', 'mine');
    });
  });
}
