import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { freeOwned } from '../../chunk-recycling.ts';
import type { ObjectStore } from '../stores/object-store.ts';
import type { IndexEntry } from './blob-index.ts';
import type { BlobKind } from './blob-pool.ts';
import { packKey } from './layout.ts';

export interface PackWriterOptions {
  /** A pack is closed and uploaded once it holds this many bytes (16 MiB: issue #13 says 16–64). */
  packBytes: number;
  /** Packs uploading at once; a new blob waits while this many are in flight. */
  uploadsInFlight: number;
  signal?: AbortSignal | undefined;
}

interface Pending {
  id: string;
  kind: BlobKind;
  offset: number;
  length: number;
  rawLength: number;
  bases?: readonly string[] | undefined;
}

/**
 * Appends sealed blobs to packs and uploads each full pack as one object (the store's bounded
 * multipart upload for S3). A blob's place is known — and reported by `uploaded` — only once
 * its pack is stored, so an index never names a pack that is not there. Memory: one pack
 * filling plus `uploadsInFlight` uploading.
 */
export class PackWriter {
  readonly #store: ObjectStore;
  readonly #env: string;
  readonly #options: PackWriterOptions;
  #buffers: Buffer[] = [];
  #bytes = 0;
  #pending: Pending[] = [];
  readonly #uploads = new Set<Promise<void>>();
  readonly #uploaded = new Map<string, IndexEntry>();
  #failure: unknown;

  constructor(store: ObjectStore, env: string, options: PackWriterOptions) {
    this.#store = store;
    this.#env = env;
    this.#options = options;
  }

  /** Appends a sealed blob (a delta: `bases` names the blobs it decodes against); resolves once there is room for the next one. */
  async add(id: string, kind: BlobKind, sealed: Buffer, rawLength: number, bases?: readonly string[]): Promise<void> {
    if (this.#failure) throw this.#failure;
    this.#pending.push({ id, kind, offset: this.#bytes, length: sealed.length, rawLength, ...(bases?.length ? { bases } : {}) });
    this.#buffers.push(sealed);
    this.#bytes += sealed.length;
    if (this.#bytes >= this.#options.packBytes) this.#close();
    while (this.#uploads.size >= this.#options.uploadsInFlight) await Promise.race(this.#uploads);
    if (this.#failure) throw this.#failure;
  }

  /** Uploads the last pack and waits for every upload; the places of every blob added. */
  async finish(): Promise<ReadonlyMap<string, IndexEntry>> {
    if (this.#bytes > 0) this.#close();
    while (this.#uploads.size > 0) await Promise.race(this.#uploads);
    if (this.#failure) throw this.#failure;
    return this.#uploaded;
  }

  #close(): void {
    const buffers = this.#buffers;
    const blobs = this.#pending;
    this.#buffers = [];
    this.#pending = [];
    this.#bytes = 0;
    // A random name: hashing 16 MiB on this thread for it cost ~0.8 s per GiB stored, and
    // nothing reads a pack by content (every blob in it authenticates itself).
    const pack = randomBytes(32).toString('hex');
    const upload = this.#store
      .put(packKey(this.#env, pack), Readable.from(buffers, { objectMode: false }), { signal: this.#options.signal })
      .then(
        () => {
          for (const { id, ...entry } of blobs) this.#uploaded.set(id, { ...entry, pack });
          // Sealed in a worker, their memory belongs to its malloc arena, which grew by ~90 MiB
          // per worker while they waited for this thread's next GC to be freed.
          for (const buffer of buffers) freeOwned(buffer);
        },
        (error: unknown) => {
          this.#failure ??= error;
        },
      )
      .finally(() => this.#uploads.delete(upload));
    this.#uploads.add(upload);
  }
}
