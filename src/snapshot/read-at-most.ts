import type { Readable } from 'node:stream';

/** A small object's bytes, or undefined (and the stream destroyed) once it passes `limit`: nothing read back from storage is buffered unbounded. */
export async function readAtMost(body: Readable, limit: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    if (bytes > limit) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}
