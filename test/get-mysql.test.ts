import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { singleDatabaseStages } from '../src/snapshot/mysql/single-database.ts';
import { cli, cliJson, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { checksums, connect, createDatabase, createFixture, definitions, mariadbServer, mysqlServiceConfig, type MariadbTestServer } from './support/mysql.ts';

const PASSWORD_ENV = 'SA_TEST_MYSQL_PASSWORD';

/**
 * Issue #10: `zstd -dc db.sql.zst | mysql scratch` — what users do with a downloaded dump —
 * recreated and loaded the production database the dump named, and left `scratch` empty.
 */
describe('backup get of a mysql element (real MariaDB, real CLI)', () => {
  let server: MariadbTestServer;
  let db: Connection;
  let sandbox: Sandbox;
  let args: string[];
  const created: string[] = [];
  /** The rich fixture (views, triggers, routines, an event, the collation dance) and a small one. */
  let shop: string;
  let crm: string;
  const track = (name: string) => (created.push(name), name);

  /**
   * What the user does: the downloaded file, decompressed, into the mysql client for `database`
   * (--comments: the client strips comments inside routine bodies by default, and the fixture's
   * procedure has one).
   */
  const load = (file: string, database: string) =>
    execa('bash', ['-o', 'pipefail', '-c', 'zstd -dc "$1" | mysql --comments -S "$2" -uroot "$3"', 'load', file, server.socket, database]);
  const sql = async (file: string) => Buffer.from((await execa('zstd', ['-dc', file], { encoding: 'buffer' })).stdout).toString('latin1');
  /** The statements (mysqldump's comment lines removed: they still say where the data came from). */
  const statements = (text: string) => text.split('\n').filter((line) => !line.startsWith('--')).join('\n');

  beforeAll(async () => {
    server = mariadbServer();
    process.env[PASSWORD_ENV] = server.password;
    db = await connect(server, { root: true });
    shop = track(await createDatabase(db, 'sa_gshop'));
    await createFixture(db, shop);
    crm = track(await createDatabase(db, 'sa_gcrm'));
    await db.query(`CREATE TABLE \`${crm}\`.leads (id INT PRIMARY KEY, note TEXT); INSERT INTO \`${crm}\`.leads VALUES (1, 'first'), (2, NULL)`);
    sandbox = await createSandbox();
    await mkdir(path.join(sandbox.dir, 'tree'));
    await writeFile(path.join(sandbox.dir, 'tree', 'a.txt'), 'a');
    await sandbox.writeConfig({
      environments: {
        one: { services: { db: mysqlServiceConfig(server, [shop], PASSWORD_ENV) } },
        two: { services: { db: mysqlServiceConfig(server, [shop, crm], PASSWORD_ENV) } },
        files: filesEnv({ uploads: path.join(sandbox.dir, 'tree') }),
      },
    });
    args = ['--config', sandbox.configPath];
  });

  afterAll(async () => {
    for (const name of created) await db?.query(`DROP DATABASE IF EXISTS \`${name}\``).catch(() => {});
    db?.destroy();
    await sandbox?.cleanup();
  });

  it('one database: the file loads into the database the user names, and the source is untouched', async () => {
    const original = { sums: await checksums(db, shop), defs: await definitions(db, shop) };
    const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'one']);
    // Written after the backup: a load that went to the source would take this row away.
    await db.query(`INSERT INTO \`${shop}\`.audit (what) VALUES ('after the backup')`);
    const source = { sums: await checksums(db, shop), defs: await definitions(db, shop) };

    const got = await cliJson<{ path: string; bytes: number; database: string }>([...args, 'backup', 'get', 'one', manifest.id, '--element', 'db', '--to', `${sandbox.dir}/`]);
    expect(got).toMatchObject({ path: path.join(sandbox.dir, 'db.sql.zst'), database: shop });
    const text = await sql(got.path);
    expect(statements(text)).not.toContain(shop);
    expect(text).not.toMatch(/CREATE DATABASE \/\*!32312/);
    expect(text.trimEnd().split('\n').at(-1)).toMatch(/^-- Dump completed/);
    expect(await readdir(sandbox.dir)).not.toContainEqual(expect.stringMatching(/partial/));

    const scratch = track(await createDatabase(db, 'sa_gscratch'));
    await load(got.path, scratch);
    expect(await checksums(db, scratch)).toEqual(original.sums);
    expect(await definitions(db, scratch)).toEqual(original.defs);
    expect(await checksums(db, shop)).toEqual(source.sums);
    expect(await definitions(db, shop)).toEqual(source.defs);
  });

  it('several databases: --database picks one, which loads into the named database; without it E_USAGE names them', async () => {
    const original = { shop: await checksums(db, shop), shopDefs: await definitions(db, shop), crm: await checksums(db, crm) };
    const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'two']);
    const to = path.join(sandbox.dir, 'two');
    await mkdir(to);

    const refused = await cli([...args, 'backup', 'get', 'two', manifest.id, '--element', 'db', '--to', to]);
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toContain('E_USAGE');
    expect(refused.stderr).toContain(`${shop}, ${crm}`);
    const unknown = await cli([...args, 'backup', 'get', 'two', manifest.id, '--element', 'db', '--database', 'nope', '--to', to]);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain(`holds ${shop}, ${crm}`);
    expect(await readdir(to)).toEqual([]);

    // crm is the dump's last database, shop its first (its section ends before crm's).
    for (const [database, expected] of [
      [crm, original.crm],
      [shop, original.shop],
    ] as const) {
      const file = path.join(to, `${database}.sql.zst`);
      const got = await cliJson<{ path: string; database: string }>([...args, 'backup', 'get', 'two', manifest.id, '--element', 'db', '--database', database, '--to', file]);
      expect(got).toMatchObject({ path: file, database });
      const raw = await sql(file);
      expect(raw.trimEnd().split('\n').at(-1)).toMatch(/^-- Dump completed/);
      const text = statements(raw);
      expect(text).not.toContain(shop);
      expect(text).not.toContain(crm);
      const scratch = track(await createDatabase(db, 'sa_gscratch'));
      await load(file, scratch);
      expect(await checksums(db, scratch)).toEqual(expected);
      if (database === shop) expect(await definitions(db, scratch)).toEqual(original.shopDefs);
      if (database === crm) expect(await checksums(db, scratch)).not.toHaveProperty('parent');
    }

    // --all-databases: the dump as taken, byte for byte (it recreates shop and crm by name).
    const whole = await cliJson<{ path: string }>([...args, 'backup', 'get', 'two', manifest.id, '--element', 'db', '--all-databases', '--to', path.join(to, 'all.sql.zst')]);
    expect(createHash('sha256').update(await readFile(whole.path)).digest('hex')).toBe(manifest.elements[0]!.sha256);
    expect(await checksums(db, shop)).toEqual(original.shop);
    expect(await checksums(db, crm)).toEqual(original.crm);
  });

  it('--database and --all-databases are refused for other elements', async () => {
    const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'files']);
    const refused = await cli([...args, 'backup', 'get', 'files', manifest.id, '--element', 'uploads', '--database', shop, '--to', path.join(sandbox.dir, 'x.tar.zst')]);
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toContain('uploads is a files element');
  });

  it('cuts a dump the same whatever its chunking (markers and keywords split anywhere)', async () => {
    const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'two']);
    const whole = await cliJson<{ path: string }>([...args, 'backup', 'get', 'two', manifest.id, '--element', 'db', '--all-databases', '--to', path.join(sandbox.dir, 'chunks.sql.zst')]);
    const dump = Buffer.from((await execa('zstd', ['-dc', whole.path], { encoding: 'buffer' })).stdout);
    const cut = async (database: string, size: number) => {
      const pieces = Array.from({ length: Math.ceil(dump.length / size) }, (_, i) => dump.subarray(i * size, (i + 1) * size));
      const out: Buffer[] = [];
      await pipeline(Readable.from(pieces), ...singleDatabaseStages(database, 'the test'), async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) out.push(Buffer.from(chunk));
      });
      return Buffer.concat(out).toString('latin1');
    };
    for (const database of [shop, crm]) {
      const reference = await cut(database, dump.length);
      expect(statements(reference)).not.toContain(database);
      for (const size of [5, 61, 4099]) expect(await cut(database, size), `${database} in chunks of ${size}`).toBe(reference);
    }
  });
});
