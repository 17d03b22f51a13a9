import { Readable } from 'node:stream';
import { AgentError, throwIfCancelled } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import type { ObjectStore } from '../stores/object-store.ts';
import type { BlobIndex, IndexEntry } from './blob-index.ts';
import { sealIndex } from './blob-index.ts';
import { indexKey, indexPrefix, packIdOfKey, packKey, packsPrefix } from './layout.ts';
import { PackWriter } from './pack-writer.ts';
import { readExactly } from './read-exactly.ts';

export interface CollectOptions {
  /** Report what would go; change nothing. */
  dryRun?: boolean;
  /** A pack with more than this share of its bytes unused is rewritten with its live blobs only (restic: 5 %). */
  repackUnused: number;
  /** Packs no index names are deleted only once this old: a backup may still be writing them. */
  orphanAgeMs: number;
  now?: Date;
  signal?: AbortSignal | undefined;
}

export interface CollectResult {
  liveBlobs: number;
  /** Packs deleted because nothing live is in them (or no index names them, and they are old). */
  deletedPacks: number;
  /** Packs rewritten with their live blobs only. */
  repackedPacks: number;
  /** Bytes the store holds no longer. */
  freedBytes: number;
  /** Index objects replaced by the one written. */
  replacedIndexes: number;
}

/** Index objects a repository may gather before prune merges them. */
const MAX_INDEXES = 16;

/** What collection needs of a repository. */
export interface CollectableRepository {
  readonly env: string;
  readonly store: ObjectStore;
  readonly encryption: Buffer;
  readonly index: BlobIndex;
  /** Index objects that did not open: left for inspection, never deleted. */
  readonly rejectedIndexes: readonly { key: string }[];
  /** Visits the root and every tree and data blob under it, and the bases of its deltas (E_REPOSITORY_CORRUPT if one is missing). */
  walk(root: string, visit: (id: string) => void, signal: AbortSignal | undefined): Promise<void>;
}

/**
 * Garbage collection (issue #13 §7): after prune deleted snapshots, delete the packs no live
 * snapshot references, and rewrite the packs that are mostly dead. Safe without a global lock
 * because an environment's repository has one writer at a time (the environment's lock, one
 * owning node), and safe at every instant of a kill because of its order:
 *
 *   1. repacked blobs are copied (still sealed, unchanged) into new packs;
 *   2. one new index naming every live blob where it now is is written;
 *   3. the old index objects are deleted — until then both describe packs that all still exist;
 *   4. only then the dead and repacked packs are deleted: no remaining index names them.
 *
 * Any doubt stops it before step 3: a live blob that cannot be walked (a damaged repository)
 * deletes nothing. Forged index objects (rejected at open) are left for inspection.
 */
export async function collectGarbage(repository: CollectableRepository, liveRoots: Iterable<string>, options: CollectOptions): Promise<CollectResult> {
  const { store, env, index } = repository;
  const { signal } = options;
  const live = new Set<string>();
  for (const root of liveRoots) await repository.walk(root, (id) => live.add(id), signal);

  const stored = new Map<string, { size: number; lastModified: Date }>();
  for await (const info of store.list(packsPrefix(env))) {
    const pack = packIdOfKey(env, info.key);
    if (pack) stored.set(pack, { size: info.size, lastModified: info.lastModified });
  }
  const byPack = new Map<string, { live: [string, IndexEntry][]; liveBytes: number; deadBytes: number }>();
  for (const [id, entry] of index.entries()) {
    if (!stored.has(entry.pack)) continue; // a pack already gone: nothing to collect (verify reports live ones)
    let pack = byPack.get(entry.pack);
    if (!pack) byPack.set(entry.pack, (pack = { live: [], liveBytes: 0, deadBytes: 0 }));
    if (live.has(id)) {
      pack.live.push([id, entry]);
      pack.liveBytes += entry.length;
    } else pack.deadBytes += entry.length;
  }
  const orphanBefore = (options.now ?? new Date()).getTime() - options.orphanAgeMs;
  const doomed = new Set<string>();
  const repack = new Set<string>();
  for (const [pack, { size, lastModified }] of stored) {
    const usage = byPack.get(pack);
    if (!usage) {
      if (lastModified.getTime() < orphanBefore) doomed.add(pack); // written by a backup that never committed
    } else if (usage.live.length === 0) doomed.add(pack);
    else if ((size - usage.liveBytes) / size > options.repackUnused) repack.add(pack);
  }
  const oldIndexes: string[] = [];
  for await (const info of store.list(indexPrefix(env))) oldIndexes.push(info.key);
  const result: CollectResult = {
    liveBlobs: live.size,
    deletedPacks: doomed.size + repack.size,
    repackedPacks: repack.size,
    freedBytes: [...doomed].reduce((sum, p) => sum + stored.get(p)!.size, 0) + [...repack].reduce((sum, p) => sum + stored.get(p)!.size - byPack.get(p)!.liveBytes, 0),
    replacedIndexes: 0,
  };
  // Every backup adds an index object and every open reads them all: past a few, they are
  // merged into one even when nothing else is to be done.
  if (options.dryRun || (doomed.size === 0 && repack.size === 0 && oldIndexes.length <= MAX_INDEXES)) return result;

  // 1. Live blobs of mostly dead packs, copied sealed as they are (a blob is bound to its kind
  // and id, not to its place), into new packs.
  const writer = new PackWriter(store, env, { packBytes: 16 << 20, uploadsInFlight: 2, signal });
  for (const pack of repack) {
    for (const [id, entry] of byPack.get(pack)!.live) {
      throwIfCancelled(signal);
      const { bytes: sealed, received } = await readExactly(await store.getRange(packKey(env, pack), entry.offset, entry.length, { signal }), entry.length);
      if (received !== entry.length) {
        // Copied short, the blob would fail every restore that needs it: stop with the old pack kept.
        throw new AgentError('E_REPOSITORY_CORRUPT', `the repository of environment ${env} is damaged: pack ${pack} gave ${received} bytes for blob ${id}, not ${entry.length}; nothing was collected: run 'backup verify --read-data' to find every backup it affects`, {
          details: { env, blob: id },
        });
      }
      await writer.add(id, entry.kind, sealed, entry.rawLength, entry.bases);
    }
  }
  const moved = await writer.finish();
  await reachedPhase('gc:repacked');

  // 2. One index of every live blob, where it now is.
  const entries = new Map<string, IndexEntry>();
  for (const [pack, usage] of byPack) {
    if (doomed.has(pack)) continue;
    for (const [id, entry] of usage.live) entries.set(id, moved.get(id) ?? entry);
  }
  const written = entries.size > 0 ? sealIndex(repository.encryption, env, entries) : undefined;
  if (written) await store.put(indexKey(env, written.id), Readable.from([written.body]), { signal });
  await reachedPhase('gc:indexed');

  // 3. The old index objects (but a forged one, which never opened, stays for inspection).
  const replaced = oldIndexes.filter((key) => key !== (written && indexKey(env, written.id)) && !repository.rejectedIndexes.some((r) => r.key === key));
  throwIfCancelled(signal);
  await store.delete(replaced);
  result.replacedIndexes = replaced.length;
  await reachedPhase('gc:indexes-deleted');

  // 4. The packs no index names any more.
  await store.delete([...doomed, ...repack].map((pack) => packKey(env, pack)));
  return result;
}
