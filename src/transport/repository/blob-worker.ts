/**
 * A repository worker: the CPU work on each blob, off the main thread — its keyed id (HMAC),
 * compression (one zstd frame) and sealing (AES-256-GCM), and the reverse on restore. All of
 * it synchronous: the whole blob is in hand, so zstd's one-pass path applies.
 */
import { parentPort } from 'node:worker_threads';
import zlib from 'node:zlib';
import type { WorkerReply } from '../../worker-pool.ts';
import { blobIdOf, open, seal, type RepositoryKeys } from './blob-crypto.ts';
import { blobAssociatedData, type BlobRequest, type BlobResult } from './blob-pool.ts';

if (parentPort === null) throw new Error('blob-worker.ts runs as a worker thread started by BlobPool');
const port = parentPort;

/** The first plaintext byte of a sealed blob says how the rest is stored. */
const STORED_RAW = 0;
const STORED_ZSTD = 1;

function keysOf(request: { keys: Record<keyof RepositoryKeys, Uint8Array> }): RepositoryKeys {
  const { encryption, blobId, chunker } = request.keys;
  return { encryption: Buffer.from(encryption), blobId: Buffer.from(blobId), chunker: Buffer.from(chunker) };
}

function handle(request: BlobRequest): { result: BlobResult; transfer: ArrayBuffer[] } {
  const keys = keysOf(request);
  switch (request.op) {
    case 'identify': {
      const data = new Uint8Array(request.memory, 0, request.length);
      return { result: { op: 'identify', id: blobIdOf(keys, data).toString('hex'), memory: request.memory }, transfer: [request.memory] };
    }
    case 'seal': {
      const data = new Uint8Array(request.memory, 0, request.length);
      const compressed = zlib.zstdCompressSync(data, { params: { [zlib.constants.ZSTD_c_compressionLevel]: request.level } });
      // Incompressible data (media, archives) is stored as it is: no expansion, no decode cost.
      const packed = compressed.length < data.length ? Buffer.concat([Uint8Array.of(STORED_ZSTD), compressed]) : Buffer.concat([Uint8Array.of(STORED_RAW), data]);
      const sealed = seal(keys.encryption, packed, blobAssociatedData(request.kind, request.id));
      const memory = (sealed.buffer as ArrayBuffer).slice(sealed.byteOffset, sealed.byteOffset + sealed.length);
      return { result: { op: 'seal', sealed: memory, memory: request.memory }, transfer: [memory, request.memory] };
    }
    case 'open': {
      const sealed = new Uint8Array(request.memory, 0, request.length);
      const packed = open(keys.encryption, sealed, blobAssociatedData(request.kind, request.id));
      if (!packed || packed.length === 0) return { result: { op: 'open', failure: 'does not authenticate (changed, truncated, or sealed for another blob)' }, transfer: [] };
      let plain: Buffer;
      if (packed[0] === STORED_RAW) plain = packed.subarray(1);
      else if (packed[0] === STORED_ZSTD) {
        try {
          // Never more than the index says: an authenticated blob is the agent's own, but the
          // bound costs nothing and keeps a bug from filling memory.
          plain = zlib.zstdDecompressSync(packed.subarray(1), { maxOutputLength: Math.max(1, request.rawLength) });
        } catch (error) {
          return { result: { op: 'open', failure: `does not decompress (${(error as Error).message})` }, transfer: [] };
        }
      } else return { result: { op: 'open', failure: `has an unknown storage byte ${packed[0]}` }, transfer: [] };
      if (plain.length !== request.rawLength) return { result: { op: 'open', failure: `holds ${plain.length} bytes, not the ${request.rawLength} indexed` }, transfer: [] };
      // The id is the keyed hash of the content: recomputing it proves the bytes are the blob's.
      if (blobIdOf(keys, plain).toString('hex') !== request.id) return { result: { op: 'open', failure: 'holds content of another id' }, transfer: [] };
      const memory = (plain.buffer as ArrayBuffer).slice(plain.byteOffset, plain.byteOffset + plain.length);
      return { result: { op: 'open', plain: memory }, transfer: [memory] };
    }
  }
}

port.on('message', (request: BlobRequest & { seq: number }) => {
  let reply: WorkerReply<BlobResult>;
  let transfer: ArrayBuffer[] = [];
  try {
    const done = handle(request);
    reply = { seq: request.seq, result: done.result };
    transfer = done.transfer;
  } catch (error) {
    reply = { seq: request.seq, error: (error as Error).message };
  }
  port.postMessage(reply, transfer);
});
