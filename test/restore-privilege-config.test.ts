import { lstat, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/agent/config.ts';
import { createDriver } from '../src/agent/drivers.ts';
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
        const driver = createDriver('uploads', services(option, '', mount).uploads!, { env: 'shop', stateDir: dir });
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
