import { describe, expect, it } from 'vitest';
import { claimRecyclable, freeNow, offerForRecycling, recycle, transferableMemory } from '../src/chunk-recycling.ts';

describe('chunk recycling', () => {
  it('hands the memory back once, and only for the very view that was offered', () => {
    const returned: ArrayBuffer[] = [];
    const chunk = offerForRecycling(Buffer.allocUnsafeSlow(1024), (memory) => returned.push(memory));

    recycle(chunk.subarray(0, 512)); // a slice may have company: left alone
    recycle(chunk.subarray(1));
    expect(returned).toHaveLength(0);

    recycle(chunk);
    recycle(chunk);
    expect(returned).toEqual([chunk.buffer]);
  });

  it('ignores chunks nobody offered', () => {
    const chunk = Buffer.alloc(100_000, 1);
    recycle(chunk);
    expect(claimRecyclable(chunk)).toBeUndefined();
    expect(chunk.length).toBe(100_000);
    expect(chunk[99_999]).toBe(1);
  });

  it('frees a chunk at once with freeNow: the view is detached', () => {
    const chunk = offerForRecycling(Buffer.alloc(4096, 7), freeNow);
    recycle(chunk);
    expect(chunk.buffer.byteLength).toBe(0);
    expect(chunk.length).toBe(0);
  });

  it('copies rather than transfers memory that other buffers share', () => {
    const pooled = Buffer.from('small'); // from Node's shared pool of small buffers
    const neighbour = Buffer.from('neighbour');
    const memory = transferableMemory(pooled);
    expect(memory).not.toBe(pooled.buffer);
    expect(Buffer.from(memory).toString()).toBe('small');
    structuredClone(memory, { transfer: [memory] });
    expect(neighbour.toString()).toBe('neighbour');

    const own = Buffer.allocUnsafeSlow(8192);
    expect(transferableMemory(own)).toBe(own.buffer);
    expect(transferableMemory(own.subarray(1))).not.toBe(own.buffer);
  });
});
