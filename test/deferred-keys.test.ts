import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { splitPlainKeys } from '../src/snapshot/mysql/deferred-keys.ts';
import { StagingRewriter } from '../src/snapshot/mysql/rewrite.ts';
import { singleDatabaseStages } from '../src/snapshot/mysql/single-database.ts';
import { connect, createDatabase, leftoverDatabases, mariadbServer, rows, testMysqlDriver, uniqueName, type MariadbTestServer } from './support/mysql.ts';

const ORDERS = [
  'CREATE TABLE `orders` (',
  '  `id` int(10) unsigned NOT NULL,',
  "  `note` varchar(64) NOT NULL DEFAULT 'a, (b)' COMMENT 'KEY `x` (`y`), not a key',",
  '  `email` varchar(96) NOT NULL,',
  '  `customer_id` int(10) unsigned NOT NULL,',
  '  PRIMARY KEY (`id`),',
  '  UNIQUE KEY `email_unique` (`email`),',
  '  KEY `customer` (`customer_id`),',
  "  KEY `email_prefix` (`email`(10),`customer_id`) COMMENT 'prefix, two columns',",
  '  FULLTEXT KEY `note_text` (`note`)',
  ') ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci',
].join('\n');

describe('deferred secondary keys: which keys, and the statement without them', () => {
  it('takes the plain keys out of an InnoDB CREATE TABLE, whatever commas and parentheses its strings hold', () => {
    const split = splitPlainKeys(ORDERS);
    expect(split?.table).toBe('`orders`');
    expect(split?.keys).toEqual(['KEY `customer` (`customer_id`)', "KEY `email_prefix` (`email`(10),`customer_id`) COMMENT 'prefix, two columns'"]);
    expect(split?.create).toBe(
      [
        'CREATE TABLE `orders` (',
        '  `id` int(10) unsigned NOT NULL,',
        "  `note` varchar(64) NOT NULL DEFAULT 'a, (b)' COMMENT 'KEY `x` (`y`), not a key',",
        '  `email` varchar(96) NOT NULL,',
        '  `customer_id` int(10) unsigned NOT NULL,',
        '  PRIMARY KEY (`id`),',
        '  UNIQUE KEY `email_unique` (`email`),',
        '  FULLTEXT KEY `note_text` (`note`)',
        ') ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci',
      ].join('\n'),
    );
    // The last definition a plain key: the one before it ends the list.
    expect(splitPlainKeys('CREATE TABLE `t` (\n  `a` int,\n  KEY `a` (`a`)\n) ENGINE=InnoDB')?.create).toBe('CREATE TABLE `t` (\n  `a` int\n) ENGINE=InnoDB');
  });

  it('leaves alone what might not come back the same', () => {
    const cases: [string, string][] = [
      ['a foreign key', 'CREATE TABLE `c` (\n  `p` int,\n  KEY `p` (`p`),\n  CONSTRAINT `fk` FOREIGN KEY (`p`) REFERENCES `parent` (`id`)\n) ENGINE=InnoDB'],
      ['not InnoDB', 'CREATE TABLE `m` (\n  `a` int,\n  KEY `a` (`a`)\n) ENGINE=MyISAM'],
      ['a backslash', "CREATE TABLE `b` (\n  `a` varchar(9) DEFAULT 'x\\'y',\n  KEY `a` (`a`)\n) ENGINE=InnoDB"],
      ['an unterminated quote', "CREATE TABLE `q` (\n  `a` varchar(9) DEFAULT 'x,\n  KEY `a` (`a`)\n) ENGINE=InnoDB"],
      ['a qualified name', 'CREATE TABLE `db`.`t` (\n  `a` int,\n  KEY `a` (`a`)\n) ENGINE=InnoDB'],
      ['no plain key', 'CREATE TABLE `u` (\n  `a` int,\n  UNIQUE KEY `a` (`a`)\n) ENGINE=InnoDB'],
    ];
    for (const [what, statement] of cases) expect(splitPlainKeys(statement), what).toBeUndefined();
  });
});

describe('deferred secondary keys: a restore into the real MariaDB', () => {
  let server: MariadbTestServer;
  let db: Connection;
  let stateDir: string;
  const created: string[] = [];
  const driver = (databases: string[]) => testMysqlDriver(server, databases, stateDir);

  beforeAll(async () => {
    server = mariadbServer();
    db = await connect(server, { root: true });
    stateDir = await mkdtemp(path.join(tmpdir(), 'deferred-keys-state-'));
  });
  afterAll(async () => {
    for (const name of created) await db?.query(`DROP DATABASE IF EXISTS \`${name}\``).catch(() => {});
    db?.destroy();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it('restores every table with the source definition (SHOW CREATE TABLE) and rows, keys added after the rows', async () => {
    const source = await createDatabase(db, 'sa_keys');
    created.push(source);
    await db.query(`USE \`${source}\``);
    await db.query(`${ORDERS.replace(/DEFAULT CHARSET.*$/, '')}`);
    await db.query("INSERT INTO orders SELECT seq, CONCAT('n', seq), CONCAT('user', seq, '@example.com'), seq % 97 FROM seq_1_to_5000");
    await db.query('CREATE TABLE parent (id INT PRIMARY KEY) ENGINE=InnoDB');
    await db.query('CREATE TABLE child (id INT PRIMARY KEY, p INT, KEY p (p), CONSTRAINT fk FOREIGN KEY (p) REFERENCES parent (id)) ENGINE=InnoDB');
    await db.query('INSERT INTO parent VALUES (1), (2); INSERT INTO child VALUES (10, 1), (11, 2)');
    await db.query('CREATE TABLE empty_one (a INT, b INT, KEY ab (a, b)) ENGINE=InnoDB');
    const definitions = async (database: string) => {
      const out: Record<string, string> = {};
      for (const table of ['orders', 'child', 'empty_one']) {
        const [row] = await rows<{ 'Create Table': string }>(db, `SHOW CREATE TABLE \`${database}\`.\`${table}\``);
        out[table] = row!['Create Table'];
      }
      return out;
    };
    const capture = await driver([source]).capture({ signal: new AbortController().signal, consistent: false });
    const dump = Buffer.concat((await capture.stream.toArray()) as Buffer[]);
    await capture.result;
    await capture.release();
    expect(dump.toString()).toContain('KEY `customer` (`customer_id`)'); // the dump is as mysqldump wrote it
    // What the restore runs: orders and empty_one created without their plain keys, then one
    // ALTER each once their rows are in; child (a foreign key) as it was.
    const rewriter = new StagingRewriter({ resolve: (dbs) => new Map(dbs.map((d) => [d, 'stage_x'])), existing: [] });
    const loaded = Buffer.concat((await Readable.from([dump]).pipe(rewriter).toArray()) as Buffer[]).toString();
    expect(loaded).toMatch(/\) ENGINE=InnoDB[^;]*;\n[\s\S]*INSERT INTO `orders`[\s\S]*UNLOCK TABLES;\nALTER TABLE `stage_x`\.`orders` ADD KEY `customer` \(`customer_id`\), ADD KEY `email_prefix` \(`email`\(10\),`customer_id`\) COMMENT 'prefix, two columns';\n/);
    expect(loaded).toContain('ALTER TABLE `stage_x`.`empty_one` ADD KEY `ab` (`a`,`b`);');
    expect(loaded).toMatch(/CREATE TABLE `child` \([^;]*KEY `p` \(`p`\)/);
    expect(loaded).not.toMatch(/ALTER TABLE `stage_x`\.`child`/);

    const target = uniqueName('sa_keys_target');
    created.push(target);
    const staged = await driver([target]).stage(Readable.from([dump]), new AbortController().signal);
    await staged.commit();
    expect(await leftoverDatabases(db)).toEqual([]);
    expect(await definitions(target)).toEqual(await definitions(source));
    const count = async (database: string) => rows(db, `SELECT COUNT(*) AS n, SUM(customer_id) AS s FROM \`${database}\`.orders FORCE INDEX (customer) WHERE customer_id < 50`);
    expect(await count(target)).toEqual(await count(source));
    expect(await rows(db, `SELECT id, p FROM \`${target}\`.child ORDER BY id`)).toEqual([
      { id: 10, p: 1 },
      { id: 11, p: 2 },
    ]);

    // `backup get --database`: the keys come back in the file of their own database only.
    const other = await createDatabase(db, 'sa_keys_other');
    created.push(other);
    await db.query(`CREATE TABLE \`${other}\`.solo (a INT, KEY a (a)) ENGINE=InnoDB`);
    const both = await driver([source, other]).capture({ signal: new AbortController().signal, consistent: false });
    const twoDatabases = Buffer.concat((await both.stream.toArray()) as Buffer[]);
    await both.result;
    await both.release();
    const getFile = async (database: string) => {
      const [rewriter, filter] = singleDatabaseStages(database, `database ${database}`);
      return Buffer.concat((await Readable.from([twoDatabases]).pipe(rewriter).pipe(filter).toArray()) as Buffer[]).toString();
    };
    const sourceFile = await getFile(source);
    expect(sourceFile).toContain('ALTER TABLE `orders` ADD KEY `customer`');
    expect(sourceFile).not.toContain('`solo`');
    const otherFile = await getFile(other);
    expect(otherFile).toContain('ALTER TABLE `solo` ADD KEY `a` (`a`);');
    expect(otherFile).not.toContain('`orders`');
    const scratch = uniqueName('sa_keys_get');
    created.push(scratch);
    await db.query(`CREATE DATABASE \`${scratch}\``);
    await db.query(`USE \`${scratch}\`; ${sourceFile}`);
    expect(await definitions(scratch)).toEqual(await definitions(source));
  });
});
