import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { AgentError } from './errors.ts';

/**
 * Reads a file that holds a secret (a password, an S3 key, a bearer token, a key file), sshd
 * style: it must be a regular file that neither group nor others can read, write or run
 * (`mode & 0o077 === 0`), owned by root or by the user the agent runs as. A symlink is
 * followed and the target is what counts: the checks are made on the opened descriptor
 * (fstat), so the file judged is the file read — a swap between check and read is not
 * possible. Every refusal is E_SECRET_UNAVAILABLE (exit 3) naming the file, what is wrong and
 * the fix. `what` names the setting (`stores.ceph.secretAccessKey`, `--token-file`).
 *
 * Returns the content as it is; its callers refuse an empty secret (readSecret, readTokenFile).
 */
export async function readSecretFile(file: string, what: string): Promise<string> {
  let handle;
  try {
    // O_NONBLOCK: a FIFO at the path must not hang the agent (it is refused below).
    handle = await open(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    throw unreadable(what, file, error);
  }
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw refused(what, file, 'is not a regular file', 'point the setting at a regular file');
    const mode = stat.mode & 0o7777;
    if ((mode & 0o077) !== 0) {
      throw refused(what, file, `is accessible by group or others (mode ${octal(mode)}); a secret must be private to its owner`, `chmod 600 ${file}`, { mode: octal(mode) });
    }
    const me = process.geteuid?.();
    if (stat.uid !== 0 && stat.uid !== me) {
      throw refused(what, file, `is owned by uid ${stat.uid}, neither root nor the agent's user (uid ${me})`, `chown ${me ?? 0} ${file}`, { uid: stat.uid });
    }
    return await handle.readFile('utf8');
  } catch (error) {
    throw error instanceof AgentError ? error : unreadable(what, file, error);
  } finally {
    await handle.close();
  }
}

function unreadable(what: string, file: string, error: unknown): AgentError {
  const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  return new AgentError('E_SECRET_UNAVAILABLE', `${what}: cannot read secret file ${file}: ${reason}`, { cause: error, details: { file } });
}

function refused(what: string, file: string, problem: string, fix: string, details: Record<string, unknown> = {}): AgentError {
  return new AgentError('E_SECRET_UNAVAILABLE', `${what}: secret file ${file} ${problem}: ${fix}`, { details: { file, ...details } });
}

function octal(mode: number): string {
  return mode.toString(8).padStart(4, '0');
}
