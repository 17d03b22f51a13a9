import type { Readable } from 'node:stream';

/**
 * The bytes of a ranged read, in one buffer that owns its memory (so that it moves to a worker
 * without a copy; `stream/consumers` copies every byte twice, into a Blob and out of it), and
 * how many bytes the stream gave: fewer or more than `length` means the store answered wrong.
 */
export async function readExactly(stream: Readable, length: number): Promise<{ bytes: Buffer; received: number }> {
  let bytes: Buffer | undefined;
  let received = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    // The whole range in one read of its own (the fs store): kept, not copied. Anything after
    // it is more than the range, which the caller refuses.
    if (received === 0 && chunk.length === length && ownsItsMemory(chunk)) bytes = chunk;
    else {
      bytes ??= Buffer.allocUnsafeSlow(length);
      if (received < length) chunk.copy(bytes, received);
    }
    received += chunk.length;
    if (received > length) {
      stream.destroy();
      break;
    }
  }
  return { bytes: bytes ?? Buffer.allocUnsafeSlow(length), received };
}

function ownsItsMemory(chunk: Buffer): boolean {
  return chunk.byteOffset === 0 && chunk.buffer instanceof ArrayBuffer && chunk.byteLength === chunk.buffer.byteLength;
}
