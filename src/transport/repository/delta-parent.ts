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
  /** Where the parent ends (its length). */
  readonly #end: number;
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
    this.#end = at;
  }

  /**
   * The parent's chunks the new chunk at `offset` (of `bytes`) overlaps, drift corrected: the one
   * under its middle, then the neighbour that holds more of the rest, if it holds a 64th of the
   * chunk or more. A neighbour is there when a cut moved: an edit in the few bytes a cut's hash
   * looks at moves it, and the chunks up to where cuts fall as before each straddle two of the
   * parent's (60 KB of a neighbour left out cost a 1 MiB chunk's delta 20 KB instead of 1 KB).
   * Its first or last chunk beyond the parent's ends; none when it had none.
   */
  chunksUnder(offset: number, bytes: number): string[] {
    if (this.#ids.length === 0) return [];
    const start = offset - this.#drift;
    const end = start + bytes;
    const middle = this.#indexAt(start + bytes / 2);
    const overlap = (i: number) => Math.max(0, Math.min(end, this.#endOf(i)) - Math.max(start, this.#starts[i]!));
    const before = middle - 1;
    const after = middle + 1 < this.#ids.length ? middle + 1 : -1;
    const neighbour = [before, after].filter((i) => i >= 0 && overlap(i) * 64 >= bytes).sort((a, b) => overlap(b) - overlap(a))[0];
    return neighbour === undefined ? [this.#ids[middle]!] : [this.#ids[middle]!, this.#ids[neighbour]!];
  }

  /** The last chunk starting at or before `at` (the first, before the parent's start). */
  #indexAt(at: number): number {
    let low = 0;
    let high = this.#ids.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.#starts[middle]! <= at) low = middle;
      else high = middle - 1;
    }
    return low;
  }

  #endOf(i: number): number {
    return i + 1 < this.#starts.length ? this.#starts[i + 1]! : this.#end;
  }

  /** A chunk of the new version found unchanged at `offset`: where it was in the parent says how far the layout moved. */
  unchanged(id: string, offset: number): void {
    const start = this.#startOf.get(id);
    if (start !== undefined) this.#drift = offset - start;
  }
}
