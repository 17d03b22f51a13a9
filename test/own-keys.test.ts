import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/agent/config.ts';
import { ProgressTracker } from '../src/agent/jobs/progress.ts';
import { parseDuration, parseSize } from '../src/units.ts';

/**
 * Names and suffixes from outside (service names, units in the config) looked up in plain
 * objects find Object.prototype's members: 'constructor' is Object itself.
 */
const PROTOTYPE_KEYS = Object.getOwnPropertyNames(Object.prototype);

describe('progress of an element named like an Object.prototype key', () => {
  it("'constructor' gets its own bytes; Object and Object.prototype are untouched", () => {
    const before = { object: Object.getOwnPropertyNames(Object).sort(), prototype: Object.getOwnPropertyNames(Object.prototype).sort() };
    const tracker = new ProgressTracker();
    const start = 1_000_000;
    tracker.update({ phase: 'capture', element: 'db', bytes: 100, totalBytes: 1000 }, start);
    tracker.update({ phase: 'capture', element: 'constructor', bytes: 0, totalBytes: 4000 }, start + 1);
    tracker.update({ phase: 'capture', element: 'constructor', bytes: 2000, totalBytes: 4000 }, start + 1001);

    const progress = tracker.snapshot();
    expect(progress.elements).toEqual({ db: { bytes: 100, totalBytes: 1000 }, constructor: { bytes: 2000, totalBytes: 4000 } });
    expect(progress.bytes).toBe(2100);
    expect(progress.element).toBe('constructor');
    // 2000 bytes in the 1 s window: 2000 B/s, 2000 bytes left of the element's 4000.
    expect(progress.rate).toBe(2000);
    expect(progress.etaSeconds).toBe(1);

    expect(Object.getOwnPropertyNames(Object).sort()).toEqual(before.object);
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(before.prototype);
    expect('bytes' in Object).toBe(false);
  });

  it('every Object.prototype key is an element of its own', () => {
    const tracker = new ProgressTracker();
    for (const [i, key] of PROTOTYPE_KEYS.entries()) tracker.update({ phase: 'capture', element: key, bytes: i + 1 });
    const { elements, bytes } = tracker.snapshot();
    expect(Object.keys(elements).sort()).toEqual([...PROTOTYPE_KEYS].sort());
    for (const [i, key] of PROTOTYPE_KEYS.entries()) expect(Object.getOwnPropertyDescriptor(elements, key)?.value).toEqual({ bytes: i + 1 });
    expect(bytes).toBe((PROTOTYPE_KEYS.length * (PROTOTYPE_KEYS.length + 1)) / 2);
  });
});

describe('units that are Object.prototype keys', () => {
  it.each(PROTOTYPE_KEYS)('parseSize and parseDuration refuse "8%s"', (key) => {
    expect(parseSize(`8${key}`)).toBeUndefined();
    expect(parseSize(`8 ${key.toUpperCase()}`)).toBeUndefined();
    expect(parseDuration(`8${key}`)).toBeUndefined();
  });

  it('the units themselves still parse', () => {
    expect(parseSize('8MiB')).toBe(8 * 1024 ** 2);
    expect(parseSize('512k')).toBe(512_000);
    expect(parseSize('7')).toBe(7);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('1h')).toBe(3_600_000);
  });
});

describe('a config with a size in an Object.prototype key as unit', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'sa-own-keys-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  async function load(partSize: string): Promise<unknown> {
    const file = path.join(dir, 'config.yaml');
    await writeFile(
      file,
      `stateDir: ${dir}/state
stores:
  offsite: { type: s3, bucket: backups, accessKeyId: { env: AK }, secretAccessKey: { env: SK }, partSize: ${partSize} }
environments:
  shop: { store: offsite, services: { db: { kind: files, path: ${dir}/shop } } }
`,
    );
    return loadConfig(file);
  }

  it('partSize: 8constructor is E_CONFIG_INVALID naming the field', async () => {
    await expect(load('8constructor')).rejects.toMatchObject({
      code: 'E_CONFIG_INVALID',
      message: expect.stringMatching(/stores\.offsite\.partSize: must be a size of at least 5242880 bytes/),
    });
  });

  it('partSize: 8MiB loads', async () => {
    await expect(load('8MiB')).resolves.toMatchObject({ stores: { offsite: { partSize: 8 * 1024 ** 2 } } });
  });
});
