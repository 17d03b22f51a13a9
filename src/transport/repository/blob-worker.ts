/**
 * A repository worker: the CPU work on each blob, off the main thread — its keyed id (HMAC),
 * compression (one zstd frame) and sealing (AES-256-GCM), and the reverse on restore. All of
 * it synchronous: the whole blob is in hand, so zstd's one-pass path applies.
 */
import { createSecretKey, type KeyObject } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import zlib from 'node:zlib';
import { zstdBound } from '../../zstd-bound.ts';
import { freeBehind, freeOwned } from '../../chunk-recycling.ts';
import type { WorkerReply } from '../../worker-pool.ts';
import { blobIdOf, open, seal } from './blob-crypto.ts';
import { blobAssociatedData, type BlobKind, type BlobRequest, type BlobResult, type OpenedPlain, type SealedBlob, type WireKeys } from './blob-pool.ts';

if (parentPort === null) throw new Error('blob-worker.ts runs as a worker thread started by BlobPool');
const port = parentPort;

/** The first plaintext byte of a sealed blob says how the rest is stored. */
const STORED_RAW = 0;
const STORED_ZSTD = 1;
/** One zstd frame made with other blobs' contents (its one or two bases, named by the index) as dictionary. */
const STORED_DELTA = 2;

/**
 * A delta is kept only when it is at most this share of its chunk: past it, the chunk changed
 * too much for the base to be worth reading at restore, and it is stored whole (and becomes a
 * base itself). Level 3: at level 1, zstd found none of a 1 MiB dictionary's matches (a chunk
 * with 100 scattered edits: 107 KB at level 1, 471 bytes at level 3, ~2.3 ms either way).
 */
const DELTA_SHARE = 1 / 4;
const DELTA_LEVEL = 3;

interface WorkerKeys {
  encryption: KeyObject;
  blobId: KeyObject;
}

/** KeyObjects made once per repository: making one per blob cost ~10 % of a worker's time. */
const keyObjects = new Map<string, WorkerKeys>();

function keysOf(request: { keys: WireKeys }): WorkerKeys {
  const { encryption, blobId } = request.keys;
  const cacheKey = Buffer.concat([encryption, blobId]).toString('base64');
  let keys = keyObjects.get(cacheKey);
  if (!keys) {
    if (keyObjects.size >= 64) keyObjects.clear(); // a daemon's environments, bounded
    keys = { encryption: createSecretKey(encryption), blobId: createSecretKey(blobId) };
    keyObjects.set(cacheKey, keys);
  }
  return keys;
}

function handle(request: BlobRequest): { result: BlobResult; transfer: ArrayBuffer[] } {
  const keys = keysOf(request);
  switch (request.op) {
    case 'identify': {
      const data = new Uint8Array(request.memory, 0, request.length);
      return { result: { op: 'identify', id: blobIdOf(keys, data).toString('hex'), memory: request.memory }, transfer: [request.memory] };
    }
    case 'seal': {
      const memory = sealBlob(keys, request.kind, request.id, new Uint8Array(request.memory, 0, request.length), request.level);
      return { result: { op: 'seal', sealed: memory, memory: request.memory }, transfer: [memory, request.memory] };
    }
    case 'seal-delta': {
      const data = new Uint8Array(request.memory, 0, request.length);
      const { sealed, delta } = sealDelta(keys, request.id, data, new Uint8Array(request.base, 0, request.baseLength), request.level);
      request.memory.transfer(0); // the chunk and its bases, read: freed now rather than at a GC
      request.base.transfer(0);
      return { result: { op: 'seal-delta', sealed, delta }, transfer: [sealed] };
    }
    case 'identify-seal': {
      // Several small blobs back to back in one message; sealed back to back in one reply.
      const ids: string[] = [];
      const sealed: Buffer[] = [];
      let at = 0;
      for (const length of request.lengths) {
        const data = new Uint8Array(request.memory, at, length);
        at += length;
        const id = blobIdOf(keys, data).toString('hex');
        ids.push(id);
        sealed.push(Buffer.from(sealBlob(keys, request.kind, id, data, request.level)));
      }
      const lengths = sealed.map((b) => b.length);
      const all = Buffer.allocUnsafeSlow(lengths.reduce((sum, length) => sum + length, 0));
      let offset = 0;
      for (const blob of sealed) {
        offset += blob.copy(all, offset);
        freeOwned(blob); // copied: freed now, not at this thread's next GC (its heap is small)
      }
      request.memory.transfer(0); // a copy made for this message: nobody reads it again
      const memory = all.buffer as ArrayBuffer;
      return { result: { op: 'identify-seal', ids, sealed: memory, lengths }, transfer: [memory] };
    }
    case 'open': {
      const opened = openRead(keys, request.kind, request.memory, request.blobs, request.bases);
      if ('failure' in opened) return { result: { op: 'open', failure: opened.failure, id: opened.id }, transfer: [] };
      request.memory.transfer(0); // the sealed bytes (and the bases), read
      request.bases?.transfer(0);
      return { result: { op: 'open', plains: opened.plains }, transfer: [...new Set(opened.plains.map((p) => p.memory))] };
    }
  }
}

/**
 * The blobs of one ranged read, opened one after the other, each in memory that can move to the
 * caller; or which blob is not what it claims and why. One zstd call per blob: Node's zstd
 * decompressor stops at the end of the first frame, so runs of frames cannot share a call.
 *
 * A big blob's content moves in the memory zstd (or the cipher) wrote it to: copying every
 * blob into one reply cost ~1.6 CPU-s per GiB restored, mostly faulting in the fresh pages.
 * Small ones, which may sit in Node's shared pool of small buffers, are copied together.
 */
function openRead(keys: WorkerKeys, kind: BlobKind, memory: ArrayBuffer, blobs: readonly SealedBlob[], bases: ArrayBuffer | undefined): { plains: OpenedPlain[] } | { failure: string; id: string } {
  const opened: Buffer[] = [];
  for (const blob of blobs) {
    const base = blob.base && bases ? new Uint8Array(bases, blob.base.offset, blob.base.length) : undefined;
    const plain = openBlob(keys, kind, blob.id, blob.rawLength, new Uint8Array(memory, blob.offset, blob.length), base);
    if (typeof plain === 'string') return { failure: plain, id: blob.id };
    opened.push(plain);
  }
  const ownsMemory = (plain: Buffer) => plain.buffer instanceof ArrayBuffer && plain.buffer.byteLength > Buffer.poolSize && plain.buffer.byteLength - plain.length <= 1;
  const smallBytes = opened.reduce((sum, p) => sum + (ownsMemory(p) ? 0 : p.length), 0);
  // Never Node's one shared empty ArrayBuffer, which the transfer would detach.
  const small = Buffer.from(smallBytes > 0 ? Buffer.allocUnsafeSlow(smallBytes).buffer : new ArrayBuffer(0));
  let at = 0;
  return {
    plains: opened.map((plain) => {
      if (ownsMemory(plain)) return { memory: plain.buffer as ArrayBuffer, offset: plain.byteOffset, length: plain.length };
      const place = { memory: small.buffer as ArrayBuffer, offset: at, length: plain.length };
      at += plain.copy(small, at);
      freeBehind(plain); // copied: freed now (when not the shared pool), not at this thread's next GC
      return place;
    }),
  };
}

/** A blob's content, or why the sealed bytes are not that blob. */
function openBlob(keys: WorkerKeys, kind: BlobKind, id: string, rawLength: number, sealed: Uint8Array, base: Uint8Array | undefined): Buffer | string {
  const stored = open(keys.encryption, sealed, blobAssociatedData(kind, id));
  if (!stored || stored.length === 0) return 'does not authenticate (changed, truncated, or sealed for another blob)';
  if (stored[0] === STORED_DELTA && !base) return 'is a delta, yet its index names no base';
  let plain: Buffer;
  if (stored[0] === STORED_RAW) plain = stored.subarray(1);
  else if (stored[0] === STORED_ZSTD || stored[0] === STORED_DELTA) {
    try {
      // Never more than the index says: an authenticated blob is the agent's own, but the
      // bound costs nothing and keeps a bug from filling memory. One output buffer of that
      // length and a byte (zlib's default 16 KiB ones are concatenated at the end, a copy of
      // every byte; one of exactly the length makes zlib allocate a second to look for more).
      const size = Math.max(1, rawLength);
      // A wrong base (a forged index) decodes to garbage or fails: the id check below catches both.
      plain = zlib.zstdDecompressSync(stored.subarray(1), { maxOutputLength: size, chunkSize: Math.max(64, size + 1), ...(stored[0] === STORED_DELTA ? { dictionary: base } : {}) });
    } catch (error) {
      return `does not decompress (${(error as Error).message})`;
    } finally {
      freeOwned(stored);
    }
  } else return `has an unknown storage byte ${stored[0]}`;
  if (plain.length !== rawLength) return `holds ${plain.length} bytes, not the ${rawLength} indexed`;
  // The id is the keyed hash of the content: recomputing it proves the bytes are the blob's.
  if (blobIdOf(keys, plain).toString('hex') !== id) return 'holds content of another id';
  return plain;
}

/** The sealed delta of `data` against `base`, or the sealed whole chunk when the delta saves too little. */
function sealDelta(keys: WorkerKeys, id: string, data: Uint8Array, base: Uint8Array, level: number): { sealed: ArrayBuffer; delta: boolean } {
  const compressed = zlib.zstdCompressSync(data, {
    dictionary: base,
    chunkSize: Math.max(zstdBound(data.length), 64 << 10),
    maxOutputLength: Math.max(zstdBound(data.length), 64 << 10),
    params: {
      [zlib.constants.ZSTD_c_compressionLevel]: Math.max(level, DELTA_LEVEL),
      // zstd indexes only the last 2^(hashLog+3) bytes of a dictionary (1 MiB at level 3), and
      // matches only within its window: both sized to the base, or a 1.9 MB chunk's delta was
      // 218 KB instead of 1.3 KB (a 1 % row update, measured by hand).
      [zlib.constants.ZSTD_c_hashLog]: Math.max(17, Math.ceil(Math.log2(base.length + 1)) - 3),
      [zlib.constants.ZSTD_c_windowLog]: Math.min(27, Math.max(10, Math.ceil(Math.log2(base.length + data.length + 1)))),
    },
  });
  if (compressed.length > data.length * DELTA_SHARE) {
    freeBehind(compressed);
    return { sealed: sealBlob(keys, 'data', id, data, level), delta: false };
  }
  const sealed = seal(keys.encryption, [Uint8Array.of(STORED_DELTA), compressed], blobAssociatedData('data', id));
  freeBehind(compressed);
  return { sealed: sealed.buffer as ArrayBuffer, delta: true };
}

/** The sealed blob, in memory of its own (transferable). */
function sealBlob(keys: WorkerKeys, kind: BlobKind, id: string, data: Uint8Array, level: number): ArrayBuffer {
  // One output buffer of zstd's bound, as compress-worker.ts: no growing and concatenating.
  const compressed = zlib.zstdCompressSync(data, { chunkSize: Math.max(zstdBound(data.length), 64 << 10), params: { [zlib.constants.ZSTD_c_compressionLevel]: level } });
  // Incompressible data (media, archives) is stored as it is: no expansion, no decode cost.
  const stored = compressed.length < data.length ? [Uint8Array.of(STORED_ZSTD), compressed] : [Uint8Array.of(STORED_RAW), data];
  const sealed = seal(keys.encryption, stored, blobAssociatedData(kind, id));
  // zlib's one output buffer holds only this frame, whose view is shorter than it: freed now,
  // not at this thread's next GC (~60 MiB per worker waited).
  freeBehind(compressed);
  return sealed.buffer as ArrayBuffer;
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
