/**
 * A compression worker: turns each block it is sent into one complete zstd frame or gzip
 * member, synchronously. The synchronous call hands zstd the whole block at once with an
 * output buffer of its bound, its fastest path (no copy into its window, one frame, no
 * trailing empty frame), and keeps the garbage of each block in this small heap.
 */
import { parentPort } from 'node:worker_threads';
import zlib from 'node:zlib';
import { zstdBound } from '../zstd-bound.ts';
import type { WorkerReply } from '../worker-pool.ts';
import type { CompressJob, CompressResult, FrameFormat } from './compress-pool.ts';

if (parentPort === null) throw new Error('compress-worker.ts runs as a worker thread started by CompressionPool');
const port = parentPort;

/** Output buffers this size and larger are allocated for their call alone, never pooled. */
const MIN_OUTPUT = 64 << 10;

function compress(input: Buffer, { kind, level }: FrameFormat): Buffer {
  if (kind === 'gzip') return zlib.gzipSync(input, { level, chunkSize: Math.max(gzipBound(input.length), MIN_OUTPUT) });
  return zlib.zstdCompressSync(input, {
    chunkSize: Math.max(zstdBound(input.length), MIN_OUTPUT),
    // The frame checksum lets `zstd -t` and any decoder spot corruption on their own.
    params: { [zlib.constants.ZSTD_c_compressionLevel]: level, [zlib.constants.ZSTD_c_checksumFlag]: 1 },
  });
}

port.on('message', ({ seq, memory, length, ...format }: CompressJob & { seq: number }) => {
  let reply: WorkerReply<CompressResult>;
  try {
    const output = compress(Buffer.from(memory, 0, length), format);
    // The output's own buffer, cut to size (its bound was allocated; the rest is freed now):
    // an exact-size copy would leave the original as garbage in this heap, which collects it
    // too late (+100 MiB of peak RSS measured). At least MIN_OUTPUT, it is never Node's shared
    // pool of small buffers.
    const { byteOffset: frameOffset, length: frameBytes } = output; // before the transfer empties it
    const frame = (output.buffer as ArrayBuffer).transfer(frameOffset + frameBytes);
    reply = { seq, result: { frame, frameOffset, frameBytes, memory } };
  } catch (error) {
    reply = { seq, error: (error as Error).message };
  }
  port.postMessage(reply, reply.result ? [reply.result.frame, memory] : []);
});


/** deflateBound plus the gzip header and trailer, with room to spare. */
function gzipBound(bytes: number): number {
  return bytes + (bytes >> 12) + (bytes >> 14) + (bytes >> 25) + 64;
}
