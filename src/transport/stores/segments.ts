import { once } from 'node:events';
import { PassThrough, Readable } from 'node:stream';
import type { ObjectStore } from './object-store.ts';

export interface StoredSegment {
  key: string;
  bytes: number;
}

/** The key of segment `index` of an artifact: the first keeps the base key. */
function segmentKey(baseKey: string, index: number): string {
  return index === 0 ? baseKey : `${baseKey}.${String(index).padStart(4, '0')}`;
}

/**
 * Writes a stream of unknown length as one object, or as several when it outgrows the
 * store's largest object (S3: part size × 10,000 parts). One segment is uploaded at a time,
 * so memory stays that of one upload. The caller deletes what was written if this rejects.
 */
export async function putSegmented(
  store: ObjectStore,
  baseKey: string,
  source: AsyncIterable<Buffer>,
  signal?: AbortSignal,
): Promise<StoredSegment[]> {
  const limit = store.maxObjectBytes;
  const written: StoredSegment[] = [];
  let current: { body: PassThrough; put: Promise<void>; key: string; bytes: number } | undefined;

  const openSegment = () => {
    const key = segmentKey(baseKey, written.length);
    const body = new PassThrough({ highWaterMark: 1 << 20 });
    const put = store.put(key, body, { signal });
    put.catch(() => {}); // awaited below; a failure also ends the writing loop through `race`
    current = { body, put, key, bytes: 0 };
    return current;
  };
  const closeSegment = async () => {
    const segment = current!;
    current = undefined;
    segment.body.end();
    await segment.put;
    written.push({ key: segment.key, bytes: segment.bytes });
  };

  try {
    for await (const chunk of source) {
      let offset = 0;
      while (offset < chunk.length) {
        const segment = current ?? openSegment();
        const piece = chunk.subarray(offset, offset + (limit - segment.bytes));
        offset += piece.length;
        segment.bytes += piece.length;
        // Wait for the store to take the bytes, or for its failure. A store that fails also
        // destroys the body (an AbortError from its reader): the put's own error is the one
        // that explains what happened, so a body error defers to it.
        if (!segment.body.write(piece)) await Promise.race([once(segment.body, 'drain').catch(() => segment.put), segment.put]);
        if (segment.bytes === limit) await closeSegment();
      }
    }
    if (current || written.length === 0) {
      current ??= openSegment();
      await closeSegment();
    }
  } catch (error) {
    // Fail the segment in flight so its upload is aborted, and wait until it is.
    if (current) {
      current.body.destroy(error as Error);
      await current.put.catch(() => {});
    }
    throw error;
  }
  return written;
}

/** The segments of an artifact read back as one stream, in order. */
export function readSegmented(store: ObjectStore, keys: readonly string[], signal?: AbortSignal): Readable {
  async function* concat(): AsyncGenerator<Buffer> {
    for (const key of keys) {
      const stream = await store.get(key, { signal });
      try {
        for await (const chunk of stream) yield chunk as Buffer;
      } finally {
        stream.destroy();
      }
    }
  }
  return Readable.from(concat(), { objectMode: false, highWaterMark: 1 << 20 });
}
