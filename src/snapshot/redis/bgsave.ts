import { performance } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import { AgentError, throwIfCancelled } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { backoff, info, infoNumber, keyspaceOf, logCursor, logSince, parseInfo, pause, replyText, warningsIn, type Info, type LogCursor } from './connection.ts';

/**
 * The write pause's own expiry. CLIENT PAUSE is sent in the same write as BGSAVE … UNPAUSE
 * (forkSave), so an agent that dies after sending it has sent the UNPAUSE too: the lease only
 * bounds a pause whose UNPAUSE never arrived (a connection cut inside those few hundred bytes).
 * Redis runs the five commands back to back, and the fork is inside BGSAVE (29–52 ms for
 * 5 M keys, MEASUREMENTS.md), so the lease never has to cover a round trip or the agent. It
 * is the 1 s the freeze promises writers at most after a crash.
 */
export const PAUSE_LEASE_MS = 1_000;

export interface ForkedSave {
  /** `rdb_saves` right after our fork (Redis ≥ 7.0 counts a save when it starts). */
  savesAtFork: number | undefined;
  /** Time between CLIENT PAUSE and the UNPAUSE reply; null in live mode. */
  pauseMs: number | null;
  /** How long Redis's fork took (INFO stats latest_fork_usec, right after ours); null when not reported. */
  forkUsec: number | null;
  keys: number;
  keyspace: string;
  warnings: string[];
  /** Where the Redis log ended before the BGSAVE: a failure's reason is logged after it. */
  log: LogCursor | undefined;
}

interface SaveOptions {
  consistent: boolean;
  signal: AbortSignal;
  /** Date.now() value after which the wait fails (saveTimeout). */
  deadline: number;
  timeoutMs: number;
  /** Used when UNPAUSE on the capture's own connection could not be confirmed. */
  unpauseElsewhere: () => Promise<void>;
}

/** Replies of a BGSAVE refused because another child (save, AOF rewrite, module) runs. */
const BUSY = /already in progress|another child process is active|rewriting in progress/i;

/**
 * Starts our own BGSAVE and resolves once Redis has forked: from then on the RDB's content is
 * fixed. A save or AOF rewrite already running is waited for first (outside any pause), so
 * the file we read is never one whose point in time predates the request. Consistent mode
 * holds `CLIENT PAUSE … WRITE` across the fork only: one pipeline — one write to the socket —
 * of CLIENT PAUSE, BGSAVE, INFO keyspace, INFO persistence and CLIENT UNPAUSE, which Redis runs
 * back to back (then INFO stats, for the fork's time, after the pause has ended). Nothing can stop the agent between the pause and the unpause: once the write
 * is made, both reach Redis whatever becomes of the agent (it runs commands it has read even
 * from a client that has gone). Not in MULTI: there BGSAVE only schedules a fork for later.
 */
export async function forkSave(client: Redis, options: SaveOptions): Promise<ForkedSave> {
  const { consistent, signal } = options;
  for (;;) {
    await waitForNoChild(client, options);
    const log = await logCursor(client);
    throwIfCancelled(signal);
    let replies: [Error | null, unknown][];
    let pauseMs: number | null = null;
    if (consistent) {
      const started = performance.now();
      let unpaused = false;
      try {
        const sent = client
          .pipeline()
          .call('CLIENT', 'PAUSE', String(PAUSE_LEASE_MS), 'WRITE')
          .call('BGSAVE')
          .call('INFO', 'keyspace')
          .call('INFO', 'persistence')
          .call('CLIENT', 'UNPAUSE')
          .call('INFO', 'stats') // after the unpause: the fork's time, without lengthening the pause
          .exec();
        await reachedPhase('redis:paused'); // the pipeline is written: the pause and its end are on their way
        replies = ((await sent) ?? []) as [Error | null, unknown][];
        unpaused = replies[4]?.[0] === null;
      } finally {
        pauseMs = performance.now() - started;
        if (!unpaused) await options.unpauseElsewhere().catch(() => {}); // the lease ends it otherwise
      }
      const [pauseError] = replies[0] ?? [new Error('no reply to CLIENT PAUSE')];
      if (pauseError) {
        throw new AgentError('E_CAPTURE_FAILED', `CLIENT PAUSE … WRITE was refused (${replyText(pauseError)}); a consistent Redis capture needs Redis 6.2 or later`, {
          cause: pauseError,
        });
      }
      replies = [...replies.slice(1, 4), ...replies.slice(5)]; // BGSAVE, INFO keyspace, INFO persistence, INFO stats
    } else {
      replies = ((await client.pipeline().call('BGSAVE').call('INFO', 'keyspace').call('INFO', 'persistence').call('INFO', 'stats').exec()) ?? []) as [Error | null, unknown][];
    }
    const [saveError] = replies[0] ?? [new Error('no reply to BGSAVE')];
    if (saveError) {
      if (BUSY.test(saveError.message)) continue; // someone else's child started in between: wait again
      throw new AgentError('E_CAPTURE_FAILED', `BGSAVE was refused: ${replyText(saveError)}`, { cause: saveError });
    }
    const { keys, keyspace } = keyspaceOf(parseInfo(String(replies[1]?.[1] ?? '')));
    const savesAtFork = infoNumber(parseInfo(String(replies[2]?.[1] ?? '')), 'rdb_saves');
    // Ours: no other child can fork while our save runs.
    const forkUsec = infoNumber(parseInfo(String(replies[3]?.[1] ?? '')), 'latest_fork_usec') ?? null;
    return { log, savesAtFork, pauseMs: pauseMs === null ? null : Math.round(pauseMs * 1000) / 1000, forkUsec, keys, keyspace, warnings: [] };
  }
}

/**
 * CLIENT PAUSE … WRITE came with Redis 6.2. Checked before the pipeline (by the driver's
 * prepare, before any freeze): there, a refused pause would not stop the BGSAVE behind it
 * from running unpaused. `server` is INFO server.
 */
export function requirePauseWrite(server: Info): void {
  const version = server.get('redis_version');
  const [major = 0, minor = 0] = (version ?? '').split('.').map(Number);
  if (version !== undefined && (major < 6 || (major === 6 && minor < 2))) {
    throw new AgentError('E_CAPTURE_FAILED', `Redis ${version} has no CLIENT PAUSE … WRITE; a consistent Redis capture needs Redis 6.2 or later (or back up with --live)`);
  }
}

/** Waits until no RDB save, AOF rewrite or module fork runs (Redis allows one child at a time). */
async function waitForNoChild(client: Redis, options: SaveOptions): Promise<void> {
  for (const ms of backoff()) {
    throwIfCancelled(options.signal);
    const fields = await info(client, 'persistence');
    const busy = ['rdb_bgsave_in_progress', 'aof_rewrite_in_progress', 'module_fork_in_progress'].filter((f) => fields.get(f) === '1');
    if (busy.length === 0) return;
    if (Date.now() > options.deadline) {
      throw new AgentError('E_CAPTURE_FAILED', `Redis was still busy with another background job (${busy.join(', ')}) after ${options.timeoutMs} ms (saveTimeout)`);
    }
    await pause(ms, options.signal);
  }
}

/**
 * Waits for our BGSAVE to end — no save in progress, or a later one started (`rdb_saves` past
 * its value at our fork) — then checks `rdb_last_bgsave_status:ok`. A failed save fails with
 * the reason from the Redis log when Redis writes one to a file.
 */
export async function waitForSave(client: Redis, fork: ForkedSave, options: Omit<SaveOptions, 'consistent' | 'unpauseElsewhere'>): Promise<void> {
  for (const ms of backoff()) {
    throwIfCancelled(options.signal);
    const fields = await info(client, 'persistence');
    const saves = infoNumber(fields, 'rdb_saves');
    const done = fields.get('rdb_bgsave_in_progress') === '0' || (fork.savesAtFork !== undefined && saves !== undefined && saves > fork.savesAtFork);
    if (done) {
      if (fields.get('rdb_last_bgsave_status') === 'ok') return;
      const lines = (await logSince(fork.log))?.filter((line) => !/Background saving error/.test(line));
      const reason = warningsIn(lines);
      throw new AgentError(
        'E_CAPTURE_FAILED',
        `BGSAVE failed (rdb_last_bgsave_status:${fields.get('rdb_last_bgsave_status') ?? '?'}): ${reason ?? 'see the Redis log for the reason'}`,
        { details: reason ? { reason } : undefined },
      );
    }
    if (Date.now() > options.deadline) {
      throw new AgentError('E_CAPTURE_FAILED', `BGSAVE did not finish within ${options.timeoutMs} ms (saveTimeout); it goes on in Redis, the backup stops`);
    }
    await pause(ms, options.signal);
  }
}
