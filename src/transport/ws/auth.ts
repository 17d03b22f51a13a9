import { createHash, timingSafeEqual } from 'node:crypto';
import { AgentError } from '../../errors.ts';
import { readSecretFile } from '../../secret-file.ts';
import type { Role } from './protocol.ts';

interface Entry {
  digest: Buffer;
  role: Role;
}

/**
 * The daemon's bearer tokens: read from the configured files (one token per line), kept only
 * as SHA-256 digests, and compared in constant time — every configured digest is compared,
 * equal-length buffers, no early exit — so neither the content nor the position of a token
 * leaks through timing.
 */
export class TokenRing {
  readonly #entries: Entry[];

  private constructor(entries: Entry[]) {
    this.#entries = entries;
  }

  get size(): number {
    return this.#entries.length;
  }

  static async load(files: readonly { file: string; role: Role }[]): Promise<TokenRing> {
    const entries: Entry[] = [];
    for (const { file, role } of files) {
      for (const token of await readTokenFile(file, 'daemon.tokens')) {
        if (token.length < 16) throw new AgentError('E_CONFIG_INVALID', `daemon.tokens: a token in ${file} is shorter than 16 characters`);
        entries.push({ digest: digest(token), role });
      }
    }
    return new TokenRing(entries);
  }

  /** The role of the bearer token in an Authorization header, or undefined. */
  authenticate(header: string | undefined): Role | undefined {
    const match = header === undefined ? null : /^Bearer[ ]+([^\s]+)\s*$/i.exec(header);
    if (!match) return undefined;
    const presented = digest(match[1]!);
    let role: Role | undefined;
    for (const entry of this.#entries) {
      if (timingSafeEqual(presented, entry.digest) && role !== 'admin') role = entry.role;
    }
    return role;
  }
}

/**
 * The tokens of a token file: one per line, blank lines and `# comments` skipped. The daemon's
 * files and the CLI's --token-file are read by this one function, so a file the daemon accepts
 * works for the client too. The file must be private (readSecretFile: mode 0600, owned by root
 * or the agent's user) and hold at least one token: an empty file is a mistake, not "nobody".
 * `what` names the setting in the error.
 */
export async function readTokenFile(file: string, what: string): Promise<[string, ...string[]]> {
  const tokens = (await readSecretFile(file, what))
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith('#'));
  const [first, ...rest] = tokens;
  if (first === undefined) throw new AgentError('E_SECRET_UNAVAILABLE', `${what}: ${file} holds no token (only blank lines or # comments)`, { details: { file } });
  return [first, ...rest];
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}
