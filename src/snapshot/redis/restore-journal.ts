import { createHash } from 'node:crypto';
import { z } from 'zod';
import { CrashJournal } from '../crash-journal.ts';

const recordSchema = z.object({
  pid: z.number().int(),
  env: z.string(),
  service: z.string(),
  since: z.string(),
  /** The agent's one-shot master the target was made a replica of. */
  restoreFrom: z.object({ host: z.string(), port: z.number().int() }),
  /** sha256 of the one-time masterauth the restore set: the token itself is not kept. */
  tokenSha256: z.string(),
  /** The settings the restore changed, to be set back. */
  original: z.object({ disklessLoad: z.string(), masterauth: z.string() }),
});
export type InterruptedLoad = z.infer<typeof recordSchema>;

/**
 * A Redis restore in progress, journaled before the target is made a replica of the agent: an
 * agent killed during the load would otherwise leave it a read-only replica of a closed port
 * (writes refused) with a one-time masterauth. The file is 0600 in the 0700 state directory:
 * it holds the target's original masterauth, to set it back.
 */
export class RedisRestoreJournal extends CrashJournal<InterruptedLoad> {
  constructor(stateDir: string) {
    super(stateDir, 'redis-restores', recordSchema);
  }
}

export function tokenDigest(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}
