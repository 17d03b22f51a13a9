import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RedisServiceConfig } from '../src/snapshot/redis/service-config.ts';
import { isAgentError } from '../src/errors.ts';
import type { Capture } from '../src/snapshot/driver.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { FsObjectStore } from '../src/transport/stores/fs-store.ts';
import { RedisDriver } from '../src/snapshot/redis/driver.ts';
import { RedisRestoreJournal, tokenDigest } from '../src/snapshot/redis/restore-journal.ts';
import { cli, cliJson, createSandbox, killCliAt, startCli, type Sandbox } from './support/cli.ts';
import { rdbWithLibraryAfterKey } from './support/rdb.ts';
import { diffData, fillAllTypes, readAll, startRedis, type TestRedis } from './support/redis.ts';

const DBS = [0, 3, 15];
const PASSWORD = 'source-secret';

const STATE_DIR = await mkdtemp(path.join(tmpdir(), 'redis-driver-state-'));
afterAll(() => rm(STATE_DIR, { recursive: true, force: true }));

function driverFor(server: TestRedis, saveTimeout = 30_000, functions: RedisServiceConfig['functions'] = 'refuse'): RedisDriver {
  const config: RedisServiceConfig = { kind: 'redis', host: '127.0.0.1', port: server.port, saveTimeout, functions };
  return new RedisDriver({ name: 'cache', env: 'test', stateDir: STATE_DIR, config, password: async () => server.password });
}

async function drain(capture: Capture): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of capture.stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

describe('redis driver: capture and restore through the driver', () => {
  let source: TestRedis;
  let rdb: Buffer;
  let keys: number;

  beforeAll(async () => {
    source = await startRedis({ password: PASSWORD });
    keys = await fillAllTypes(source, DBS);
  });
  afterAll(() => source.stop());

  it('a consistent capture pauses writes only across the fork and streams the whole RDB', async () => {
    const admin = source.client();
    await admin.config('RESETSTAT');
    const capture = await driverFor(source).capture({ signal: new AbortController().signal, consistent: true });
    expect(capture.pointInTime).toBe(true);
    rdb = await drain(capture);
    // One pause, one fork, one unpause (MONITOR hides admin commands; commandstats counts them).
    const stats = String(await admin.info('commandstats'));
    for (const command of ['client|pause', 'bgsave', 'client|unpause']) expect(stats, command).toMatch(new RegExp(`cmdstat_${command.replace('|', '\\|')}:calls=1,`));
    const { facts, warnings } = await capture.result;
    await capture.release();
    expect(warnings).toEqual([]);
    expect(await driverFor(source).estimateBytes(new AbortController().signal)).toBe(rdb.length);
    expect(rdb.subarray(0, 5).toString()).toBe('REDIS');
    expect(facts).toMatchObject({ rdbBytes: rdb.length, keys, keyspace: expect.stringMatching(/^db0=\d+,db3=\d+,db15=\d+$/) });
    expect(facts.pauseMs).toBeGreaterThan(0);
    expect(facts.pauseMs).toBeLessThan(1000);
    expect(facts.redisVersion).toMatch(/^\d+\.\d+/);
  });

  it('a corrupt or unloadable RDB is rejected at stage: the target is not touched, nothing is left staged', async () => {
    const target = await startRedis();
    // Staged RDBs wait in the process's temp directory under the state dir, never in /tmp.
    const staging = async () => (await readdir(path.join(STATE_DIR, 'tmp'), { recursive: true }).catch(() => [])).filter((n) => n.endsWith('.rdb'));
    const stagedBefore = await staging();
    try {
      await fillAllTypes(target, [1], 'kept');
      const before = await readAll(target);
      const flipped = Buffer.from(rdb);
      flipped[Math.floor(flipped.length / 2)]! ^= 0x20;
      const tooNew = Buffer.concat([Buffer.from('REDIS0099'), rdb.subarray(9)]);
      const cases: [Buffer, string, RegExp][] = [
        [flipped, 'E_ARCHIVE_CORRUPT', /redis-check-rdb rejected/],
        [rdb.subarray(0, rdb.length - 100), 'E_ARCHIVE_CORRUPT', /redis-check-rdb rejected/],
        [Buffer.from('not an rdb at all'), 'E_ARCHIVE_CORRUPT', /not an RDB file/],
        [tooNew, 'E_RESTORE_FAILED', /format version 99, which the target's Redis 7\.\d+\.\d+ cannot load/],
      ];
      for (const [bytes, code, message] of cases) {
        const error = await rejection(driverFor(target).stage(Readable.from([bytes]), new AbortController().signal));
        expect(isAgentError(error) && [error.code, error.message], message.source).toEqual([code, expect.stringMatching(message)]);
      }
      expect(diffData(before, await readAll(target))).toEqual([]);
      expect(await staging()).toEqual(stagedBefore);
    } finally {
      await target.stop();
    }
  });

  for (const appendonly of [true, false]) {
    it(`restores every type, TTL and binary key into a target with appendonly ${appendonly ? 'yes' : 'no'}, and the data survives a crash restart`, async () => {
      const target = await startRedis({ appendonly });
      try {
        await fillAllTypes(target, [0, 5], 'other');
        // A slow rewrite (20 ms per key): the restore must not end before Redis's own
        // post-sync AOF rewrite has, or the crash below would bring back the old data.
        if (appendonly) await target.client().config('SET', 'rdb-key-save-delay', '20000');
        // Settings the restore changes for its duration, and must set back.
        await target.client().config('SET', 'repl-diskless-load', 'swapdb', 'masterauth', 'original-auth');
        const staged = await driverFor(target).stage(Readable.from([rdb]), new AbortController().signal);
        expect(staged.facts).toMatchObject({ rdbBytes: rdb.length });
        const expected = await readAll(source);
        await staged.commit();
        expect(diffData(expected, await readAll(target))).toEqual([]);
        // A writable master again, with its own settings back.
        const c = target.client();
        expect(await c.config('GET', 'repl-diskless-load')).toEqual(['repl-diskless-load', 'swapdb']);
        expect(await c.config('GET', 'masterauth')).toEqual(['masterauth', 'original-auth']);
        expect(String(await c.info('replication'))).toMatch(/role:master/);
        await target.restart();
        expect(diffData(expected, await readAll(target))).toEqual([]);
        expect(await target.client().set('after', '1')).toBe('OK');
      } finally {
        await target.stop();
      }
    });
  }

  it('prepare connects and reads INFO and CONFIG GET before the freeze; the fork is capture()\'s; a prepare failed, cancelled or released leaves no connection', async () => {
    const admin = source.client();
    const agentClients = async () => String(await admin.call('CLIENT', 'LIST')).split('\n').filter((line) => / name=storage-agent /.test(line)).length;
    const gone = async (what: string) => {
      for (let waited = 0; (await agentClients()) > 0; waited += 10) {
        if (waited > 5_000) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    await admin.config('RESETSTAT');
    const prepared = await driverFor(source).prepare!({ signal: new AbortController().signal, consistent: true });
    expect(await agentClients()).toBe(1);
    const stats = String(await admin.info('commandstats'));
    expect(stats).toMatch(/cmdstat_config\|get:calls=2,/); // dir and dbfilename
    expect(stats).not.toMatch(/cmdstat_bgsave|cmdstat_client\|pause/);
    // Written after the prepare, before the fork: in the snapshot.
    await admin.set('after-prepare', '1');
    const capture = await prepared.capture(new AbortController().signal);
    await admin.set('after-capture', '1');
    const rdb = await drain(capture);
    const { facts } = await capture.result;
    await capture.release();
    await prepared.release(); // after capture: a no-op
    expect(rdb.includes('after-prepare')).toBe(true);
    expect(rdb.includes('after-capture')).toBe(false);
    expect(facts).toMatchObject({ keys: keys + 1, forkUsec: expect.any(Number) });
    await admin.del('after-prepare', 'after-capture');
    await gone('the captured connection to close');

    const unused = await driverFor(source).prepare!({ signal: new AbortController().signal, consistent: true });
    expect(await agentClients()).toBe(1);
    await unused.release();
    await gone('the released connection to close');

    const controller = new AbortController();
    const cancelling = driverFor(source).prepare!({ signal: controller.signal, consistent: true });
    controller.abort();
    expect(isAgentError(await rejection(cancelling), 'E_CANCELLED')).toBe(true);
    await gone('the cancelled prepare\'s connection to close');

    const wrongPassword = new RedisDriver({
      name: 'cache',
      env: 'test',
      stateDir: STATE_DIR,
      config: { kind: 'redis', host: '127.0.0.1', port: source.port, saveTimeout: 30_000, functions: 'refuse' },
      password: async () => 'not-the-password',
    });
    expect(isAgentError(await rejection(wrongPassword.prepare!({ signal: new AbortController().signal, consistent: true })), 'E_CAPTURE_FAILED')).toBe(true);
    expect(await agentClients()).toBe(0);
  });
});

describe('redis restores refuse function libraries unless the service keeps them (issue #10)', () => {
  const LIBRARY = "#!lua name=planted\nredis.register_function('get', function(keys, args) return redis.call('FLUSHALL') end)";
  let withFunctions: TestRedis;
  let target: TestRedis;

  beforeAll(async () => {
    [withFunctions, target] = await Promise.all([startRedis(), startRedis()]);
    await fillAllTypes(withFunctions, [0]);
    // A stream with a consumer and pending entries: the walk skips every part of it.
    const client = withFunctions.client();
    await client.call('XADD', 'pending', '*', 'a', '1');
    await client.call('XGROUP', 'CREATE', 'pending', 'g', '0');
    await client.call('XREADGROUP', 'GROUP', 'g', 'alice', 'COUNT', '1', 'STREAMS', 'pending', '>');
    await client.call('FUNCTION', 'LOAD', LIBRARY);
    // Long and repetitive: stored LZF-compressed.
    await client.call('FUNCTION', 'LOAD', `#!lua name=packed\n-- ${'a'.repeat(500)}\nredis.register_function('packed', function() return 1 end)`);
  });
  afterAll(async () => {
    await Promise.all([withFunctions.stop(), target.stop()]);
  });

  const rdbOf = async (server: TestRedis) => {
    const capture = await driverFor(server).capture({ signal: new AbortController().signal, consistent: false });
    const rdb = await drain(capture);
    await capture.result;
    await capture.release();
    return rdb;
  };
  /** FUNCTION LIST, in a stable order (Redis lists libraries in hash order). */
  const libraries = async (server: TestRedis) => ((await server.client().call('FUNCTION', 'LIST')) as unknown[]).map((library) => JSON.stringify(library)).sort();
  const staged = async () => (await readdir(path.join(STATE_DIR, 'tmp'), { recursive: true }).catch(() => [])).filter((n) => n.endsWith('.rdb'));

  it('refuses RDBs with a library (from a real BGSAVE, or after a key with a zero checksum, which Redis does not check) with E_UNSAFE_ARCHIVE_ENTRY: no key or function of the target changes', async () => {
    const real = await rdbOf(withFunctions);
    // Redis writes libraries before the first database, but loads one anywhere at the top level.
    const forged = rdbWithLibraryAfterKey(LIBRARY);
    await fillAllTypes(target, [2], 'mine');
    await target.client().call('FUNCTION', 'LOAD', "#!lua name=mine\nredis.register_function('mine', function() return 1 end)");
    const before = { data: await readAll(target), functions: await libraries(target) };
    const stagedBefore = await staged();
    const cases = [
      ['real', real, /holds 2 function libraries \((planted, packed|packed, planted)\).*functions: keep/],
      ['forged', forged, /holds 1 function library \(planted\).*functions: keep/],
    ] as const;
    for (const [what, bytes, message] of cases) {
      const error = await rejection(driverFor(target).stage(Readable.from([bytes]), new AbortController().signal));
      expect(error, what).toMatchObject({ code: 'E_UNSAFE_ARCHIVE_ENTRY', message: expect.stringMatching(message) });
      expect(diffData(before.data, await readAll(target)), what).toEqual([]);
      expect(await libraries(target), what).toEqual(before.functions);
      expect(await staged(), what).toEqual(stagedBefore);
    }
  });

  it('functions: keep restores them with the data', async () => {
    const restore = await driverFor(target, 30_000, 'keep').stage(Readable.from([await rdbOf(withFunctions)]), new AbortController().signal);
    await restore.commit();
    expect(diffData(await readAll(withFunctions), await readAll(target))).toEqual([]);
    expect(await libraries(target)).toEqual(await libraries(withFunctions));
  });
});

describe('redis through the real CLI (fs store)', () => {
  let sandbox: Sandbox;
  let source: TestRedis;
  let copyAof: TestRedis;
  let copyRdb: TestRedis;
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    sandbox = await createSandbox();
    [source, copyAof, copyRdb] = await Promise.all([startRedis({ password: PASSWORD }), startRedis({ appendonly: true }), startRedis({ appendonly: false })]);
    process.env.TEST_REDIS_PASSWORD = PASSWORD;
    await fillAllTypes(source, DBS);
    await fillAllTypes(copyAof, [0, 1], 'before');
    await fillAllTypes(copyRdb, [2, 15], 'before');
    await sandbox.writeConfig({
      environments: {
        site: { services: { cache: source.serviceConfig('TEST_REDIS_PASSWORD') } },
        'copy-aof': { services: { cache: copyAof.serviceConfig() } },
        'copy-rdb': { services: { cache: copyRdb.serviceConfig() } },
      },
    });
  });
  afterAll(async () => {
    await Promise.all([source, copyAof, copyRdb].map((s) => s?.stop()));
    await sandbox.cleanup();
  });

  it('backs up, lists, and restores into other environments (AOF on and off): exactly the backup’s keys, also after a crash restart', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const element = manifest.elements[0]!;
    expect(element).toMatchObject({ name: 'cache', kind: 'redis', format: 'rdb', warnings: [] });
    expect(element.facts).toMatchObject({ keyspace: expect.stringMatching(/^db0=\d+,db3=\d+,db15=\d+$/), rdbBytes: element.rawBytes });
    expect(await cliJson([...args(), 'backup', 'list', 'site'])).toMatchObject([{ id: manifest.id, restorable: true }]);
    const expected = await readAll(source);
    for (const [env, target] of [['copy-aof', copyAof], ['copy-rdb', copyRdb]] as const) {
      const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', env, '--yes']);
      expect(restore.exitCode, restore.stderr).toBe(0);
      expect(diffData(expected, await readAll(target)), env).toEqual([]);
      await target.restart();
      expect(diffData(expected, await readAll(target)), `${env} after a restart`).toEqual([]);
    }
  });

  it('restores into its own environment: keys written after the backup are gone, changed ones are back', async () => {
    const [latest] = await cliJson<{ id: string }[]>([...args(), 'backup', 'list', 'site']);
    const expected = await readAll(source);
    const c = source.client(3);
    await c.set('written-after-backup', 'goes away');
    await c.set('a:str', 'changed');
    await c.del('a:stream');
    const restore = await cli([...args(), 'backup', 'restore', 'site', latest!.id, '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(diffData(expected, await readAll(source))).toEqual([]);
  });
});

describe('redis faults', () => {
  let sandbox: Sandbox;
  let source: TestRedis;
  let target: TestRedis;
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    sandbox = await createSandbox();
    // No save points: after a failed BGSAVE, save points would make Redis refuse writes
    // (stop-writes-on-bgsave-error), which is Redis's policy, not a pause left behind.
    [source, target] = await Promise.all([startRedis({ save: false }), startRedis({ appendonly: true })]);
    await fillAllTypes(source, [0]);
    await fillAllTypes(target, [0, 7], 'target');
    await sandbox.writeConfig({
      // Uncompressed, so a flipped byte reaches the restore and only the sha256 catches it.
      compression: { algorithm: 'none' },
      environments: { site: { services: { cache: source.serviceConfig() } }, copy: { services: { cache: target.serviceConfig() } } },
    });
  });
  afterAll(async () => {
    await Promise.all([source, target].map((s) => s?.stop()));
    await sandbox.cleanup();
  });

  it('a failing BGSAVE (read-only dir) fails the backup with the reason, leaves nothing restorable and no pause', async () => {
    const readOnly = path.join(source.dir, 'read-only');
    await mkdir(readOnly, { mode: 0o555 });
    const admin = source.client();
    await admin.config('SET', 'dir', readOnly);
    try {
      const backup = await cli([...args(), 'backup', 'create', 'site']);
      expect(backup.exitCode).toBe(7);
      expect(backup.stderr).toContain('E_CAPTURE_FAILED');
      expect(backup.stderr).toMatch(/BGSAVE failed.*Permission denied/);
      expect(await cliJson([...args(), 'backup', 'list', 'site'])).toEqual([]);

      const capture = await driverFor(source).capture({ signal: new AbortController().signal, consistent: true });
      const [streamError, resultError] = await Promise.all([rejection(drain(capture)), rejection(capture.result)]);
      expect(isAgentError(resultError, 'E_CAPTURE_FAILED')).toBe(true);
      expect(streamError).toBe(resultError);
      // The pause's lease is 5 s: a write that returns at once proves UNPAUSE ran.
      const writer = source.client();
      const started = performance.now();
      expect(await writer.set('written-after-failure', '1')).toBe('OK');
      expect(performance.now() - started).toBeLessThan(250);
    } finally {
      await admin.config('SET', 'dir', source.dir);
    }
  });

  it('a corrupted stored object fails the restore with E_CHECKSUM_MISMATCH; the target is unchanged and no temp file is left', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const store = new FsObjectStore(path.join(sandbox.stateDir, 'backups'));
    const key = manifest.elements[0]!.objects[0]!.key;
    const bytes = Buffer.concat(await (await store.get(key)).toArray());
    bytes[Math.floor(bytes.length / 2)]! ^= 0x01;
    await store.put(key, Readable.from([bytes]));
    const before = await readAll(target);
    const tmp = await mkdtemp(path.join(sandbox.dir, 'tmp-'));
    const restore = await cli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'copy', '--yes'], { env: { TMPDIR: tmp } });
    expect(restore.exitCode).toBe(5);
    expect(restore.stderr).toContain('E_CHECKSUM_MISMATCH');
    expect(diffData(before, await readAll(target))).toEqual([]);
    expect(await readdir(tmp)).toEqual([]);
  });

  it('a target that cannot write the transfer (read-only dir) keeps its data and settings, with the reason', async () => {
    const latest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const readOnly = path.join(target.dir, 'read-only');
    await mkdir(readOnly, { mode: 0o555 });
    const admin = target.client();
    await admin.config('SET', 'dir', readOnly);
    const before = await readAll(target);
    try {
      // --no-safety-backup: the safety backup's BGSAVE would fail first in the read-only dir (the
      // restore then fails before anything changes); this test is about the load itself.
      const restore = await cli([...args(), 'backup', 'restore', 'site', latest.id, '--target', 'copy', '--yes', '--no-safety-backup']);
      expect(restore.exitCode).toBe(8);
      expect(restore.stderr).toMatch(/E_RESTORE_FAILED.*Permission denied.*the target never flushed its data: it is unchanged/);
    } finally {
      await admin.config('SET', 'dir', target.dir);
    }
    expect(diffData(before, await readAll(target))).toEqual([]);
    expect(String(await admin.info('replication'))).toMatch(/role:master/);
    expect(await admin.config('GET', 'masterauth')).toEqual(['masterauth', '']);
    expect(await admin.set('writable-again', '1')).toBe('OK');
  });

  it('a target that is itself a replica is refused before anything changes', async () => {
    const [latest] = await cliJson<{ id: string }[]>([...args(), 'backup', 'list', 'site']);
    const replica = target.client();
    await replica.call('REPLICAOF', '127.0.0.1', String(source.port));
    try {
      const restore = await cli([...args(), 'backup', 'restore', 'site', latest!.id, '--target', 'copy', '--yes']);
      expect(restore.exitCode).toBe(8);
      expect(restore.stderr).toMatch(/E_RESTORE_FAILED.*is a replica of 127\.0\.0\.1:\d+/);
    } finally {
      await replica.call('REPLICAOF', 'NO', 'ONE');
    }
  });

  it('waits for a save already in progress, then takes its own snapshot', async () => {
    const admin = source.client();
    await admin.config('SET', 'rdb-key-save-delay', '20000'); // ~20 keys × 20 ms
    try {
      expect(await admin.bgsave()).toMatch(/started/);
      await admin.set('written-during-the-other-save', 'must be in ours');
      const capture = await driverFor(source).capture({ signal: new AbortController().signal, consistent: true });
      const rdb = await drain(capture);
      await capture.result;
      expect(rdb.includes('written-during-the-other-save')).toBe(true);
    } finally {
      await admin.config('SET', 'rdb-key-save-delay', '0');
    }
  });

  it('a BGSAVE slower than saveTimeout, and a cancel during the wait, fail the capture cleanly', async () => {
    const admin = source.client();
    await admin.config('SET', 'rdb-key-save-delay', '50000');
    try {
      const slow = await driverFor(source, 300).capture({ signal: new AbortController().signal, consistent: false });
      const [, timedOut] = await Promise.all([rejection(drain(slow)), rejection(slow.result)]);
      expect(isAgentError(timedOut, 'E_CAPTURE_FAILED') && timedOut.message).toMatch(/did not finish within 300 ms/);
      await waitForNoSave(source);

      const controller = new AbortController();
      const cancelled = await driverFor(source).capture({ signal: controller.signal, consistent: true });
      setTimeout(() => controller.abort(), 100);
      const [, cancelError] = await Promise.all([rejection(drain(cancelled)), rejection(cancelled.result)]);
      expect(isAgentError(cancelError, 'E_CANCELLED')).toBe(true);
      await cancelled.release();
    } finally {
      await admin.config('SET', 'rdb-key-save-delay', '0');
      await waitForNoSave(source);
    }
  });

});

async function waitForNoSave(server: TestRedis): Promise<void> {
  const c = server.client();
  while (/rdb_bgsave_in_progress:1/.test(String(await c.info('persistence')))) await new Promise((r) => setTimeout(r, 50));
}

describe('redis restore interrupted by a crash', () => {
  let sandbox: Sandbox;
  let source: TestRedis;
  let target: TestRedis;
  const args = () => ['--config', sandbox.configPath];
  const journalDir = () => path.join(sandbox.stateDir, 'redis-restores');
  const journalFiles = () => readdir(journalDir()).catch(() => [] as string[]);

  beforeAll(async () => {
    sandbox = await createSandbox();
    [source, target] = await Promise.all([startRedis({ password: PASSWORD }), startRedis({ password: 'target-secret' })]);
    process.env.TEST_REDIS_PASSWORD = PASSWORD;
    process.env.TEST_TARGET_PASSWORD = 'target-secret';
    await sandbox.writeConfig({
      environments: {
        site: { services: { cache: source.serviceConfig('TEST_REDIS_PASSWORD') } },
        copy: { services: { cache: target.serviceConfig('TEST_TARGET_PASSWORD') } },
      },
    });
  });
  afterAll(async () => {
    await Promise.all([source, target].map((s) => s?.stop()));
    await sandbox.cleanup();
  });

  async function replication(server: TestRedis): Promise<{ role: string; masterauth: string; disklessLoad: string }> {
    const c = server.client();
    const text = String(await c.call('INFO', 'replication'));
    const masterauth = ((await c.call('CONFIG', 'GET', 'masterauth')) as string[])[1]!;
    const disklessLoad = ((await c.call('CONFIG', 'GET', 'repl-diskless-load')) as string[])[1]!;
    return { role: /role:(\w+)/.exec(text)![1]!, masterauth, disklessLoad };
  }

  it('the next start promotes a target left a replica of the agent and sets its settings back', async () => {
    const c = target.client();
    await c.call('CONFIG', 'SET', 'masterauth', 'operator-masterauth', 'repl-diskless-load', 'swapdb');
    const original = { disklessLoad: 'swapdb', masterauth: 'operator-masterauth' };
    // What a restore killed mid-load leaves: a replica of a closed port, with a one-time masterauth.
    const closed = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo;
        server.close(() => resolve(port));
      });
    });
    const token = 'one-time-token';
    await c.call('CONFIG', 'SET', 'masterauth', token, 'repl-diskless-load', 'disabled');
    await c.call('REPLICAOF', '127.0.0.1', String(closed));
    const gone = execa('true');
    await gone;
    // Written as the dead process would have (record() stamps the writer's own identity).
    const journal = new RedisRestoreJournal(sandbox.stateDir);
    await journal.record('copy-cache-dead', { pid: 0, env: 'copy', service: 'cache', since: new Date().toISOString(), restoreFrom: { host: '127.0.0.1', port: closed }, tokenSha256: tokenDigest(token), original });
    const file = journal.fileOf('copy-cache-dead');
    await writeFile(file, JSON.stringify({ ...JSON.parse(await readFile(file, 'utf8')), pid: gone.pid!, startTime: null }));
    expect((await replication(target)).role).toBe('slave');

    const list = await cli([...args(), 'backup', 'list', 'copy']);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(list.stderr).toMatch(/promoted/);
    expect(await replication(target)).toEqual({ role: 'master', ...original });
    expect(await journalFiles()).toEqual([]);
    await c.set('writable-again', '1');
  });

  it('a restore killed mid-load leaves a journal; the next command makes the target a writable master', { timeout: 120_000 }, async () => {
    await target.client().call('CONFIG', 'SET', 'masterauth', 'operator-masterauth');
    const c = source.client();
    // Enough data that the target spends a while receiving and loading it.
    for (let batch = 0; batch < 40; batch++) {
      const pipeline = c.pipeline();
      for (let i = 0; i < 5000; i++) pipeline.set(`big:${batch}:${i}`, 'x'.repeat(1000));
      await pipeline.exec();
    }
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const restore = startCli([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'copy', '--yes', '--no-safety-backup']);
    // The download and the RDB check come first: wait as long as they may take on a busy
    // machine for the journal, written just before the target is changed; then give the target
    // a moment to become a replica (its load may be too quick to catch: the outcome checked
    // below is the same whenever the kill lands).
    for (const until = Date.now() + 60_000; (await journalFiles()).length === 0; ) {
      if (restore.exitCode !== null) throw new Error(`the restore ended (exit ${restore.exitCode}) before it journaled the load: ${(await restore).stderr}`);
      if (Date.now() > until) throw new Error('no journal within 60 s');
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    for (const until = Date.now() + 1_000; Date.now() < until && (await replication(target)).role !== 'slave'; );
    restore.kill('SIGKILL');
    await restore;

    const list = await cli([...args(), 'backup', 'list', 'copy']);
    expect(list.exitCode, list.stderr).toBe(0);
    const after = await replication(target);
    expect(after.role).toBe('master');
    expect(after.masterauth).toBe('operator-masterauth');
    expect(await journalFiles()).toEqual([]);
    await target.client().set('writable-again', '2');
  });
});

describe('redis: a consistent backup killed while writes are paused', () => {
  let sandbox: Sandbox;
  let server: TestRedis;

  beforeAll(async () => {
    sandbox = await createSandbox();
    server = await startRedis();
    await fillAllTypes(server, [0]);
    await sandbox.writeConfig({ environments: { site: { services: { cache: server.serviceConfig() } } } });
  });
  afterAll(async () => {
    await server?.stop();
    await sandbox?.cleanup();
  });

  it('killed right after CLIENT PAUSE … WRITE was sent (redis:paused): Redis takes writes again within 1 s of the kill', async () => {
    await killCliAt(sandbox.dir, ['--config', sandbox.configPath, 'backup', 'create', 'site'], 'redis:paused');
    const killed = performance.now();
    const c = server.client();
    await c.set('written-after-the-kill', 'yes'); // waits while writes are paused
    expect(performance.now() - killed).toBeLessThan(1000);
    expect(await c.get('written-after-the-kill')).toBe('yes');
  });
});
