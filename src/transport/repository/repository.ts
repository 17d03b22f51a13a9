import { Readable } from 'node:stream';
import pLimit from 'p-limit';
import { buffer as collect } from 'node:stream/consumers';
import { AgentError, isAgentError, throwIfCancelled } from '../../errors.ts';
import type { ObjectStore } from '../stores/object-store.ts';
import type { RepositoryKeys } from './blob-crypto.ts';
import { BlobIndex, MAX_BASES, openIndex, sealIndex, type IndexEntry } from './blob-index.ts';
import { sharedBlobPool, type BlobKind, type BlobPool, type SealedBlob } from './blob-pool.ts';
import { ChunkCutter, DEFAULT_CHUNKER, gearTable, type ChunkerParams } from './chunker.ts';
import { readExactly } from './read-exactly.ts';
import { collectGarbage, type CollectOptions, type CollectResult } from './garbage.ts';
import { DeltaParent } from './delta-parent.ts';
import { indexKey, indexPrefix, packKey } from './layout.ts';
import { PackWriter } from './pack-writer.ts';
import { openRepositoryKeys, type PlatformKeys } from './repository-keys.ts';
import { decodeTree, encodeTree, TREE_FANOUT, type TreeEntry } from './stream-tree.ts';

/** What storing one stream added to the repository, and the blob that now names it. */
export interface StoredStream {
  /** The root blob: the stream is its chunks, in order. */
  root: string;
  rawBytes: number;
  chunks: number;
  /** Chunks the repository did not hold yet, and their sealed size. */
  newChunks: number;
  newBytes: number;
  /** The stream's segments (SegmentMark, ReusedSegment), in order. */
  segments: StoredSegment[];
}

export interface StreamOptions {
  signal?: AbortSignal | undefined;
}

export interface WriteOptions extends StreamOptions {
  /** The stream's bytes stored so far (reused segments included), after each item. */
  onBytes?: (bytes: number) => void;
  /**
   * The root of the stream's previous version (a database's last dump): a new chunk is stored
   * as a delta against the parent's chunk in its place when that saves most of it. A parent
   * that cannot be read only costs the deltas.
   */
  parent?: string | undefined;
}

/** Between a stream's bytes: the next `bytes` bytes are one segment, with a chunk boundary before and after it. */
export interface SegmentMark {
  segment: string;
  bytes: number;
}

/** A segment stored before (an unchanged file of a tree): its chunks, in place of its bytes. */
export interface ReusedSegment {
  reuse: string;
  chunks: readonly TreeEntry[];
}

export type StreamItem = Buffer | SegmentMark | ReusedSegment;

/** Where a segment's chunks are in the stream's chunk list. */
export interface StoredSegment {
  key: string;
  first: number;
  count: number;
}

/**
 * An environment's deduplicating, encrypted store of streams (issue #13): each stream is cut
 * into content-defined chunks, each chunk stored once (sealed, in packs) however many backups
 * hold it. Between the pipeline and the ObjectStore, which stays keys and bytes.
 *
 * - `writeStream` stores a stream's new chunks and its chunk list (tree blobs); the returned
 *   root is usable once `commit` resolved. Marks between the bytes cut the stream into
 *   segments (a file of a tree) and put a segment stored before in place of its bytes. It
 *   takes the Buffers it is given over: their memory may move to a worker thread.
 * - `commit` uploads the last pack and an index object naming every blob this writer stored.
 *   The caller's manifest, which names the roots, comes after it: the manifest stays the
 *   commit point of a backup.
 * - `readStream` yields a stored stream's bytes, every chunk authenticated before it is given
 *   out; a blob missing, changed or not indexed is E_REPOSITORY_CORRUPT naming it.
 * - `chunksOf` lists a stream's chunks (verify, garbage collection).
 *
 * One writer at a time per environment: the environment's lock serialises backups, restores
 * and prunes on a node, and one node owns an environment (docs/ownership.md).
 */
export interface Repository {
  readonly env: string;
  writeStream(source: AsyncIterable<StreamItem> | Readable, options?: WriteOptions): Promise<StoredStream>;
  commit(options?: StreamOptions): Promise<void>;
  readStream(root: string, options?: StreamOptions): Readable;
  chunksOf(root: string, options?: StreamOptions): Promise<TreeEntry[]>;
  /** Checks every chunk of a stream is indexed and its pack present; with readData, reads and authenticates each. */
  check(root: string, options?: StreamOptions & { readData?: boolean }): Promise<{ chunks: number; bytes: number }>;
  /**
   * check() of many streams at once, each chunk read once: for each root, undefined when it is
   * whole, or the error of its first damaged chunk (a damaged chunk fails every stream that has it).
   */
  checkMany(roots: Iterable<string>, options?: StreamOptions & { readData?: boolean }): Promise<Map<string, AgentError | undefined>>;
  /** Index objects that did not open (forged or damaged), kept out of the index: verify reports them. */
  readonly rejectedIndexes: readonly { key: string; why: string }[];
  /** Deletes and repacks what no stream under `liveRoots` needs (garbage.ts: the order that keeps it safe under a kill). */
  collectGarbage(liveRoots: Iterable<string>, options: CollectOptions): Promise<CollectResult>;
}

export interface RepositoryOptions {
  /** Create the repository's key object when it has none (writers); readers never do. */
  create: boolean;
  chunker?: ChunkerParams;
  /** zstd level of each chunk (1: the pipeline's default). */
  level?: number;
  packBytes?: number;
  uploadsInFlight?: number;
  /** Ranged reads in flight during a restore. */
  readsInFlight?: number;
}

/**
 * Blobs up to this size are identified and sealed in one worker round trip, BATCH_BLOBS or
 * BATCH_BYTES of them at a time (blob-pool.ts): a tree of 20,000 small files cost ~40,000
 * round trips of ~70 µs each otherwise.
 */
const ONE_TRIP_BYTES = 64 << 10;
const BATCH_BLOBS = 64;
/**
 * Above this share of chunks already held, a big chunk is identified before it is sealed
 * (two round trips, sealing only the new ones); below it, both in one trip. A first backup
 * seals everything anyway; a second dump of a database is mostly chunks held before.
 */
const MOSTLY_KNOWN = 0.5;
const BATCH_BYTES = 1 << 20;

/**
 * Chunks being stored at once: many small ones keep the workers busy, few big ones bound memory.
 * Four batches of small blobs: at one (64), a tree of small files kept one worker idle while the
 * other sealed the only batch in flight (first backup of the 1 GiB tree: 7.0 s, 6.4 s at 256).
 */
const MAX_IN_FLIGHT = 4 * BATCH_BLOBS;
const MAX_IN_FLIGHT_BYTES = 16 << 20;

/** Where a data chunk is in a stream that has a parent (WriteOptions.parent). */
interface DeltaPlace {
  parent: DeltaParent;
  offset: number;
}

/** A blob identified (and, when new to the repository, sealed, with what puts it in a pack). */
interface StoredBlob {
  entry: TreeEntry;
  add?: () => Promise<void>;
}

interface Added {
  chunks: number;
  bytes: number;
}

/** One ranged read: `length` bytes at `offset` of a pack, holding these blobs back to back (`raw` bytes once opened, bases included). */
interface ReadRun {
  pack: string;
  offset: number;
  length: number;
  raw: number;
  blobs: (TreeEntry & IndexEntry)[];
}

/**
 * A ranged GET takes adjacent blobs of one pack up to this size: one request, not one per chunk;
 * and up to COALESCE_RAW_BYTES once opened, their deltas' bases included (a run of deltas of a
 * few hundred bytes each would otherwise open to gigabytes).
 */
const COALESCE_BYTES = 8 << 20;
const COALESCE_RAW_BYTES = 32 << 20;

export async function openRepository(store: ObjectStore, env: string, platform: PlatformKeys, options: RepositoryOptions): Promise<Repository> {
  const keys = await openRepositoryKeys(store, env, platform, { create: options.create });
  const repository = new PackedRepository(store, env, keys, sharedBlobPool(), options);
  await repository.loadIndex();
  return repository;
}

class PackedRepository implements Repository {
  readonly env: string;
  readonly rejectedIndexes: { key: string; why: string }[] = [];
  readonly #store: ObjectStore;
  readonly #keys: RepositoryKeys;
  readonly #pool: BlobPool;
  readonly #options: Required<Omit<RepositoryOptions, 'create'>>;
  readonly #gear: Uint32Array;
  readonly #index = new BlobIndex();
  /** Blobs this writer has claimed (sealed or sealing, to be added to a pack), until they are in the index. */
  readonly #written = new Set<string>();
  #packs: PackWriter | undefined;
  /** The share of recent chunks the repository already held (a moving average over ~16). */
  #knownShare = 0;
  #batch: { kind: BlobKind; chunks: Buffer[]; bytes: number; waiting: { resolve: (r: { id: string; sealed: Buffer }) => void; reject: (e: unknown) => void }[] } | undefined;

  constructor(store: ObjectStore, env: string, keys: RepositoryKeys, pool: BlobPool, options: RepositoryOptions) {
    this.#store = store;
    this.env = env;
    this.#keys = keys;
    this.#pool = pool;
    this.#options = {
      chunker: options.chunker ?? DEFAULT_CHUNKER,
      level: options.level ?? 1,
      packBytes: options.packBytes ?? 16 << 20,
      uploadsInFlight: options.uploadsInFlight ?? 2,
      readsInFlight: options.readsInFlight ?? 4,
    };
    this.#gear = gearTable(keys.chunker);
  }

  async loadIndex(): Promise<void> {
    for await (const info of this.#store.list(indexPrefix(this.env))) {
      const body = await collect(await this.#store.get(info.key));
      const entries = openIndex(this.#keys.encryption, this.env, body);
      if (typeof entries === 'string') {
        this.rejectedIndexes.push({ key: info.key, why: entries });
        continue;
      }
      for (const [id, entry] of entries) this.#index.add(id, entry);
    }
  }

  async writeStream(source: AsyncIterable<StreamItem> | Readable, options: WriteOptions = {}): Promise<StoredStream> {
    const { signal } = options;
    const parent = options.parent === undefined ? undefined : await this.#deltaParent(options.parent, signal);
    const cutter = new ChunkCutter(this.#gear, this.#options.chunker);
    const added = { chunks: 0, bytes: 0 };
    const entries: TreeEntry[] = [];
    const segments: StoredSegment[] = [];
    // Chunks in flight, in stream order: their ids come back out of order from the workers.
    const inFlight: Promise<StoredBlob>[] = [];
    let inFlightBytes = 0;
    let cut: Buffer[] = [];
    const emit = (chunk: Buffer) => cut.push(chunk);
    const position = () => entries.length + inFlight.length;
    let open: { key: string; left: number; first: number } | undefined;
    let bytes = 0;
    // Where the next chunk cut begins in the stream (bytes counts what was given, not yet cut).
    let cutAt = 0;
    // Blobs go into packs in stream order, whatever order the workers sealed them in: a restore
    // then reads runs of adjacent blobs with one request each (out of order, a first backup's
    // restore made ~10,000 ranged reads of 32 packs).
    const settleOldest = async () => {
      const { entry, add } = await inFlight.shift()!;
      await add?.();
      inFlightBytes -= entry.bytes;
      entries.push(entry);
    };
    const store = async () => {
      for (const chunk of cut) {
        const { length } = chunk; // before #storeBlob hands the chunk's memory to a worker
        inFlightBytes += length;
        const stored = this.#storeBlob('data', chunk, signal, added, parent && { parent, offset: cutAt });
        cutAt += length;
        stored.catch(() => {}); // surfaced in order below
        inFlight.push(stored);
        while (inFlight.length >= MAX_IN_FLIGHT || inFlightBytes >= MAX_IN_FLIGHT_BYTES) await settleOldest();
      }
      cut = [];
    };
    const closeSegment = () => {
      cutter.cut(emit);
      segments.push({ key: open!.key, first: open!.first, count: position() + cut.length - open!.first });
      open = undefined;
    };
    try {
      for await (const item of source as AsyncIterable<StreamItem>) {
        throwIfCancelled(signal);
        if (Buffer.isBuffer(item)) {
          let rest = item;
          while (open && rest.length > 0) {
            const take = Math.min(open.left, rest.length);
            cutter.push(take === rest.length ? rest : rest.subarray(0, take), emit);
            rest = rest.subarray(take);
            open.left -= take;
            if (open.left === 0) closeSegment();
          }
          if (rest.length > 0) cutter.push(rest, emit);
          bytes += item.length;
        } else if ('segment' in item) {
          if (open) throw new AgentError('E_INTERNAL', `segment ${item.segment} began inside segment ${open.key}`);
          cutter.cut(emit);
          open = { key: item.segment, left: item.bytes, first: position() + cut.length };
          if (item.bytes === 0) closeSegment();
        } else {
          if (open) throw new AgentError('E_INTERNAL', `segment ${item.reuse} reused inside segment ${open.key}`);
          cutter.cut(emit);
          await store();
          const first = position();
          for (const chunk of item.chunks) {
            // The parent's chunks are committed; one the index lacks means a damaged repository.
            if (!this.#index.has(chunk.id)) throw this.#corrupt(`chunk ${chunk.id} of an unchanged segment ${item.reuse} is not in its index`, chunk.id);
            inFlight.push(Promise.resolve({ entry: chunk }));
            inFlightBytes += chunk.bytes; // settled at once: only so that the count stays right
            bytes += chunk.bytes;
            cutAt += chunk.bytes;
          }
          segments.push({ key: item.reuse, first, count: item.chunks.length });
        }
        options.onBytes?.(bytes);
        await store();
      }
      if (open) throw new AgentError('E_INTERNAL', `the stream ended inside segment ${open.key} (${open.left} bytes short)`);
      cutter.cut(emit);
      await store();
      while (inFlight.length > 0) await settleOldest();
      const root = await this.#storeTree(entries, signal, added);
      return { root, rawBytes: entries.reduce((sum, e) => sum + e.bytes, 0), chunks: entries.length, newChunks: added.chunks, newBytes: added.bytes, segments };
    } catch (error) {
      await Promise.allSettled(inFlight);
      throw error;
    }
  }

  /** Lists of TREE_FANOUT entries, then lists of those lists, up to one root. */
  async #storeTree(entries: TreeEntry[], signal: AbortSignal | undefined, added: Added): Promise<string> {
    let level = 0;
    let current = entries;
    do {
      const next: TreeEntry[] = [];
      for (let i = 0; i < current.length || (i === 0 && current.length === 0); i += TREE_FANOUT) {
        const part = current.slice(i, i + TREE_FANOUT);
        const { entry: stored, add } = await this.#storeBlob('tree', encodeTree(level, part), signal, added);
        await add?.();
        next.push({ id: stored.id, bytes: part.reduce((sum, e) => sum + e.bytes, 0) });
      }
      current = next;
      level++;
    } while (current.length > 1);
    return current[0]!.id;
  }

  /**
   * Identifies a blob and, unless the repository holds it or this writer has claimed it, seals
   * it and claims it: `add` then puts it in a pack (the caller calls it in stream order), and
   * counts it in `added` (data chunks, and sealed bytes of every kind).
   */
  async #storeBlob(kind: BlobKind, content: Buffer, signal: AbortSignal | undefined, added: Added, place?: DeltaPlace): Promise<StoredBlob> {
    throwIfCancelled(signal);
    const bytes = content.length;
    let id: string;
    let sealing: () => Promise<{ sealed: Buffer; bases?: readonly string[] | undefined }>;
    if (place) {
      // Identified first: only a new chunk is worth reading its bases for.
      const identified = await this.#pool.identify(this.#keys, content);
      id = identified.id;
      if (this.#index.has(id)) place.parent.unchanged(id, place.offset);
      sealing = () => this.#sealAgainstParent(id, identified.chunk, place, signal);
    } else if (bytes <= ONE_TRIP_BYTES || this.#knownShare < MOSTLY_KNOWN) {
      // One round trip: the content is sealed before the index is asked whether it is new.
      const done = bytes <= ONE_TRIP_BYTES ? await this.#batched(kind, content) : (await this.#pool.identifyAndSeal(this.#keys, kind, [content], this.#options.level))[0]!;
      id = done.id;
      sealing = async () => ({ sealed: done.sealed });
    } else {
      // Most chunks are known (a database dumped again): identify first, seal only new ones.
      const identified = await this.#pool.identify(this.#keys, content);
      id = identified.id;
      sealing = async () => ({ sealed: await this.#pool.seal(this.#keys, kind, id, identified.chunk, this.#options.level) });
    }
    const entry = { id, bytes };
    const known = this.#index.has(id) || this.#written.has(id);
    this.#knownShare += ((known ? 1 : 0) - this.#knownShare) / 16;
    if (known) return { entry };
    this.#written.add(id);
    const { sealed, bases } = await sealing();
    return {
      entry,
      add: async () => {
        if (kind === 'data') added.chunks++;
        added.bytes += sealed.length;
        await this.#packWriter(signal).add(id, kind, sealed, bytes, bases);
      },
    };
  }

  /**
   * A new chunk sealed as a delta against the parent's chunks in its place (one, or two where a
   * cut moved), each replaced by its own bases when it is a delta: a base is always whole, so a
   * restore reads at most two bases per chunk, and chains never form. Whole when the delta saves
   * too little or there is no base to read.
   */
  async #sealAgainstParent(id: string, chunk: Buffer, place: DeltaPlace, signal: AbortSignal | undefined): Promise<{ sealed: Buffer; bases?: readonly string[] }> {
    const whole = async () => ({ sealed: await this.#pool.seal(this.#keys, 'data', id, chunk, this.#options.level) });
    // The chunk under the middle first: when the two resolve to more than two bases, its own are kept.
    const inPlace = place.parent.chunksUnder(place.offset, chunk.length);
    const candidates = [...new Set(inPlace.flatMap((parentChunk) => this.#index.get(parentChunk)?.bases ?? [parentChunk]))];
    const bases: string[] = [];
    const contents: Buffer[] = [];
    for (const base of candidates) {
      if (bases.length === MAX_BASES) break;
      const entry = this.#index.get(base);
      if (!entry || entry.kind !== 'data' || entry.bases) continue;
      try {
        contents.push(await this.#readBlob('data', base, signal));
        bases.push(base);
      } catch (error) {
        // A damaged base costs this chunk its delta against it, nothing more; verify names the damage.
        if (!isAgentError(error, 'E_REPOSITORY_CORRUPT')) throw error;
      }
    }
    if (bases.length === 0) return whole();
    const { sealed, delta } = await this.#pool.sealDelta(this.#keys, id, chunk, Buffer.concat(contents), this.#options.level);
    return delta ? { sealed, bases } : { sealed };
  }

  /** The parent of a stream being written, laid out for deltas; none when it cannot be read. */
  async #deltaParent(root: string, signal: AbortSignal | undefined): Promise<DeltaParent | undefined> {
    try {
      return new DeltaParent(await this.chunksOf(root, { signal }));
    } catch (error) {
      if (isAgentError(error, 'E_REPOSITORY_CORRUPT')) return undefined;
      throw error;
    }
  }


  /** A small blob, identified and sealed with others in one worker round trip (sent once BATCH_BYTES or BATCH_BLOBS gather, or at the next turn of the event loop). */
  #batched(kind: BlobKind, content: Buffer): Promise<{ id: string; sealed: Buffer }> {
    if (this.#batch && this.#batch.kind !== kind) this.#flushBatch();
    if (!this.#batch) {
      const batch = (this.#batch = { kind, chunks: [], bytes: 0, waiting: [] });
      // Whatever gathered by the next turn of the event loop goes: nobody waits longer for a batch that does not fill.
      setImmediate(() => {
        if (this.#batch === batch) this.#flushBatch();
      });
    }
    const batch = this.#batch;
    const done = new Promise<{ id: string; sealed: Buffer }>((resolve, reject) => batch.waiting.push({ resolve, reject }));
    batch.chunks.push(content);
    batch.bytes += content.length;
    if (batch.bytes >= BATCH_BYTES || batch.chunks.length >= BATCH_BLOBS) this.#flushBatch();
    return done;
  }

  /** Sends the small blobs gathered so far. */
  #flushBatch(): void {
    const batch = this.#batch;
    if (!batch) return;
    this.#batch = undefined;
    this.#pool.identifyAndSeal(this.#keys, batch.kind, batch.chunks, this.#options.level).then(
      (results) => results.forEach((result, i) => batch.waiting[i]!.resolve(result)),
      (error: unknown) => batch.waiting.forEach((w) => w.reject(error)),
    );
  }

  #packWriter(signal: AbortSignal | undefined): PackWriter {
    this.#packs ??= new PackWriter(this.#store, this.env, { packBytes: this.#options.packBytes, uploadsInFlight: this.#options.uploadsInFlight, signal });
    return this.#packs;
  }

  async commit(options: StreamOptions = {}): Promise<void> {
    if (!this.#packs) return;
    const stored = await this.#packs.finish();
    this.#packs = undefined;
    if (stored.size === 0) return;
    throwIfCancelled(options.signal);
    const { id, body } = sealIndex(this.#keys.encryption, this.env, stored);
    await this.#store.put(indexKey(this.env, id), Readable.from([body]), { signal: options.signal });
    for (const [blob, entry] of stored) this.#index.add(blob, entry);
    this.#written.clear();
  }

  async chunksOf(root: string, options: StreamOptions = {}): Promise<TreeEntry[]> {
    const chunks: TreeEntry[] = [];
    await this.#walkTrees(root, options.signal, (entries) => chunks.push(...entries));
    return chunks;
  }

  /** Reads the trees under `id`, handing each level-0 tree's entries (data chunks, in order) to `onChunks`, each tree's id to `onTree`. */
  async #walkTrees(id: string, signal: AbortSignal | undefined, onChunks: (entries: TreeEntry[]) => void, onTree?: (id: string) => void): Promise<void> {
    throwIfCancelled(signal);
    onTree?.(id);
    const tree = decodeTree(await this.#readBlob('tree', id, signal));
    if (typeof tree === 'string') throw this.#corrupt(`tree blob ${id} ${tree}`, id);
    if (tree.level === 0) onChunks(tree.entries);
    else for (const entry of tree.entries) await this.#walkTrees(entry.id, signal, onChunks, onTree);
  }

  collectGarbage(liveRoots: Iterable<string>, options: CollectOptions): Promise<CollectResult> {
    return collectGarbage(
      {
        env: this.env,
        store: this.#store,
        encryption: this.#keys.encryption,
        index: this.#index,
        rejectedIndexes: this.rejectedIndexes,
        walk: (root, visit, signal) =>
          this.#walkTrees(
            root,
            signal,
            (entries) =>
              entries.forEach((e) => {
                visit(e.id);
                for (const base of this.#index.basesOf(e.id) ?? []) visit(base);
              }),
            visit,
          ),
      },
      liveRoots,
      options,
    );
  }

  readStream(root: string, options: StreamOptions = {}): Readable {
    return Readable.from(this.#streamChunks(root, options.signal), { objectMode: false, highWaterMark: 1 << 20 });
  }

  async *#streamChunks(root: string, signal: AbortSignal | undefined): AsyncGenerator<Buffer> {
    const reads = this.#planReads(await this.chunksOf(root, { signal }));
    // Several ranged reads ahead, each opened in the workers as it arrives; given out in order.
    const ahead: Promise<Buffer[]>[] = [];
    let next = 0;
    const fill = () => {
      while (ahead.length < this.#options.readsInFlight && next < reads.length) {
        const read = this.#readRun(reads[next++]!, signal);
        read.catch(() => {}); // surfaced in order below
        ahead.push(read);
      }
    };
    fill();
    while (ahead.length > 0) {
      const chunks = await ahead.shift()!;
      fill();
      yield* chunks;
    }
  }

  /** Runs of chunks that sit side by side in one pack, each fetched with one ranged GET. */
  #planReads(chunks: readonly TreeEntry[]): ReadRun[] {
    const runs: ReadRun[] = [];
    for (const chunk of chunks) {
      const entry = this.#index.get(chunk.id);
      if (!entry || entry.kind !== 'data' || entry.rawLength !== chunk.bytes) throw this.#corrupt(`chunk ${chunk.id} is not in its index as a data blob of ${chunk.bytes} bytes`, chunk.id);
      const raw = entry.rawLength + (entry.bases ?? []).reduce((sum, base) => sum + (this.#index.get(base)?.rawLength ?? 0), 0);
      const last = runs.at(-1);
      if (last && last.pack === entry.pack && last.offset + last.length === entry.offset && last.length + entry.length <= COALESCE_BYTES && last.raw + raw <= COALESCE_RAW_BYTES) {
        last.length += entry.length;
        last.raw += raw;
        last.blobs.push({ ...chunk, ...entry });
      } else runs.push({ pack: entry.pack, offset: entry.offset, length: entry.length, raw, blobs: [{ ...chunk, ...entry }] });
    }
    return runs;
  }

  async #readRun(run: ReadRun, signal: AbortSignal | undefined): Promise<Buffer[]> {
    const [bytes, dictionaries] = await Promise.all([this.#readRange(run.pack, run.offset, run.length, signal), this.#readBases(run, signal)]);
    const blobs = run.blobs.map((blob) => ({ id: blob.id, rawLength: blob.rawLength, offset: blob.offset - run.offset, length: blob.length, base: blob.bases === undefined ? undefined : dictionaries?.places.get(blob.bases.join()) }));
    return this.#openBlobs('data', bytes, blobs, dictionaries?.contents);
  }

  /**
   * The dictionaries of a run's deltas — each delta's bases back to back, once per distinct list
   * — and where each is; the bases read (and authenticated) like any chunk, once each, before
   * the deltas that need them. A base is never a delta. Memory: within the run's `raw`, which
   * counts every delta's bases.
   */
  async #readBases(run: ReadRun, signal: AbortSignal | undefined): Promise<{ contents: Buffer; places: Map<string, { offset: number; length: number }> } | undefined> {
    const lists = [...new Map(run.blobs.flatMap((blob) => (blob.bases === undefined ? [] : [[blob.bases.join(), blob.bases] as const]))).values()];
    if (lists.length === 0) return undefined;
    const bases = [...new Set(lists.flat())].map((id) => {
      const entry = this.#index.get(id);
      if (!entry || entry.kind !== 'data' || entry.bases) throw this.#corrupt(`base ${id} of a delta in pack ${run.pack} is not in its index as a whole data blob`, id);
      return { id, bytes: entry.rawLength };
    });
    const opened = (await Promise.all(this.#planReads(bases).map((baseRun) => this.#readRun(baseRun, signal)))).flat();
    const content = new Map(bases.map((base, i) => [base.id, opened[i]!]));
    const places = new Map<string, { offset: number; length: number }>();
    const parts: Buffer[] = [];
    let at = 0;
    for (const list of lists) {
      const start = at;
      for (const id of list) {
        parts.push(content.get(id)!);
        at += content.get(id)!.length;
      }
      places.set(list.join(), { offset: start, length: at - start });
    }
    return { contents: Buffer.concat(parts, at), places };
  }

  async #readBlob(kind: BlobKind, id: string, signal: AbortSignal | undefined): Promise<Buffer> {
    const entry = this.#index.get(id);
    if (!entry || entry.kind !== kind) throw this.#corrupt(`${kind} blob ${id} is not in its index`, id);
    const [plain] = await this.#openBlobs(kind, await this.#readRange(entry.pack, entry.offset, entry.length, signal), [{ id, rawLength: entry.rawLength, offset: 0, length: entry.length }]);
    return plain!;
  }

  async #readRange(pack: string, offset: number, length: number, signal: AbortSignal | undefined): Promise<Buffer> {
    try {
      const { bytes, received } = await readExactly(await this.#store.getRange(packKey(this.env, pack), offset, length, { signal }), length);
      if (received !== length) throw this.#corrupt(`pack ${pack} gave ${received} bytes at ${offset}, not ${length}`, pack);
      return bytes;
    } catch (error) {
      if (isAgentError(error, 'E_OBJECT_NOT_FOUND') || isAgentError(error, 'E_OBJECT_RANGE')) {
        throw this.#corrupt(`pack ${pack} ${isAgentError(error, 'E_OBJECT_NOT_FOUND') ? 'is missing' : `is shorter than its index says (${offset}+${length})`}`, pack, error);
      }
      throw error;
    }
  }

  async #openBlobs(kind: BlobKind, bytes: Buffer, blobs: SealedBlob[], bases?: Buffer): Promise<Buffer[]> {
    const opened = await this.#pool.open(this.#keys, kind, bytes, blobs, bases);
    if ('failure' in opened) throw this.#corrupt(`${kind} blob ${opened.id} ${opened.failure}`, opened.id);
    return opened.plains;
  }

  async check(root: string, options: StreamOptions & { readData?: boolean } = {}): Promise<{ chunks: number; bytes: number }> {
    const chunks = await this.chunksOf(root, options);
    const damaged = await this.#damaged(chunks, options);
    const first = chunks.find((c) => damaged.has(c.id));
    if (first) throw damaged.get(first.id)!;
    return { chunks: chunks.length, bytes: chunks.reduce((sum, c) => sum + c.bytes, 0) };
  }

  async checkMany(roots: Iterable<string>, options: StreamOptions & { readData?: boolean } = {}): Promise<Map<string, AgentError | undefined>> {
    const results = new Map<string, AgentError | undefined>();
    const lists = new Map<string, TreeEntry[]>();
    for (const root of new Set(roots)) {
      try {
        lists.set(root, await this.chunksOf(root, options));
      } catch (error) {
        if (!isAgentError(error, 'E_REPOSITORY_CORRUPT')) throw error;
        results.set(root, error);
      }
    }
    // Each chunk once, however many streams share it.
    const unique = new Map<string, TreeEntry>();
    for (const list of lists.values()) for (const chunk of list) unique.set(chunk.id, chunk);
    const damaged = await this.#damaged([...unique.values()], options);
    for (const [root, list] of lists) {
      const first = list.find((c) => damaged.has(c.id));
      results.set(root, first && damaged.get(first.id));
    }
    return results;
  }

  /**
   * The chunks that are not indexed, lie past the end of their pack or in a missing one, or
   * (readData) do not open as themselves, each with what is wrong. Read in pack order, adjacent
   * blobs in one ranged read; a read that fails is read again blob by blob, so that every
   * damaged chunk is named, not only the first.
   */
  async #damaged(chunks: readonly TreeEntry[], options: StreamOptions & { readData?: boolean }): Promise<Map<string, AgentError>> {
    const { signal } = options;
    const damaged = new Map<string, AgentError>();
    const byPack = new Map<string, (TreeEntry & IndexEntry)[]>();
    // A delta is whole only if its bases are: they are checked too, once each.
    const deltas = new Map<string, readonly string[]>();
    const listed = new Set(chunks.map((c) => c.id));
    const bases: TreeEntry[] = [];
    for (const chunk of chunks) {
      const ofChunk = this.#index.basesOf(chunk.id);
      if (ofChunk === undefined) continue;
      deltas.set(chunk.id, ofChunk);
      for (const base of ofChunk) {
        if (listed.has(base)) continue;
        listed.add(base);
        bases.push({ id: base, bytes: this.#index.get(base)?.rawLength ?? -1 }); // -1: not indexed, damaged below
      }
    }
    for (const chunk of [...chunks, ...bases]) {
      const entry = this.#index.get(chunk.id);
      if (!entry || entry.kind !== 'data' || entry.rawLength !== chunk.bytes) {
        damaged.set(chunk.id, this.#corrupt(`chunk ${chunk.id} is not in its index as a data blob${chunk.bytes < 0 ? '' : ` of ${chunk.bytes} bytes`}`, chunk.id));
        continue;
      }
      const inPack = byPack.get(entry.pack) ?? [];
      byPack.set(entry.pack, inPack);
      inPack.push({ ...chunk, ...entry });
    }
    const readable: (TreeEntry & IndexEntry)[] = [];
    for (const [pack, inPack] of byPack) {
      throwIfCancelled(signal);
      const info = await this.#store.head(packKey(this.env, pack));
      const end = Math.max(...inPack.map((blob) => blob.offset + blob.length));
      const failure = !info ? this.#corrupt(`pack ${pack} is missing`, pack) : info.size < end ? this.#corrupt(`pack ${pack} is shorter than its index says (${info.size} < ${end} bytes)`, pack) : undefined;
      for (const blob of inPack) {
        if (failure && (!info || blob.offset + blob.length > info.size)) damaged.set(blob.id, failure);
        else readable.push(blob);
      }
    }
    if (options.readData) await this.#readDamaged(readable, damaged, signal);
    for (const [delta, ofDelta] of deltas) {
      const failure = ofDelta.map((base) => damaged.get(base)).find((f) => f !== undefined);
      if (failure && !damaged.has(delta)) damaged.set(delta, failure);
    }
    return damaged;
  }

  /** Reads and opens every blob of `readable`, adding to `damaged` each that does not open as itself. */
  async #readDamaged(readable: (TreeEntry & IndexEntry)[], damaged: Map<string, AgentError>, signal: AbortSignal | undefined): Promise<void> {
    readable.sort((a, b) => (a.pack < b.pack ? -1 : a.pack > b.pack ? 1 : a.offset - b.offset));
    const limit = pLimit(this.#options.readsInFlight);
    const readOne = async (run: ReadRun): Promise<AgentError | undefined> => {
      try {
        await this.#readRun(run, signal);
        return undefined;
      } catch (error) {
        if (!isAgentError(error, 'E_REPOSITORY_CORRUPT')) throw error;
        return error;
      }
    };
    await Promise.all(
      this.#planReads(readable).map((run) =>
        limit(async () => {
          if ((await readOne(run)) === undefined) return;
          for (const blob of run.blobs) {
            const failure = await readOne({ pack: run.pack, offset: blob.offset, length: blob.length, raw: 0, blobs: [blob] });
            if (failure) damaged.set(blob.id, failure);
          }
        }),
      ),
    );
  }

  #corrupt(why: string, blob: string, cause?: unknown): AgentError {
    return new AgentError('E_REPOSITORY_CORRUPT', `the repository of environment ${this.env} is damaged: ${why}; restore another backup, and run 'backup verify --read-data' to find every backup it affects`, {
      cause,
      details: { env: this.env, blob },
    });
  }
}
