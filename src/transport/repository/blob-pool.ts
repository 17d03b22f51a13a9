import { availableParallelism } from 'node:os';
import { transferableMemory as ownMemory } from '../../chunk-recycling.ts';
import { siblingModule } from '../../sibling-module.ts';
import { WorkerPool } from '../../worker-pool.ts';
import type { RepositoryKeys } from './blob-crypto.ts';

/** data: a chunk of an element's content; tree: a list of chunks (or of lists). */
export type BlobKind = 'data' | 'tree';
const KIND_BYTE: Record<BlobKind, number> = { data: 1, tree: 2 };

/** What a sealed blob is bound to: its kind and id, so it opens nowhere else. */
export function blobAssociatedData(kind: BlobKind, id: string): Buffer {
  return Buffer.concat([Buffer.from('storage-agent/blob/v1\n'), Uint8Array.of(KIND_BYTE[kind]), Buffer.from(id, 'hex')]);
}

/** The keys a worker seals and opens blobs with (the binlog's key never leaves the main thread). */
export type WireKeys = Record<'encryption' | 'blobId' | 'chunker', Uint8Array>;
export type BlobRequest =
  | { op: 'identify'; keys: WireKeys; memory: ArrayBuffer; length: number }
  | { op: 'seal'; keys: WireKeys; kind: BlobKind; id: string; level: number; memory: ArrayBuffer; length: number }
  | { op: 'seal-delta'; keys: WireKeys; id: string; level: number; memory: ArrayBuffer; length: number; base: ArrayBuffer; baseLength: number }
  | { op: 'identify-seal'; keys: WireKeys; kind: BlobKind; level: number; memory: ArrayBuffer; lengths: number[] }
  | { op: 'open'; keys: WireKeys; kind: BlobKind; memory: ArrayBuffer; blobs: SealedBlob[]; bases?: ArrayBuffer | undefined };
export type BlobResult =
  | { op: 'identify'; id: string; memory: ArrayBuffer }
  | { op: 'seal'; sealed: ArrayBuffer; memory: ArrayBuffer }
  | { op: 'seal-delta'; sealed: ArrayBuffer; delta: boolean }
  | { op: 'identify-seal'; ids: string[]; sealed: ArrayBuffer; lengths: number[] }
  | { op: 'open'; plains: OpenedPlain[]; failure?: undefined }
  | { op: 'open'; failure: string; id: string; plains?: undefined };

/** Where an opened blob's content is: `length` bytes at `offset` of `memory` (memory may hold several). */
export interface OpenedPlain {
  memory: ArrayBuffer;
  offset: number;
  length: number;
}

/** Where a sealed blob is in the bytes of a read, and what it must open to. */
export interface SealedBlob {
  id: string;
  rawLength: number;
  offset: number;
  length: number;
  /** A delta blob: where its dictionary (its bases' contents, back to back) is in the read's `bases` (blob-worker.ts). */
  base?: { offset: number; length: number } | undefined;
}

const WORKER_URL = siblingModule(import.meta.url, 'blob-worker');

/** Workers per process on a big host: a node's other cores belong to the services it hosts. */
const MAX_WORKERS = 4;

/**
 * The repository's CPU work in worker threads. Each call takes its buffer over (transferred,
 * or copied first when it is a view of shared memory) and hands memory back in its result.
 */
export class BlobPool {
  readonly #pool: WorkerPool<BlobRequest, BlobResult>;

  constructor(size: number) {
    this.#pool = new WorkerPool(WORKER_URL, size, 'repository');
  }

  get size(): number {
    return this.#pool.size;
  }

  get usable(): boolean {
    return this.#pool.usable;
  }

  async identify(keys: RepositoryKeys, chunk: Buffer): Promise<{ id: string; chunk: Buffer }> {
    const { length } = chunk; // before the transfer empties it
    const memory = ownMemory(chunk);
    const result = await this.#pool.run({ op: 'identify', keys: wire(keys), memory, length }, [memory]);
    if (result.op !== 'identify') throw new Error('unexpected reply');
    return { id: result.id, chunk: Buffer.from(result.memory, 0, length) };
  }

  /** The sealed blob of `chunk` (whose id `identify` gave). */
  async seal(keys: RepositoryKeys, kind: BlobKind, id: string, chunk: Buffer, level: number): Promise<Buffer> {
    const { length } = chunk;
    const memory = ownMemory(chunk);
    const result = await this.#pool.run({ op: 'seal', keys: wire(keys), kind, id, level, memory, length }, [memory]);
    if (result.op !== 'seal') throw new Error('unexpected reply');
    result.memory.transfer(0); // the chunk, sealed: freed now rather than at a GC
    return Buffer.from(result.sealed);
  }

  /**
   * The sealed blob of a data chunk (whose id `identify` gave) as a delta against `base`, the
   * content of another data blob (the chunk a stream's previous version had in its place), or
   * whole when the delta saves too little: `delta` says which. Both buffers are taken over.
   */
  async sealDelta(keys: RepositoryKeys, id: string, chunk: Buffer, base: Buffer, level: number): Promise<{ sealed: Buffer; delta: boolean }> {
    const { length } = chunk;
    const baseLength = base.length;
    const memory = ownMemory(chunk);
    const baseMemory = ownMemory(base);
    const result = await this.#pool.run({ op: 'seal-delta', keys: wire(keys), id, level, memory, length, base: baseMemory, baseLength }, [memory, baseMemory]);
    if (result.op !== 'seal-delta') throw new Error('unexpected reply');
    return { sealed: Buffer.from(result.sealed), delta: result.delta };
  }

  /**
   * Ids and sealed blobs of several small chunks in one round trip: a round trip costs more
   * than sealing a few KiB the repository may already hold, and a tree of small files is tens
   * of thousands of them. The chunks are copied (back to back) into the message.
   */
  async identifyAndSeal(keys: RepositoryKeys, kind: BlobKind, chunks: readonly Buffer[], level: number): Promise<{ id: string; sealed: Buffer }[]> {
    const all = Buffer.allocUnsafeSlow(chunks.reduce((sum, c) => sum + c.length, 0));
    let offset = 0;
    for (const chunk of chunks) offset += chunk.copy(all, offset);
    const memory = all.buffer as ArrayBuffer;
    const result = await this.#pool.run({ op: 'identify-seal', keys: wire(keys), kind, level, memory, lengths: chunks.map((c) => c.length) }, [memory]);
    if (result.op !== 'identify-seal') throw new Error('unexpected reply');
    // Each sealed blob in memory of its own, so that each can be freed once stored; the
    // reply's memory is freed now.
    let at = 0;
    const reply = new Uint8Array(result.sealed);
    const blobs = result.ids.map((id, i) => {
      const sealed = Buffer.allocUnsafeSlow(result.lengths[i]!);
      sealed.set(reply.subarray(at, at + sealed.length));
      at += sealed.length;
      return { id, sealed };
    });
    result.sealed.transfer(0);
    return blobs;
  }

  /**
   * The contents of the sealed blobs in `bytes` (one ranged read: its blobs opened in one round
   * trip), in order; or `{ failure, id }` saying which blob is not what it claims and why.
   * `bases`: the contents of the delta blobs' bases, back to back (SealedBlob.base), taken over.
   */
  async open(keys: RepositoryKeys, kind: BlobKind, bytes: Buffer, blobs: SealedBlob[], bases?: Buffer): Promise<{ plains: Buffer[] } | { failure: string; id: string }> {
    const memory = ownMemory(bytes);
    const baseMemory = bases && ownMemory(bases);
    const result = await this.#pool.run({ op: 'open', keys: wire(keys), kind, memory, blobs, bases: baseMemory }, baseMemory ? [memory, baseMemory] : [memory]);
    if (result.op !== 'open') throw new Error('unexpected reply');
    if (result.failure !== undefined) return { failure: result.failure, id: result.id };
    return { plains: result.plains.map(({ memory, offset, length }) => Buffer.from(memory, offset, length)) };
  }
}

function wire(keys: RepositoryKeys): WireKeys {
  return { encryption: keys.encryption, blobId: keys.blobId, chunker: keys.chunker };
}

let shared: BlobPool | undefined;

/** The process's pool, made on first use and again after a worker failed. */
export function sharedBlobPool(): BlobPool {
  if (!shared?.usable) shared = new BlobPool(Math.min(availableParallelism(), MAX_WORKERS));
  return shared;
}
