import type { Readable } from 'node:stream';
import type { GetOptions, ObjectInfo, ObjectStore, PutOptions } from '../../src/transport/stores/object-store.ts';

export type StoreMethod = 'put' | 'get' | 'getRange' | 'head' | 'list' | 'delete' | 'sweepIncomplete' | 'presignGet';

/**
 * A real store that counts the calls made to it, per method, with their keys: what an
 * operation costs in requests (a `list` is one call however many keys it yields; every
 * listing in these tests fits one page).
 */
export class CountingStore implements ObjectStore {
  readonly inner: ObjectStore;
  /** `olderThan`: what a sweepIncomplete was asked for. */
  calls: { method: StoreMethod; key: string; olderThan?: Date }[] = [];

  constructor(inner: ObjectStore) {
    this.inner = inner;
  }

  get kind() {
    return this.inner.kind;
  }
  get maxObjectBytes() {
    return this.inner.maxObjectBytes;
  }
  get description() {
    return this.inner.description;
  }

  /** Calls per method since the last reset, methods never called left out. */
  counts(): Partial<Record<StoreMethod, number>> {
    const counts: Partial<Record<StoreMethod, number>> = {};
    for (const { method } of this.calls) counts[method] = (counts[method] ?? 0) + 1;
    return counts;
  }

  /** The keys `method` was called with since the last reset, in call order. */
  keysOf(method: StoreMethod): string[] {
    return this.calls.filter((c) => c.method === method).map((c) => c.key);
  }

  reset(): void {
    this.calls = [];
  }

  put(key: string, body: Readable, options?: PutOptions): Promise<void> {
    this.calls.push({ method: 'put', key });
    return this.inner.put(key, body, options);
  }

  get(key: string, options?: GetOptions): Promise<Readable> {
    this.calls.push({ method: 'get', key });
    return this.inner.get(key, options);
  }

  /** Counted apart from `get` (one GetObject each all the same), so a whole read and a ranged one are told apart. */
  getRange(key: string, offset: number, length: number, options?: GetOptions): Promise<Readable> {
    this.calls.push({ method: 'getRange', key });
    return this.inner.getRange(key, offset, length, options);
  }

  head(key: string): Promise<ObjectInfo | undefined> {
    this.calls.push({ method: 'head', key });
    return this.inner.head(key);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    this.calls.push({ method: 'list', key: prefix });
    return this.inner.list(prefix);
  }

  delete(keys: readonly string[]): Promise<void> {
    this.calls.push({ method: 'delete', key: keys.join(',') });
    return this.inner.delete(keys);
  }

  sweepIncomplete(prefix: string, olderThan: Date): Promise<number> {
    this.calls.push({ method: 'sweepIncomplete', key: prefix, olderThan });
    return this.inner.sweepIncomplete(prefix, olderThan);
  }

  presignGet(key: string, expiresInSeconds: number): Promise<string> {
    this.calls.push({ method: 'presignGet', key });
    return this.inner.presignGet(key, expiresInSeconds);
  }
}

/**
 * Every store the agent opened through `openEnvironmentStore` while a test mocks it with
 * `countOpened` (vi.mock of src/agent/stores.ts), last opened last.
 */
export const openedStores: CountingStore[] = [];

export function countOpened(store: ObjectStore): CountingStore {
  const counting = new CountingStore(store);
  openedStores.push(counting);
  return counting;
}
