import type { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { AgentError } from '../../errors.ts';
import type { Repository, StoredSegment, StreamItem } from '../../transport/repository/repository.ts';
import type { TreeEntry } from '../../transport/repository/stream-tree.ts';
import { isFileSegment } from '../driver.ts';

/**
 * The parent snapshot of a files element in a repository (issue #13 §2): what lets the next
 * backup take an unchanged file's chunks without reading the file. Each backup of a files
 * element stores, beside its stream, a catalog: one line per file segment of the stream —
 * `[path, signature, first, count]`, where its chunks are in the stream's chunk list — JSON
 * lines stored as a stream of their own (the element's `repository.files`).
 */
export interface ParentSnapshot {
  /** path → signature, for the capture (it skips a file whose signature is this). */
  signatures: Map<string, string>;
  /** path → the chunks of its segment. */
  chunks: Map<string, readonly TreeEntry[]>;
}

export const NO_PARENT: ParentSnapshot = { signatures: new Map(), chunks: new Map() };

/** The parent held by an element of an earlier backup: its chunk list and its catalog, read and checked. */
export async function loadParent(repository: Repository, root: string, catalog: string, signal: AbortSignal): Promise<ParentSnapshot> {
  const chunks = await repository.chunksOf(root, { signal });
  const lines = (await text(repository.readStream(catalog, { signal }))).split('\n');
  const parent: ParentSnapshot = { signatures: new Map(), chunks: new Map() };
  for (const [i, line] of lines.entries()) {
    if (line === '') continue;
    // Authenticated (the manifest's MAC covers the catalog's id, whose content it hashes), yet a
    // line that is not what a backup writes is a bug to stop at, not a segment to trust.
    const entry = JSON.parse(line) as unknown;
    if (!isCatalogLine(entry) || entry[2] + entry[3] > chunks.length) throw new AgentError('E_REPOSITORY_CORRUPT', `the file catalog ${catalog} has a malformed line ${i + 1}`);
    const [file, signature, first, count] = entry;
    parent.signatures.set(file, signature);
    parent.chunks.set(file, chunks.slice(first, first + count));
  }
  return parent;
}

type CatalogLine = [file: string, signature: string, first: number, count: number];

function isCatalogLine(entry: unknown): entry is CatalogLine {
  return (
    Array.isArray(entry) &&
    entry.length === 4 &&
    typeof entry[0] === 'string' &&
    typeof entry[1] === 'string' &&
    Number.isSafeInteger(entry[2]) &&
    Number.isSafeInteger(entry[3]) &&
    entry[2] >= 0 &&
    entry[3] >= 0
  );
}

const keyOf = (file: string, signature: string) => JSON.stringify([file, signature]);

/**
 * A files capture with segments (FileSegment marks between its bytes) as the repository's
 * stream items: a file's bytes become a segment; a file the capture skipped as unchanged, the
 * parent's chunks for it.
 */
export async function* repositoryItems(capture: Readable, parent: ParentSnapshot): AsyncGenerator<StreamItem> {
  for await (const item of capture as AsyncIterable<unknown>) {
    if (Buffer.isBuffer(item)) yield item;
    else if (isFileSegment(item)) {
      const key = keyOf(item.file, item.signature);
      if (!item.reused) yield { segment: key, bytes: item.bytes };
      else {
        const chunks = parent.chunks.get(item.file);
        if (!chunks) throw new AgentError('E_INTERNAL', `the capture skipped ${item.file} as unchanged, but the parent snapshot does not hold it`);
        yield { reuse: key, chunks };
      }
    } else throw new AgentError('E_INTERNAL', 'a files capture gave something that is neither bytes nor a file segment');
  }
}

/** The catalog of a stored files stream: its segments as JSON lines, in pieces of ~1 MiB. */
export async function* catalogOf(segments: readonly StoredSegment[]): AsyncGenerator<Buffer> {
  let lines: string[] = [];
  let size = 0;
  for (const { key, first, count } of segments) {
    const [file, signature] = JSON.parse(key) as [string, string];
    const line = JSON.stringify([file, signature, first, count]);
    lines.push(line);
    size += line.length + 1;
    if (size >= 1 << 20) {
      yield Buffer.from(`${lines.join('\n')}\n`);
      lines = [];
      size = 0;
    }
  }
  if (lines.length > 0) yield Buffer.from(`${lines.join('\n')}\n`);
}
