import { createCipheriv, hash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { isAgentError } from '../src/errors.ts';
import {
  createChunker,
  DEFAULT_CHUNKER,
  gearTable,
  nextCut,
  type ChunkerParams,
} from '../src/transport/repository/chunker.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const small: ChunkerParams = { minBytes: 256, avgBytes: 1024, maxBytes: 4096 };
const gear = gearTable(Buffer.alloc(32, 1));

/** Reproducible pseudo-random bytes (an AES-CTR keystream), fast enough for 64 MiB. */
function pseudoRandom(bytes: number, seed = 0): Buffer {
  return createCipheriv('aes-256-ctr', Buffer.alloc(32, seed), Buffer.alloc(16)).update(Buffer.alloc(bytes));
}

/** Splits input into pieces of the given sizes, cycling through them. */
function split(input: Buffer, sizes: number[]): Buffer[] {
  const pieces: Buffer[] = [];
  for (let at = 0, k = 0; at < input.length; k++) {
    const size = sizes[k % sizes.length]!;
    pieces.push(input.subarray(at, at + size));
    at += size;
  }
  return pieces;
}

async function chunk(pieces: Buffer[], params: ChunkerParams, table = gear): Promise<Buffer[]> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from(pieces),
    createChunker(table, params),
    new Writable({
      objectMode: true,
      write(piece: Buffer, _encoding, callback) {
        out.push(piece);
        callback();
      },
    }),
  );
  return out;
}

const lengths = (chunks: Buffer[]) => chunks.map((c) => c.length);

/**
 * FastCDC as the paper writes it, byte by byte over a buffer held whole: the chunker's
 * boundaries are a repository format (change them and nothing dedupes against older backups),
 * so they are checked against this independent statement of them.
 */
function referenceLengths(table: Uint32Array, { minBytes, avgBytes, maxBytes }: ChunkerParams, data: Buffer): number[] {
  const order = Array.from({ length: 32 }, (_, k) => 31 - parseInt(k.toString(2).padStart(5, '0').split('').reverse().join(''), 2));
  const maskOf = (bits: number) => order.slice(0, bits).reduce((m, bit) => (m | (2 ** bit)) >>> 0, 0);
  const bits = Math.log2(avgBytes);
  const maskS = maskOf(bits + 2);
  const maskL = maskOf(bits - 2);
  const out: number[] = [];
  for (let start = 0; start < data.length; ) {
    const n = Math.min(data.length - start, maxBytes);
    let length = n;
    let h = 0;
    for (let i = minBytes; i < n; i++) {
      h = ((h << 1) + table[data[start + i]!]!) >>> 0;
      if (((h & (i < avgBytes ? maskS : maskL)) >>> 0) === 0) {
        length = i + 1;
        break;
      }
    }
    out.push(length);
    start += length;
  }
  return out;
}

function expectWithinBounds(chunks: number[], { minBytes, maxBytes }: ChunkerParams): void {
  for (const length of chunks.slice(0, -1)) {
    expect(length).toBeGreaterThanOrEqual(minBytes);
    expect(length).toBeLessThanOrEqual(maxBytes);
  }
  if (chunks.length > 0) expect(chunks.at(-1)!).toBeLessThanOrEqual(maxBytes);
}

describe('content-defined chunker (FastCDC, normalized level 2, keyed gear table)', () => {
  it.each([0, 1, 255, 256, 257, 1000, 4096, 4097, 64 * KiB + 3, 1 * MiB + 17])(
    '%i bytes: the chunks concatenate to the input whatever the writes, within bounds, as the reference cuts',
    async (size) => {
      const input = pseudoRandom(size, 2);
      const expected = referenceLengths(gear, small, input);
      const splits = [[size || 1], [4093], [1, 7, 300, 5000], ...(size <= 64 * KiB + 3 ? [[1]] : [])];
      for (const sizes of splits) {
        const chunks = await chunk(split(input, sizes), small);
        expect(Buffer.concat(chunks).equals(input)).toBe(true);
        expect(lengths(chunks)).toEqual(expected);
      }
      expectWithinBounds(expected, small);
      if (size === 0) expect(expected).toEqual([]);
    },
  );

  it('with the default bounds, too, and nextCut finds the same boundaries in memory', async () => {
    const input = pseudoRandom(20 * MiB + 5, 3);
    const expected = referenceLengths(gear, DEFAULT_CHUNKER, input);
    expect(expected.length).toBeGreaterThan(10);
    expectWithinBounds(expected, DEFAULT_CHUNKER);
    for (const sizes of [[input.length], [64 * KiB], [1 * MiB + 1, 333_333]]) {
      const chunks = await chunk(split(input, sizes), DEFAULT_CHUNKER);
      expect(lengths(chunks)).toEqual(expected);
      expect(Buffer.concat(chunks).equals(input)).toBe(true);
    }
    const inMemory: number[] = [];
    for (let at = 0; at < input.length; ) {
      const end = nextCut(gear, DEFAULT_CHUNKER, input, at);
      inMemory.push(end - at);
      at = end;
    }
    expect(inMemory).toEqual(expected);
  });

  it('cuts the same way every time, and differently under another secret', async () => {
    const input = pseudoRandom(256 * KiB, 4);
    const first = lengths(await chunk([input], small));
    expect(lengths(await chunk(split(input, [999]), small, gearTable(Buffer.alloc(32, 1))))).toEqual(first);
    expect(gearTable(Buffer.alloc(32, 1))).toEqual(gear);
    const other = lengths(await chunk([input], small, gearTable(Buffer.alloc(32, 9))));
    expect(other).not.toEqual(first);
    // Not merely shifted: hardly any boundary falls in the same place.
    const ends = (ls: number[]) => new Set(ls.map((_, k) => ls.slice(0, k + 1).reduce((a, b) => a + b, 0)));
    const shared = [...ends(other)].filter((end) => ends(first).has(end)).length;
    expect(shared).toBeLessThan(first.length / 4);
  });

  it('pins the boundaries for a known secret and input (they are a repository format)', () => {
    const input = pseudoRandom(4 * MiB, 5);
    const table = gearTable(Buffer.from('a repository secret of 32 bytes!'));
    const cuts: number[] = [];
    for (let at = 0; at < input.length; cuts.push((at = nextCut(table, small, input, at))));
    expect(hash('sha256', cuts.join(','))).toBe('b6782ad32f6151ccb32db5ac2af3f36b62b3bd3b31946f89cbaec9406e4cdccd');
  });

  it('a chunk within one input is a view of it, not a copy', async () => {
    const input = pseudoRandom(64 * KiB, 6);
    const chunks = await chunk([input], small);
    expect(chunks.length).toBeGreaterThan(10);
    for (const c of chunks.slice(0, -1)) expect(c.buffer).toBe(input.buffer);
  });

  it('keeps all but the chunks around a 100-byte insertion in 64 MiB (shift resistance)', async () => {
    const original = pseudoRandom(64 * MiB, 7);
    const middle = 32 * MiB + 12_345;
    const edited = Buffer.concat([original.subarray(0, middle), pseudoRandom(100, 8), original.subarray(middle)]);
    const ids = async (data: Buffer) =>
      (await chunk(split(data, [1 * MiB]), DEFAULT_CHUNKER)).map((c) => hash('sha256', c, 'base64'));
    const before = await ids(original);
    const after = await ids(edited);
    const known = new Set(before);
    const fresh = after.filter((id) => !known.has(id));
    const lost = before.filter((id) => !new Set(after).has(id));
    expect(before.length).toBeGreaterThan(40);
    expect(fresh.length).toBeGreaterThanOrEqual(1);
    expect(fresh.length).toBeLessThanOrEqual(3);
    expect(lost.length).toBeLessThanOrEqual(3);
  });

  it('cuts a run of zeros longer than maxBytes at maxBytes', async () => {
    const zeros = Buffer.alloc(2 * DEFAULT_CHUNKER.maxBytes + 5);
    const chunks = await chunk(split(zeros, [1 * MiB]), DEFAULT_CHUNKER);
    expect(lengths(chunks)).toEqual([DEFAULT_CHUNKER.maxBytes, DEFAULT_CHUNKER.maxBytes, 5]);
  });

  it.each([
    { minBytes: 32, avgBytes: 1024, maxBytes: 4096 },
    { minBytes: 1024, avgBytes: 1024, maxBytes: 4096 },
    { minBytes: 256, avgBytes: 4096, maxBytes: 4096 },
    { minBytes: 256, avgBytes: 1000, maxBytes: 4096 },
    { minBytes: 256.5, avgBytes: 1024, maxBytes: 4096 },
    { minBytes: 256, avgBytes: 1024, maxBytes: Number.NaN },
    { minBytes: 1 * MiB, avgBytes: 2 * MiB, maxBytes: 2 * 1024 * MiB },
  ])('rejects %o with E_CONFIG_INVALID', (params) => {
    for (const attempt of [() => createChunker(gear, params), () => nextCut(gear, params, Buffer.alloc(10))]) {
      expect(attempt).toThrow(/invalid chunker parameters/);
      try {
        attempt();
      } catch (error) {
        expect(isAgentError(error, 'E_CONFIG_INVALID')).toBe(true);
      }
    }
  });

  it('rejects a secret shorter than 16 bytes', () => {
    expect(() => gearTable(Buffer.alloc(15))).toThrow(expect.objectContaining({ code: 'E_CONFIG_INVALID' }));
  });
});
