/**
 * Content-defined chunking for the deduplicating repository (issue #13 §2): FastCDC (Xia et
 * al., USENIX ATC 2016) with normalized chunking, level 2.
 *
 * Boundaries depend only on the bytes just before them, so an insertion or deletion changes the
 * chunk it falls in (and seldom the next) while every other chunk keeps its bytes and hence its
 * id. The gear table is derived from a per-repository secret: with a public table, anyone who
 * sees chunk sizes could test whether a known file is stored, and two repositories would cut
 * identical content identically. (The sizes still leak something; encrypting and padding them
 * is the pack layer's business, not this module's.)
 */
import { hkdfSync } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { AgentError } from '../../errors.ts';

export interface ChunkerParams {
  /** No cut before this many bytes: these are not even hashed, which is most of the speed. */
  minBytes: number;
  /** A power of two: the size the cut masks aim at. */
  avgBytes: number;
  /** A chunk is cut here whatever its content (runs of zeros, a period the hash locks onto). */
  maxBytes: number;
}

/**
 * restic's bounds, kept after measuring (bench/chunker.ts, 256 MiB of random data, Node 24):
 * chunks of 1.17 MiB on average, and a 100-byte edit costs ~1.3 MiB of new chunks.
 * 256K/512K/2M halves that (~0.66 MiB) for twice the objects and index entries per byte stored;
 * 1M/2M/8M doubles it (~2.4 MiB) for half as many. At ~1 MiB a chunk, 1 TiB is ~1M chunk ids
 * and each object request carries enough bytes to amortize its latency. The speed hardly
 * depends on the choice while min is half of avg (~2 GB/s, above SHA-256's ~1.4 GB/s on the
 * same core, since min bytes of every chunk are skipped unhashed); a smaller min (256K/1M/8M)
 * is ~25% slower for the same mean size.
 */
export const DEFAULT_CHUNKER: ChunkerParams = Object.freeze({
  minBytes: 512 * 1024,
  avgBytes: 1024 * 1024,
  maxBytes: 8 * 1024 * 1024,
});

const GEAR_INFO = 'storage-agent gear table';

/**
 * 256 pseudo-random 32-bit values from the repository's secret (HKDF-SHA256, RFC 5869).
 * Deterministic: the same secret must cut the same content the same way, or nothing dedupes.
 */
export function gearTable(secret: Buffer): Uint32Array {
  if (secret.length < 16) {
    throw new AgentError('E_CONFIG_INVALID', `the chunker secret must be at least 16 bytes, got ${secret.length}`);
  }
  const bytes = new Uint8Array(hkdfSync('sha256', secret, Buffer.alloc(0), GEAR_INFO, 1024));
  const view = new DataView(bytes.buffer);
  const table = new Uint32Array(256);
  // Little-endian explicitly, so that a big-endian host cuts like every other one.
  for (let i = 0; i < 256; i++) table[i] = view.getUint32(i * 4, true);
  return table;
}

/** What the hot loop needs, checked and derived once per chunker. */
interface Plan {
  /**
   * The gear table as signed ints, so that `((h << 1) + g) | 0` stays an int32 throughout: the
   * same boundaries as the uint32 form `>>> 0` (the masks only test bits), and a value V8 never
   * has to box. (Both forms measured the same speed on Node 24.)
   */
  gear: Int32Array;
  min: number;
  avg: number;
  max: number;
  /** Below avg: two more bits than log2(avg), so cuts there are 4× rarer than at 1/avg. */
  maskS: number;
  /** From avg on: two fewer bits, so cuts are 4× likelier and the sizes bunch around avg. */
  maskL: number;
}

/**
 * Bit positions in the order masks take them: bit 31 first (it depends on the last 32 bytes,
 * the longest window a 32-bit gear hash has), then in bit-reversed order so that any prefix is
 * spread over the word, as the FastCDC paper recommends. Taking prefixes makes maskL a subset
 * of maskS: a position that cut below avg still cuts once an insertion before it pushes it past
 * avg, which is what keeps the boundary after an edit where it was.
 */
const MASK_ORDER = Array.from({ length: 32 }, (_, k) => {
  let reversed = 0;
  for (let b = 0; b < 5; b++) reversed |= ((k >> b) & 1) << (4 - b);
  return 31 - reversed;
});

function mask(bits: number): number {
  let m = 0;
  for (let k = 0; k < bits; k++) m |= 1 << MASK_ORDER[k]!;
  return m;
}

function plan(gear: Uint32Array, params: ChunkerParams): Plan {
  const { minBytes: min, avgBytes: avg, maxBytes: max } = params;
  const invalid = (why: string) =>
    new AgentError('E_CONFIG_INVALID', `invalid chunker parameters (min ${min}, avg ${avg}, max ${max}): ${why}`, {
      details: { minBytes: min, avgBytes: avg, maxBytes: max },
    });
  if (![min, avg, max].every((n) => Number.isSafeInteger(n))) throw invalid('sizes must be integers');
  if (min < 64) throw invalid('minBytes must be at least 64');
  if (!(min < avg && avg < max)) throw invalid('they must satisfy minBytes < avgBytes < maxBytes');
  const bits = Math.log2(avg);
  if (!Number.isInteger(bits)) throw invalid('avgBytes must be a power of two');
  // maskS takes bits + 2 of the hash's 32; above 1 GiB a chunk is no longer something to hold in memory anyway.
  if (max > 2 ** 30) throw invalid('maxBytes must be at most 1 GiB');
  if (gear.length !== 256) throw new AgentError('E_INTERNAL', `a gear table has 256 entries, not ${gear.length}`);
  return {
    gear: new Int32Array(gear.buffer, gear.byteOffset, 256),
    min,
    avg,
    max,
    maskS: mask(bits + 2),
    maskL: mask(bits - 2),
  };
}

/** Where a chunk stands after the bytes scanned so far: carried across input buffers. */
interface Cursor {
  /** Bytes of the current chunk already scanned (or skipped). */
  length: number;
  hash: number;
}

/**
 * Scans buf[from, to) as the continuation of the chunk `cursor` describes. Returns the index in
 * buf just past the chunk's last byte (and resets the cursor), or -1 when the chunk goes on past
 * `to` (the cursor then holds where it stands).
 */
function scan(p: Plan, buf: Uint8Array, from: number, to: number, cursor: Cursor): number {
  let i = from;
  let n = cursor.length;
  if (n < p.min) {
    const skip = Math.min(p.min - n, to - i);
    i += skip;
    n += skip;
    if (n < p.min) {
      cursor.length = n;
      return -1;
    }
  }
  // Plain byte-at-a-time loops over locals: ~1.05 GB/s of hashed bytes on Node 24. Unrolling
  // by four (one branch per byte, or one per four) and moving the loop into a helper were all
  // measured slower here (bench/chunker.ts), whatever micro-benchmarks of the bare loop said.
  const gear = p.gear;
  const start = i - n; // where the chunk began, in buf's coordinates (negative if before buf)
  let h = cursor.hash;
  let stop = Math.min(to, start + p.avg);
  const maskS = p.maskS;
  for (; i < stop; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0;
    if ((h & maskS) === 0) return cut(cursor, i + 1);
  }
  stop = Math.min(to, start + p.max);
  const maskL = p.maskL;
  for (; i < stop; i++) {
    h = ((h << 1) + gear[buf[i]!]!) | 0;
    if ((h & maskL) === 0) return cut(cursor, i + 1);
  }
  if (i - start === p.max) return cut(cursor, i);
  cursor.length = i - start;
  cursor.hash = h;
  return -1;
}

function cut(cursor: Cursor, at: number): number {
  cursor.length = 0;
  cursor.hash = 0;
  return at;
}

/**
 * The end (exclusive) of the chunk that starts at `start` when buf[start, end) is all there
 * is: the same boundaries the stream finds, for callers that hold their data in memory.
 * Returns `end` when no boundary comes before it (the last, possibly short, chunk).
 */
export function nextCut(gear: Uint32Array, params: ChunkerParams, buf: Uint8Array, start = 0, end = buf.length): number {
  const at = scan(plan(gear, params), buf, start, end, { length: 0, hash: 0 });
  return at < 0 ? end : at;
}

/**
 * Cuts a stream fed in pieces of any size into chunks, handed to `emit` in order. A chunk within
 * one input is a subarray of it; one that spans inputs is copied once, when its end is found,
 * into a Buffer of its exact size. Until then the cutter keeps views of the inputs it spans, so
 * it holds at most ~maxBytes plus the input the chunk began in. `cut` ends the chunk in
 * progress where the stream stands: a boundary the caller wants whatever the content (the
 * repository cuts around each file of a tree, so that an unchanged file keeps its chunks).
 */
export class ChunkCutter {
  readonly #plan: Plan;
  readonly #cursor: Cursor = { length: 0, hash: 0 };
  #pieces: Buffer[] = [];
  #pending = 0;

  constructor(gear: Uint32Array, params: ChunkerParams) {
    this.#plan = plan(gear, params);
  }

  push(input: Buffer, emit: (chunk: Buffer) => void): void {
    let pos = 0;
    while (pos < input.length) {
      const at = scan(this.#plan, input, pos, input.length, this.#cursor);
      if (at < 0) {
        this.#pieces.push(pos === 0 ? input : input.subarray(pos));
        this.#pending += input.length - pos;
        return;
      }
      if (this.#pieces.length === 0) {
        emit(input.subarray(pos, at));
      } else {
        this.#pieces.push(input.subarray(pos, at));
        const chunk = Buffer.concat(this.#pieces, this.#pending + at - pos);
        this.#pieces = [];
        this.#pending = 0;
        emit(chunk);
      }
      pos = at;
    }
  }

  /** Ends the chunk in progress, if any (the stream's end, or a boundary the caller wants). */
  cut(emit: (chunk: Buffer) => void): void {
    if (this.#pending > 0) emit(this.#pieces.length === 1 ? this.#pieces[0]! : Buffer.concat(this.#pieces, this.#pending));
    this.#pieces = [];
    this.#pending = 0;
    this.#cursor.length = 0;
    this.#cursor.hash = 0;
  }
}

/**
 * A Transform from Buffers of any size to the chunks (object mode, one Buffer each, in order),
 * cut by a ChunkCutter. The readable side buffers one chunk, so a slow consumer stops the
 * writes rather than filling memory with up to 16 chunks of maxBytes.
 */
export function createChunker(gear: Uint32Array, params: ChunkerParams): Transform {
  const cutter = new ChunkCutter(gear, params);
  return new Transform({
    readableObjectMode: true,
    readableHighWaterMark: 1,
    transform(input: Buffer, _encoding, callback: TransformCallback) {
      cutter.push(input, (chunk) => this.push(chunk));
      callback();
    },
    flush(callback: TransformCallback) {
      cutter.cut((chunk) => this.push(chunk));
      callback();
    },
  });
}
