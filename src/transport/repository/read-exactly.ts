import type { Readable } from 'node:stream';

/**
 * The bytes of a ranged read, in one buffer that owns its memory (so that it moves to a worker
 * without a copy; `stream/consumers` copies every byte twice, into a Blob and out of it), and
 * how many bytes the stream gave: fewer or more than `length` means the store answered wrong.
 */
export async function readExactly(stream: Readable, length: number): Promise<{ bytes: Buffer; received: number }> {
  const bytes = Buffer.allocUnsafeSlow(length);
  let received = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    if (received < length) chunk.copy(bytes, received);
    received += chunk.length;
    if (received > length) {
      stream.destroy();
      break;
    }
  }
  return { bytes, received };
}
