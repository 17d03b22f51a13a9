import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { createCompressor, createDecompressor } from '../../src/snapshot/compression.ts';
import type { Manifest } from '../../src/snapshot/manifest.ts';
import type { ObjectStore } from '../../src/transport/stores/object-store.ts';
import { cliJson } from './cli.ts';
import { putSigned } from './manifest-keys.ts';

export const zst = async (data: Buffer) => buffer(Readable.from([data]).pipe(createCompressor('zstd', { level: 1 })));
export const unzst = async (data: Buffer) => buffer(Readable.from([data]).pipe(createDecompressor('zstd')));

/**
 * A hostile writer of the bucket who holds even the signing key: takes a fresh live backup of
 * element `name` of `env` (one zstd object), replaces that object with `change(raw)` and writes
 * the manifest that matches it (sizes, sha256), signed with the keys `configPath` names.
 * Resolves with the backup's manifest as the agent wrote it (its id is what to restore).
 */
export async function forgeElement(configPath: string, store: ObjectStore, env: string, name: string, change: (raw: Buffer) => Buffer): Promise<Manifest> {
  const manifest = await cliJson<Manifest>(['--config', configPath, 'backup', 'create', env, '--live', '--element', name]);
  const element = manifest.elements[0]!;
  const raw = change(await unzst(await buffer(await store.get(element.objects[0]!.key))));
  const archive = await zst(raw);
  await store.put(element.objects[0]!.key, Readable.from([archive]));
  const sha256 = createHash('sha256').update(archive).digest('hex');
  const forged = { ...manifest, elements: [{ ...element, objects: [{ key: element.objects[0]!.key, bytes: archive.length }], storedBytes: archive.length, rawBytes: raw.length, sha256 }] };
  await putSigned(store, configPath, forged);
  return manifest;
}
