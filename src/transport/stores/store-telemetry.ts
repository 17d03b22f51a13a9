import type { Logger } from 'pino';

/**
 * What the stores tell the rest of the process about failed requests, without knowing who
 * listens: the agent's logs and its /metrics subscribe here (the transport layer imports
 * nothing from src/agent). Process-wide, since stores are opened per operation and die with it.
 */

/**
 * One failed attempt of a store request (an S3 call). Never holds keys, URLs or headers. An
 * answer that an object does not exist is not a failure and is not reported.
 */
export interface StoreRequestFailure {
  /** The configured store's name. */
  store: string;
  /** The S3 operation: UploadPart, GetObject, … */
  operation: string;
  /** Which attempt failed: 1 for the first. */
  attempt: number;
  /** The S3 error code (SlowDown), the system error (ECONNRESET) or TimeoutError. */
  code: string;
  /** The HTTP status of the answer, when one came. */
  status: number | undefined;
  /** No answer in time: connectTimeout or requestTimeout ran out. */
  timeout: boolean;
  /** Whether the request is tried again (false: its error is the operation's). */
  willRetry: boolean;
}

export type StoreRequestFailureListener = (failure: StoreRequestFailure) => void;

/**
 * Incomplete uploads (S3 multipart uploads, fs temp files) that a sweep aborted: left by a
 * crashed or cut-off run, found by the next start or backup. Reported by whoever swept.
 */
export interface OrphanUploadsAborted {
  /** The configured store's name. */
  store: string;
  count: number;
}

/** One kind of report: subscribe, and report to every subscriber. */
function topic<T>(): { on(listener: (event: T) => void): () => void; report(event: T): void } {
  // Entries, not the listeners themselves: the same function subscribed twice is two subscriptions.
  const listeners = new Set<{ listener: (event: T) => void }>();
  return {
    on(listener) {
      const entry = { listener };
      listeners.add(entry);
      return () => listeners.delete(entry);
    },
    report(event) {
      for (const { listener } of listeners) {
        try {
          listener(event);
        } catch {
          // An observer's bug must not turn into a store failure.
        }
      }
    },
  };
}

const requestFailures = topic<StoreRequestFailure>();
const orphanUploads = topic<OrphanUploadsAborted>();

/** Calls `listener` for every failed store request attempt from now on; returns the unsubscribe. */
export const onStoreRequestFailure: (listener: StoreRequestFailureListener) => () => void = requestFailures.on;

/** Called by the stores for each failed attempt. A listener that throws never fails the request. */
export const reportStoreRequestFailure: (failure: StoreRequestFailure) => void = requestFailures.report;

/** Calls `listener` for every sweep that aborted incomplete uploads from now on; returns the unsubscribe. */
export const onOrphanUploadsAborted: (listener: (event: OrphanUploadsAborted) => void) => () => void = orphanUploads.on;

/** Called after a sweep that aborted some (count > 0). */
export const reportOrphanUploadsAborted: (event: OrphanUploadsAborted) => void = orphanUploads.report;

/**
 * Logs every attempt that will be retried at warn, so a struggling store is visible before it
 * fails anything. The last failure of a request is not logged here: it is the operation's error.
 */
export function logStoreRetries(logger: Logger): () => void {
  return onStoreRequestFailure(({ store, operation, attempt, code, status, timeout, willRetry }) => {
    if (!willRetry) return;
    const what = status === undefined ? code : `${status} ${code}`;
    logger.warn({ store, operation, attempt, code, status, timeout }, `store ${store}: ${operation} attempt ${attempt} failed (${what}); retrying`);
  });
}
