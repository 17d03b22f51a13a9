import { resolve } from 'node:path';
import { throwIfCancelled } from '../../errors.ts';
import { siblingModule } from '../../sibling-module.ts';
import { chunkWorkerStream, type ChunkStream, type ChunkStreamOptions } from '../chunk-worker/stream.ts';
import type { ChunkWorkerData } from '../chunk-worker/protocol.ts';
import { BLOCK_BYTES } from '../compression.ts';
import type { FileSegment } from '../driver.ts';
import type { PackWorkerData, SegmentMessage } from './pack-protocol.ts';

export interface PackOptions {
  /** Patterns relative to the root; syntax in excludes.ts. */
  excludes?: readonly string[];
  signal?: AbortSignal;
  /**
   * Mark each file's segment (FileSegment objects between the Buffers: the stream is then in
   * object mode), and skip the files this parent snapshot holds unchanged (path → signature).
   */
  parent?: ReadonlyMap<string, string>;
  /**
   * Start the worker (its thread up, its modules loaded) but read nothing of the tree until
   * `begin()`: a consistent backup starts it before the freeze, so that the pause holds only
   * the walk (issue #14 §4).
   */
  held?: boolean;
}

export interface PackStats {
  files: number;
  directories: number;
  symlinks: number;
  hardlinks: number;
  /** File content bytes. */
  bytes: number;
  /** What the files take on disk (st_blocks): less than `bytes` for sparse files. */
  allocatedBytes: number;
  /** Files taken from the parent snapshot unread (counted in files and bytes too). */
  unchanged: number;
  warnings: string[];
}

/** The compressor's block size, so that a chunk is compressed as it comes, without a copy. */
const CHUNK_SIZE = BLOCK_BYTES;
/**
 * Chunks the worker may have posted that the reader has not taken, besides the one it fills:
 * 1, 2 and 4 measured alike end to end (the compressor is the slower side); consumed chunks
 * come back to be refilled.
 */
const CHUNK_CREDIT = 1;
/**
 * With segments the consumer is the repository, whose pace is set by many small blobs rather
 * than by one compressor: more read ahead keeps the worker walking while it catches up.
 */
const SEGMENTED_CHUNK_CREDIT = 4;
const WORKER_URL = siblingModule(import.meta.url, 'pack-worker');

/**
 * A tar stream of the tree under `root` (entry names relative to root, no leading './'; the
 * root itself has no entry). `stats` resolves once the stream has ended and the worker has
 * exited, and rejects with the stream's error otherwise. `begin` lets a `held` pack walk (a
 * no-op otherwise).
 *
 * A worker thread walks and reads the tree with synchronous calls (chunk-worker/stream.ts).
 */
export function packTree(root: string, options: PackOptions = {}): ChunkStream<PackStats> {
  const { signal } = options;
  throwIfCancelled(signal);
  const segmented = options.parent !== undefined;
  const data: Omit<PackWorkerData, keyof ChunkWorkerData> = { root: resolve(root), excludes: [...(options.excludes ?? [])], parent: options.parent };
  return chunkWorkerStream<PackStats, typeof data, SegmentMessage>(WORKER_URL, data, {
    credit: segmented ? SEGMENTED_CHUNK_CREDIT : CHUNK_CREDIT,
    chunkSize: CHUNK_SIZE,
    held: options.held ?? false,
    signal,
    what: `packing ${root}`,
    ...(segmented ? segmentMarks() : {}),
  });
}

/**
 * Segment marks in the order they came, each pushed once the bytes before it are: a chunk is
 * cut at its marks, so it is in several views, none of them the one consumer that could
 * recycle it.
 */
function segmentMarks(): Pick<ChunkStreamOptions<SegmentMessage>, 'objects' | 'onMessage'> {
  const marks: { offset: number; segment: FileSegment }[] = [];
  let pushed = 0;
  const pushMarks = (push: (item: unknown) => void) => {
    while (marks.length > 0 && marks[0]!.offset === pushed) push(marks.shift()!.segment);
  };
  return {
    objects: {
      pushChunk(push, bytes) {
        let at = 0;
        while (at < bytes.length) {
          pushMarks(push);
          const next = marks[0];
          const end = next && next.offset < pushed + bytes.length - at ? at + (next.offset - pushed) : bytes.length;
          push(bytes.subarray(at, end));
          pushed += end - at;
          at = end;
        }
        pushMarks(push);
      },
    },
    onMessage(message, push) {
      marks.push(message);
      pushMarks(push);
    },
  };
}
