/**
 * Where an environment's repository keeps its objects (issue #13), beside its backups'
 * manifests (`<env>/<backupId>/manifest.json`, which name the root blob of each element):
 *
 *   <env>/repository/keys/<platformKeyId>.json   the master bytes, wrapped by a platform key
 *   <env>/repository/packs/<xx>/<packId>         sealed blobs back to back; packId random (64 hex digits)
 *   <env>/repository/index/<indexId>             sealed: which pack holds each blob, where
 *
 * One repository per environment: tenants never share chunks, keys or an index.
 */
export const repositoryPrefix = (env: string): string => `${env}/repository/`;
export const repositoryKeysPrefix = (env: string): string => `${repositoryPrefix(env)}keys/`;
export const repositoryKeyKey = (env: string, keyId: string): string => `${repositoryKeysPrefix(env)}${keyId}.json`;
export const packsPrefix = (env: string): string => `${repositoryPrefix(env)}packs/`;
export const packKey = (env: string, packId: string): string => `${packsPrefix(env)}${packId.slice(0, 2)}/${packId}`;
export const indexPrefix = (env: string): string => `${repositoryPrefix(env)}index/`;
export const indexKey = (env: string, indexId: string): string => `${indexPrefix(env)}${indexId}`;

/** The pack id of a key under packsPrefix, or undefined for anything else. */
export function packIdOfKey(env: string, key: string): string | undefined {
  const m = /^([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(key.startsWith(packsPrefix(env)) ? key.slice(packsPrefix(env).length) : '');
  return m && m[2]!.startsWith(m[1]!) ? m[2] : undefined;
}
