import { text } from 'node:stream/consumers';
import pLimit from 'p-limit';
import { AgentError, isAgentError } from '../errors.ts';
import { backupIdTime } from '../snapshot/backup-id.ts';
import { backupIdOfManifestKey, backupPrefix, isRestorable, manifestKey, parseManifest, type Manifest } from '../snapshot/manifest.ts';
import { checkBackupId } from '../snapshot/names.ts';
import type { ObjectStore } from '../transport/object-store.ts';

/** Manifests above this size are not ours: refuse before reading them into memory. */
const MAX_MANIFEST_BYTES = 4 << 20;

export interface BackupSummary {
  id: string;
  env: string;
  createdAt: string;
  restorable: boolean;
  /** Why a listed backup is not restorable. */
  status: 'ok' | 'expired' | 'incomplete' | 'invalid';
  manifest?: Manifest;
  problem?: string;
}

export async function readManifest(store: ObjectStore, env: string, id: string): Promise<Manifest> {
  checkBackupId(id);
  const key = manifestKey(env, id);
  const info = await store.head(key);
  if (!info) {
    throw new AgentError('E_BACKUP_NOT_FOUND', `backup ${id} of environment ${env} does not exist (or is incomplete); see 'backup list ${env}'`, {
      details: { env, id },
    });
  }
  if (info.size > MAX_MANIFEST_BYTES) {
    throw new AgentError('E_MANIFEST_INVALID', `manifest of backup ${env}/${id} is ${info.size} bytes, over the ${MAX_MANIFEST_BYTES} limit; it is not ours`);
  }
  return parseManifest(await text(await store.get(key)), env, id);
}

/** Every backup of `env` in the store, newest first, with why any is not restorable. */
export async function listBackups(store: ObjectStore, env: string, now: Date = new Date()): Promise<BackupSummary[]> {
  const ids = new Set<string>();
  const withManifest = new Set<string>();
  for await (const object of store.list(`${env}/`)) {
    const id = object.key.slice(env.length + 1).split('/')[0] ?? '';
    try {
      checkBackupId(id);
    } catch {
      continue; // not a backup of ours
    }
    ids.add(id);
    if (backupIdOfManifestKey(env, object.key) === id) withManifest.add(id);
  }
  const limit = pLimit(8);
  const summaries = await Promise.all(
    [...ids].map((id) =>
      limit(async (): Promise<BackupSummary> => {
        const createdAt = backupIdTime(id).toISOString();
        if (!withManifest.has(id)) return { id, env, createdAt, restorable: false, status: 'incomplete' };
        try {
          const manifest = await readManifest(store, env, id);
          const restorable = isRestorable(manifest, now);
          return { id, env, createdAt: manifest.createdAt, restorable, status: restorable ? 'ok' : 'expired', manifest };
        } catch (error) {
          if (!isAgentError(error, 'E_MANIFEST_INVALID')) throw error;
          return { id, env, createdAt, restorable: false, status: 'invalid', problem: error.message };
        }
      }),
    ),
  );
  return summaries.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

/** Every object key of a backup, whatever its state (for delete and cleanup). */
export async function backupObjectKeys(store: ObjectStore, env: string, id: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of store.list(backupPrefix(env, id))) keys.push(object.key);
  return keys;
}

/**
 * Deletes a backup: the manifest first, so that a delete interrupted half way never leaves a
 * backup listed as Restorable with objects missing; then every other object.
 */
export async function deleteBackup(store: ObjectStore, env: string, id: string): Promise<{ deletedObjects: number }> {
  checkBackupId(id);
  const keys = await backupObjectKeys(store, env, id);
  if (keys.length === 0) {
    throw new AgentError('E_BACKUP_NOT_FOUND', `backup ${id} of environment ${env} does not exist; see 'backup list ${env}'`, { details: { env, id } });
  }
  const manifest = manifestKey(env, id);
  if (keys.includes(manifest)) await store.delete([manifest]);
  await store.delete(keys.filter((key) => key !== manifest));
  return { deletedObjects: keys.length };
}
