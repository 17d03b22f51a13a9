/**
 * Handing the memory of big chunks back as soon as their last consumer is done with them,
 * instead of leaving it to the garbage collector. Multi-MiB buffers are not free in Node: each
 * new one counts as external memory (every ~64 MiB of it forces a full GC), and one that waits
 * for a GC keeps its malloc arena grown. Recycling the pack worker's chunks and freeing the
 * compressed frames once written took a 1 GiB backup from ~40 full GCs to a few and its peak
 * RSS down by ~60 MiB (docs/benchmarks.md, "Where the time goes").
 *
 * A producer offers each chunk it emits; the consumer that holds the last reference (the
 * compressor once a block is compressed, a store once a frame is written) recycles it. A chunk
 * nobody recycles is simply garbage collected: a consumer that never calls `recycle` is
 * correct, only slower.
 */

export type GiveBack = (memory: ArrayBuffer) => void;

interface Offer {
  giveBack: GiveBack;
  byteOffset: number;
  byteLength: number;
}

const offers = new WeakMap<ArrayBufferLike, Offer>();

/** Marks `chunk` as recyclable: `giveBack` receives its memory once a consumer is done with it. */
export function offerForRecycling(chunk: Buffer, giveBack: GiveBack): Buffer {
  offers.set(chunk.buffer, { giveBack, byteOffset: chunk.byteOffset, byteLength: chunk.byteLength });
  return chunk;
}

/**
 * Frees a buffer's memory at once (detaching it) when the buffer owns all of it — never a view
 * of Node's shared pool or of a bigger buffer — rather than at the next GC.
 */
export function freeOwned(buffer: Uint8Array): void {
  const memory = buffer.buffer;
  // An empty buffer may be Node's one shared empty ArrayBuffer: never detach that.
  if (memory instanceof ArrayBuffer && !memory.detached && memory.byteLength > 0 && buffer.byteOffset === 0 && buffer.byteLength === memory.byteLength) memory.transfer(0);
}

/**
 * Frees all the memory behind `view` at once, beyond the view itself, when it is too big to be
 * Node's shared pool of small buffers. Only for memory nothing else uses, whose view is shorter
 * than it: a zlib output (one buffer per call, with room to spare) or a cipher's.
 */
export function freeBehind(view: Uint8Array): void {
  const memory = view.buffer;
  if (memory instanceof ArrayBuffer && !memory.detached && memory.byteLength > Buffer.poolSize) memory.transfer(0);
}

/** Frees the memory of a recyclable chunk at once (detaching it), rather than at the next GC. */
export const freeNow: GiveBack = (memory) => void memory.transfer(0);

/**
 * Called by a consumer that holds the last reference to `chunk` and will not read it again:
 * returns its memory to its producer. Only the very view that was offered qualifies: a slice
 * of it (a chunk split between two objects, say) may have company, and is left alone. Any
 * other view of the same memory becomes unusable, hence "last reference".
 */
export function recycle(chunk: Buffer): void {
  claimRecyclable(chunk)?.(chunk.buffer as ArrayBuffer);
}

/**
 * For a consumer that holds the last reference to `chunk` and will hand its memory back later
 * (after sending it to another thread, say): how to give it back, or undefined when the chunk
 * is not the view that was offered. The chunk is no longer registered afterwards.
 */
export function claimRecyclable(chunk: Buffer): GiveBack | undefined {
  const offer = offers.get(chunk.buffer);
  if (offer === undefined || offer.byteOffset !== chunk.byteOffset || offer.byteLength !== chunk.byteLength) return undefined;
  offers.delete(chunk.buffer);
  return offer.giveBack;
}

/**
 * The memory of `chunk` to transfer to another thread: its own ArrayBuffer when the chunk
 * spans all of it, otherwise a copy, since transferring shared memory (Node's pool of small
 * buffers, a slice of a bigger buffer) would take it from everyone else who uses it.
 */
export function transferableMemory(chunk: Buffer): ArrayBuffer {
  const memory = chunk.buffer;
  if (memory instanceof ArrayBuffer && chunk.byteOffset === 0 && chunk.byteLength === memory.byteLength) return memory;
  return new Uint8Array(chunk).buffer;
}
