import type { Logger } from 'pino';
import type { Config } from './config.ts';

export type Phase = 'prepare' | 'capture' | 'manifest' | 'download' | 'stage' | 'commit' | 'verify' | 'delete';

export interface ProgressEvent {
  phase: Phase;
  element?: string;
  /** Raw bytes done for `element` so far. */
  bytes?: number;
  /** Raw bytes expected for `element`, when known. */
  totalBytes?: number;
}

/** What every operation gets: the config it runs under, a logger, cancel, and progress. */
export interface OperationContext {
  config: Config;
  logger: Logger;
  signal: AbortSignal;
  /** The job this operation runs as, when it is one: journals name it for recovery. */
  jobId?: string;
  onProgress?: (event: ProgressEvent) => void;
}
