import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { Readable, Writable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { offerForRecycling, recycle } from '../src/chunk-recycling.ts';
import { createCompressor, createDecompressor, type Compression } from '../src/snapshot/compression.ts';

const MiB = 1024 * 1024;

/** Compressible, varied input: text-like lines with random parts. */
function sample(bytes: number): Buffer {
  const lines: string[] = [];
  let size = 0;
  while (size < bytes) {
    const line = `INSERT INTO t VALUES (${size}, '${randomBytes(8).toString('hex')}', 'some repeated text');\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

async function compress(kind: Compression, input: Buffer, blockBytes = 1 * MiB): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from([input.subarray(0, 3 * MiB), input.subarray(3 * MiB)]),
    createCompressor(kind, { level: 1, blockBytes, workers: 2 }),
    async function* (source) {
      for await (const chunk of source) out.push(chunk as Buffer);
    },
  );
  return Buffer.concat(out);
}

describe('compression (parallel zstd frames and gzip members, zstd CLI decoder)', () => {
  const input = sample(7 * MiB + 123);

  it.each(['zstd', 'gzip'] as const)('%s output is one stream the standard tools and Node decode to the input', async (kind) => {
    const compressed = await compress(kind, input);
    expect(compressed.length).toBeLessThan(input.length / 2);
    const cli = await execa(kind === 'zstd' ? 'zstd' : 'gzip', ['-dc'], { input: compressed, encoding: 'buffer' });
    expect(Buffer.from(cli.stdout).equals(input)).toBe(true);
    const node = await buffer(Readable.from([compressed]).pipe(await createDecompressor(kind)));
    expect(node.equals(input)).toBe(true);
  });

  it('keeps gzip member order whatever order the thread pool finishes in', async () => {
    const compressed = await compress('gzip', input, 64 * 1024);
    const node = await buffer(Readable.from([compressed]).pipe(await createDecompressor('gzip')));
    expect(node.equals(input)).toBe(true);
  });

  it('decodes many frames whose sizes do not line up with the chunks they arrive in (nodejs/node#64741)', async () => {
    const odd = sample(9 * MiB + 4321);
    const compressed = await compress('zstd', odd, 4 * MiB - 17);
    const pieces = [];
    for (let at = 0; at < compressed.length; at += 100_003) pieces.push(compressed.subarray(at, at + 100_003));
    const decoded = await buffer(Readable.from(pieces).pipe(await createDecompressor('zstd')));
    expect(decoded.length).toBe(odd.length);
    expect(decoded.equals(odd)).toBe(true);
  });

  it('cuts 64 KiB-ish reads into frames of exactly blockBytes, refilling the blocks it gets back', async () => {
    const blockBytes = 256 * 1024;
    const odd = sample(5 * MiB + 999);
    const reads: Buffer[] = [];
    for (let at = 0; at < odd.length; at += 65_536 + 7) reads.push(Buffer.from(odd.subarray(at, at + 65_536 + 7)));
    const frames: Buffer[] = [];
    // A Writable sees each pushed frame on its own (an async iterator would join buffered ones).
    const collect = new Writable({
      write: (frame: Buffer, _encoding, done) => {
        frames.push(Buffer.from(frame));
        done();
      },
    });
    await pipeline(Readable.from(reads), createCompressor('zstd', { level: 1, blockBytes, workers: 2 }), collect);
    // All full blocks but the last.
    const sizes = frames.map((frame) => zlib.zstdDecompressSync(frame).length);
    expect(sizes).toEqual([...Array<number>(Math.floor(odd.length / blockBytes)).fill(blockBytes), odd.length % blockBytes]);
    expect(Buffer.concat(frames.map((frame) => zlib.zstdDecompressSync(frame))).equals(odd)).toBe(true);
  });

  it('passes bytes through unchanged with compression none', async () => {
    expect((await compress('none', input)).equals(input)).toBe(true);
  });

  it('fails decompression of a corrupted stream, with zstd\'s own words', async () => {
    const compressed = await compress('zstd', input);
    compressed.fill(0x55, 1000, 2000);
    await expect(buffer(Readable.from([compressed]).pipe(await createDecompressor('zstd')))).rejects.toMatchObject({ stderr: expect.stringContaining('/*stdin*\\') });
  });
});

describe('compression workers and chunk memory', () => {
  it('hands whole blocks back to their producer and offers each frame for freeing', async () => {
    const input = sample(3 * MiB);
    const returned: ArrayBuffer[] = [];
    const blocks = [0, 1, 2].map((i) => {
      const block = Buffer.allocUnsafeSlow(MiB);
      input.copy(block, 0, i * MiB, (i + 1) * MiB);
      return offerForRecycling(block, (memory) => returned.push(memory));
    });
    const frames: Buffer[] = [];
    await pipeline(Readable.from(blocks), createCompressor('zstd', { level: 1, blockBytes: MiB, workers: 2 }), async function* (source) {
      for await (const frame of source) frames.push(Buffer.from(frame as Buffer)); // a copy: the original is freed below
      for (const frame of frames) yield frame;
    });
    expect(returned.map((memory) => memory.byteLength)).toEqual([MiB, MiB, MiB]);
    const decoded = await execa('zstd', ['-dc'], { input: Buffer.concat(frames), encoding: 'buffer' });
    expect(Buffer.from(decoded.stdout).equals(input)).toBe(true);
  });

  it('frees a frame when its consumer recycles it', async () => {
    const [frame] = await compressChunks([sample(100_000)]);
    expect(frame!.length).toBeGreaterThan(0);
    recycle(frame!);
    expect(frame!.length).toBe(0);
  });

  it('compresses buffers from Node\'s shared pool without taking the pool away', async () => {
    const small = Buffer.from('a small pooled buffer');
    const neighbour = Buffer.from('its neighbour in the pool');
    const frames = await compressChunks([small]);
    const decoded = await execa('zstd', ['-dc'], { input: Buffer.concat(frames), encoding: 'buffer' });
    expect(Buffer.from(decoded.stdout).toString()).toBe('a small pooled buffer');
    expect(neighbour.toString()).toBe('its neighbour in the pool');
  });

  it('fails the stream with E_INTERNAL when a worker cannot compress a block, and destroys it', async () => {
    const compressor = createCompressor('gzip', { level: 42, blockBytes: MiB, workers: 1 });
    await expect(pipeline(Readable.from([sample(2 * MiB)]), compressor, new Writable({ write: (_c, _e, done) => done() }))).rejects.toMatchObject({
      code: 'E_INTERNAL',
    });
    expect(compressor.destroyed).toBe(true);
  });

  it('ends cleanly when destroyed with blocks in flight', async () => {
    const compressor = createCompressor('zstd', { level: 1, blockBytes: MiB, workers: 2 });
    compressor.write(sample(3 * MiB));
    const closed = new Promise((resolve) => compressor.once('close', resolve));
    compressor.destroy();
    await closed;
    expect(compressor.destroyed).toBe(true);
  });
});

async function compressChunks(chunks: Buffer[]): Promise<Buffer[]> {
  const frames: Buffer[] = [];
  await pipeline(Readable.from(chunks), createCompressor('zstd', { level: 1, blockBytes: MiB, workers: 1 }), async function* (source) {
    for await (const frame of source) frames.push(frame as Buffer);
    yield* [];
  });
  return frames;
}
