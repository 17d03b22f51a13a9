import type { Readable } from 'node:stream';
import type { BinlogPoint } from './binlog/archive.ts';
import type { ReplayStop } from './binlog/gather.ts';

export type Facts = Record<string, string | number | boolean | null>;

export interface CaptureResult {
  facts: Facts;
  warnings: string[];
}

/** One capture in progress: the stream of raw bytes, and how it ended. */
export interface Capture {
  /** The element's bytes; with `segments` asked for (files), FileSegment marks between them, in object mode. */
  stream: Readable;
  /** Settles after `stream` ended; rejects when the producer failed (the element fails). */
  result: Promise<CaptureResult>;
  /**
   * True when the data was fixed when capture() resolved (a transaction snapshot, a fork, a
   * filesystem snapshot); false when the stream reads live data, so a consistent backup must
   * keep the writers frozen until the stream has ended.
   */
  pointInTime: boolean;
  /** Releases what the capture holds (snapshots, temp files) once the stream is done or abandoned. */
  release(): Promise<void>;
}

/**
 * A capture made ready before a consistent backup freezes the writers (issue #14 §4): the
 * connections opened and authenticated, the versions, databases and paths checked — whatever
 * does not need the writers paused — so that inside the freeze only the point-in-time work
 * remains. Its caller releases it on every path; once `capture` has been called, what was
 * prepared is the capture's, which closes it whether it resolves or rejects.
 */
export interface PreparedCapture {
  /**
   * Fixes the point in time on what was prepared (called at most once); `signal` is the
   * freeze's (the backup's cancel and the lease's deadline), which may be another than prepare's.
   */
  capture(signal: AbortSignal): Promise<Capture>;
  /** Closes what was prepared and not handed over to a Capture; safe at any point, more than once. */
  release(): Promise<void>;
}

export interface CaptureOptions {
  signal: AbortSignal;
  /**
   * Consistent mode: capture() is called while the environment's writers are frozen and must
   * resolve as soon as this service's point in time is fixed — with no more work inside the
   * freeze than that. Live mode: read the service on its own, no locks beyond its own.
   */
  consistent: boolean;
  /**
   * A pre-restore safety backup: keep whatever part of the target exists (some of a service's
   * databases) instead of failing on what does not exist yet.
   */
  partial?: boolean;
  /**
   * Files into a repository (issue #13): mark each file's bytes in the stream (FileSegment), and
   * do not read a file whose signature (fileSignature) is the one `parent` gives for its path —
   * the parent snapshot holds it unchanged. Other drivers ignore this.
   */
  segments?: { parent: ReadonlyMap<string, string> };
}

/**
 * Between the bytes of a files capture with segments: the next `bytes` bytes are the tar entry of
 * `file` (header to padding), or — `reused` — the entry is the parent snapshot's, not sent.
 */
export type FileSegment = { file: string; signature: string; reused: false; bytes: number } | { file: string; signature: string; reused: true };

export function isFileSegment(item: unknown): item is FileSegment {
  return typeof item === 'object' && item !== null && !Buffer.isBuffer(item) && 'file' in item;
}

/**
 * A restore in two steps, so that every element of a backup is fully received and verified
 * before any target changes: `stage` loads the data beside the target (a staging directory,
 * database or file) and only `commit` swaps it in. `discard` removes what was staged.
 * A commit that fails keeps what it needs to be finished by `resumeCommit` (the restore is
 * rolled forward, never left half done); `discard` is only for a restore that never committed.
 */
export interface StagedRestore {
  facts: Facts;
  commit(): Promise<void>;
  discard(): Promise<void>;
}

/**
 * What a driver journals about a restore in progress: where its staged data lives and how to
 * finish swapping it in. Plain JSON, written to the state directory before the driver creates
 * anything (so a crash leaves nothing unnamed) and again when it changes; read back after a
 * crash by `resumeCommit` or `discardStaged`, which validate it.
 */
export type StagedState = Record<string, unknown>;

export interface StageOptions {
  /** Raw bytes the source holds (the manifest's): the free-space check before staging. */
  rawBytes?: number;
  /** The element's facts from the backup (what the capture recorded: sizes, counts). */
  facts?: Facts;
  /** A directory under the state dir owned by this restore, for staged files (an RDB). */
  stagingDir?: string;
  /** Journals `state`; awaited before the driver creates what it names. */
  journal?: (state: StagedState) => Promise<void>;
  /**
   * Point-in-time restore (mysql only): the binlog to replay on the staged copy before it is
   * swapped in, still being gathered while the dump loads (the driver awaits it after the load).
   */
  replay?: Promise<BinlogReplayPlan>;
}

/** A point-in-time restore's binlog, gathered and verified (binlog/gather.ts): the files, where the base backup starts in them, where to stop. */
export interface BinlogReplayPlan {
  files: string[];
  start: BinlogPoint;
  stop: ReplayStop;
}

/**
 * A service kind's capture and replay, nothing else: compression, hashing and storage are the
 * pipeline's. `stage` consumes the decompressed stream; it must leave the target untouched, and
 * it must reject (having cleaned up) when the stream fails, including at its very end.
 */
export interface ServiceDriver {
  readonly kind: 'files' | 'mysql' | 'redis';
  /** The archive format, the first part of the object's extension. */
  readonly format: 'tar' | 'sql' | 'rdb';
  /** Raw bytes expected, for progress; undefined when unknown. */
  estimateBytes(signal: AbortSignal): Promise<number | undefined>;
  /** Resolves once the service's point in time is fixed; the stream carries the data. */
  capture(options: CaptureOptions): Promise<Capture>;
  /**
   * The part of `capture` that needs no writers paused, run before a consistent backup's
   * freeze; rejects (having closed what it opened) when the capture cannot be made. A driver
   * without it does all of `capture` inside the freeze (files: its checks are of the mount
   * being frozen).
   */
  prepare?(options: CaptureOptions): Promise<PreparedCapture>;
  stage(source: Readable, signal: AbortSignal, options?: StageOptions): Promise<StagedRestore>;
  /**
   * Finishes the commit of a staged restore that a crash (or a failed commit) interrupted,
   * from the state `stage` journaled last; safe to run again at any point of an earlier run.
   */
  resumeCommit(state: StagedState, signal: AbortSignal): Promise<void>;
  /** Removes what an interrupted `stage` created (its journaled state); the target is untouched. */
  discardStaged(state: StagedState): Promise<void>;
  /**
   * Whether the restore target holds anything to keep (the pre-restore safety backup skips
   * elements whose target does not exist: a mount path or a database not created yet).
   */
  targetExists(signal: AbortSignal): Promise<boolean>;
}

/**
 * A PreparedCapture whose `capture` takes over what was prepared (it closes it on every path)
 * and whose `release` closes it only while nothing took it over.
 */
export function handOver(capture: (signal: AbortSignal) => Promise<Capture>, close: () => void | Promise<void>): PreparedCapture {
  let handedOver = false;
  return {
    capture: (signal) => {
      handedOver = true;
      return capture(signal);
    },
    release: async () => {
      if (!handedOver) await close();
    },
  };
}

/** `capture` as one step: what a driver with `prepare` captures with outside a freeze (live mode, tests). */
export async function captureAtOnce(prepared: PreparedCapture, signal: AbortSignal): Promise<Capture> {
  try {
    return await prepared.capture(signal);
  } finally {
    await prepared.release();
  }
}
