import { createHmac, timingSafeEqual } from 'node:crypto';
import { AgentError } from '../errors.ts';

/**
 * The origin of a manifest: an HMAC-SHA256 under a key that is never in the bucket (issue #10).
 * Anyone who can write the bucket can write a manifest that parses; only a holder of the key
 * can write one whose MAC verifies. The MAC covers the whole manifest — env, id, times,
 * trigger, keepUntil and every element's object keys, sizes and sha256 — so the objects are
 * bound too: a changed byte of any of them fails the sha256 the MAC vouches for.
 */
export const MAC_ALGORITHM = 'HMAC-SHA256';

/** What a signed manifest.json carries besides the manifest itself. */
export interface ManifestMac {
  keyId: string;
  alg: typeof MAC_ALGORITHM;
  /** The MAC, 64 lower-case hex digits. */
  value: string;
}

export interface ManifestKey {
  id: string;
  secret: Buffer;
}

/** The keys of a node: one signs new manifests, every one of them verifies (rotation). */
export interface KeyRing {
  signing: ManifestKey;
  verifying: ReadonlyMap<string, Buffer>;
}

/**
 * Separates these MACs from any other use of the same key, and leaves room for a v2 of the
 * canonical form without ambiguity.
 */
const DOMAIN = 'storage-agent/manifest-mac/v1\n';

/**
 * The bytes the MAC covers: the manifest without its `mac` field as canonical JSON (RFC 8785
 * for the values a manifest holds: object keys sorted by UTF-16 code units, no whitespace,
 * strings and numbers as JSON.stringify writes them). A reader recomputes them from the parsed
 * manifest.json whatever its indentation or key order.
 */
export function canonicalManifestBytes(manifest: object): Buffer {
  return canonicalBytes(DOMAIN, manifest);
}

/** The same canonical form for another kind of signed record, under its own domain string. */
export function canonicalBytes(domain: string, record: object): Buffer {
  const { mac: _mac, ...rest } = record as { mac?: unknown };
  return Buffer.from(domain + canonicalJson(rest), 'utf8');
}

/** The HMAC of a record (without its `mac`) under `secret`, in `domain`. */
export function recordMac(domain: string, record: object, secret: Buffer): Buffer {
  return createHmac('sha256', secret).update(canonicalBytes(domain, record)).digest();
}

/**
 * Why a record's `mac` does not verify under the ring, or undefined when it does: the same
 * checks as a manifest's (algorithm, a known key, a constant-time compare), for the caller to
 * word its own error.
 */
export function macProblem(domain: string, raw: unknown, keys: KeyRing): string | undefined {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw) || !Object.hasOwn(raw, 'mac')) return 'it carries no MAC';
  const mac = (raw as { mac: unknown }).mac as Partial<Record<keyof ManifestMac, unknown>> | null;
  if (mac === null || typeof mac !== 'object' || mac.alg !== MAC_ALGORITHM || typeof mac.keyId !== 'string' || typeof mac.value !== 'string' || !/^[0-9a-f]{64}$/.test(mac.value)) {
    return `its mac field is not an ${MAC_ALGORITHM} MAC with a keyId`;
  }
  const secret = keys.verifying.get(mac.keyId);
  if (!secret) {
    return `it is signed with key ${JSON.stringify(mac.keyId.slice(0, 80))}, which is not among this node's keys (${[...keys.verifying.keys()].join(', ')}); if that key is yours, add its file to keys: under that id`;
  }
  // Constant time: a forger learns nothing from how long a wrong MAC took to refuse.
  if (!timingSafeEqual(recordMac(domain, raw, secret), Buffer.from(mac.value, 'hex'))) {
    return `its MAC does not verify under key ${mac.keyId}: it was changed after it was signed, or was not written by an agent holding the key`;
  }
  return undefined;
}

/** The record with its `mac` under the ring's signing key. */
export function signRecord<T extends object>(domain: string, record: T, keys: KeyRing): T & { mac: ManifestMac } {
  const value = recordMac(domain, record, keys.signing.secret).toString('hex');
  return { ...record, mac: { keyId: keys.signing.id, alg: MAC_ALGORITHM, value } };
}

function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const record = value as Record<string, unknown>;
  const fields = Object.keys(record)
    .filter((key) => record[key] !== undefined)
    .sort()
    .map((key) => `${JSON.stringify(key)}:${canonicalJson(record[key])}`);
  return `{${fields.join(',')}}`;
}

function macOf(manifest: object, secret: Buffer): Buffer {
  return recordMac(DOMAIN, manifest, secret);
}

/** The manifest with its `mac` under the ring's signing key (any earlier `mac` replaced). */
export function signManifest<T extends object>(manifest: T, keys: KeyRing): T & { mac: ManifestMac } {
  return signRecord(DOMAIN, manifest, keys);
}

/**
 * Checks the MAC of a manifest as parsed from manifest.json (before anything else in it is
 * looked at). Returns 'unsigned' when it carries none (backups made before keys existed: the
 * caller decides), 'authenticated' when it verifies under one of the ring's keys, and throws
 * E_MANIFEST_UNAUTHENTICATED for any MAC that is present but does not verify.
 */
export function checkManifestMac(raw: unknown, keys: KeyRing, env: string, id: string): 'authenticated' | 'unsigned' {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw) || !Object.hasOwn(raw, 'mac')) return 'unsigned';
  const problem = macProblem(DOMAIN, raw, keys);
  if (problem !== undefined) throw unauthenticated(env, id, problem);
  return 'authenticated';
}

export function unauthenticated(env: string, id: string, why: string): AgentError {
  return new AgentError('E_MANIFEST_UNAUTHENTICATED', `manifest of backup ${env}/${id} is not authenticated (${why}); it is refused — use another backup`, {
    details: { env, id },
  });
}
