import { createHash } from 'node:crypto';
import { open, seal } from './blob-crypto.ts';
import type { BlobKind } from './blob-pool.ts';

/** Where a sealed blob is: `length` bytes at `offset` of pack `pack`; `rawLength` once opened. */
export interface IndexEntry {
  kind: BlobKind;
  pack: string;
  offset: number;
  length: number;
  rawLength: number;
  /**
   * A delta blob: the ids of the one or two data blobs whose contents, back to back, it was
   * compressed against (never themselves deltas).
   */
  bases?: readonly string[] | undefined;
}

/**
 * The map of blob id → place, in memory: the union of the repository's index objects. Each
 * index object lists the blobs of the packs one backup wrote, and is sealed like every blob.
 *
 * Memory: ~60 bytes per blob, in typed arrays — the 32-byte id, the place (17 bytes) and a
 * slot of an open-addressing table at most half full — where a Map of hex strings to entry
 * objects cost ~200. A tree's small files are a blob each, so blobs follow files: the 1 GiB
 * benchmark tree is ~21,000 blobs (~1.3 MiB), 10 GiB of it ~210,000 (~13 MiB), 10 M blobs
 * ~600 MiB (docs/repository.md says how it would scale beyond). Ids are HMAC outputs, uniformly
 * distributed: their first 4 bytes are the hash.
 */
export class BlobIndex {
  #count = 0;
  #ids = new Uint8Array(ID_BYTES * 1024);
  #kinds = new Uint8Array(1024);
  #packOf = new Uint32Array(1024);
  #offsets = new Uint32Array(1024);
  #lengths = new Uint32Array(1024);
  #rawLengths = new Uint32Array(1024);
  /** Record number + 1 per slot, 0 when empty; a power of two, at most half full. */
  #slots = new Uint32Array(2048);
  /** Record → base ids, for the delta blobs only (a database's chunks; a tree's files have none). */
  readonly #bases = new Map<number, readonly string[]>();
  readonly #packNames: string[] = [];
  readonly #packNumbers = new Map<string, number>();

  get size(): number {
    return this.#count;
  }

  get(id: string): IndexEntry | undefined {
    const bytes = idBytes(id);
    const record = bytes ? this.#find(bytes) : -1;
    if (record < 0) return undefined;
    const bases = this.#bases.get(record);
    return {
      kind: KINDS[this.#kinds[record]!]!,
      pack: this.#packNames[this.#packOf[record]!]!,
      offset: this.#offsets[record]!,
      length: this.#lengths[record]!,
      rawLength: this.#rawLengths[record]!,
      ...(bases ? { bases } : {}),
    };
  }

  /** The bases of a delta blob; undefined for any other. */
  basesOf(id: string): readonly string[] | undefined {
    if (this.#bases.size === 0) return undefined;
    const bytes = idBytes(id);
    const record = bytes ? this.#find(bytes) : -1;
    return record < 0 ? undefined : this.#bases.get(record);
  }

  has(id: string): boolean {
    const bytes = idBytes(id);
    return bytes !== undefined && this.#find(bytes) >= 0;
  }

  /** Adds the blob, or moves it to `entry` when it is already indexed (a repacked blob). */
  add(id: string, entry: IndexEntry): void {
    const bytes = idBytes(id);
    if (!bytes) throw new Error(`a blob id is 64 hex digits, not ${JSON.stringify(id)}`); // a bug upstream: ids are ours
    let record = this.#find(bytes);
    if (record < 0) {
      if (this.#count === this.#kinds.length) this.#growRecords();
      if ((this.#count + 1) * 2 > this.#slots.length) this.#growSlots();
      record = this.#count++;
      this.#ids.set(bytes, record * ID_BYTES);
      this.#slots[this.#freeSlot(bytes)] = record + 1;
    }
    let pack = this.#packNumbers.get(entry.pack);
    if (pack === undefined) {
      pack = this.#packNames.push(entry.pack) - 1;
      this.#packNumbers.set(entry.pack, pack);
    }
    this.#kinds[record] = KINDS.indexOf(entry.kind);
    this.#packOf[record] = pack;
    this.#offsets[record] = entry.offset;
    this.#lengths[record] = entry.length;
    this.#rawLengths[record] = entry.rawLength;
    if (entry.bases?.length) this.#bases.set(record, entry.bases);
    else this.#bases.delete(record);
  }

  *entries(): IterableIterator<[string, IndexEntry]> {
    for (let record = 0; record < this.#count; record++) {
      const id = Buffer.from(this.#ids.buffer, record * ID_BYTES, ID_BYTES).toString('hex');
      yield [id, this.get(id)!];
    }
  }

  /** The packs any entry names. */
  packs(): ReadonlySet<string> {
    return new Set(this.#packNames);
  }

  /** The record of `id`, or -1. */
  #find(id: Uint8Array): number {
    const mask = this.#slots.length - 1;
    for (let slot = hashOf(id) & mask; ; slot = (slot + 1) & mask) {
      const record = this.#slots[slot]! - 1;
      if (record < 0) return -1;
      if (this.#sameId(record, id)) return record;
    }
  }

  #freeSlot(id: Uint8Array): number {
    const mask = this.#slots.length - 1;
    let slot = hashOf(id) & mask;
    while (this.#slots[slot] !== 0) slot = (slot + 1) & mask;
    return slot;
  }

  #sameId(record: number, id: Uint8Array): boolean {
    const at = record * ID_BYTES;
    for (let i = 0; i < ID_BYTES; i++) if (this.#ids[at + i] !== id[i]) return false;
    return true;
  }

  #growRecords(): void {
    const capacity = this.#kinds.length * 2;
    const grow = <T extends Uint8Array | Uint32Array>(old: T, make: (n: number) => T, width = 1): T => {
      const next = make(capacity * width);
      next.set(old);
      return next;
    };
    this.#ids = grow(this.#ids, (n) => new Uint8Array(n), ID_BYTES);
    this.#kinds = grow(this.#kinds, (n) => new Uint8Array(n));
    this.#packOf = grow(this.#packOf, (n) => new Uint32Array(n));
    this.#offsets = grow(this.#offsets, (n) => new Uint32Array(n));
    this.#lengths = grow(this.#lengths, (n) => new Uint32Array(n));
    this.#rawLengths = grow(this.#rawLengths, (n) => new Uint32Array(n));
  }

  #growSlots(): void {
    this.#slots = new Uint32Array(this.#slots.length * 2);
    for (let record = 0; record < this.#count; record++) {
      this.#slots[this.#freeSlot(this.#ids.subarray(record * ID_BYTES, (record + 1) * ID_BYTES))] = record + 1;
    }
  }
}

const ID_BYTES = 32;

/** The 32 bytes of a hex id; undefined for anything else (no blob has such an id). */
function idBytes(id: string): Buffer | undefined {
  const bytes = Buffer.from(id, 'hex');
  return bytes.length === ID_BYTES && id.length === 2 * ID_BYTES ? bytes : undefined;
}

function hashOf(id: Uint8Array): number {
  return (id[0]! | (id[1]! << 8) | (id[2]! << 16) | (id[3]! << 24)) >>> 0;
}

/**
 * An index object: its packs, then fixed-size entries. Version 2 adds, after them, the base of
 * each delta blob (entry number, base id); version 3 is the same list where a delta with two
 * bases has two pairs, in its bases' order. Each is written only when needed (an index without
 * deltas is version 1, without two-base deltas version 2), so agents from before read what
 * they can and reject the rest as an index they cannot open.
 */
const MAGIC = Buffer.from('SAI1');
const MAGIC_DELTAS = Buffer.from('SAI2');
const MAGIC_TWO_BASES = Buffer.from('SAI3');
/** Bases of one delta, at most: a new chunk is compared with the parent's chunks it overlaps, two when a cut moved. */
export const MAX_BASES = 2;
const ENTRY_BYTES = 32 + 1 + 4 + 4 + 4 + 4;
const DELTA_BYTES = 4 + 32;
const KINDS: readonly BlobKind[] = ['data', 'tree'];
const indexAssociatedData = (env: string) => Buffer.from(`storage-agent/index/v1\n${env}`);

/** A sealed index object for `entries`, and its id (the sha256 of the sealed bytes). */
export function sealIndex(encryption: Buffer, env: string, entries: ReadonlyMap<string, IndexEntry>): { id: string; body: Buffer } {
  const packs = [...new Set([...entries.values()].map((e) => e.pack))];
  const packNumber = new Map(packs.map((pack, i) => [pack, i]));
  const deltas = [...entries.values()].flatMap((entry, i) => (entry.bases ?? []).map((base) => [i, base] as const));
  const twoBases = [...entries.values()].some((entry) => (entry.bases?.length ?? 0) > 1);
  const plain = Buffer.alloc(MAGIC.length + 4 + packs.length * 32 + 4 + entries.size * ENTRY_BYTES + (deltas.length > 0 ? 4 + deltas.length * DELTA_BYTES : 0));
  let at = (twoBases ? MAGIC_TWO_BASES : deltas.length > 0 ? MAGIC_DELTAS : MAGIC).copy(plain, 0);
  at = plain.writeUInt32BE(packs.length, at);
  for (const pack of packs) at += Buffer.from(pack, 'hex').copy(plain, at);
  at = plain.writeUInt32BE(entries.size, at);
  for (const [id, entry] of entries) {
    at += Buffer.from(id, 'hex').copy(plain, at);
    at = plain.writeUInt8(KINDS.indexOf(entry.kind), at);
    at = plain.writeUInt32BE(packNumber.get(entry.pack)!, at);
    at = plain.writeUInt32BE(entry.offset, at);
    at = plain.writeUInt32BE(entry.length, at);
    at = plain.writeUInt32BE(entry.rawLength, at);
  }
  if (deltas.length > 0) {
    at = plain.writeUInt32BE(deltas.length, at);
    for (const [i, base] of deltas) {
      at = plain.writeUInt32BE(i, at);
      at += Buffer.from(base, 'hex').copy(plain, at);
    }
  }
  const body = seal(encryption, [plain], indexAssociatedData(env));
  return { id: createHash('sha256').update(body).digest('hex'), body };
}

/** The entries of a sealed index object, or a reason it is not one of this repository's. */
export function openIndex(encryption: Buffer, env: string, body: Buffer): Map<string, IndexEntry> | string {
  const plain = open(encryption, body, indexAssociatedData(env));
  if (!plain) return 'it does not authenticate under the repository key';
  try {
    const magic = plain.subarray(0, 4);
    const maxBases = magic.equals(MAGIC_TWO_BASES) ? MAX_BASES : magic.equals(MAGIC_DELTAS) ? 1 : 0;
    const withDeltas = maxBases > 0;
    if (!withDeltas && !magic.equals(MAGIC)) return 'it is not an index';
    let at = 4;
    const packCount = plain.readUInt32BE(at);
    at += 4;
    const packs: string[] = [];
    for (let i = 0; i < packCount; i++, at += 32) packs.push(plain.subarray(at, at + 32).toString('hex'));
    const count = plain.readUInt32BE(at);
    at += 4;
    const entriesEnd = at + count * ENTRY_BYTES;
    const deltaCount = withDeltas ? plain.readUInt32BE(entriesEnd) : 0;
    if (plain.length !== entriesEnd + (withDeltas ? 4 + deltaCount * DELTA_BYTES : 0)) return 'its length does not match its entry count';
    const ids: string[] = [];
    const entries = new Map<string, IndexEntry>();
    for (let i = 0; i < count; i++, at += ENTRY_BYTES) {
      const kind = KINDS[plain.readUInt8(at + 32)];
      const pack = packs[plain.readUInt32BE(at + 33)];
      if (kind === undefined || pack === undefined) return `entry ${i} names an unknown kind or pack`;
      const id = plain.subarray(at, at + 32).toString('hex');
      ids.push(id);
      entries.set(id, {
        kind,
        pack,
        offset: plain.readUInt32BE(at + 37),
        length: plain.readUInt32BE(at + 41),
        rawLength: plain.readUInt32BE(at + 45),
      });
    }
    for (let i = 0, delta = entriesEnd + 4; i < deltaCount; i++, delta += DELTA_BYTES) {
      const entry = entries.get(ids[plain.readUInt32BE(delta)] ?? '');
      if (!entry || entry.kind !== 'data') return `delta ${i} names no data entry`;
      const base = plain.subarray(delta + 4, delta + DELTA_BYTES).toString('hex');
      const bases = [...(entry.bases ?? []), base];
      if (bases.length > maxBases || new Set(bases).size < bases.length) return `delta ${i} gives its entry more bases than it can have`;
      entry.bases = bases;
    }
    return entries;
  } catch (error) {
    return `it is malformed (${(error as Error).message})`;
  }
}
