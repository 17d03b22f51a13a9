/**
 * The restore read path (artifacts.ts readDecompressed): what comes back from the store is
 * verified, decompressed and handed on, and everything it starts (the store read, the `zstd`
 * child) ends with it, whichever way the consumer stops.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { finished, pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { consumeElement, readDecompressed } from '../src/snapshot/pipeline/artifacts.ts';
import { loadConfig } from '../src/agent/config.ts';
import { openEnvironmentStore } from '../src/agent/stores.ts';
import { AgentError } from '../src/errors.ts';
import { LengthCheck } from '../src/snapshot/digest.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import type { ObjectStore } from '../src/transport/stores/object-store.ts';
import { cli, cliJson, cliTracked, createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { CountingStore } from './support/counting-store.ts';
import { fillAllTypes, startRedis, type TestRedis } from './support/redis.ts';
import { describeTree, MiB } from './support/tree.ts';

const ARTIFACTS = path.resolve(import.meta.dirname, '../src/snapshot/pipeline/artifacts.ts');
const CATALOG = path.resolve(import.meta.dirname, '../src/snapshot/pipeline/catalog.ts');
const CONFIG = path.resolve(import.meta.dirname, '../src/agent/config.ts');
const STORES = path.resolve(import.meta.dirname, '../src/agent/stores.ts');
const KEYS = path.resolve(import.meta.dirname, '../src/agent/keys.ts');

/** The `zstd` processes whose parent is this process, zombies included (not yet reaped). */
async function zstdChildren(): Promise<number[]> {
  const found: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const line = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const fields = /^\d+ \((.*)\) \S+ (\d+) /.exec(line);
    if (fields?.[1] === 'zstd' && Number(fields[2]) === process.pid) found.push(Number(name));
  }
  return found;
}

/** Flips one byte in the middle of an object. */
async function corrupt(store: ObjectStore, key: string): Promise<void> {
  const bytes = Buffer.from(await buffer(await store.get(key)));
  bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
  await store.put(key, Readable.from([bytes]));
}

/** Runs the CLI and fails the test when it has not exited after `ms` (it is killed then). */
async function cliWithin(ms: number, args: string[]): Promise<{ exitCode: number; stderr: string; ms: number }> {
  const started = Date.now();
  const result = await Promise.race([cli(args), new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`storage-agent ${args.join(' ')} still running after ${ms} ms`)), ms).unref())]);
  return { exitCode: result.exitCode, stderr: result.stderr, ms: Date.now() - started };
}

describe('LengthCheck', () => {
  it('fails E_ARCHIVE_CORRUPT as soon as more bytes than expected pass, without waiting for the end', async () => {
    let produced = 0;
    const endless = new Readable({
      read() {
        produced += 64 * 1024;
        this.push(Buffer.alloc(64 * 1024));
      },
    });
    const seen: number[] = [];
    const check = new LengthCheck(MiB, 'element x', (bytes) => seen.push(bytes));
    await expect(pipeline(endless, check, new Writable({ write: (_chunk, _encoding, done) => done() }))).rejects.toMatchObject({
      code: 'E_ARCHIVE_CORRUPT',
      message: expect.stringContaining(`element x: decompressed to more than ${MiB} bytes`),
    });
    expect(produced).toBeLessThan(4 * MiB);
    expect(seen.at(-1)).toBe(MiB);
  });

  it('fails E_ARCHIVE_CORRUPT at the end when fewer bytes passed', async () => {
    await expect(pipeline(Readable.from([Buffer.alloc(100)]), new LengthCheck(101, 'element x'), new Writable({ write: (_chunk, _encoding, done) => done() }))).rejects.toMatchObject({
      code: 'E_ARCHIVE_CORRUPT',
      message: expect.stringContaining('element x: decompressed to 100 bytes, the manifest records 101'),
    });
  });
});

describe('readDecompressed owns what it starts', () => {
  let sandbox: Sandbox;
  let store: ObjectStore;
  let manifest: Manifest;

  beforeAll(async () => {
    sandbox = await createSandbox();
    const mount = path.join(sandbox.dir, 'mount');
    await mkdir(mount);
    // Incompressible: zstd's output outruns a reader that stops, so the child blocks on a full pipe.
    await writeFile(path.join(mount, 'random.bin'), randomBytes(24 * MiB));
    await sandbox.writeConfig({ environments: { site: filesEnv({ uploads: mount }) } });
    store = await openEnvironmentStore(await loadConfig(sandbox.configPath), 'site');
    manifest = await cliJson<Manifest>(['--config', sandbox.configPath, 'backup', 'create', 'site']);
  });
  afterAll(() => sandbox.cleanup());

  const element = () => manifest.elements[0]!;

  it('starts nothing before the first read: no store request, no zstd; destroyed unread, it just closes', async () => {
    const counting = new CountingStore(store);
    const stream = readDecompressed(counting, manifest, element(), new AbortController().signal);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(counting.calls).toEqual([]);
    expect(await zstdChildren()).toEqual([]);
    stream.destroy();
    await once(stream, 'close');
    expect(counting.calls).toEqual([]);
  });

  it('destroyed in the tick its first read asked for data (before the decoder exists): no store request, no zstd child left', async () => {
    const counting = new CountingStore(store);
    const stream = readDecompressed(counting, manifest, element(), new AbortController().signal);
    stream.read(0); // _read: the decoder is being made
    stream.destroy();
    await once(stream, 'close');
    for (let waited = 0; (await zstdChildren()).length > 0 && waited < 5_000; waited += 50) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await zstdChildren()).toEqual([]);
    expect(counting.calls).toEqual([]);
  });

  it('destroyed after a partial read, it kills and reaps the zstd child before it closes', async () => {
    const stream = readDecompressed(store, manifest, element(), new AbortController().signal);
    const [first] = (await once(stream, 'data')) as [Buffer];
    stream.pause();
    expect(first.length).toBeGreaterThan(0);
    expect(await zstdChildren()).toHaveLength(1);
    stream.destroy();
    await once(stream, 'close');
    expect(await zstdChildren()).toEqual([]);
  });

  it('an abort of the signal fails it with an AbortError (E_CANCELLED to a restore) and leaves no zstd child', async () => {
    const controller = new AbortController();
    const stream = readDecompressed(store, manifest, element(), controller.signal);
    await once(stream, 'data');
    stream.pause();
    controller.abort();
    await expect(finished(stream)).rejects.toMatchObject({ name: 'AbortError' });
    if (!stream.closed) await once(stream, 'close');
    expect(await zstdChildren()).toEqual([]);
  });

  it('reports the raw bytes read so far through onBytes, up to rawBytes', async () => {
    const seen: number[] = [];
    const stream = readDecompressed(store, manifest, element(), new AbortController().signal, { onBytes: (bytes) => seen.push(bytes) });
    let total = 0;
    for await (const chunk of stream) {
      total += (chunk as Buffer).length;
      expect(seen.at(-1)).toBeGreaterThanOrEqual(total);
    }
    expect(total).toBe(element().rawBytes);
    expect(seen.length).toBeGreaterThan(10);
    expect(seen.every((bytes, i) => i === 0 || bytes > seen[i - 1]!)).toBe(true);
    expect(seen.at(-1)).toBe(element().rawBytes);
    expect(await zstdChildren()).toEqual([]);
  });

  /** Elements of archive backups need no repository. */
  const archives = () => ({ store, repository: () => Promise.reject(new Error('no repository here')) });

  /** A consume() that reads one chunk and then fails the way a tar or SQL parser would. */
  const parseFailure = async (source: Readable) => {
    await once(source, 'data');
    throw new AgentError('E_ARCHIVE_CORRUPT', 'invalid tar header');
  };

  it('consumeElement: a consumer that fails on a stored object with a flipped byte → E_CHECKSUM_MISMATCH, not its own error', async () => {
    const damaged = await cliJson<Manifest>(['--config', sandbox.configPath, 'backup', 'create', 'site']);
    await corrupt(store, damaged.elements[0]!.objects[0]!.key);
    await expect(consumeElement(archives(), damaged, damaged.elements[0]!, new AbortController().signal, parseFailure)).rejects.toMatchObject({
      code: 'E_CHECKSUM_MISMATCH',
      message: expect.stringContaining(`element uploads of backup ${damaged.id}`),
    });
    expect(await zstdChildren()).toEqual([]);
  });

  it('consumeElement: over intact bytes the consumer\'s own error stands; a result leaves nothing running', async () => {
    const signal = new AbortController().signal;
    await expect(consumeElement(archives(), manifest, element(), signal, parseFailure)).rejects.toThrow('invalid tar header');
    await expect(consumeElement(archives(), manifest, element(), signal, async () => Promise.reject(new Error('target down')))).rejects.toThrow('target down');
    const first = await consumeElement(archives(), manifest, element(), signal, async (source) => ((await once(source, 'data')) as [Buffer])[0].length);
    expect(first).toBeGreaterThan(0);
    expect(await zstdChildren()).toEqual([]);
  });

  it.each(['before reading', 'after a partial read'])('a process that destroys the stream %s exits on its own', async (when) => {
    const script = `
      import { readDecompressed } from ${JSON.stringify(ARTIFACTS)};
      import { readManifest } from ${JSON.stringify(CATALOG)};
      import { loadConfig } from ${JSON.stringify(CONFIG)};
      import { openEnvironmentStore } from ${JSON.stringify(STORES)};
      import { loadKeyRing } from ${JSON.stringify(KEYS)};
      const [configPath, id, when] = process.argv.slice(1);
      const config = await loadConfig(configPath);
      const store = await openEnvironmentStore(config, 'site');
      const manifest = await readManifest(store, 'site', id, { keys: await loadKeyRing(config) });
      const stream = readDecompressed(store, manifest, manifest.elements[0], new AbortController().signal);
      if (when === 'after a partial read') {
        await new Promise((resolve) => stream.once('data', resolve));
        stream.pause();
      }
      stream.destroy();
      console.log('destroyed');
    `;
    const started = Date.now();
    const child = await execa(process.execPath, ['--input-type=module', '-e', script, sandbox.configPath, manifest.id, when], { timeout: 20_000, reject: false });
    expect(child.timedOut, 'the process stayed alive after destroying the stream').toBe(false);
    expect(child.exitCode, String(child.stderr)).toBe(0);
    expect(child.stdout).toBe('destroyed');
    expect(Date.now() - started).toBeLessThan(10_000);
  });
});

describe('restores that fail end, and say why; intact ones still restore', () => {
  let sandbox: Sandbox;
  let redis: TestRedis;
  let down: TestRedis;
  let store: ObjectStore;
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    sandbox = await createSandbox();
    const mount = path.join(sandbox.dir, 'mount');
    await mkdir(mount);
    await writeFile(path.join(mount, 'a.txt'), 'original contents '.repeat(100_000));
    await writeFile(path.join(mount, 'b.bin'), randomBytes(2 * MiB));
    await writeFile(path.join(sandbox.dir, 'a-file'), 'not a directory');
    redis = await startRedis({ save: false });
    await fillAllTypes(redis, [0, 2]);
    down = await startRedis({ save: false });
    await down.stop(); // its port is free now: ECONNREFUSED
    await sandbox.writeConfig({
      environments: {
        site: filesEnv({ uploads: mount }),
        // Its mount's parent is a file: staging beside it fails before anything is read.
        orphan: filesEnv({ uploads: path.join(sandbox.dir, 'a-file', 'mount') }),
        copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }),
        cache: { services: { cache: redis.serviceConfig() } },
        down: { services: { cache: down.serviceConfig() } },
      },
    });
    store = await openEnvironmentStore(await loadConfig(sandbox.configPath), 'site');
  });
  afterAll(async () => {
    await redis?.stop();
    await sandbox.cleanup();
  });

  it('an intact backup still restores: the copy is the tree', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const restore = await cliWithin(60_000, [...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'copy', '--yes']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(describeTree(path.join(sandbox.dir, 'copy'))).toEqual(describeTree(path.join(sandbox.dir, 'mount')));
  });

  it('a byte flipped in a stored Redis element → restore fails E_CHECKSUM_MISMATCH (exit 5), like verify, not the decompressor\'s error; its zstd child ends with it and the CLI exits on its own', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'cache']);
    await corrupt(store, manifest.elements[0]!.objects[0]!.key);
    const verify = await cli([...args(), 'backup', 'verify', 'cache', manifest.id]);
    expect(verify.stdout).toContain('E_CHECKSUM_MISMATCH');
    const restore = await cliTracked([...args(), 'backup', 'restore', 'cache', manifest.id, '--yes', '--no-safety-backup'], { timeoutMs: 60_000 });
    expect(restore.exitCode, restore.stderr).toBe(5);
    expect(restore.stderr).toContain(`E_CHECKSUM_MISMATCH`);
    expect(restore.stderr).toContain(`element cache of backup ${manifest.id}`);
    expect(restore.stderr).not.toMatch(/zstd -q -d -c/);
    // It failed while its zstd decompressed: that child ended with it, and the CLI on its own.
    expect(restore.afterOutputMs, 'ended by the exit grace, not on its own').toBeLessThan(1_000);
    expect(restore.outlived, `children seen: ${JSON.stringify(restore.children)}`).toEqual([]);
  });

  it('a files restore whose mount\'s parent cannot be created exits with the error within seconds (it hung, holding a zstd child), on its own, and no child process of it outlives it', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'site']);
    const restore = await cliTracked([...args(), 'backup', 'restore', 'site', manifest.id, '--target', 'orphan', '--yes', '--no-safety-backup'], { timeoutMs: 20_000 });
    expect(restore.exitCode, restore.stderr).toBe(8);
    expect(restore.stderr).toContain('E_RESTORE_FAILED');
    expect(restore.ms).toBeLessThan(10_000);
    // The CLI's 2 s exit grace (main.ts) must not be what ends it, nor hide a child left running.
    expect(restore.afterOutputMs, 'ended by the exit grace, not on its own').toBeLessThan(1_000);
    expect(restore.outlived, `children seen: ${JSON.stringify(restore.children)}`).toEqual([]);
  });

  it('a Redis restore whose target is down exits with the error within seconds, on its own (not by the 2 s exit grace), and no child process of it outlives it', async () => {
    const manifest = await cliJson<Manifest>([...args(), 'backup', 'create', 'cache']);
    const restore = await cliTracked([...args(), 'backup', 'restore', 'cache', manifest.id, '--target', 'down', '--yes', '--no-safety-backup'], { timeoutMs: 30_000 });
    expect(restore.exitCode, restore.stderr).toBe(8);
    expect(restore.stderr).toMatch(/E_RESTORE_FAILED.*ECONNREFUSED|E_RESTORE_FAILED.*connect/i);
    expect(restore.ms).toBeLessThan(15_000);
    expect(restore.afterOutputMs, 'ended by the exit grace, not on its own').toBeLessThan(1_000);
    expect(restore.outlived, `children seen: ${JSON.stringify(restore.children)}`).toEqual([]);
  });

  describe('backup get --to', () => {
    let id: string;
    beforeAll(async () => {
      id = (await cliJson<Manifest>([...args(), 'backup', 'create', 'site'])).id;
    });
    const get = (to: string) => cli([...args(), 'backup', 'get', 'site', id, '--element', 'uploads', '--to', to]);

    it('a path ending in / that is no directory → E_USAGE (exit 2) naming it; no file of that name is written', async () => {
      const to = path.join(sandbox.dir, 'newdir') + '/';
      const result = await get(to);
      expect(result.exitCode, result.stderr).toBe(2);
      expect(result.stderr).toContain(`E_USAGE`);
      expect(result.stderr).toContain(to);
      await expect(stat(path.join(sandbox.dir, 'newdir'))).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('a file path in a directory that does not exist → E_USAGE (exit 2) naming the directory', async () => {
      const to = path.join(sandbox.dir, 'nonexistent', 'dir', 'uploads.tar.zst');
      const result = await get(to);
      expect(result.exitCode, result.stderr).toBe(2);
      expect(result.stderr).toMatch(/E_USAGE.*directory .*nonexistent\/dir does not exist/);
    });

    it('an existing directory gets <element>.<ext> inside; a file path in one is written as named', async () => {
      const dir = path.join(sandbox.dir, 'downloads');
      await mkdir(dir);
      const inDir = await get(dir + '/');
      expect(inDir.exitCode, inDir.stderr).toBe(0);
      expect((await stat(path.join(dir, 'uploads.tar.zst'))).size).toBeGreaterThan(0);
      const named = await get(path.join(dir, 'copy.tzst'));
      expect(named.exitCode, named.stderr).toBe(0);
      expect(await readFile(path.join(dir, 'copy.tzst'))).toEqual(await readFile(path.join(dir, 'uploads.tar.zst')));
    });
  });
});
