import { Readable } from 'node:stream';
import { z } from 'zod';
import { isAgentError } from '../../errors.ts';
import { backupIdPattern } from '../names.ts';
import { readAtMost } from '../read-at-most.ts';
import type { ObjectInfo, ObjectStore } from '../../transport/stores/object-store.ts';

/**
 * The environment catalog (issue #11): one object, `<env>/catalog.json`, holding the raw text
 * of each signed manifest of the environment with the manifest object's size and modification
 * time as a listing showed them, so that a listing costs one LIST and one GET instead of a HEAD
 * and a GET per backup. ("catalog.json" is no backup id: listings skip it like any other key.)
 *
 * It is a cache, not a source of truth, and carries no MAC of its own: an entry is used only
 * while the listing shows its manifest object with that size and time, and its text is
 * authenticated exactly as a manifest read from its object is (catalog.ts). So a forged
 * catalog can drop entries (those backups are read from their manifests), add entries whose
 * manifest the listing lacks (ignored), or carry a genuine manifest of that id (ids are unique
 * and manifests written once: that is the manifest). Whatever it holds, the listing is the one
 * the manifests give.
 */
const CATALOG_NAME = 'catalog.json';
/** A catalog above this is not ours (or not worth it): it is ignored, and rewritten by a write path. */
export const MAX_CATALOG_BYTES = 64 << 20;
/** Room left under MAX_CATALOG_BYTES for what surrounds the entries. */
const HEADER_BYTES = 1024;

export const catalogKey = (env: string): string => `${env}/${CATALOG_NAME}`;

const entrySchema = z
  .object({
    /** The manifest object's size and lastModified (ms since the epoch) in the listing it was read after. */
    size: z.number().int().nonnegative(),
    lastModified: z.number().int(),
    /** manifest.json as stored, byte for byte: its MAC is checked again at every use. */
    manifest: z.string(),
  })
  .strict();
export type CatalogEntry = z.infer<typeof entrySchema>;

const catalogSchema = z
  .object({
    schema: z.literal('storage-agent/env-catalog'),
    version: z.literal(1),
    entries: z.record(z.string().regex(backupIdPattern), entrySchema),
  })
  .strict();

/** Backup id → entry. */
export type Catalog = ReadonlyMap<string, CatalogEntry>;

/** The entry as it should be for a manifest object a listing shows. */
export function catalogEntry(listed: ObjectInfo, manifest: string): CatalogEntry {
  return { size: listed.size, lastModified: listed.lastModified.getTime(), manifest };
}

/** Whether the entry was made from the manifest object the listing shows now. */
export function entryMatches(entry: CatalogEntry, listed: ObjectInfo): boolean {
  return entry.size === listed.size && entry.lastModified === listed.lastModified.getTime();
}

/**
 * The stored catalog, or undefined when there is none or it is unusable (over the bound, not
 * JSON, not of this shape): the caller then reads manifests, and a write path replaces it.
 * `listedSize` is its size in a listing: one over the bound is not even fetched. A store error
 * other than not-found fails as any store error does.
 */
export async function readCatalog(store: ObjectStore, env: string, listedSize?: number): Promise<Catalog | undefined> {
  if (listedSize !== undefined && listedSize > MAX_CATALOG_BYTES) return undefined;
  let body: Readable;
  try {
    body = await store.get(catalogKey(env));
  } catch (error) {
    if (isAgentError(error, 'E_OBJECT_NOT_FOUND')) return undefined; // deleted since the listing
    throw error;
  }
  const bytes = await readAtMost(body, MAX_CATALOG_BYTES);
  if (!bytes) return undefined;
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
  const parsed = catalogSchema.safeParse(json);
  return parsed.success ? new Map(Object.entries(parsed.data.entries)) : undefined;
}

/**
 * Stores `entries` as the catalog unless `stored` (what was read, undefined when unusable)
 * already says exactly that; an empty catalog is deleted, so an environment without backups
 * keeps no object. Returns whether it wrote.
 *
 * Two writers racing (two jobs of the environment) may each write what it saw, and one's
 * update is lost: that only costs the backups it missed a read from their manifests at the next
 * listing, which writes them back (self-healing). Never a wrong listing: see the module's doc.
 */
export async function updateCatalog(store: ObjectStore, env: string, stored: Catalog | undefined, entries: Catalog): Promise<boolean> {
  const kept = withinBound(entries);
  if (stored && sameEntries(stored, kept)) return false;
  if (kept.length === 0) {
    await store.delete([catalogKey(env)]);
    return true;
  }
  const json = JSON.stringify({ schema: 'storage-agent/env-catalog', version: 1, entries: Object.fromEntries(kept) } satisfies z.infer<typeof catalogSchema>);
  await store.put(catalogKey(env), Readable.from([Buffer.from(json)]));
  return true;
}

/** Drops a backup's entry (before it is deleted); a catalog without one is left as it is. */
export async function dropCatalogEntry(store: ObjectStore, env: string, id: string): Promise<void> {
  const stored = await readCatalog(store, env);
  if (!stored?.has(id)) return;
  const rest = new Map(stored);
  rest.delete(id);
  await updateCatalog(store, env, stored, rest);
}

/**
 * The entries newest first, as many as fit under the bound: a catalog over it would be ignored
 * by every reader and rewritten by every write path. Manifests are a few KiB, so in practice
 * all fit; older backups left out are read from their manifests.
 */
function withinBound(entries: Catalog): [string, CatalogEntry][] {
  const newestFirst = [...entries].sort(([a], [b]) => (a < b ? 1 : a > b ? -1 : 0));
  let bytes = HEADER_BYTES;
  const kept: [string, CatalogEntry][] = [];
  for (const pair of newestFirst) {
    bytes += Buffer.byteLength(JSON.stringify(pair)); // ≥ what `"id":{…},` takes in the object
    if (bytes > MAX_CATALOG_BYTES) break;
    kept.push(pair);
  }
  return kept;
}

function sameEntries(stored: Catalog, entries: readonly [string, CatalogEntry][]): boolean {
  if (stored.size !== entries.length) return false;
  return entries.every(([id, entry]) => {
    const other = stored.get(id);
    return other !== undefined && other.size === entry.size && other.lastModified === entry.lastModified && other.manifest === entry.manifest;
  });
}
