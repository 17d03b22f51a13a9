/** The pack worker: walks and reads the tree synchronously and posts the tar stream in chunks. */
import { runChunkWorker } from '../chunk-worker/worker.ts';
import type { FileSegment } from '../driver.ts';
import { compileExcludes } from './excludes.ts';
import type { PackWorkerData, SegmentMessage } from './pack-protocol.ts';
import type { PackStats } from './pack.ts';
import { writeTreeArchive } from './tree-walker.ts';

runChunkWorker<PackWorkerData, PackStats, SegmentMessage>((data, out, post) => {
  const segments = data.parent && { parent: data.parent, mark: (offset: number, segment: FileSegment) => post({ kind: 'segment', offset, segment }) };
  return writeTreeArchive(data.root, compileExcludes(data.excludes), out, segments);
});
