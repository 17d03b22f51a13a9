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
}

/**
 * The map of blob id → place, in memory: the union of the repository's index objects. Each
 * index object lists the blobs of the packs one backup wrote, and is sealed like every blob.
 *
 * Memory: a Map entry costs ~200 bytes here (hex id string, entry object, interned pack id),
 * so 10 GiB at ~1 MiB per chunk (10 k chunks) is ~2 MiB, and 1 TiB (1 M chunks) ~200 MiB —
 * past the agent's budget; docs/repository.md says how it would scale beyond.
 */
export class BlobIndex {
  readonly #entries = new Map<string, IndexEntry>();
  readonly #packs = new Map<string, string>();

  get size(): number {
    return this.#entries.size;
  }

  get(id: string): IndexEntry | undefined {
    return this.#entries.get(id);
  }

  has(id: string): boolean {
    return this.#entries.has(id);
  }

  add(id: string, entry: IndexEntry): void {
    let pack = this.#packs.get(entry.pack);
    if (pack === undefined) this.#packs.set(entry.pack, (pack = entry.pack));
    this.#entries.set(id, { ...entry, pack });
  }

  entries(): IterableIterator<[string, IndexEntry]> {
    return this.#entries.entries();
  }

  /** The packs any entry names. */
  packs(): ReadonlySet<string> {
    return new Set(this.#packs.keys());
  }
}

const MAGIC = Buffer.from('SAI1');
const ENTRY_BYTES = 32 + 1 + 4 + 4 + 4 + 4;
const KINDS: readonly BlobKind[] = ['data', 'tree'];
const indexAssociatedData = (env: string) => Buffer.from(`storage-agent/index/v1\n${env}`);

/** A sealed index object for `entries`, and its id (the sha256 of the sealed bytes). */
export function sealIndex(encryption: Buffer, env: string, entries: ReadonlyMap<string, IndexEntry>): { id: string; body: Buffer } {
  const packs = [...new Set([...entries.values()].map((e) => e.pack))];
  const packNumber = new Map(packs.map((pack, i) => [pack, i]));
  const plain = Buffer.alloc(MAGIC.length + 4 + packs.length * 32 + 4 + entries.size * ENTRY_BYTES);
  let at = MAGIC.copy(plain, 0);
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
  const body = seal(encryption, [plain], indexAssociatedData(env));
  return { id: createHash('sha256').update(body).digest('hex'), body };
}

/** The entries of a sealed index object, or a reason it is not one of this repository's. */
export function openIndex(encryption: Buffer, env: string, body: Buffer): Map<string, IndexEntry> | string {
  const plain = open(encryption, body, indexAssociatedData(env));
  if (!plain) return 'it does not authenticate under the repository key';
  try {
    if (!plain.subarray(0, 4).equals(MAGIC)) return 'it is not an index';
    let at = 4;
    const packCount = plain.readUInt32BE(at);
    at += 4;
    const packs: string[] = [];
    for (let i = 0; i < packCount; i++, at += 32) packs.push(plain.subarray(at, at + 32).toString('hex'));
    const count = plain.readUInt32BE(at);
    at += 4;
    if (plain.length !== at + count * ENTRY_BYTES) return 'its length does not match its entry count';
    const entries = new Map<string, IndexEntry>();
    for (let i = 0; i < count; i++, at += ENTRY_BYTES) {
      const kind = KINDS[plain.readUInt8(at + 32)];
      const pack = packs[plain.readUInt32BE(at + 33)];
      if (kind === undefined || pack === undefined) return `entry ${i} names an unknown kind or pack`;
      entries.set(plain.subarray(at, at + 32).toString('hex'), {
        kind,
        pack,
        offset: plain.readUInt32BE(at + 37),
        length: plain.readUInt32BE(at + 41),
        rawLength: plain.readUInt32BE(at + 45),
      });
    }
    return entries;
  } catch (error) {
    return `it is malformed (${(error as Error).message})`;
  }
}
