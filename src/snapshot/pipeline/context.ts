import type { Logger } from 'pino';
import type { ProgressEvent } from '../../progress.ts';

/**
 * What a backup or a restore runs with: a logger, cancel and progress — never the config. The
 * caller (the job or the CLI, src/agent) builds from the config everything the run needs and
 * hands it in (BackupSetup, RestoreSetup).
 */
export interface RunContext {
  logger: Logger;
  signal: AbortSignal;
  /** The job this run is, when it is one: journals name it for recovery. */
  jobId?: string;
  onProgress?: (event: ProgressEvent) => void;
}
