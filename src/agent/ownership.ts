import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { z } from 'zod';
import { AgentError, isAgentError } from '../errors.ts';
import { namePattern } from '../snapshot/names.ts';
import type { ObjectStore } from '../transport/stores/object-store.ts';
import { environmentOf, type Config } from './config.ts';
import { nodeIdOf } from './node-id.ts';
import { HOST } from './version.ts';

/**
 * Which node writes an environment's backups (issue #11, docs/ownership.md). Every node of a
 * platform shares the bucket; an environment being migrated is configured on two hosts. Only
 * its owner creates, prunes and deletes its backups; every node may read them.
 *
 * Each node that claims an environment has one record, `<env>/owners/<nodeId>.json`. The
 * owner is the record in state `owner` with the highest epoch. To claim, a node writes a
 * `claiming` record, lists the records, and becomes `owner` only if no other node is claiming
 * (live) or owns it (an adoption: owns it at the same or a higher epoch); otherwise it withdraws. S3 lists what was
 * written before (read-after-write, list-after-write): of two nodes claiming at once, the
 * second to write sees the first, so at most one of them goes on. Adoption claims at the
 * highest epoch plus one: the old owner, at its next write, finds a newer owner and stops.
 * A record not renewed for `ownerStaleAfter` is stale: adopting it needs no --force.
 * Records carry no MAC: they can only stop a node writing (the safe way to fail), which any
 * bucket writer can do anyway by deleting objects.
 */

const MAX_RECORD_BYTES = 64 * 1024;
const isoTime = z.string().datetime({ offset: true });

const ownerRecordSchema = z
  .object({
    schema: z.literal('storage-agent/owner'),
    env: z.string().regex(namePattern),
    nodeId: z.string().regex(namePattern),
    host: z.string().max(255),
    state: z.enum(['claiming', 'owner']),
    epoch: z.number().int().min(1),
    since: isoTime,
    renewedAt: isoTime,
    adoptedFrom: z.string().regex(namePattern).optional(),
  })
  .strict();
export type OwnerRecord = z.infer<typeof ownerRecordSchema>;

export const ownersPrefix = (env: string): string => `${env}/owners/`;
const recordKey = (env: string, nodeId: string): string => `${ownersPrefix(env)}${nodeId}.json`;

export interface OwnerView {
  env: string;
  /** This node. */
  nodeId: string;
  owner: (OwnerRecord & { stale: boolean }) | null;
  records: (OwnerRecord & { stale: boolean })[];
}

interface Claimant {
  store: ObjectStore;
  env: string;
  nodeId: string;
  staleAfterMs: number;
  logger: Logger;
}

function claimantOf(config: Config, store: ObjectStore, env: string, logger: Logger): Claimant {
  environmentOf(config, env);
  return { store, env, nodeId: nodeIdOf(config), staleAfterMs: config.ownerStaleAfter, logger };
}

/**
 * Before any write to an environment's backups: returns when this node owns it (claiming it
 * if no node ever did; renewing the record when a quarter of ownerStaleAfter has passed), and
 * throws E_ENV_OWNED naming the owner when another node does, live or stale.
 */
export async function ensureOwner(config: Config, store: ObjectStore, env: string, logger: Logger): Promise<void> {
  const claimant = claimantOf(config, store, env, logger);
  for (let attempt = 1; ; attempt++) {
    const records = await readRecords(store, env);
    const owner = ownerOf(records);
    if (!owner) {
      try {
        await claim(claimant, records, nextEpoch(records));
      } catch (error) {
        if (!isAgentError(error, 'E_ENV_CLAIM_CONTENDED') || attempt >= CLAIM_ATTEMPTS) throw error;
        // Two nodes claiming at once may both withdraw; a random pause makes one of them first
        // the next time (the other then finds it the owner: E_ENV_OWNED).
        await sleep(CLAIM_RETRY_MS * attempt * (1 + Math.random()));
        continue;
      }
      logger.info({ env, nodeId: claimant.nodeId }, 'this node now owns the environment (its first write)');
      return;
    }
    if (owner.nodeId !== claimant.nodeId) throw ownedElsewhere(claimant, owner);
    if (Date.now() - Date.parse(owner.renewedAt) >= claimant.staleAfterMs / 4) await renew(claimant, owner);
    return;
  }
}

/** A first write's claim that met another node's claim is tried this many times in all, after pauses of 0.1–0.2 s, then 0.2–0.4 s. */
const CLAIM_ATTEMPTS = 3;
const CLAIM_RETRY_MS = 100;

/**
 * `env adopt`: this node becomes the owner. A live owner elsewhere needs `force` (it may be
 * writing right now: stop its backups first). Logged at warn with the previous owner.
 */
export async function adoptEnvironment(config: Config, store: ObjectStore, env: string, logger: Logger, force: boolean): Promise<OwnerView> {
  const claimant = claimantOf(config, store, env, logger);
  const records = await readRecords(store, env);
  const owner = ownerOf(records);
  if (owner?.nodeId === claimant.nodeId) {
    await renew(claimant, owner);
  } else {
    if (owner && !isStale(owner, claimant.staleAfterMs) && !force) throw ownedElsewhere(claimant, owner);
    await claim(claimant, records, nextEpoch(records), owner?.nodeId);
    logger.warn(
      { env, nodeId: claimant.nodeId, previousOwner: owner?.nodeId ?? null, previousRenewedAt: owner?.renewedAt ?? null, forced: owner !== undefined && !isStale(owner, claimant.staleAfterMs) },
      owner ? `environment adopted from node ${owner.nodeId}` : 'environment adopted (it had no owner)',
    );
  }
  return describeOwner(config, store, env);
}

/** Who owns the environment, as the records in the store say (for `env owner`). */
export async function describeOwner(config: Config, store: ObjectStore, env: string): Promise<OwnerView> {
  environmentOf(config, env);
  const records = await readRecords(store, env);
  const withStale = (r: OwnerRecord) => ({ ...r, stale: isStale(r, config.ownerStaleAfter) });
  const owner = ownerOf(records);
  return { env, nodeId: nodeIdOf(config), owner: owner ? withStale(owner) : null, records: records.map(withStale) };
}

/** Whether this node owns the environment now (for sweeps: only an owner's uploads are its to abort by age). */
export async function ownsEnvironment(config: Config, store: ObjectStore, env: string): Promise<boolean> {
  return ownerOf(await readRecords(store, env))?.nodeId === nodeIdOf(config);
}

/**
 * The daemon renews the records of the environments it owns (every quarter of
 * ownerStaleAfter), so a node whose backups run once a day never looks stale. Returns the
 * environments renewed; a store that fails is logged and retried at the next round.
 */
export async function renewOwnedEnvironments(config: Config, openStore: (env: string) => Promise<ObjectStore>, logger: Logger): Promise<string[]> {
  const renewed: string[] = [];
  for (const env of Object.keys(config.environments)) {
    try {
      const store = await openStore(env);
      const owner = ownerOf(await readRecords(store, env));
      if (owner?.nodeId !== nodeIdOf(config)) continue;
      await renew(claimantOf(config, store, env, logger), owner);
      renewed.push(env);
    } catch (error) {
      logger.warn({ env, err: (error as Error).message }, 'could not renew the owner record; retried at the next round');
    }
  }
  return renewed;
}

async function claim(claimant: Claimant, before: readonly OwnerRecord[], epoch: number, adoptedFrom?: string): Promise<void> {
  const { store, env, nodeId } = claimant;
  const now = new Date().toISOString();
  const record: OwnerRecord = { schema: 'storage-agent/owner', env, nodeId, host: HOST, state: 'claiming', epoch, since: now, renewedAt: now, ...(adoptedFrom ? { adoptedFrom } : {}) };
  await writeRecord(store, record);
  // A first claim yields to any owner, whatever its epoch: a rival that read the records while
  // another node was still claiming asks for a higher epoch, and must not supersede that node
  // once it is owner. Only an adoption supersedes an owner, one below its own epoch.
  const rival = (await readRecords(store, env)).find(
    (r) => r.nodeId !== nodeId && (r.state === 'owner' ? adoptedFrom === undefined || r.epoch >= epoch : !isStale(r, claimant.staleAfterMs)),
  );
  if (rival) {
    await store.delete([recordKey(env, nodeId)]);
    if (rival.state === 'owner') throw ownedElsewhere(claimant, rival);
    throw new AgentError('E_ENV_CLAIM_CONTENDED', `node ${rival.nodeId} (host ${rival.host}) is claiming environment ${env} at this same moment; this node withdrew: retry in a few seconds`, {
      details: { env, nodeId, rival: rival.nodeId },
    });
  }
  await writeRecord(store, { ...record, state: 'owner' });
  // Records below the new epoch, and claims abandoned by a crash, say nothing any more.
  const obsolete = before.filter((r) => r.nodeId !== nodeId && (r.state === 'owner' ? r.epoch < epoch : isStale(r, claimant.staleAfterMs)));
  if (obsolete.length > 0) await store.delete(obsolete.map((r) => recordKey(env, r.nodeId)));
}

async function renew(claimant: Claimant, record: OwnerRecord): Promise<void> {
  await writeRecord(claimant.store, { ...record, host: HOST, renewedAt: new Date().toISOString() });
}

async function writeRecord(store: ObjectStore, record: OwnerRecord): Promise<void> {
  await store.put(recordKey(record.env, record.nodeId), Readable.from([Buffer.from(`${JSON.stringify(record, null, 2)}\n`)]));
}

/** Every well-formed record under `<env>/owners/`; anything else there is not an agent's and is ignored. */
async function readRecords(store: ObjectStore, env: string): Promise<OwnerRecord[]> {
  const records: OwnerRecord[] = [];
  for await (const object of store.list(ownersPrefix(env))) {
    const node = object.key.slice(ownersPrefix(env).length).replace(/\.json$/, '');
    if (!object.key.endsWith('.json') || !namePattern.test(node) || object.size > MAX_RECORD_BYTES) continue;
    let raw: unknown;
    try {
      raw = JSON.parse(await text(await store.get(object.key)));
    } catch (error) {
      if (error instanceof SyntaxError || isAgentError(error, 'E_OBJECT_NOT_FOUND')) continue; // torn, or removed since listed
      throw error;
    }
    const parsed = ownerRecordSchema.safeParse(raw);
    if (parsed.success && parsed.data.env === env && parsed.data.nodeId === node) records.push(parsed.data);
  }
  return records;
}

/** The record in state owner with the highest epoch (ties: the earlier since, then node id), stale or not. */
function ownerOf(records: readonly OwnerRecord[]): OwnerRecord | undefined {
  return records
    .filter((r) => r.state === 'owner')
    .sort((a, b) => b.epoch - a.epoch || Date.parse(a.since) - Date.parse(b.since) || (a.nodeId < b.nodeId ? -1 : 1))[0];
}

function nextEpoch(records: readonly OwnerRecord[]): number {
  return Math.max(0, ...records.map((r) => r.epoch)) + 1;
}

function isStale(record: OwnerRecord, staleAfterMs: number): boolean {
  return Date.now() - Date.parse(record.renewedAt) >= staleAfterMs;
}

function ownedElsewhere(claimant: Claimant, owner: OwnerRecord): AgentError {
  const stale = isStale(owner, claimant.staleAfterMs);
  const { env, nodeId } = claimant;
  return new AgentError(
    'E_ENV_OWNED',
    `environment ${env} is owned by node ${owner.nodeId} (host ${owner.host}, owner since ${owner.since}, last renewed ${owner.renewedAt}${stale ? ': stale' : ''}); ` +
      `this node (${nodeId}) may read its backups but not write them. To move the environment to this node: storage-agent env adopt ${env}` +
      (stale ? '' : ' --force (its owner is live: stop its backups there first)'),
    { details: { env, nodeId, owner: owner.nodeId, ownerHost: owner.host, renewedAt: owner.renewedAt, stale } },
  );
}
