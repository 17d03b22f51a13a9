import { createInterface } from 'node:readline';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { AgentError, cancelled, toAgentError } from '../../errors.ts';
import { clientArgs, clientProcessOptions, type DefaultsFile } from './connection.ts';

const LOAD_OPTIONS = [
  '--default-character-set=utf8mb4',
  '--batch',
  // Bytes as they are: no \r\n → \n in routine bodies, no client commands but DELIMITER.
  '--binary-mode',
  // The client strips comments by default, the ones inside routine and trigger bodies too.
  '--comments',
  // A dropped connection must fail the load, never resume it half way on a new session.
  '--skip-reconnect',
  '--max-allowed-packet=1G',
];

const MAX_MESSAGES = 20;

/**
 * Replays the dump into the staging databases: source → rewriter → `mysql` stdin, streamed
 * (the rewriter: rewrite.ts for a dump, binlog-replay.ts's filter for a binary log).
 * When the source or the rewriter fails (a checksum mismatch at the very end included), mysql is
 * killed before it can run a half-received statement; when mysql fails, its own message wins.
 */
export async function loadDump(defaults: DefaultsFile, source: Readable, rewriter: Transform, signal: AbortSignal): Promise<void> {
  const subprocess = execa('mysql', [...clientArgs(defaults), ...LOAD_OPTIONS], {
    ...clientProcessOptions(signal),
    stdin: 'pipe',
    stdout: 'ignore',
  });

  const messages: string[] = [];
  createInterface({ input: subprocess.stderr, crlfDelay: Infinity }).on('line', (line) => {
    if (line.trim() && messages.length < MAX_MESSAGES) messages.push(line.trim());
  });
  const feeding = pipeline(source, rewriter, subprocess.stdin, { signal });
  feeding.catch(() => subprocess.kill('SIGKILL'));
  const [fed, exited] = await Promise.allSettled([feeding, subprocess]);
  if (signal.aborted) throw cancelled(signal);
  // Our own refusal (a statement the rewriter would not pass, a damaged source) is the story even
  // when mysql, its stdin closed, exited before the kill: it only ever got the checked statements.
  if (fed.status === 'rejected' && fed.reason instanceof AgentError) throw fed.reason;
  if (exited.status === 'rejected') {
    const e = exited.reason as { exitCode?: number; signal?: string; code?: string };
    if (e.code === 'ENOENT') throw new AgentError('E_RESTORE_FAILED', 'the mysql client is not installed (install mariadb-client or mysql-client)', { cause: e });
    // Killed by us: the feeding's failure is the story. Otherwise mysql's own.
    if (e.signal !== 'SIGKILL' || fed.status === 'fulfilled') {
      // mysql echoes the failing statement between dashes; its ERROR line says it all.
      const errors = messages.filter((m) => m.startsWith('ERROR'));
      const text = (errors.length ? errors : messages.filter((m) => !/^-+$/.test(m))).join('; ');
      const hint = /access denied/i.test(text) ? 'authentication failed (check the service user and password): ' : '';
      throw new AgentError('E_RESTORE_FAILED', `mysql failed loading the dump into staging (${e.exitCode !== undefined ? `exit code ${e.exitCode}` : `killed by ${e.signal}`}): ${hint}${text || 'no error message'}`, {
        cause: e,
      });
    }
  }
  if (fed.status === 'rejected') throw toAgentError(fed.reason, 'E_RESTORE_FAILED');
}
