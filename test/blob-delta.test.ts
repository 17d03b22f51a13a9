import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { deriveRepositoryKeys } from '../src/transport/repository/blob-crypto.ts';
import { BlobPool } from '../src/transport/repository/blob-pool.ts';

/** Text rows with random values, like a dump: compressible, but a chunk only matches itself. */
function rows(bytes: number): Buffer {
  const parts: string[] = [];
  let length = 0;
  for (let i = 0; length < bytes; i++) {
    const row = `(${i},'${randomBytes(8).toString('hex')}',${i % 1000}),`;
    parts.push(row);
    length += row.length;
  }
  return Buffer.from(parts.join('')).subarray(0, bytes);
}

/** One byte in 10,000 changed, spread over the chunk. */
function scattered(chunk: Buffer): Buffer {
  const edited = Buffer.from(chunk);
  for (let at = 5_000; at < edited.length; at += 10_000) edited[at] = 0x21;
  return edited;
}

describe('delta blobs (blob-worker.ts)', () => {
  const pool = new BlobPool(1);
  const keys = deriveRepositoryKeys(randomBytes(64));

  it('stores a chunk of any size up to 8 MiB as a small delta of its base, and opens it only with that base', async () => {
    for (const size of [256 << 10, 1 << 20, 3 << 20, 8 << 20]) {
      const base = rows(size);
      const chunk = scattered(base);
      const { id } = await pool.identify(keys, Buffer.from(chunk));
      const { sealed, delta } = await pool.sealDelta(keys, id, Buffer.from(chunk), Buffer.from(base), 1);
      expect(delta).toBe(true);
      // zstd indexes only the end of a big dictionary unless told its size: 8 MiB once gave ~full size.
      expect(sealed.length).toBeLessThan(size / 200);
      const blob = [{ id, rawLength: chunk.length, offset: 0, length: sealed.length, base: { offset: 0, length: base.length } }];
      const opened = await pool.open(keys, 'data', Buffer.from(sealed), blob, Buffer.from(base));
      expect('plains' in opened && Buffer.concat(opened.plains).equals(chunk)).toBe(true);
      expect(await pool.open(keys, 'data', Buffer.from(sealed), [{ ...blob[0]!, base: undefined }])).toEqual({ id, failure: 'is a delta, yet its index names no base' });
      const wrong = await pool.open(keys, 'data', Buffer.from(sealed), blob, rows(size));
      expect(wrong).toMatchObject({ id, failure: expect.stringMatching(/does not decompress|holds content of another id|holds \d+ bytes/) });
    }
  });

  it('stores a chunk that changed too much whole: it opens without a base', async () => {
    const base = rows(1 << 20);
    const chunk = rows(1 << 20);
    const { id } = await pool.identify(keys, Buffer.from(chunk));
    const { sealed, delta } = await pool.sealDelta(keys, id, Buffer.from(chunk), Buffer.from(base), 1);
    expect(delta).toBe(false);
    const opened = await pool.open(keys, 'data', sealed, [{ id, rawLength: chunk.length, offset: 0, length: sealed.length }]);
    expect('plains' in opened && Buffer.concat(opened.plains).equals(chunk)).toBe(true);
  });
});
