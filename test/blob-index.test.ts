import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { BlobIndex, type IndexEntry } from '../src/transport/repository/blob-index.ts';

/** The in-memory index is typed arrays and an open-addressing table: checked here against a Map. */
describe('BlobIndex', () => {
  it('gives back every entry added, through growths of its records and table, and moves a blob added again', () => {
    const index = new BlobIndex();
    const expected = new Map<string, IndexEntry>();
    for (let i = 0; i < 50_000; i++) {
      const id = randomBytes(32).toString('hex');
      const entry: IndexEntry = { kind: i % 7 === 0 ? 'tree' : 'data', pack: `${i % 13}`.padStart(64, 'a'), offset: i * 3, length: i + 1, rawLength: 2 * i };
      index.add(id, entry);
      expected.set(id, entry);
    }
    for (const id of [...expected.keys()].slice(0, 100)) {
      const moved: IndexEntry = { ...expected.get(id)!, pack: 'b'.repeat(64), offset: 7 };
      index.add(id, moved);
      expected.set(id, moved);
    }
    expect(index.size).toBe(expected.size);
    for (const [id, entry] of expected) expect(index.get(id)).toEqual(entry);
    expect(new Map(index.entries())).toEqual(expected);
    expect(index.packs().size).toBe(14);
  });

  it('knows nothing of an id it was not given, nor of one that is not 64 hex digits', () => {
    const index = new BlobIndex();
    const id = randomBytes(32).toString('hex');
    index.add(id, { kind: 'data', pack: 'c'.repeat(64), offset: 0, length: 1, rawLength: 1 });
    expect(index.has(randomBytes(32).toString('hex'))).toBe(false);
    expect([index.has(id.slice(0, 62)), index.has(`${id}00`), index.has(`${id.slice(0, 62)}zz`)]).toEqual([false, false, false]);
    expect(index.get(id.slice(0, 10))).toBeUndefined();
    expect(() => index.add('abc', { kind: 'data', pack: 'c'.repeat(64), offset: 0, length: 1, rawLength: 1 })).toThrow(/64 hex digits/);
  });
});
