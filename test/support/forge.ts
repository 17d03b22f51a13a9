import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { createCompressor, createDecompressor } from '../../src/snapshot/compression.ts';
import type { Manifest } from '../../src/snapshot/manifest.ts';
import type { ObjectStore } from '../../src/transport/stores/object-store.ts';
import { newBackupId } from '../../src/snapshot/backup-id.ts';
import { cliJson } from './cli.ts';
import { putSigned } from './manifest-keys.ts';

export const zst = async (data: Buffer) => buffer(Readable.from([data]).pipe(createCompressor('zstd', { level: 1 })));
export const unzst = async (data: Buffer) => buffer(Readable.from([data]).pipe(await createDecompressor('zstd')));

/**
 * A hostile writer of the bucket who holds even the signing key: takes a live backup of element
 * `name` of `env` (one zstd object; the first call per element only, later ones reuse its dump
 * under a new backup id, which saves a backup per case), writes `change(raw)` as that element's
 * object and the manifest that matches it (sizes, sha256), signed with the keys `configPath`
 * names. Resolves with the forged backup's manifest (its id is what to restore).
 */
export async function forgeElement(configPath: string, store: ObjectStore, env: string, name: string, change: (raw: Buffer) => Buffer): Promise<Manifest> {
  const cacheKey = `${configPath}\0${env}\0${name}`;
  let base = taken.get(cacheKey);
  if (!base) {
    const manifest = await cliJson<Manifest>(['--config', configPath, 'backup', 'create', env, '--live', '--element', name]);
    base = { manifest, raw: await unzst(await buffer(await store.get(manifest.elements[0]!.objects[0]!.key))) };
    taken.set(cacheKey, base);
  }
  const now = new Date();
  const id = newBackupId(now);
  const element = base.manifest.elements[0]!;
  const key = element.objects[0]!.key.replace(`/${base.manifest.id}/`, `/${id}/`);
  const raw = change(base.raw);
  const archive = await zst(raw);
  await store.put(key, Readable.from([archive]));
  const sha256 = createHash('sha256').update(archive).digest('hex');
  const { mac: _mac, ...unsigned } = base.manifest;
  const forged = {
    ...unsigned,
    id,
    createdAt: now.toISOString(),
    completedAt: now.toISOString(),
    elements: [{ ...element, objects: [{ key, bytes: archive.length }], storedBytes: archive.length, rawBytes: raw.length, sha256 }],
  };
  await putSigned(store, configPath, forged);
  return forged;
}

/** The live backup each forged element starts from, by config, environment and element. */
const taken = new Map<string, { manifest: Manifest; raw: Buffer }>();
