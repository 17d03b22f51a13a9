/**
 * The one catalogue of errors. Every failure the agent reports carries a stable `code`
 * (used by the CLI's exit codes, the JSON output and, later, the protocol's errors) and a
 * message that says what went wrong and what to do. `cause` keeps the original error.
 */

/** Exit codes are part of the CLI's contract (README "Exit codes"): never renumber them. */
export const ExitCode = {
  ok: 0,
  internal: 1,
  usage: 2,
  config: 3,
  notFound: 4,
  integrity: 5,
  storage: 6,
  capture: 7,
  restore: 8,
  cancelled: 9,
  unsafeArchive: 10,
  busy: 11,
  /** A job whose agent died (crash, SIGKILL, power) before it ended. */
  interrupted: 12,
  /** The daemon refused the token, or the token's role may not do this. */
  denied: 13,
  /** The daemon cannot be reached (--remote). */
  unavailable: 14,
  /** A per-environment limit (manual backups) is reached. */
  limit: 15,
  /** The file system holding the state directory is full (or its quota is used up). */
  noSpace: 16,
  /** Another node owns the environment, or made the backup (issue #11, docs/ownership.md). */
  otherNode: 17,
  /** The CLI was cancelled by Ctrl-C: 128 + SIGINT, as shells count. */
  sigint: 130,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** code → exit code. Adding a code means choosing its exit code here. */
const catalogue = {
  E_INTERNAL: ExitCode.internal,
  E_USAGE: ExitCode.usage,
  E_CONFIRMATION_REQUIRED: ExitCode.usage,
  E_INVALID_NAME: ExitCode.usage,
  E_CONFIG_INVALID: ExitCode.config,
  E_CONFIG_NOT_FOUND: ExitCode.config,
  E_SECRET_UNAVAILABLE: ExitCode.config,
  E_UNKNOWN_ENV: ExitCode.notFound,
  E_UNKNOWN_ELEMENT: ExitCode.notFound,
  E_BACKUP_NOT_FOUND: ExitCode.notFound,
  E_OBJECT_NOT_FOUND: ExitCode.notFound,
  E_MANIFEST_INVALID: ExitCode.integrity,
  /** A manifest without a valid MAC under the node's keys (issue #10). */
  E_MANIFEST_UNAUTHENTICATED: ExitCode.integrity,
  E_CHECKSUM_MISMATCH: ExitCode.integrity,
  E_SIZE_MISMATCH: ExitCode.integrity,
  /** A byte range past an object's end: the object is shorter than what was recorded of it. */
  E_OBJECT_RANGE: ExitCode.integrity,
  E_ARCHIVE_CORRUPT: ExitCode.integrity,
  /** An environment's repository (issue #13) cannot be opened: no key object under this node's keys, or one that does not open. */
  E_REPOSITORY_KEY: ExitCode.integrity,
  /** A blob of the repository is missing, changed, truncated or not indexed. */
  E_REPOSITORY_CORRUPT: ExitCode.integrity,
  /** Bytes that are not a well-formed binary log (v4): bad magic, an event size or end position that does not add up. */
  E_BINLOG_CORRUPT: ExitCode.integrity,
  /** The stored binlog of a point-in-time restore is missing a piece, or a piece does not verify (docs/pitr.md). */
  E_BINLOG_CHAIN: ExitCode.integrity,
  /** A point-in-time restore to a point the stored binlog and base backups do not cover. */
  E_PITR_OUT_OF_WINDOW: ExitCode.notFound,
  E_STORE_UNAVAILABLE: ExitCode.storage,
  E_STORE_IO: ExitCode.storage,
  /** A multipart upload aborted by another party mid-upload (issue #11): the backup can be retried. */
  E_UPLOAD_ABORTED: ExitCode.storage,
  E_PRESIGN_UNSUPPORTED: ExitCode.storage,
  E_CAPTURE_FAILED: ExitCode.capture,
  E_FREEZE_TIMEOUT: ExitCode.capture,
  /** The binary log stream (mariadb-binlog) cannot run or continue: client missing, server refuses, stream inconsistent. */
  E_BINLOG_STREAM: ExitCode.capture,
  E_RESTORE_FAILED: ExitCode.restore,
  E_CANCELLED: ExitCode.cancelled,
  E_UNSAFE_ARCHIVE_ENTRY: ExitCode.unsafeArchive,
  E_BUSY: ExitCode.busy,
  E_MANUAL_LIMIT: ExitCode.limit,
  E_NO_SPACE: ExitCode.noSpace,
  // Many nodes, one bucket (issue #11, docs/ownership.md).
  E_ENV_OWNED: ExitCode.otherNode,
  E_FOREIGN_BACKUP: ExitCode.otherNode,
  E_ENV_CLAIM_CONTENDED: ExitCode.busy,
  /** At the commit point an object the manifest would name is missing or has another size. */
  E_BACKUP_INCOMPLETE: ExitCode.storage,
  // Jobs, the daemon and its protocol (docs/protocol.md).
  E_JOB_NOT_FOUND: ExitCode.notFound,
  E_HOST_RESOURCES: ExitCode.busy,
  E_SHUTTING_DOWN: ExitCode.busy,
  E_INTERRUPTED: ExitCode.interrupted,
  E_UNAUTHORIZED: ExitCode.denied,
  E_FORBIDDEN: ExitCode.denied,
  E_DAEMON_UNAVAILABLE: ExitCode.unavailable,
  E_PARSE_ERROR: ExitCode.usage,
  E_INVALID_REQUEST: ExitCode.usage,
  E_METHOD_NOT_FOUND: ExitCode.usage,
  E_INVALID_PARAMS: ExitCode.usage,
  E_REQUEST_CONFLICT: ExitCode.usage,
  E_PROTOCOL: ExitCode.internal,
} as const satisfies Record<string, ExitCodeValue>;

export type ErrorCode = keyof typeof catalogue;

export class AgentError extends Error {
  override readonly name = 'AgentError';
  readonly code: ErrorCode;
  /** Structured facts for --json output and logs (never secrets). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.details = options?.details;
  }

  get exitCode(): ExitCodeValue {
    return catalogue[this.code];
  }
}

/** Whether a string is one of the catalogue's codes (e.g. one read back from the protocol). */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(catalogue, code);
}

export function isAgentError(error: unknown, code?: ErrorCode): error is AgentError {
  return error instanceof AgentError && (code === undefined || error.code === code);
}

/** Normalises anything thrown into an AgentError; an AbortSignal's reason becomes E_CANCELLED. */
export function toAgentError(error: unknown, fallback: ErrorCode = 'E_INTERNAL'): AgentError {
  if (error instanceof AgentError) return error;
  if (error instanceof Error && (error.name === 'AbortError' || (error as { code?: string }).code === 'ABORT_ERR')) {
    return new AgentError('E_CANCELLED', 'the operation was cancelled', { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new AgentError(fallback, message, { cause: error });
}

/**
 * A write into the state directory that failed for want of space (ENOSPC) or quota (EDQUOT)
 * becomes E_NO_SPACE naming the directory and the file: the errno's own message ("no space left
 * on device, write") names neither. Any other error is returned as it is.
 */
export function stateDirWriteError(error: unknown, stateDir: string, file: string): unknown {
  const errno = (error as NodeJS.ErrnoException | null)?.code;
  if (errno !== 'ENOSPC' && errno !== 'EDQUOT') return error;
  return new AgentError(
    'E_NO_SPACE',
    `the state directory ${stateDir} is out of ${errno === 'EDQUOT' ? 'disk quota' : 'space'} (${errno}): could not write ${file}; free space on its file system, or point stateDir in the config at a larger one`,
    { cause: error, details: { stateDir, file, errno } },
  );
}

/** Throws the signal's reason as E_CANCELLED if it has fired: call before each unit of work. */
export function throwIfCancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw cancelled(signal);
}

export function cancelled(signal: AbortSignal): AgentError {
  const reason: unknown = signal.reason;
  if (reason instanceof AgentError) return reason;
  return new AgentError('E_CANCELLED', 'the operation was cancelled', { cause: reason });
}
