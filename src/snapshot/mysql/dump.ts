import { createInterface } from 'node:readline';
import { PassThrough, type Readable } from 'node:stream';
import { execa } from 'execa';
import { AgentError, cancelled } from '../../errors.ts';
import { clientArgs, clientProcessOptions, type DefaultsFile } from './connection.ts';
import { BLOCK_BYTES } from '../compression.ts';
import type { DumpOutput } from './dump-output.ts';
import type { DumpClient, ServerFlavour } from './flavour.ts';

/** mysqldump's options; --verbose is for us: it tells when the snapshot is open (see below). */
export const DUMP_OPTIONS = [
  '--verbose',
  '--single-transaction',
  '--quick',
  '--routines',
  '--triggers',
  '--events',
  '--hex-blob',
  '--default-character-set=utf8mb4',
  // Tablespaces matter for NDB only, and the query needs PROCESS on MySQL 8.
  '--no-tablespaces',
  '--max-allowed-packet=1G',
];

/**
 * DUMP_OPTIONS and what this client and server need besides (MariaDB's client: nothing, so a
 * MariaDB dump is as it always was). Oracle's mysqldump (Percona's too) writes, for a server
 * with GTIDs, `SET @@SESSION.SQL_LOG_BIN= 0` and `SET @@GLOBAL.GTID_PURGED=…`: a restore into
 * the same server would fail (its GTIDs are already executed) and its replicas would never see
 * the restored writes. --set-gtid-purged=OFF writes neither (the restore drops them from older
 * backups: dropped-statements.ts). Early 8.0 clients also add ANALYZE TABLE … UPDATE
 * HISTOGRAM by default, which is not a statement a restore runs, and which fails against
 * MariaDB and 5.7 (no COLUMN_STATISTICS): --column-statistics=0, an 8.0 client option.
 */
export function dumpOptions(server: ServerFlavour, client: DumpClient): string[] {
  const options = [...DUMP_OPTIONS];
  if (client.flavour === 'mysql') {
    if (server.flavour !== 'mariadb') options.push('--set-gtid-purged=OFF');
    if (Number(client.version.split('.')[0]) >= 8) options.push('--column-statistics=0');
  }
  return options;
}

const MAX_MESSAGES = 40;

export interface RunningDump {
  /** Our header line, then mysqldump's output; fails with an AgentError when mysqldump fails. */
  stream: Readable;
  /**
   * Resolves once mysqldump's `START TRANSACTION WITH CONSISTENT SNAPSHOT` has returned (or the
   * dump has already ended well); rejects when mysqldump failed before.
   */
  snapshotOpen: Promise<void>;
  /** Settles when mysqldump has exited: its warnings on success, an AgentError otherwise. */
  done: Promise<{ warnings: string[] }>;
  pid: number | undefined;
  kill(): void;
}

/**
 * Starts `mysqldump <options> --result-file=<output's FIFO> --databases …`; `stream` is the
 * output's (header line first), ended only once mysqldump has exited well.
 * Its stderr is read line by line: with --verbose mysqldump prints "-- Starting transaction..."
 * just before START TRANSACTION WITH CONSISTENT SNAPSHOT and its next progress line only after it returned,
 * which is how the consistent capture knows when it may release FLUSH TABLES WITH READ LOCK
 * (information_schema.INNODB_TRX would do too, but it is refreshed only every 100 ms).
 */
export function startDump(defaults: DefaultsFile, options: readonly string[], databases: readonly string[], output: DumpOutput, signal: AbortSignal): RunningDump {
  const subprocess = execa('mysqldump', [...clientArgs(defaults), ...options, `--result-file=${output.fifo}`, '--databases', ...databases], {
    ...clientProcessOptions(signal),
    stdin: 'ignore',
    stdout: 'ignore',
  });

  const messages: string[] = [];
  const snapshot = deferred();
  let startingTransaction = false;
  createInterface({ input: subprocess.stderr, crlfDelay: Infinity }).on('line', (line) => {
    if (line.startsWith('-- ') && !/^-- (warning|error)/i.test(line)) {
      if (startingTransaction) snapshot.resolve();
      if (line.startsWith('-- Starting transaction')) startingTransaction = true;
      return;
    }
    if (line.trim() && messages.length < MAX_MESSAGES) messages.push(line.trim());
  });

  const done = (async () => {
    try {
      await subprocess;
    } catch (error) {
      throw dumpError(error, messages, signal);
    } finally {
      // mysqldump has exited: with the output's own hold on the FIFO let go, its reader reads the end.
      await output.close();
    }
    return { warnings: messages.map((m) => `mysqldump: ${m.replace(/^mysqldump: /, '')}`) };
  })();
  done.then(
    () => snapshot.resolve(),
    (error: unknown) => snapshot.reject(error),
  );
  snapshot.promise.catch(() => {});
  done.catch(() => {});

  // The output's end of file says only that mysqldump closed it: the dump ends once it has
  // exited well, and fails with why it did not (its stderr) otherwise.
  const stream = new PassThrough({ highWaterMark: BLOCK_BYTES });
  // mysqldump may fail before the caller has attached to the stream (capture() has not returned
  // yet): without a listener that 'error' would crash the agent. pipeline() still sees it.
  stream.on('error', () => {});
  const source = output.stream;
  const finish = (error?: Error) =>
    done.then(
      () => (error ? stream.destroy(error) : stream.end()),
      (failure: unknown) => stream.destroy(failure as Error),
    );
  source.on('error', (error) => void finish(error));
  source.on('end', () => void finish());
  source.pipe(stream, { end: false });
  // A consumer that gives up (upload failed, cancel) stops the dump.
  stream.on('close', () => {
    if (stream.readableEnded) return;
    source.destroy();
    subprocess.kill('SIGKILL');
  });

  return {
    stream,
    snapshotOpen: snapshot.promise,
    done,
    pid: subprocess.pid,
    kill: () => {
      subprocess.kill('SIGKILL');
    },
  };
}

function deferred(): { promise: Promise<void>; resolve(): void; reject(error: unknown): void } {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function dumpError(error: unknown, messages: readonly string[], signal: AbortSignal): AgentError {
  if (signal.aborted) return cancelled(signal);
  const e = error as { exitCode?: number; signal?: string; code?: string; message?: string };
  if (e.code === 'ENOENT') {
    return new AgentError('E_CAPTURE_FAILED', 'mysqldump is not installed (install mariadb-client or mysql-client)', { cause: error });
  }
  const how = e.exitCode !== undefined ? `exit code ${e.exitCode}` : e.signal ? `killed by ${e.signal}` : (e.message ?? 'unknown failure');
  const text = messages.join('; ');
  const hint = /access denied|authentication/i.test(text) ? 'authentication failed (check the service user and password): ' : '';
  return new AgentError('E_CAPTURE_FAILED', `mysqldump failed (${how}): ${hint}${text || 'no error message'}`, {
    cause: error,
    details: { exitCode: e.exitCode ?? null },
  });
}
