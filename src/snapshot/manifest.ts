import { z } from 'zod';
import { AgentError } from '../errors.ts';
import { MAC_ALGORITHM } from './manifest-mac.ts';
import { backupIdPattern, namePattern } from './names.ts';

/**
 * The manifest is the commit point of a backup (written last, after every object) and the
 * one module that names object keys:
 *   <env>/<backupId>/<element>.<format><compression ext>[.NNNN]
 *   <env>/<backupId>/manifest.json
 */
export const MANIFEST_VERSION = 1;
const MANIFEST_NAME = 'manifest.json';

export const backupPrefix = (env: string, id: string): string => `${env}/${id}/`;
export const manifestKey = (env: string, id: string): string => `${backupPrefix(env, id)}${MANIFEST_NAME}`;
export const elementKey = (env: string, id: string, element: string, extension: string): string =>
  `${backupPrefix(env, id)}${element}${extension}`;

/**
 * A standard archive of a repository element, written for `backup url` to presign (issue #13):
 * `<env>/downloads/<expiry, epoch seconds>-<backupId>-<element><ext>`; prune deletes it once
 * expired.
 */
export const downloadsPrefix = (env: string): string => `${env}/downloads/`;
export const downloadKey = (env: string, id: string, element: string, extension: string, expiresAt: Date): string =>
  `${downloadsPrefix(env)}${Math.ceil(expiresAt.getTime() / 1000)}-${id}-${element}${extension}`;

/** When a download object expires, or undefined for a key that is not one. */
export function downloadExpiry(env: string, key: string): Date | undefined {
  const m = key.startsWith(downloadsPrefix(env)) ? /^(\d{1,12})-[^/]+$/.exec(key.slice(downloadsPrefix(env).length)) : null;
  return m ? new Date(Number(m[1]) * 1000) : undefined;
}

/** The backup id of a manifest key under `<env>/`, or undefined for any other key. */
export function backupIdOfManifestKey(env: string, key: string): string | undefined {
  const rest = key.startsWith(`${env}/`) ? key.slice(env.length + 1) : undefined;
  const m = rest === undefined ? null : /^([^/]+)\/manifest\.json$/.exec(rest);
  return m && backupIdPattern.test(m[1]!) ? m[1] : undefined;
}

const sha256 = z.string().regex(/^[0-9a-f]{64}$/);
const isoTime = z.string().datetime({ offset: true });
const factValue = z.union([z.string(), z.number(), z.boolean(), z.null()]);

const elementSchema = z
  .object({
    name: z.string().regex(namePattern),
    kind: z.enum(['files', 'mysql', 'redis']),
    format: z.enum(['tar', 'sql', 'rdb']),
    compression: z.enum(['zstd', 'gzip', 'none']),
    /** The stored archive (one object, or segments); empty for an element in the repository. */
    objects: z.array(z.object({ key: z.string(), bytes: z.number().int().nonnegative() }).strict()),
    /** Bytes this backup stored for the element: its archive, or the repository chunks it added. */
    storedBytes: z.number().int().nonnegative(),
    rawBytes: z.number().int().nonnegative(),
    /** The archive's sha256; absent for an element in the repository, whose chunks authenticate themselves. */
    sha256: sha256.optional(),
    /**
     * An element stored in the environment's repository (issue #13): its content is the stream
     * under the root blob. The MAC over the manifest covers the root id, and the root's keyed
     * id covers its chunk list, so every byte restored is bound to this manifest.
     */
    repository: z
      .object({
        root: sha256,
        chunks: z.number().int().nonnegative(),
        newChunks: z.number().int().nonnegative(),
        /** A files element's catalog (parent-snapshot.ts): what lets the next backup skip its unchanged files. */
        files: sha256.optional(),
      })
      .strict()
      .optional(),
    durationMs: z.number().nonnegative(),
    warnings: z.array(z.string()),
    facts: z.record(z.string(), factValue),
    /**
     * Read while the writers were frozen (its mount could not be snapshotted): reading it is
     * part of the backup's pauseMs (storing its last bytes may end after the thaw, so its
     * durationMs can be longer than the pause). Absent for elements fixed in an instant
     * inside the freeze and read after the thaw, for live backups, and in older manifests.
     */
    readInsideFreeze: z.literal(true).optional(),
  })
  .strict();
export type ElementRecord = z.infer<typeof elementSchema>;

export const manifestSchema = z
  .object({
    schema: z.literal('storage-agent/manifest'),
    version: z.literal(MANIFEST_VERSION),
    id: z.string().regex(backupIdPattern),
    env: z.string().regex(namePattern),
    createdAt: isoTime,
    completedAt: isoTime,
    mode: z.enum(['consistent', 'live']),
    /** Writers paused, ms; null when nothing was frozen (live mode, or no writers configured). */
    pauseMs: z.number().nonnegative().nullable(),
    /**
     * 'restore': the base backup taken right after a restore into services with pitr: (the
     * binlog before a restore cannot be replayed over it, docs/pitr.md); retention counts it as
     * it counts scheduled ones.
     */
    trigger: z.enum(['manual', 'scheduled', 'safety', 'restore']),
    /** Trigger 'restore': when the restore it follows could begin writing (after its safety backup). Its point-in-time window has a gap from then to this backup. */
    restoredAt: isoTime.optional(),
    keepUntil: isoTime.nullable(),
    codeRef: z.string().max(200).nullable(),
    /** nodeId: the node that made it (issue #11); absent in manifests made before node ids. */
    agent: z.object({ version: z.string(), host: z.string(), nodeId: z.string().regex(namePattern).optional() }).strict(),
    elements: z.array(elementSchema).min(1),
    /**
     * The MAC over everything else (manifest-mac.ts), checked before this schema. Optional:
     * manifests written before keys existed parse, and are refused unless explicitly allowed.
     */
    mac: z.object({ keyId: z.string(), alg: z.literal(MAC_ALGORITHM), value: z.string() }).strict().optional(),
  })
  .strict();
export type Manifest = z.infer<typeof manifestSchema>;

/** The JSON of a manifest read back from storage, not yet checked (its MAC is checked first). */
export function manifestJson(text: string, env: string, id: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw invalid(env, id, 'not JSON', error);
  }
}

/**
 * Checks a manifest read back from storage (manifestJson). Nothing in it is trusted: beyond
 * the schema, it must be the manifest of the backup it was read for, and every object key it
 * names must belong to that backup — even a manifest signed by the agent (a bug, a key that
 * leaked) cannot send a restore to another backup's data.
 */
export function parseManifest(raw: unknown, env: string, id: string): Manifest {
  const result = manifestSchema.safeParse(raw);
  if (!result.success) {
    const first = result.error.issues[0];
    throw invalid(env, id, `${first?.path.join('.') || '(top level)'}: ${first?.message}`);
  }
  const manifest = result.data;
  if (manifest.env !== env || manifest.id !== id) throw invalid(env, id, `it names backup ${manifest.env}/${manifest.id}`);
  const names = new Set<string>();
  for (const element of manifest.elements) {
    if (names.has(element.name)) throw invalid(env, id, `element ${element.name} appears twice`);
    names.add(element.name);
    if (element.repository) {
      if (element.objects.length > 0 || element.sha256 !== undefined) throw invalid(env, id, `element ${element.name} is in the repository and names objects or a sha256 too`);
      continue;
    }
    if (element.objects.length === 0 || element.sha256 === undefined) throw invalid(env, id, `element ${element.name} names neither stored objects with a sha256 nor a repository root`);
    const base = elementKey(env, id, element.name, '');
    for (const object of element.objects) {
      if (!object.key.startsWith(`${base}.`) || object.key.slice(base.length).includes('/')) {
        throw invalid(env, id, `element ${element.name} names object ${JSON.stringify(object.key)} outside the backup`);
      }
    }
    if (element.objects.reduce((sum, o) => sum + o.bytes, 0) !== element.storedBytes) {
      throw invalid(env, id, `element ${element.name}: object sizes do not add up to storedBytes`);
    }
  }
  return manifest;
}

function invalid(env: string, id: string, why: string, cause?: unknown): AgentError {
  return new AgentError('E_MANIFEST_INVALID', `manifest of backup ${env}/${id} is invalid (${why}); the backup cannot be trusted — use another backup`, {
    cause,
    details: { env, id },
  });
}

export function isRestorable(manifest: Manifest, now: Date = new Date()): boolean {
  return manifest.keepUntil === null || new Date(manifest.keepUntil) > now;
}
