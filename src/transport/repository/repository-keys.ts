import { hkdfSync, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { z } from 'zod';
import { AgentError } from '../../errors.ts';
import type { ObjectStore } from '../stores/object-store.ts';
import { deriveRepositoryKeys, MASTER_BYTES, open, seal, type RepositoryKeys } from './blob-crypto.ts';
import { repositoryKeyKey, repositoryKeysPrefix } from './layout.ts';

/**
 * The platform keys (`keys:` in the config, the ones that sign manifests): one wraps new key
 * objects, every one of them opens existing ones. Shaped like the manifest key ring, which is
 * passed in as it is.
 */
export interface PlatformKeys {
  signing: { id: string; secret: Buffer };
  verifying: ReadonlyMap<string, Buffer>;
}

/**
 * A repository's master bytes, wrapped by one platform key: `<env>/repository/keys/<keyId>.json`.
 * The bucket holds only wrapped masters, never a key that opens them. Rotating the platform key
 * writes one more small object wrapping the same master (the next open under the new signing
 * key does it), never a re-upload of data; the old object goes once the old key is retired.
 */
const keyObjectSchema = z
  .object({
    schema: z.literal('storage-agent/repository-key'),
    version: z.literal(1),
    env: z.string(),
    keyId: z.string(),
    salt: z.string().regex(/^[A-Za-z0-9+/]{22}==$/),
    wrapped: z.string().regex(/^[A-Za-z0-9+/]+={0,2}$/),
  })
  .strict();
type KeyObject = z.infer<typeof keyObjectSchema>;

const WRAP_INFO = 'storage-agent/repository-key-wrap/v1';
const associated = (env: string, keyId: string) => Buffer.from(`storage-agent/repository-key/v1\n${env}\n${keyId}`);
const wrappingKey = (platformSecret: Buffer, salt: Buffer) => Buffer.from(hkdfSync('sha256', platformSecret, salt, WRAP_INFO, 32));

/**
 * The keys of `env`'s repository: unwrapped from a key object under one of the platform keys,
 * or, for a repository without any, made now (`create` false: E_REPOSITORY_KEY instead — a
 * reader never creates a repository). A key object for the signing key is added when missing.
 */
export async function openRepositoryKeys(store: ObjectStore, env: string, platform: PlatformKeys, options: { create: boolean }): Promise<RepositoryKeys> {
  const found = await readKeyObjects(store, env);
  if (found.length === 0) {
    if (!options.create) throw keyError(env, 'it has no key object: no backup was ever stored in it, or its keys were deleted');
    const master = randomBytes(MASTER_BYTES);
    await writeKeyObject(store, env, platform.signing, master);
    return deriveRepositoryKeys(master);
  }
  // The signing key's own object first: the one every node of the platform uses.
  const usable = found.filter((k) => platform.verifying.has(k.keyId)).sort((a, b) => Number(b.keyId === platform.signing.id) - Number(a.keyId === platform.signing.id));
  if (usable.length === 0) {
    throw keyError(env, `its key objects are wrapped by platform keys ${found.map((k) => k.keyId).join(', ')}, and this node has ${[...platform.verifying.keys()].join(', ')}: add that key's file to keys:`);
  }
  const object = usable[0]!;
  const master = unwrap(object, platform.verifying.get(object.keyId)!, env);
  if (!found.some((k) => k.keyId === platform.signing.id) && options.create) await writeKeyObject(store, env, platform.signing, master);
  return deriveRepositoryKeys(master);
}

async function readKeyObjects(store: ObjectStore, env: string): Promise<KeyObject[]> {
  const objects: KeyObject[] = [];
  for await (const info of store.list(repositoryKeysPrefix(env))) {
    const body = await text(await store.get(info.key));
    let parsed: KeyObject;
    try {
      parsed = keyObjectSchema.parse(JSON.parse(body));
    } catch (error) {
      throw keyError(env, `key object ${info.key} is not one the agent writes`, error);
    }
    if (parsed.env !== env || repositoryKeyKey(env, parsed.keyId) !== info.key) throw keyError(env, `key object ${info.key} names ${parsed.env}/${parsed.keyId}`);
    objects.push(parsed);
  }
  return objects;
}

function unwrap(object: KeyObject, platformSecret: Buffer, env: string): Buffer {
  const master = open(wrappingKey(platformSecret, Buffer.from(object.salt, 'base64')), Buffer.from(object.wrapped, 'base64'), associated(env, object.keyId));
  if (!master || master.length !== MASTER_BYTES) {
    throw keyError(env, `its key object for platform key ${object.keyId} does not open under this node's key of that id: the key file differs from the one that wrote it, or the object was changed`);
  }
  return master;
}

async function writeKeyObject(store: ObjectStore, env: string, key: { id: string; secret: Buffer }, master: Buffer): Promise<void> {
  const salt = randomBytes(16);
  const object: KeyObject = {
    schema: 'storage-agent/repository-key',
    version: 1,
    env,
    keyId: key.id,
    salt: salt.toString('base64'),
    wrapped: seal(wrappingKey(key.secret, salt), [master], associated(env, key.id)).toString('base64'),
  };
  await store.put(repositoryKeyKey(env, key.id), Readable.from([Buffer.from(JSON.stringify(object, null, 2))]));
}

function keyError(env: string, why: string, cause?: unknown): AgentError {
  return new AgentError('E_REPOSITORY_KEY', `the repository of environment ${env} cannot be opened: ${why}`, { cause, details: { env } });
}
