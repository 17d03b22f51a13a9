import type { Phase } from './progress.ts';

/**
 * Jobs as they cross process boundaries: the records in `<stateDir>/jobs/` (every agent process
 * of the node reads them) and what the control-plane protocol carries (requests, records, events).
 * Every operation that changes or reads a whole backup is a job with an id, persisted by the
 * process that runs it (the daemon, or an SRE's CLI run).
 */
/** The backup id of `backup verify ENV all`: no backup id has this form. */
export const VERIFY_ALL = 'all';

export const JOB_KINDS = ['backup.create', 'backup.restore', 'backup.delete', 'backup.verify', 'backup.prune'] as const;
export type JobKind = (typeof JOB_KINDS)[number];

export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];
export const FINISHED_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];

/** `job-` + a backup-id-like stamp: unique, URL-safe, sorts by creation time. */
export const JOB_ID_PATTERN = /^job-[0-9]{8}T[0-9]{9}Z-[a-z0-9]{8}$/;

/** What a caller asks for: names only (environments, services, backups), never paths or commands. */
export type JobRequest =
  | {
      kind: 'backup.create';
      env: string;
      live?: boolean;
      elements?: string[];
      keepForMs?: number;
      codeRef?: string;
      /** 'scheduled': the daemon's schedule or an external timer (not counted against manualLimit). */
      trigger?: 'manual' | 'scheduled';
      /** Over manualLimit: delete the oldest manual backup(s) once this one is committed. */
      replaceOldest?: boolean;
    }
  | {
      kind: 'backup.restore';
      env: string;
      /** Left out with toTime/toPosition: the newest base backup before that point. */
      id?: string;
      /** Point-in-time restore (docs/pitr.md): ISO 8601 time, or FILE:POSITION in the binlog. */
      toTime?: string;
      toPosition?: string;
      toGtid?: string;
      target?: string;
      elements?: string[];
      /** false: no safety backup of the target first. */
      safetyBackup?: boolean;
      /** Accept a manifest without a MAC (made before keys existed); an invalid MAC is always refused. */
      allowUnauthenticated?: boolean;
      /** The node that made the backup, when not this one: the explicit choice to restore its data (issue #11). */
      fromNode?: string;
    }
  | { kind: 'backup.delete'; env: string; id: string }
  /** id: a backup's, or VERIFY_ALL for every backup of the environment (a damaged chunk names each backup that holds it). */
  | { kind: 'backup.verify'; env: string; id: string; allowUnauthenticated?: boolean; readData?: boolean }
  | { kind: 'backup.prune'; env: string; dryRun?: boolean };

/** A request as the engine runs it: a backup gets its id when it is queued. */
export type JobSpec = Exclude<JobRequest, { kind: 'backup.create' }> | (Extract<JobRequest, { kind: 'backup.create' }> & { backupId: string });

/** The process that owns (runs) a job; its start time tells a live owner from a reused pid. */
export interface JobOwner {
  pid: number;
  startTime: number | null;
  program: 'daemon' | 'cli';
}

export interface ElementProgress {
  bytes: number;
  totalBytes?: number;
}

export interface JobProgress {
  phase: Phase;
  element?: string;
  /** Raw bytes done per element, with the expected total where it is known. */
  elements: Record<string, ElementProgress>;
  /** Raw bytes done, all elements. */
  bytes: number;
  /** Bytes per second over the last seconds. */
  rate?: number;
  /** Seconds left for the current element, where its size is known. */
  etaSeconds?: number;
  updatedAt: string;
}

export interface JobError {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

export interface JobRecord {
  id: string;
  kind: JobKind;
  /** The environment the job locks: the restore target for restores. */
  env: string;
  spec: JobSpec;
  backupId?: string;
  requestId?: string;
  state: JobState;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  owner: JobOwner;
  /** While queued: 1-based place in its agent's queue, and why it cannot start yet. */
  position?: number;
  waitingFor?: string;
  cancelRequested?: boolean;
  progress?: JobProgress;
  /** The operation's result: the manifest, the restore summary, the verify checks… */
  result?: unknown;
  error?: JobError;
}

/** What a job's watchers see: a change of its state or place in the queue, its progress, its end. */
export type JobEvent = { type: 'changed' | 'progress' | 'finished'; job: JobRecord };

export function isFinished(state: JobState): boolean {
  return FINISHED_STATES.includes(state);
}
