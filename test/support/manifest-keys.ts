import { Readable } from 'node:stream';
import { loadConfig } from '../../src/agent/config.ts';
import { loadKeyRing } from '../../src/agent/keys.ts';
import { signManifest } from '../../src/snapshot/manifest-mac.ts';
import { manifestKey } from '../../src/snapshot/manifest.ts';
import type { ObjectStore } from '../../src/transport/object-store.ts';

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
