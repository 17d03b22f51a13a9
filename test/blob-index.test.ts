import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { open, seal } from '../src/transport/repository/blob-crypto.ts';
import { BlobIndex, openIndex, sealIndex, type IndexEntry } from '../src/transport/repository/blob-index.ts';

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

  it('an index object keeps each delta\'s one or two bases, in order; written as version 2 while no delta has two, and a forged one with more is refused', () => {
    const key = randomBytes(32);
    const id = () => randomBytes(32).toString('hex');
    const [a, b, c, d, e] = [id(), id(), id(), id(), id()];
    const place = { pack: 'c'.repeat(64), offset: 0, length: 10, rawLength: 20 };
    const oneBase = new Map<string, IndexEntry>([
      [a, { kind: 'data', ...place }],
      [b, { kind: 'data', ...place }],
      [c, { kind: 'data', ...place, bases: [a] }],
    ]);
    const twoBases = new Map<string, IndexEntry>([...oneBase, [d, { kind: 'data', ...place, bases: [b, a] }]]);
    const associated = Buffer.from('storage-agent/index/v1\nshop');
    const version = (body: Buffer) => open(key, body, associated)!.subarray(0, 4).toString();
    const v2 = sealIndex(key, 'shop', oneBase).body;
    expect(version(v2)).toBe('SAI2'); // what agents from before two-base deltas read
    expect(openIndex(key, 'shop', v2)).toEqual(oneBase);
    const v3 = sealIndex(key, 'shop', twoBases).body;
    expect(version(v3)).toBe('SAI3');
    expect(openIndex(key, 'shop', v3)).toEqual(twoBases);
    expect(version(sealIndex(key, 'shop', new Map([[a, { kind: 'data', ...place }]])).body)).toBe('SAI1');

    // Written by one who holds the key: a third base, a base twice, two bases in a version 2 index.
    const forged = (entries: Map<string, IndexEntry>, magic?: string) => {
      const plain = open(key, sealIndex(key, 'shop', entries).body, associated)!;
      if (magic) plain.write(magic, 0);
      return seal(key, [plain], associated);
    };
    expect(openIndex(key, 'shop', forged(new Map([...twoBases, [e, { kind: 'data', ...place, bases: [a, b, c] }]])))).toMatch(/more bases than it can have/);
    expect(openIndex(key, 'shop', forged(new Map([...oneBase, [e, { kind: 'data', ...place, bases: [a, a] }]])))).toMatch(/more bases than it can have/);
    expect(openIndex(key, 'shop', forged(twoBases, 'SAI2'))).toMatch(/more bases than it can have/);
  });
});
