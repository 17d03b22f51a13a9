import { randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { freeNow, offerForRecycling } from '../src/chunk-recycling.ts';
import { FileSink } from '../src/transport/stores/file-sink.ts';
import { tempDir, type TempDir } from './support/tree.ts';

let work: TempDir;
beforeEach(async () => {
  work = await tempDir('file-sink-');
});
afterEach(async () => {
  await work.cleanup();
});

describe('FileSink', () => {
  it('writes every chunk in order to a new 0600 file and frees recyclable chunks once written', async () => {
    const pieces = Array.from({ length: 40 }, (_, i) => randomBytes(1000 + i * 997));
    const expected = Buffer.concat(pieces);
    const chunks = pieces.map((piece) => offerForRecycling(Buffer.from(new Uint8Array(piece).buffer), freeNow));
    const file = path.join(work.path, 'out');
    await pipeline(Readable.from(chunks), new FileSink(file));
    expect((await readFile(file)).equals(expected)).toBe(true);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(chunks.every((chunk) => chunk.length === 0)).toBe(true);
  });

  it('refuses to overwrite an existing file', async () => {
    const file = path.join(work.path, 'taken');
    await writeFile(file, 'keep');
    await expect(pipeline(Readable.from([Buffer.from('new')]), new FileSink(file))).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await readFile(file, 'utf8')).toBe('keep');
  });
});
