import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { freeNow, offerForRecycling } from '../src/chunk-recycling.ts';
import { UploadMemory } from '../src/transport/stores/upload-memory.ts';

const PART = 100;

/** Body chunks of `size` bytes each, offered for freeing; read through `memory.track`. */
async function trackedChunks(memory: UploadMemory, sizes: number[]): Promise<Buffer[]> {
  const chunks = sizes.map((size) => offerForRecycling(Buffer.alloc(size, 1), freeNow));
  for await (const _ of memory.track(Readable.from(chunks))); // the upload reads the whole body
  return chunks;
}

const freed = (chunks: Buffer[]) => chunks.map((chunk) => chunk.length === 0);

describe('UploadMemory', () => {
  it('releases a body chunk once the part holding its last byte has started', async () => {
    const memory = new UploadMemory(PART);
    const chunks = await trackedChunks(memory, [60, 60, 60, 60]); // ends 60, 120, 180, 240
    const part1 = Buffer.alloc(PART);
    memory.started(1, part1);
    expect(freed(chunks)).toEqual([true, false, false, false]);
    memory.started(2, Buffer.alloc(PART));
    expect(freed(chunks)).toEqual([true, true, true, false]);
    memory.completed();
    expect(freed(chunks)).toEqual([true, true, true, true]);
  });

  it('keeps a chunk sent as a part body until that part succeeded', async () => {
    const memory = new UploadMemory(PART);
    const chunks = await trackedChunks(memory, [150, 50]);
    memory.started(1, chunks[0]!.subarray(0, PART)); // lib-storage sent the big chunk as it is
    memory.started(2, Buffer.alloc(PART));
    expect(freed(chunks)).toEqual([false, false]);
    memory.succeeded(1, chunks[0]!.subarray(0, PART));
    expect(freed(chunks)).toEqual([true, true]);
  });

  it('frees a part buffer once its parts succeeded and a later part started elsewhere', async () => {
    const memory = new UploadMemory(PART);
    await trackedChunks(memory, [300]);
    const first = Buffer.alloc(PART + 40); // part 1 and the start of part 2, as lib-storage keeps them
    const second = Buffer.alloc(PART + 40);
    memory.started(1, first.subarray(0, PART));
    memory.succeeded(1, first.subarray(0, PART));
    expect(first.length).toBe(PART + 40); // lib-storage may still hold the rest of it
    memory.started(2, second.subarray(0, PART));
    expect(first.length).toBe(0);
    expect(second.length).toBe(PART + 40);
  });

  it('hands the body over cut at partSize × n + 1, as views of its chunks', async () => {
    const memory = new UploadMemory(PART);
    const chunks = [60, 60, 60, 60, 250].map((size) => Buffer.alloc(size, 1)); // ends 60, 120, 180, 240, 490
    const pieces: Buffer[] = [];
    for await (const piece of memory.track(Readable.from(chunks))) pieces.push(piece as Buffer);
    // lib-storage joins what it holds once that exceeds PART: every part buffer is PART + 1.
    expect(pieces.map((piece) => piece.length)).toEqual([60, 41, 19, 60, 21, 39, 61, 100, 89]);
    expect(pieces.every((piece) => chunks.some((chunk) => chunk.buffer === piece.buffer))).toBe(true);
  });

  it('releases nothing when the upload failed: forget only drops references', async () => {
    const memory = new UploadMemory(PART);
    const chunks = await trackedChunks(memory, [60, 60]);
    memory.forget();
    memory.started(5, Buffer.alloc(PART));
    expect(freed(chunks)).toEqual([false, false]);
  });
});
