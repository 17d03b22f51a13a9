import { text } from 'node:stream/consumers';
import pLimit from 'p-limit';
import { AgentError, isAgentError } from '../../errors.ts';
import { backupIdTime } from '../backup-id.ts';
import { backupIdOfManifestKey, backupPrefix, isRestorable, manifestJson, manifestKey, parseManifest, type Manifest } from '../manifest.ts';
import { checkManifestMac, unauthenticated, type KeyRing } from '../manifest-mac.ts';
import { checkBackupId } from '../names.ts';
import type { ObjectInfo, ObjectStore } from '../../transport/stores/object-store.ts';
import { catalogEntry, catalogKey, dropCatalogEntry, entryMatches, readCatalog, updateCatalog, type CatalogEntry } from './env-catalog.ts';

/** Manifests above this size are not ours: refuse before reading them into memory. */
const MAX_MANIFEST_BYTES = 4 << 20;

export interface BackupSummary {
  id: string;
  env: string;
  createdAt: string;
  restorable: boolean;
  /** Why a listed backup is not restorable. */
  status: 'ok' | 'expired' | 'incomplete' | 'invalid';
  /** Its manifest carries a MAC that verifies under this node's keys (issue #10). */
  authenticated: boolean;
  manifest?: Manifest;
  problem?: string;
  /**
   * The stable code of `problem` (status invalid): E_MANIFEST_UNAUTHENTICATED when its MAC is
   * wrong or under a key this node lacks, E_MANIFEST_INVALID when the manifest itself is bad
   * (not JSON, its schema, another backup's). `authenticated: false` alone does not say which.
   */
  problemCode?: 'E_MANIFEST_INVALID' | 'E_MANIFEST_UNAUTHENTICATED';
}

export interface ManifestAccess {
  keys: KeyRing;
  /**
   * Accept a manifest that carries no MAC (a backup made before keys existed). A MAC that is
   * present and does not verify is refused whatever this says: only its absence is excused.
   */
  allowUnauthenticated?: boolean;
}

/**
 * A backup's manifest, authenticated: its MAC is checked under `access.keys` before anything
 * else in it is looked at, then it is parsed and checked against the backup (parseManifest).
 * Unsigned manifests are E_MANIFEST_UNAUTHENTICATED unless allowed.
 */
export async function readManifest(store: ObjectStore, env: string, id: string, access: ManifestAccess): Promise<Manifest> {
  return authenticateManifest(await readManifestText(store, env, id), env, id, access);
}

/** readManifest's checks on the text of a manifest.json, wherever it was read (its object, the catalog). */
function authenticateManifest(text: string, env: string, id: string, access: ManifestAccess): Manifest {
  const raw = manifestJson(text, env, id);
  if (checkManifestMac(raw, access.keys, env, id) === 'unsigned' && !access.allowUnauthenticated) {
    throw unauthenticated(
      env,
      id,
      'it carries no MAC: it was made before manifest keys existed, or written by someone without the key; if you trust it, pass --allow-unauthenticated (protocol: allowUnauthenticated: true)',
    );
  }
  return parseManifest(raw, env, id);
}

async function readManifestText(store: ObjectStore, env: string, id: string): Promise<string> {
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
  return text(await store.get(key));
}

export interface ListOptions {
  /**
   * Write the environment catalog back when it differs from what the listing found (one PUT).
   * Write paths only (prune, backup create): readers (list, show, restore) never write.
   */
  updateCatalog?: boolean;
  /** A manifest this process just wrote: its text is taken as read (authenticated all the same), saving a HEAD and a GET. */
  written?: WrittenManifest;
}

export interface WrittenManifest {
  id: string;
  text: string;
}

/**
 * Every backup of `env` in the store, newest first, with why any is not restorable. One LIST
 * and one GET of the environment catalog (env-catalog.ts); only backups the catalog does not
 * vouch for (new, changed, unsigned, invalid) cost a HEAD and a GET of their manifest.
 */
export async function listBackups(store: ObjectStore, env: string, keys: KeyRing, now: Date = new Date(), options: ListOptions = {}): Promise<BackupSummary[]> {
  const ids = new Set<string>();
  const manifests = new Map<string, ObjectInfo>();
  let listedCatalog: ObjectInfo | undefined;
  for await (const object of store.list(`${env}/`)) {
    if (object.key === catalogKey(env)) {
      listedCatalog = object;
      continue;
    }
    // Keys come in order, and backup ids begin with a digit: every backup sorts before
    // catalog.json, and everything after it is something else of the environment (downloads/,
    // owners/, repository/ with its packs by the thousand), which the listing does not page through.
    if (object.key > catalogKey(env)) break;
    const id = object.key.slice(env.length + 1).split('/')[0] ?? '';
    try {
      checkBackupId(id);
    } catch {
      continue; // not a backup of ours
    }
    ids.add(id);
    if (backupIdOfManifestKey(env, object.key) === id) manifests.set(id, object);
  }
  // Fetched only when listed: an environment without one pays nothing for it.
  const catalog = listedCatalog ? await readCatalog(store, env, listedCatalog.size) : new Map<string, CatalogEntry>();
  const entries = new Map<string, CatalogEntry>();
  const limit = pLimit(8);
  const summaries = await Promise.all(
    [...ids].map((id) =>
      limit(async (): Promise<BackupSummary> => {
        const createdAt = backupIdTime(id).toISOString();
        const listed = manifests.get(id);
        if (!listed) return { id, env, createdAt, restorable: false, status: 'incomplete', authenticated: false };
        try {
          const { text, manifest } =
            (isWritten(options.written, id, listed) ? fromText(options.written!.text, env, id, keys) : fromCatalog(catalog?.get(id), listed, env, id, keys)) ??
            (await fromObject(store, env, id, keys));
          if (manifest.mac !== undefined) entries.set(id, catalogEntry(listed, text));
          const restorable = isRestorable(manifest, now);
          return { id, env, createdAt: manifest.createdAt, restorable, status: restorable ? 'ok' : 'expired', authenticated: manifest.mac !== undefined, manifest };
        } catch (error) {
          const problemCode = isAgentError(error, 'E_MANIFEST_INVALID') ? 'E_MANIFEST_INVALID' : isAgentError(error, 'E_MANIFEST_UNAUTHENTICATED') ? 'E_MANIFEST_UNAUTHENTICATED' : undefined;
          if (!problemCode) throw error;
          return { id, env, createdAt, restorable: false, status: 'invalid', authenticated: false, problem: (error as AgentError).message, problemCode };
        }
      }),
    ),
  );
  if (options.updateCatalog) await updateCatalog(store, env, catalog, entries);
  return summaries.sort((a, b) => (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
}

interface ManifestRead {
  text: string;
  manifest: Manifest;
}

/**
 * The manifest a catalog entry holds, when the entry was made from the manifest object the
 * listing shows and its text passes readManifest's checks with a MAC (an unsigned manifest is
 * never taken from the catalog). Undefined sends the caller to the object, whose verdict is the
 * one listed: a forged or damaged entry changes nothing.
 */
function fromCatalog(entry: CatalogEntry | undefined, listed: ObjectInfo, env: string, id: string, keys: KeyRing): ManifestRead | undefined {
  return entry && entryMatches(entry, listed) ? fromText(entry.manifest, env, id, keys) : undefined;
}

/** The manifest this process wrote is the object the listing shows (same size: nothing replaced it since). */
function isWritten(written: WrittenManifest | undefined, id: string, listed: ObjectInfo): boolean {
  return written?.id === id && Buffer.byteLength(written.text) === listed.size;
}

/** A manifest's text if it passes readManifest's checks with a MAC; undefined otherwise (read the object). */
function fromText(text: string, env: string, id: string, keys: KeyRing): ManifestRead | undefined {
  try {
    return { text, manifest: authenticateManifest(text, env, id, { keys }) };
  } catch (error) {
    if (isAgentError(error, 'E_MANIFEST_INVALID') || isAgentError(error, 'E_MANIFEST_UNAUTHENTICATED')) return undefined;
    throw error;
  }
}

async function fromObject(store: ObjectStore, env: string, id: string, keys: KeyRing): Promise<ManifestRead> {
  const text = await readManifestText(store, env, id);
  // Unsigned manifests are listed as they are (authenticated: false): prune and delete act on
  // them, restores need the explicit flag. One whose MAC fails is 'invalid'.
  return { text, manifest: authenticateManifest(text, env, id, { keys, allowUnauthenticated: true }) };
}

/** Every object key of a backup, whatever its state (for delete and cleanup). */
export async function backupObjectKeys(store: ObjectStore, env: string, id: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of store.list(backupPrefix(env, id))) keys.push(object.key);
  return keys;
}

/**
 * Deletes a backup: its catalog entry and the manifest first, so that a delete interrupted half
 * way never leaves a backup listed as Restorable with objects missing; then every other object.
 */
export async function deleteBackup(store: ObjectStore, env: string, id: string): Promise<{ deletedObjects: number }> {
  checkBackupId(id);
  const keys = await backupObjectKeys(store, env, id);
  if (keys.length === 0) {
    throw new AgentError('E_BACKUP_NOT_FOUND', `backup ${id} of environment ${env} does not exist; see 'backup list ${env}'`, { details: { env, id } });
  }
  // The catalog entry first: a delete that fails after it leaves a backup the next listing
  // reads from its manifest, never an entry for a backup that is gone (and even that would be
  // ignored: the listing no longer shows its manifest).
  await dropCatalogEntry(store, env, id);
  const manifest = manifestKey(env, id);
  if (keys.includes(manifest)) await store.delete([manifest]);
  await store.delete(keys.filter((key) => key !== manifest));
  return { deletedObjects: keys.length };
}
