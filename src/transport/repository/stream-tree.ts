/**
 * A stream's chunk list, stored as tree blobs: a level-0 tree lists data chunks in order, a
 * level-n tree lists level-(n−1) trees. Each entry is a blob id and the stream bytes under it.
 * TREE_FANOUT entries per tree keeps each tree blob under 1 MiB, the size of a chunk, and two
 * levels reach 16 TiB at 1 MiB chunks.
 */
export interface TreeEntry {
  id: string;
  bytes: number;
}

export const TREE_FANOUT = 16_384;
const MAGIC = Buffer.from('SAT1');
const ENTRY_BYTES = 32 + 8;
const HEADER_BYTES = MAGIC.length + 1 + 4;

export function encodeTree(level: number, entries: readonly TreeEntry[]): Buffer {
  const tree = Buffer.alloc(HEADER_BYTES + entries.length * ENTRY_BYTES);
  MAGIC.copy(tree, 0);
  tree.writeUInt8(level, 4);
  tree.writeUInt32BE(entries.length, 5);
  entries.forEach((entry, i) => {
    const at = HEADER_BYTES + i * ENTRY_BYTES;
    Buffer.from(entry.id, 'hex').copy(tree, at);
    tree.writeBigUInt64BE(BigInt(entry.bytes), at + 32);
  });
  return tree;
}

/** The tree, or what is wrong with it (an authenticated blob is the agent's own: this is a bug check). */
export function decodeTree(tree: Buffer): { level: number; entries: TreeEntry[] } | string {
  if (tree.length < HEADER_BYTES || !tree.subarray(0, 4).equals(MAGIC)) return 'is not a tree';
  const count = tree.readUInt32BE(5);
  if (tree.length !== HEADER_BYTES + count * ENTRY_BYTES || count > TREE_FANOUT) return 'has a length that does not match its entry count';
  const entries: TreeEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = HEADER_BYTES + i * ENTRY_BYTES;
    entries.push({ id: tree.subarray(at, at + 32).toString('hex'), bytes: Number(tree.readBigUInt64BE(at + 32)) });
  }
  return { level: tree.readUInt8(4), entries };
}
