import { performance } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import { AgentError } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import type { Facts } from '../driver.ts';
import { backoff, configGet, describeAddress, info, infoNumber, keyspaceOf, logCursor, logSince, pause, replyText, warningsIn, type Info, type RedisAddress } from './connection.ts';
import { tokenDigest, type InterruptedLoad } from './restore-journal.ts';
import { SyncSource } from './sync-source.ts';

export interface TargetFacts {
  version: string | undefined;
}

/**
 * Refuses a target that cannot take a full resync from us: a replica (restore its master; the
 * replicas follow), a cluster node, a server that is loading or failing over.
 */
export async function checkTarget(client: Redis, address: RedisAddress): Promise<TargetFacts> {
  const fields = await info(client, 'server', 'replication', 'persistence', 'cluster');
  refuseUnfit(fields, address);
  return { version: fields.get('redis_version') };
}

function refuseUnfit(fields: Info, address: RedisAddress): void {
  const where = `the target Redis at ${describeAddress(address)}`;
  if (fields.get('role') !== 'master') {
    throw new AgentError(
      'E_RESTORE_FAILED',
      `${where} is a replica of ${fields.get('master_host') ?? '?'}:${fields.get('master_port') ?? '?'}: restore into its master, the replicas follow`,
    );
  }
  if (fields.get('cluster_enabled') === '1') throw new AgentError('E_RESTORE_FAILED', `${where} is a Redis Cluster node, which this driver does not restore`);
  if (fields.get('loading') === '1' || fields.get('async_loading') === '1') throw new AgentError('E_RESTORE_FAILED', `${where} is still loading its data; try again when it is up`);
  const failover = fields.get('master_failover_state');
  if (failover !== undefined && failover !== 'no-failover') throw new AgentError('E_RESTORE_FAILED', `${where} is in a failover (${failover}); try again later`);
}

export interface LoadOptions {
  /** The verified RDB to load. */
  file: string;
  bytes: number;
  /** The whole transfer and load (saveTimeout). */
  timeoutMs: number;
  address: RedisAddress;
  /** One-time masterauth: only the target gets the data from our port. */
  token: string;
  /**
   * Called before the target is changed, with what a crash would leave to undo; the function
   * it returns is called once everything is undone (not when the target stays a replica).
   */
  journal?: (load: Pick<InterruptedLoad, 'restoreFrom' | 'original'>) => Promise<() => Promise<void>>;
}

/**
 * Replaces the target's whole data set with the RDB through a full resync:
 *
 * 1. the agent listens as a one-shot master (SyncSource) on the address it reaches the target
 *    from; the target gets `repl-diskless-load disabled` and a one-time `masterauth`;
 * 2. `REPLICAOF host port`: the target writes the whole payload to a temp file — until then
 *    its data is untouched, and a failed transfer changes nothing — renames it over its dump
 *    file, flushes, loads it;
 * 3. once `master_link_status:up`, `master_sync_in_progress:0` and `loading:0`: `REPLICAOF NO
 *    ONE`, so it is a writable master again;
 * 4. with AOF on, Redis rewrites its AOF from the loaded data after the sync: the restore ends
 *    only when that rewrite has succeeded, since until then a restart would load the old AOF;
 * 5. the original `repl-diskless-load` and `masterauth` are set back, the port is closed.
 */
export async function loadThroughReplication(client: Redis, options: LoadOptions): Promise<Facts> {
  const started = performance.now();
  const deadline = Date.now() + options.timeoutMs;
  const before = await info(client, 'server', 'replication', 'persistence', 'cluster');
  refuseUnfit(before, options.address);
  const original = { disklessLoad: await configGet(client, 'repl-diskless-load'), masterauth: await configGet(client, 'masterauth') };
  const source = new SyncSource({ file: options.file, bytes: options.bytes, token: options.token });
  const local = client.stream.localAddress;
  // The address the target sees us by reaches us back; a unix socket means the same host.
  const listenOn = local && local !== '' ? local.replace(/^::ffff:/, '') : '127.0.0.1';
  const log = await logCursor(client);
  let replicating = false;
  let configChanged = false;
  let loaded = false;
  let forget: (() => Promise<void>) | undefined;
  try {
    const { host, port } = await source.listen(listenOn);
    forget = await options.journal?.({ restoreFrom: { host, port }, original });
    configChanged = true;
    await client.call('CONFIG', 'SET', 'repl-diskless-load', 'disabled', 'masterauth', options.token);
    const aofEnabled = before.get('aof_enabled') === '1';
    const aofRewritesBefore = infoNumber(before, 'aof_rewrites');
    await client.call('REPLICAOF', host, String(port));
    replicating = true;
    await reachedPhase('restore:redis:replicating');
    await waitForLoad(client, source, { host, port, deadline, timeoutMs: options.timeoutMs });
    loaded = true;
    await client.call('REPLICAOF', 'NO', 'ONE');
    replicating = false;
    const loadMs = Math.round(performance.now() - started);
    if (aofEnabled) await waitForAofRewrite(client, aofRewritesBefore, deadline, options.timeoutMs);
    const { keys, keyspace } = keyspaceOf(await info(client, 'keyspace'));
    return { loadMs, keys, keyspace, aof: aofEnabled };
  } catch (error) {
    const stillReplica = replicating && !(await promote(client));
    if (stillReplica) forget = undefined; // the next start retries
    const reason = `${error instanceof AgentError ? error.message : replyText(error)}${stillReplica ? '; the target is still a replica of the closed restore port: run REPLICAOF NO ONE on it' : ''}`;
    if (loaded) throw new AgentError('E_RESTORE_FAILED', reason, { cause: error, details: { targetFlushed: true } });
    const lines = await logSince(log);
    const logged = warningsIn(lines?.filter((line) => RELEVANT.test(line) && !NOISE.test(line)));
    // Redis logs "Flushing old data" just before it empties its databases to load a sync.
    const flushed = lines ? lines.some((line) => /Flushing old data/.test(line)) : undefined;
    const outcome =
      flushed === false
        ? 'the target never flushed its data: it is unchanged'
        : flushed
          ? 'the target had flushed its data to load the RDB: restore again or from the safety backup'
          : 'the target may have replaced its data (its log is not readable to tell): check it';
    throw new AgentError('E_RESTORE_FAILED', `${reason}${logged ? ` (Redis log: ${logged})` : ''}; ${outcome}`, {
      cause: error,
      details: { targetFlushed: flushed ?? null },
    });
  } finally {
    if (configChanged) {
      await client.call('CONFIG', 'SET', 'repl-diskless-load', original.disklessLoad, 'masterauth', original.masterauth).catch(() => {
        forget = undefined; // the next start sets them back
      });
    }
    await source.close();
    await forget?.();
  }
}

/** REPLICAOF NO ONE after a failure; a target busy loading answers LOADING until it is done. */
async function promote(client: Redis): Promise<boolean> {
  const until = Date.now() + PROMOTE_TIMEOUT_MS;
  for (const ms of backoff(50, 500)) {
    try {
      await client.call('REPLICAOF', 'NO', 'ONE');
      return true;
    } catch (error) {
      if (!/LOADING/.test(replyText(error)) || Date.now() > until) return false;
    }
    await pause(ms, undefined);
  }
  return false;
}

const PROMOTE_TIMEOUT_MS = 60_000;

/** Redis retries a failed master connection every second: this long without one is a refusal. */
const HANDSHAKE_TIMEOUT_MS = 30_000;

/** Log lines that say why a sync failed, and the routine ones a failed sync also writes. */
const RELEVANT = /MASTER|REPLICA|SLAVE|sync|load|temp|rename|AOF|disk|space|denied|error|fail/i;
const NOISE = /replication ID|Connection with master lost|Caching the disconnected master|Discarding previously cached master|Connecting to MASTER|MASTER <-> REPLICA sync started|Non blocking connect|Master replied to PING|Partial resynchronization not possible|Full resync from master|Trying a partial resynchronization/i;

async function waitForLoad(client: Redis, source: SyncSource, options: { host: string; port: number; deadline: number; timeoutMs: number }): Promise<void> {
  const handshakeDeadline = Math.min(options.deadline, Date.now() + HANDSHAKE_TIMEOUT_MS);
  for (const ms of backoff(20, 250)) {
    const fields = await info(client, 'replication', 'persistence');
    const ours = fields.get('master_host') === options.host && fields.get('master_port') === String(options.port);
    if (!ours) throw new AgentError('E_RESTORE_FAILED', `the target stopped replicating from the agent (now: role ${fields.get('role')}, master ${fields.get('master_host') ?? 'none'})`);
    if (source.sent && fields.get('master_link_status') === 'up' && fields.get('master_sync_in_progress') === '0' && fields.get('loading') === '0') return;
    if (source.failure) throw new AgentError('E_RESTORE_FAILED', `the load through replication failed: ${source.failure}`);
    if (!source.started && Date.now() > handshakeDeadline) {
      throw new AgentError('E_RESTORE_FAILED', `the target did not connect to the agent's restore port ${options.host}:${options.port} (master_link_status:${fields.get('master_link_status') ?? '?'})`);
    }
    if (Date.now() > options.deadline) {
      const stage = source.sent ? 'loading it' : 'receiving it';
      throw new AgentError('E_RESTORE_FAILED', `the target did not load the RDB within ${options.timeoutMs} ms (saveTimeout): it was still ${stage}`);
    }
    await pause(ms, undefined);
  }
}

/** After a sync Redis rewrites its AOF from the new data (aof_rewrites counts each attempt). */
async function waitForAofRewrite(client: Redis, rewritesBefore: number | undefined, deadline: number, timeoutMs: number): Promise<void> {
  for (const ms of backoff(20, 250)) {
    const fields = await info(client, 'persistence');
    const rewrites = infoNumber(fields, 'aof_rewrites');
    const counted = rewritesBefore === undefined || rewrites === undefined || rewrites > rewritesBefore;
    const idle = fields.get('aof_rewrite_in_progress') === '0' && fields.get('aof_rewrite_scheduled') === '0';
    if (counted && idle) {
      if (fields.get('aof_last_bgrewrite_status') === 'ok') return;
      throw new AgentError('E_RESTORE_FAILED', 'the data is loaded but Redis failed to rewrite its AOF from it: a restart would bring back the old data until a BGREWRITEAOF succeeds');
    }
    if (Date.now() > deadline) throw new AgentError('E_RESTORE_FAILED', `the data is loaded but Redis's AOF rewrite did not finish within ${timeoutMs} ms (saveTimeout)`);
    await pause(ms, undefined);
  }
}

/**
 * Undoes what an interrupted restore left on the server of `client`, as far as it is still
 * there: a replica of the restore's port is promoted (REPLICAOF NO ONE), and the settings are
 * set back if the one-time masterauth is still in place. Anything changed since by someone
 * else is left alone. Returns whether the server was still a replica of the restore.
 */
export async function undoInterruptedLoad(client: Redis, record: InterruptedLoad): Promise<boolean> {
  const replication = await info(client, 'replication');
  const replicaOfRestore =
    replication.get('role') === 'slave' &&
    replication.get('master_host') === record.restoreFrom.host &&
    Number(replication.get('master_port')) === record.restoreFrom.port;
  if (replicaOfRestore && !(await promote(client))) {
    throw new Error(`still a replica of ${record.restoreFrom.host}:${record.restoreFrom.port}: REPLICAOF NO ONE did not take (it is loading); retried at the next start`);
  }
  if (tokenDigest(await configGet(client, 'masterauth')) === record.tokenSha256) {
    await client.call('CONFIG', 'SET', 'repl-diskless-load', record.original.disklessLoad, 'masterauth', record.original.masterauth);
  }
  return replicaOfRestore;
}
