import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { loadConfig } from '../../src/agent/config.ts';
import { loadKeyRing } from '../../src/agent/keys.ts';
import { signManifest } from '../../src/snapshot/manifest-mac.ts';
import { backupIdTime } from '../../src/snapshot/backup-id.ts';
import { elementKey, manifestKey, type Manifest } from '../../src/snapshot/manifest.ts';
import type { ObjectStore } from '../../src/transport/stores/object-store.ts';

/**
 * Writes `manifest` as its backup's manifest.json, signed with the keys the sandbox's config
 * names (its state dir's default key unless `keys:` is set): a forger who holds the key. A
 * forged manifest without a valid MAC is refused before anything else in it is looked at, so
 * the tests of the checks behind the MAC (object keys, sizes, archive contents) sign theirs.
 */
export async function putSigned<T extends { env: string; id: string }>(store: ObjectStore, configPath: string, manifest: T): Promise<void> {
  const signed = signManifest(manifest, await loadKeyRing(await loadConfig(configPath)));
  await store.put(manifestKey(manifest.env, manifest.id), Readable.from([Buffer.from(JSON.stringify(signed))]));
}

/** The one element object of a tinyManifest backup: store it at `<env>/<id>/uploads.tar`. */
export const TINY_ELEMENT = Buffer.from('tiny element');

/** A manifest as the agent writes one (unsigned: putSigned signs it), for a backup of one tiny element. */
export function tinyManifest(env: string, id: string, trigger: Manifest['trigger'] = 'manual', keepUntil: string | null = null): Omit<Manifest, 'mac'> {
  const createdAt = backupIdTime(id).toISOString();
  return {
    schema: 'storage-agent/manifest',
    version: 1,
    id,
    env,
    createdAt,
    completedAt: createdAt,
    mode: 'live',
    pauseMs: null,
    trigger,
    keepUntil,
    codeRef: null,
    agent: { version: 'test', host: 'test' },
    elements: [
      {
        name: 'uploads',
        kind: 'files',
        format: 'tar',
        compression: 'none',
        objects: [{ key: elementKey(env, id, 'uploads', '.tar'), bytes: TINY_ELEMENT.length }],
        storedBytes: TINY_ELEMENT.length,
        rawBytes: TINY_ELEMENT.length,
        sha256: createHash('sha256').update(TINY_ELEMENT).digest('hex'),
        durationMs: 1,
        warnings: [],
        facts: {},
      },
    ],
  };
}
