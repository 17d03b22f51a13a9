import type { Readable } from 'node:stream';

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
  head(key: string): Promise<ObjectInfo | undefined>;
  list(prefix: string): AsyncIterable<ObjectInfo>;
  delete(keys: readonly string[]): Promise<void>;
  sweepIncomplete(prefix: string, olderThan: Date): Promise<number>;
  /** Presigned GET URL; stores that cannot presign throw E_PRESIGN_UNSUPPORTED. */
  presignGet(key: string, expiresInSeconds: number): Promise<string>;
}
