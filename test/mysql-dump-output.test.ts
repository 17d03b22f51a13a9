import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BLOCK_BYTES } from '../src/snapshot/compression.ts';
import { openDumpOutput, type DumpOutput } from '../src/snapshot/mysql/dump-output.ts';

const HEADER = '-- storage-agent dump {"databases":["shop"]}\n';

/** Every chunk the stream gives, as it gives it. */
async function chunksOf(output: DumpOutput): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  await pipeline(
    output.stream,
    new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        chunks.push(Buffer.from(chunk));
        done();
      },
    }),
  );
  return chunks;
}

describe('the dump output: mysqldump writes into a FIFO that a worker reads in whole blocks', () => {
  // Not os.tmpdir() in the agent (private-temp.ts); any private directory does for the test.
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'sa-dump-output-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gives the header, then what was written, in chunks of the block size; the FIFO is gone after close', async () => {
    const output = await openDumpOutput(dir, HEADER, new AbortController().signal);
    expect(existsSync(output.fifo)).toBe(true);
    const data = randomBytes(2 * BLOCK_BYTES + 12_345);
    const writer = pipeline(
      (async function* () {
        for (let at = 0; at < data.length; at += 100_000) yield data.subarray(at, at + 100_000);
      })(),
      createWriteStream(output.fifo),
    );
    const chunks = chunksOf(output);
    await writer;
    // mysqldump has exited: only now does its close of the FIFO end the output.
    await output.close();
    expect(existsSync(output.fifo)).toBe(false);
    const all = Buffer.concat(await chunks);
    expect(all.subarray(0, HEADER.length).toString()).toBe(HEADER);
    expect(all.subarray(HEADER.length).equals(data)).toBe(true);
    const sizes = (await chunks).map((chunk) => chunk.length);
    expect(sizes.slice(0, -1).every((size) => size === BLOCK_BYTES)).toBe(true);
    expect(sizes).toHaveLength(Math.ceil((HEADER.length + data.length) / BLOCK_BYTES));
  });

  it('close() with nobody having written (mysqldump failed before opening it) ends the reader: the header alone', async () => {
    const output = await openDumpOutput(dir, HEADER, new AbortController().signal);
    const read = chunksOf(output);
    await output.close();
    expect(Buffer.concat(await read).toString()).toBe(HEADER);
    expect(existsSync(output.fifo)).toBe(false);
  });

  it('discard() stops a reader whose writer is blocked, which then fails writing: nothing is left', async () => {
    const output = await openDumpOutput(dir, HEADER, new AbortController().signal);
    const writer = createWriteStream(output.fifo);
    const failed = new Promise<NodeJS.ErrnoException>((resolve) => writer.on('error', resolve));
    const big = Buffer.alloc(8 * BLOCK_BYTES);
    writer.write(big);
    await new Promise((resolve) => writer.once('open', resolve));
    const closed = new Promise((resolve) => output.stream.once('close', resolve));
    await output.discard();
    await closed;
    expect(output.stream.destroyed).toBe(true);
    // The worker's end closes the FIFO: the writer's next write has no reader.
    expect((await failed).code).toBe('EPIPE');
    expect(existsSync(output.fifo)).toBe(false);
  });
});
