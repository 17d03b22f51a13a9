/**
 * What packTree hands its worker and what the worker posts besides the chunk protocol's own
 * messages (chunk-worker/protocol.ts): file segments, for a repository backup.
 */

import type { ChunkWorkerData } from '../chunk-worker/protocol.ts';
import type { FileSegment } from '../driver.ts';

export interface PackWorkerData extends ChunkWorkerData {
  root: string;
  excludes: string[];
  /** Mark file segments, and skip the files this parent holds unchanged (path → signature). */
  parent?: ReadonlyMap<string, string> | undefined;
}

/** A file's segment begins at `offset` of the bytes sent (FileSegment); posted before the chunk that holds it. */
export interface SegmentMessage {
  kind: 'segment';
  offset: number;
  segment: FileSegment;
}
