import type { Readable } from 'node:stream';
import { AgentError } from '../../errors.ts';

export interface ObjectInfo {
  key: string;
  size: number;
  lastModified: Date;
}

export interface PutOptions {
  signal?: AbortSignal | undefined;
}

export interface GetOptions {
  signal?: AbortSignal | undefined;
}

/**
 * Where bytes go: keys and bytes only. Each method's contract is tested by one suite
 * (test/object-store.contract.ts) against every implementation.
 *
 * - `put` consumes `body` to its end and makes the object visible only when all of it is
 *   stored: a failed or cancelled put leaves no object and no partial parts behind (an
 *   existing object under the key is left as it was). An object larger than
 *   `maxObjectBytes` is rejected; callers split (see segments.ts).
 * - `get` resolves to the object's bytes, or rejects with E_OBJECT_NOT_FOUND.
 * - `getRange` resolves to `length` bytes of the object from `offset`, all of them or an error:
 *   a range past the object's end rejects with E_OBJECT_RANGE, never a short stream.
 * - `list` yields every object under the prefix exactly once, in key order.
 * - `delete` removes the keys; a missing key is not an error.
 * - `sweepIncomplete` aborts partial uploads under the prefix (multipart uploads, temp files)
 *   that a crash left behind and that started before `olderThan`; returns how many.
 */
export interface ObjectStore {
  readonly kind: 'fs' | 's3';
  /** The largest object one put may write (S3: part size × 10,000 parts). */
  readonly maxObjectBytes: number;
  /** A human description for messages and the manifest (never credentials). */
  readonly description: string;
  put(key: string, body: Readable, options?: PutOptions): Promise<void>;
  get(key: string, options?: GetOptions): Promise<Readable>;
  /**
   * `length` bytes of the object from `offset`. Rejects E_OBJECT_NOT_FOUND for a missing key; a
   * range that runs past the object's end is E_OBJECT_RANGE. length 0 resolves to an empty
   * stream (the key must still exist and `offset` be within the object or at its end).
   */
  getRange(key: string, offset: number, length: number, options?: GetOptions): Promise<Readable>;
  head(key: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(keys: readonly string[]): Promise<void>;
  sweepIncomplete(prefix: string, olderThan: Date): Promise<number>;
  /** Presigned GET URL; stores that cannot presign throw E_PRESIGN_UNSUPPORTED. */
  presignGet(key: string, expiresInSeconds: number): Promise<string>;
}

/** Rejects a range no caller means (a bug in it): offset and length are whole numbers ≥ 0. */
export function checkRange(key: string, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || !Number.isSafeInteger(offset + length)) {
    throw new AgentError('E_INTERNAL', `invalid byte range of ${key}: offset ${offset}, length ${length} (both must be whole numbers ≥ 0)`, {
      details: { key, offset, length },
    });
  }
}

export function objectNotFound(key: string, cause?: unknown): AgentError {
  return new AgentError('E_OBJECT_NOT_FOUND', `object ${key} does not exist`, { ...(cause === undefined ? {} : { cause }), details: { key } });
}

/**
 * A range past the object's end. Ranges come from what was recorded of the object when it was
 * written (a manifest, an index), so an object too short for one does not match that record.
 * `size` is the object's, when the store said it.
 */
export function objectRangeError(key: string, offset: number, length: number, size: number | undefined, store: string): AgentError {
  const has = size === undefined ? `ends before byte ${offset + length}` : `has only ${size} bytes`;
  return new AgentError(
    'E_OBJECT_RANGE',
    `cannot read ${length} bytes from byte ${offset} of ${key} in ${store}: the object ${has}, so it does not match what was recorded of it; ` +
      "it is truncated or was replaced: run 'backup verify' on its backup, and restore from another backup if that fails",
    { details: { key, offset, length, ...(size === undefined ? {} : { size }) } },
  );
}
