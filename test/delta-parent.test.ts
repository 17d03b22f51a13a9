import { describe, expect, it } from 'vitest';
import { DeltaParent } from '../src/transport/repository/delta-parent.ts';

/** A parent of chunks `a`… of these sizes, back to back. */
function parent(...sizes: number[]): DeltaParent {
  return new DeltaParent(sizes.map((bytes, i) => ({ id: String.fromCharCode(97 + i), bytes })));
}

describe('DeltaParent: the parent chunks a new chunk is a delta against', () => {
  it('the chunk under the middle, and the neighbour that holds a 64th of the new chunk or more', () => {
    const p = parent(1000, 1000, 1000);
    expect(p.chunksUnder(1000, 1000)).toEqual(['b']); // in place
    expect(p.chunksUnder(1010, 1000)).toEqual(['b']); // 10 bytes of c: not worth reading c
    expect(p.chunksUnder(1100, 1000)).toEqual(['b', 'c']); // a cut moved: 100 bytes of c
    expect(p.chunksUnder(700, 1000)).toEqual(['b', 'a']); // 300 of a, the middle in b
    expect(p.chunksUnder(500, 1800)).toEqual(['b', 'a']); // over all three: the neighbour holding more (500 of a, 300 of c)
    expect(p.chunksUnder(2900, 1000)).toEqual(['c']); // past the end: the last
    expect(parent().chunksUnder(0, 100)).toEqual([]);
  });

  it('matches by where the parent had the chunks, once an unchanged chunk shows the layout moved', () => {
    const p = parent(1000, 1000, 1000);
    p.unchanged('a', 500); // 500 bytes were inserted before it
    expect(p.chunksUnder(1500, 1000)).toEqual(['b']);
    expect(p.chunksUnder(1600, 1000)).toEqual(['b', 'c']);
  });
});
