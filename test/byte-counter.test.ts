import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { ByteCounter } from '../src/snapshot/counter.ts';

describe('ByteCounter', () => {
  it('counts every byte, tells the total at most once per MiB, and the exact total at the end', async () => {
    const reports: number[] = [];
    const counter = new ByteCounter((total) => reports.push(total));
    const reads = Array.from({ length: 50 }, () => Buffer.alloc(65_536 + 1));
    await pipeline(Readable.from(reads), counter, new Writable({ write: (_chunk, _encoding, done) => done() }));
    const total = 50 * (65_536 + 1);
    expect(counter.bytes).toBe(total);
    expect(reports.at(-1)).toBe(total);
    // 3.1 MiB in 64 KiB reads: three reports on the way and the final one, not one per read.
    expect(reports).toHaveLength(4);
    for (let i = 1; i < reports.length - 1; i++) expect(reports[i]! - reports[i - 1]!).toBeGreaterThanOrEqual(1 << 20);
  });

  it('reports nothing for an empty stream, and a total below a MiB once', async () => {
    const none: number[] = [];
    await pipeline(Readable.from([]), new ByteCounter((total) => none.push(total)), new Writable({ write: (_c, _e, done) => done() }));
    expect(none).toEqual([]);
    const small: number[] = [];
    await pipeline(Readable.from([Buffer.alloc(10), Buffer.alloc(20)]), new ByteCounter((total) => small.push(total)), new Writable({ write: (_c, _e, done) => done() }));
    expect(small).toEqual([30]);
  });
});
