/**
 * What an operation (a backup, a restore, …) reports as it goes: the pipeline emits these, the
 * job engine folds them into a job's progress, and the CLI and the protocol show that.
 */
export type Phase = 'prepare' | 'capture' | 'manifest' | 'download' | 'stage' | 'commit' | 'verify' | 'delete';

export interface ProgressEvent {
  phase: Phase;
  element?: string;
  /** Raw bytes done for `element` so far. */
  bytes?: number;
  /** Raw bytes expected for `element`, when known. */
  totalBytes?: number;
}
