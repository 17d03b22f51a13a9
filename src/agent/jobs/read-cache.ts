import { buffer } from 'node:stream/consumers';
import { Readable } from 'node:stream';
import type { GetOptions, ObjectInfo, ObjectStore, PutOptions } from '../../transport/stores/object-store.ts';

const MANIFEST_SUFFIX = '/manifest.json';
const MAX_ENTRIES = 4096;
const MAX_BODY_BYTES = 1 << 20;

/**
 * A read-through cache of manifest bodies for the daemon's reads (backup.list, backup.show).
 * A manifest is written once, as a backup's commit point, under a unique id: its body can be
 * kept. Existence is never cached — every `head` goes to the store — and a cached body is used
 * only while the object's size and modification time are those it was read with, so a
 * deleted, replaced or tampered manifest is read afresh (and checked again by the caller).
 * Verify and restore never go through it.
 */
export class ManifestCache {
  readonly #entries = new Map<string, { size: number; mtime: number; body: Buffer }>();

  wrap(storeName: string, store: ObjectStore): ObjectStore {
    return new CachingStore(store, storeName, this);
  }

  clear(): void {
    this.#entries.clear();
  }

  lookup(key: string, info: ObjectInfo): Buffer | undefined {
    const entry = this.#entries.get(key);
    if (!entry || entry.size !== info.size || entry.mtime !== info.lastModified.getTime()) return undefined;
    this.#entries.delete(key); // most recently used last
    this.#entries.set(key, entry);
    return entry.body;
  }

  remember(key: string, info: ObjectInfo, body: Buffer): void {
    if (body.length !== info.size || body.length > MAX_BODY_BYTES) return;
    this.#entries.delete(key);
    this.#entries.set(key, { size: info.size, mtime: info.lastModified.getTime(), body });
    while (this.#entries.size > MAX_ENTRIES) this.#entries.delete(this.#entries.keys().next().value!);
  }

  forget(key: string): void {
    this.#entries.delete(key);
  }
}

class CachingStore implements ObjectStore {
  readonly #inner: ObjectStore;
  readonly #prefix: string;
  readonly #cache: ManifestCache;
  /** What the last head of each manifest said (readManifest heads before it gets). */
  readonly #seen = new Map<string, ObjectInfo>();

  constructor(inner: ObjectStore, storeName: string, cache: ManifestCache) {
    this.#inner = inner;
    this.#prefix = `${storeName}\0`;
    this.#cache = cache;
  }

  get kind() {
    return this.#inner.kind;
  }
  get maxObjectBytes() {
    return this.#inner.maxObjectBytes;
  }
  get description() {
    return this.#inner.description;
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    const info = await this.#inner.head(key);
    if (key.endsWith(MANIFEST_SUFFIX)) {
      if (info) this.#seen.set(key, info);
      else {
        this.#seen.delete(key);
        this.#cache.forget(this.#prefix + key);
      }
    }
    return info;
  }

  async get(key: string, options?: GetOptions): Promise<Readable> {
    if (!key.endsWith(MANIFEST_SUFFIX)) return this.#inner.get(key, options);
    const info = this.#seen.get(key) ?? (await this.#inner.head(key));
    this.#seen.delete(key);
    const cached = info && this.#cache.lookup(this.#prefix + key, info);
    if (cached) return Readable.from([cached]);
    const body = await buffer(await this.#inner.get(key, options));
    if (info) this.#cache.remember(this.#prefix + key, info, body);
    return Readable.from([body]);
  }

  /** Not cached: only whole manifests are. */
  getRange(key: string, offset: number, length: number, options?: GetOptions): Promise<Readable> {
    return this.#inner.getRange(key, offset, length, options);
  }

  put(key: string, body: Readable, options?: PutOptions): Promise<void> {
    this.#cache.forget(this.#prefix + key);
    return this.#inner.put(key, body, options);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.#inner.list(prefix);
  }

  async delete(keys: readonly string[]): Promise<void> {
    for (const key of keys) this.#cache.forget(this.#prefix + key);
    await this.#inner.delete(keys);
  }

  sweepIncomplete(prefix: string, olderThan: Date): Promise<number> {
    return this.#inner.sweepIncomplete(prefix, olderThan);
  }

  presignGet(key: string, expiresInSeconds: number): Promise<string> {
    return this.#inner.presignGet(key, expiresInSeconds);
  }
}
