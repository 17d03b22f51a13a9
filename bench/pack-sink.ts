/**
 * Stages of our capture pipeline alone, as a process of its own so that /usr/bin/time
 * measures them like the shell pipelines they are compared with:
 *
 *   node bench/pack-sink.ts DIR                      packTree → discard (vs `tar -cf - | cat`)
 *   node bench/pack-sink.ts DIR --zstd LEVEL         packTree → createCompressor → discard
 *   node bench/pack-sink.ts DIR --zstd LEVEL --agent packTree → ByteCounter → createCompressor
 *                                                    → DigestStream → discard: what
 *                                                    `backup create` does before the store
 *
 * Prints {"bytes": bytes that reached the sink, ...packTree stats} on stdout.
 */
import { Writable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { recycle } from '../src/chunk-recycling.ts';
import { createCompressor } from '../src/snapshot/compression.ts';
import { ByteCounter } from '../src/snapshot/counter.ts';
import { DigestStream } from '../src/snapshot/digest.ts';
import { packTree } from '../src/snapshot/files/pack.ts';

const args = process.argv.slice(2);
const dir = args[0];
if (dir === undefined || dir.startsWith('--')) {
  console.error('usage: npx node bench/pack-sink.ts DIR [--zstd LEVEL [--agent]]');
  process.exit(2);
}
const zstdAt = args.indexOf('--zstd');
const level = zstdAt >= 0 ? Number(args[zstdAt + 1]) : undefined;
const agent = args.includes('--agent');

let bytes = 0;
const sink = new Writable({
  highWaterMark: 1 << 20,
  write(chunk: Buffer, _encoding, callback) {
    bytes += chunk.length;
    recycle(chunk); // as the compressor does with the pack worker's chunks
    callback();
  },
});
const stages: Duplex[] = [];
if (level !== undefined) {
  if (agent) stages.push(new ByteCounter(() => {}));
  stages.push(createCompressor('zstd', { level }));
  if (agent) stages.push(new DigestStream());
}
const { stream, stats } = packTree(dir);
const [, result] = await Promise.all([pipeline([stream, ...stages, sink]), stats]);
console.log(JSON.stringify({ bytes, files: result.files, directories: result.directories, contentBytes: result.bytes, warnings: result.warnings.length }));
