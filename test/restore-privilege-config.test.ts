import { randomBytes } from 'node:crypto';
import { lstat, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/agent/config.ts';
import { createDriver } from '../src/agent/drivers.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { cli, cliJson, createSandbox } from './support/cli.ts';
import { checksums, connect, createDatabase, createFixture, definitions, leftoverDatabases, mariadbServer, mysqlServiceConfig, rows, uniqueName, type Definitions } from './support/mysql.ts';
import { buildArchive } from './support/tree.ts';

/** The config keys of issue #10's restore checks: their defaults, and values they refuse. */
function services(uploads: string, cache: string, mount = '/srv/uploads') {
  return parseConfig(
    `stateDir: /var/lib/storage-agent
environments:
  shop:
    services:
      uploads: { kind: files, path: ${mount}${uploads} }
      cache: { kind: redis, port: 6379${cache} }
`,
    'test',
  ).environments.shop!.services;
}

describe('config: keepSetuid (files) and functions (redis)', () => {
  it('default to clearing setuid/setgid bits and refusing function libraries', () => {
    expect(services('', '')).toMatchObject({ uploads: { keepSetuid: false }, cache: { functions: 'refuse' } });
  });

  it('take keepSetuid: true and functions: keep', () => {
    expect(services(', keepSetuid: true', ', functions: keep')).toMatchObject({ uploads: { keepSetuid: true }, cache: { functions: 'keep' } });
  });

  it('refuse anything else with E_CONFIG_INVALID naming the key', () => {
    expect(() => services(', keepSetuid: yes please', '')).toThrow(expect.objectContaining({ code: 'E_CONFIG_INVALID', message: expect.stringMatching(/keepSetuid/) }));
    expect(() => services('', ', functions: load')).toThrow(expect.objectContaining({ code: 'E_CONFIG_INVALID', message: expect.stringMatching(/functions/) }));
  });

  it('reach the files driver: a setuid file is restored with its bit only under keepSetuid: true', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'restore-privilege-'));
    try {
      const archive = await buildArchive([{ header: { name: 'tool', mode: 0o4755 }, content: '#!/bin/sh\n' }]);
      for (const [option, mode] of [['', 0o755], [', keepSetuid: true', 0o4755]] as const) {
        const mount = path.join(dir, option ? 'kept' : 'cleared');
        const driver = await createDriver('uploads', services(option, '', mount).uploads!, { env: 'shop', stateDir: dir });
        const staged = await driver.stage(Readable.from([archive]), new AbortController().signal);
        await staged.commit();
        expect((await lstat(path.join(mount, 'tool'))).mode & 0o7777, option).toBe(mode);
        expect('warning' in staged.facts, option).toBe(!option);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** The GRANT lines of README's "MySQL privileges" (its ```sql block): the one account's documented grants. */
async function documentedGrants(): Promise<string[]> {
  const readme = await readFile(path.resolve(import.meta.dirname, '../README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('**MySQL privileges'));
  const block = /```sql\n([\s\S]*?)```/.exec(section)?.[1];
  expect(block, 'README has the grants in a sql block').toBeDefined();
  return block!
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
}

/** Definitions as a restore by `account` makes them: every DEFINER becomes it (CURRENT_USER). */
function restoredBy(account: string, defs: Definitions): Definitions {
  return JSON.parse(JSON.stringify(defs).replaceAll(/DEFINER=`[^`]*`@`[^`]*`/g, `DEFINER=\`${account}\`@\`127.0.0.1\``)) as Definitions;
}

describe('mysql: one account with exactly the README grants', () => {
  it('backs up, and restores through the CLI with its safety backup; the restored routines run as it', async () => {
    const server = mariadbServer();
    const root = await connect(server, { root: true });
    const sandbox = await createSandbox();
    const shop = await createDatabase(root, 'sa_docgrants');
    const account = uniqueName('sa_doc');
    const passwordEnv = 'SA_TEST_DOC_GRANTS_PASSWORD';
    process.env[passwordEnv] = randomBytes(12).toString('hex');
    try {
      await createFixture(root, shop);
      await root.query('CREATE USER ?@? IDENTIFIED BY ?', [account, '127.0.0.1', process.env[passwordEnv]]);
      const grants = await documentedGrants();
      expect(grants).toHaveLength(3);
      for (const grant of grants) {
        // `shop` → this test's database, LIKE-escaped as the README's `shop\_\_sa\_%` is.
        const sql = grant.replaceAll("'agent'@'localhost'", `'${account}'@'127.0.0.1'`).replaceAll('`shop', `\`${shop.replaceAll('_', '\\_')}`);
        expect(sql).toMatch(/^GRANT [A-Z, ]+ ON (\*\.\*|`[^`]+`\.\*) TO '[^']+'@'127\.0\.0\.1';$/);
        await root.query(sql);
      }
      await sandbox.writeConfig({ environments: { site: { services: { db: mysqlServiceConfig(server, [shop], passwordEnv, { user: account }) } } } });
      const args = ['--config', sandbox.configPath];
      const original = { sums: await checksums(root, shop), defs: await definitions(root, shop) };

      const manifest = await cliJson<Manifest>([...args, 'backup', 'create', 'site']);
      expect(manifest.elements[0]!.facts).toMatchObject({ databases: shop, binlogExact: true });
      await root.query(
        `USE \`${shop}\`; DELETE FROM child WHERE id = 2; UPDATE parent SET name = 'changed' WHERE id = 1; DROP VIEW rich_children; DROP PROCEDURE add_parent;
         CREATE TABLE extra (x INT); USE information_schema`,
      );
      const changed = await checksums(root, shop);

      // The default restore: a consistent safety backup of the target first, then stage and swap.
      const restored = await cliJson<{ safetyBackup: { id: string; elements: string[] } }>([...args, 'backup', 'restore', 'site', manifest.id, '--yes']);
      expect(restored.safetyBackup).toMatchObject({ id: expect.any(String), elements: ['db'] });
      expect(await checksums(root, shop)).toEqual(original.sums);
      expect(await definitions(root, shop)).toEqual(restoredBy(account, original.defs));
      expect(await leftoverDatabases(root)).toEqual([]);
      // The restored procedure (SQL SECURITY DEFINER) runs as the account, its triggers too.
      await root.query(`CALL \`${shop}\`.add_parent(12, '  documented  ')`);
      expect(await rows(root, `SELECT shout FROM \`${shop}\`.parent_names WHERE id = 12`)).toEqual([{ shout: 'DOCUMENTED' }]);
      expect(await rows(root, `SELECT COUNT(*) AS n FROM \`${shop}\`.audit WHERE what LIKE 'parent 12%'`)).toEqual([{ n: 1 }]);

      // The safety backup, taken by the same account, is the undo.
      const undo = await cli([...args, 'backup', 'restore', 'site', restored.safetyBackup.id, '--yes', '--no-safety-backup']);
      expect(undo.exitCode, undo.stderr).toBe(0);
      expect(await checksums(root, shop)).toEqual(changed);
    } finally {
      await root.query('DROP USER IF EXISTS ?@?', [account, '127.0.0.1']).catch(() => {});
      await root.query(`DROP DATABASE IF EXISTS \`${shop}\``).catch(() => {});
      root.destroy();
      await sandbox.cleanup();
    }
  });
});
