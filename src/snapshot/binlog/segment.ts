/**
 * A piece of a server's binary log as the streamer hands it to the archive: bytes of one
 * binlog file, from `offset` to `end`, cut on event boundaries (never half an event), with
 * what the archive records about the events inside (their times, the last GTID).
 */
export interface BinlogSegment {
  /** The binlog file's name on the server, e.g. `binlog.000042` (no directory). */
  file: string;
  /** Byte offset in the file of the segment's first byte (0 for a file's first segment: it holds the magic). */
  offset: number;
  /** Offset just past its last byte: the next segment of the same file starts here. */
  end: number;
  /** The bytes, `end - offset` of them. */
  bytes: Buffer;
  /** Timestamp (the event header's, seconds since the epoch, as ms) of its first and last event; null when it has none (the magic alone). */
  firstEventMs: number | null;
  lastEventMs: number | null;
  /** The GTID (`domain-server-seq` on MariaDB) of the last transaction whose commit the segment holds, or null (none, or not known). */
  lastGtid: string | null;
  /**
   * True when this is the file's last segment: the server rotated to a new file after it. Such a
   * segment may hold no bytes (`offset = end`) when the file's end was learnt only after its last
   * bytes were stored (a server that crashed writes no rotate event at the end of its file).
   */
  closed: boolean;
}

/** Where the streamer resumes: the file and offset past what storage already holds. */
export interface StreamPosition {
  file: string;
  end: number;
  /** Whether storage holds the file's closing segment: the streamer then goes on with the next file. Absent means no. */
  closed?: boolean;
}

/**
 * Where the streamer puts segments (the archive, archive.ts): appended in stream order, each
 * stored durably before `append` resolves. `resume()` says what is stored already, so a
 * restarted streamer neither skips nor repeats a byte; undefined means nothing is (start at the
 * server's oldest or current file, as the streamer decides). `restart(reason)` is called when
 * the stream cannot continue where storage ends (the server no longer has that file): the
 * archive starts a new chain, and no restore may replay across the gap.
 */
export interface SegmentSink {
  resume(signal: AbortSignal): Promise<StreamPosition | undefined>;
  append(segment: BinlogSegment, signal: AbortSignal): Promise<void>;
  restart(reason: string, signal: AbortSignal): Promise<void>;
}

/** The sequence number of `binlog.000042`, or undefined for a name without one. */
export function binlogSequence(name: string): number | undefined {
  const match = /\.(\d+)$/.exec(name);
  return match ? Number(match[1]) : undefined;
}

/** Orders binlog file names by their number (binlog.999999 before binlog.1000000), other names by their text. */
export function binlogOrder(a: string, b: string): number {
  const [x, y] = [binlogSequence(a), binlogSequence(b)];
  if (x !== undefined && y !== undefined && a.slice(0, a.lastIndexOf('.')) === b.slice(0, b.lastIndexOf('.'))) return x - y;
  return a < b ? -1 : a > b ? 1 : 0;
}
