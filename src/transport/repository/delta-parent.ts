import type { TreeEntry } from './stream-tree.ts';

/**
 * The previous version of a stream being stored (a database's last dump), laid out by stream
 * offset: which of its chunks sits where a new chunk sits, so that the new chunk can be stored
 * as a delta against it (docs/repository.md, "Deltas").
 *
 * A dump dumped again mostly keeps its layout: rows updated in place change a few bytes here
 * and there, and content-defined boundaries fall where they fell. Where rows were added or
 * removed, everything after moves by as many bytes; each chunk found unchanged says by how much
 * (the drift), so the chunks after it are matched with the parent's at their old place.
 */
export class DeltaParent {
  readonly #starts: Float64Array;
  readonly #ids: readonly string[];
  readonly #startOf = new Map<string, number>();
  #drift = 0;

  constructor(chunks: readonly TreeEntry[]) {
    this.#ids = chunks.map((c) => c.id);
    this.#starts = new Float64Array(chunks.length);
    let at = 0;
    chunks.forEach((chunk, i) => {
      this.#starts[i] = at;
      if (!this.#startOf.has(chunk.id)) this.#startOf.set(chunk.id, at);
      at += chunk.bytes;
    });
  }

  /** The parent's chunk under the middle of the new chunk at `offset` (of `bytes`): its first or last one beyond its ends, undefined when it had none. */
  chunkAt(offset: number, bytes: number): string | undefined {
    const target = offset + bytes / 2 - this.#drift;
    if (this.#ids.length === 0 || target < 0) return this.#ids[0];
    // The last chunk starting at or before the target.
    let low = 0;
    let high = this.#ids.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.#starts[middle]! <= target) low = middle;
      else high = middle - 1;
    }
    return this.#ids[low];
  }

  /** A chunk of the new version found unchanged at `offset`: where it was in the parent says how far the layout moved. */
  unchanged(id: string, offset: number): void {
    const start = this.#startOf.get(id);
    if (start !== undefined) this.#drift = offset - start;
  }
}
