import type { Readable } from 'node:stream';

export type Facts = Record<string, string | number | boolean | null>;

export interface CaptureResult {
  facts: Facts;
  warnings: string[];
}

/** One capture in progress: the stream of raw bytes, and how it ended. */
export interface Capture {
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

export interface CaptureOptions {
  signal: AbortSignal;
  /**
   * Consistent mode: capture() is called while the environment's writers are frozen and must
   * resolve as soon as this service's point in time is fixed — with no more work inside the
   * freeze than that. Live mode: read the service on its own, no locks beyond its own.
   */
  consistent: boolean;
}

/**
 * A restore in two steps, so that every element of a backup is fully received and verified
 * before any target changes: `stage` loads the data beside the target (a staging directory,
 * database or file) and only `commit` swaps it in. `discard` removes what was staged.
 */
export interface StagedRestore {
  facts: Facts;
  commit(): Promise<void>;
  discard(): Promise<void>;
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
  stage(source: Readable, signal: AbortSignal): Promise<StagedRestore>;
  /**
   * Whether the restore target holds anything to keep (the pre-restore safety backup skips
   * elements whose target does not exist: a mount path or a database not created yet).
   */
  targetExists(signal: AbortSignal): Promise<boolean>;
}
