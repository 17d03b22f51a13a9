import { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { AgentError, throwIfCancelled, toAgentError } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { newBackupId } from '../backup-id.ts';
import { compressionExtension, createCompressor, type Compression } from '../compression.ts';
import { ByteCounter } from '../counter.ts';
import { DigestStream } from '../digest.ts';
import type { Capture, CaptureOptions, PreparedCapture, ServiceDriver } from '../driver.ts';
import { catalogOf, loadParent, NO_PARENT, repositoryItems, type ParentSnapshot } from '../files/parent-snapshot.ts';
import type { FreezeConfig } from '../freeze/config.ts';
import { FreezeJournal } from '../freeze/journal.ts';
import { freezeWriters } from '../freeze/lease.ts';
import { cgroupTarget, filesystemTarget } from '../freeze/targets.ts';
import { backupPrefix, elementKey, manifestKey, MANIFEST_VERSION, type ElementRecord, type Manifest } from '../manifest.ts';
import { signManifest, type KeyRing } from '../manifest-mac.ts';
import type { ObjectStore } from '../../transport/stores/object-store.ts';
import type { Repository } from '../../transport/repository/repository.ts';
import { putSegmented } from '../../transport/stores/segments.ts';
import { reportOrphanUploadsAborted } from '../../transport/stores/store-telemetry.ts';
import { backupObjectKeys, deleteBackup, listBackups, type BackupSummary, type WrittenManifest } from './catalog.ts';
import type { RunContext } from './context.ts';

/** What to back up: the environment (its name checked) and how. */
export interface BackupRequest {
  env: string;
  live?: boolean;
  keepForMs?: number;
  codeRef?: string;
  trigger?: Manifest['trigger'];
  /** Trigger 'restore': when the restore this backup follows could begin writing. */
  restoredAt?: string;
  /** Set by callers that must know the id before the backup ends (the job engine). */
  id?: string;
  /** A manual backup over the environment's limit replaces the oldest manual one. */
  replaceOldest?: boolean;
}

/**
 * What a backup runs with, built by the caller from the config (agent/backup.ts): the pipeline
 * opens, reads and decides nothing of the config itself.
 */
export interface BackupSetup {
  /** Where archives go, and the backup's objects and manifest. */
  store: ObjectStore;
  /** The store's name in the config: the label of the orphan sweep's telemetry. */
  storeName: string;
  /** The environment's repository (opened, and made the first time): elements go into it as chunks; undefined: archives into the store. */
  repository: Repository | undefined;
  /** Signs the manifest, and authenticates the listing (manual limit, parent snapshots, catalog). */
  keys: KeyRing;
  /** The elements to capture with their drivers, in the environment's service order (the manifest's). */
  elements: { name: string; driver: ServiceDriver }[];
  /** The writers a consistent backup freezes; undefined: none. */
  freeze: FreezeConfig | undefined;
  /** Manual backups the environment keeps at once. */
  manualLimit: number;
  /** How archives are compressed (a repository compresses its chunks with zstd, at the level it was opened with). */
  compression: { algorithm: Compression; level: number };
  /** Multipart uploads under the environment older than this (ms) are orphans, aborted before the backup. */
  orphanUploadAge: number;
  /** The state directory: the freeze journal's. */
  stateDir: string;
  /** Who makes the backup, as its manifest says. */
  agent: Manifest['agent'];
  /**
   * Each element's raw size in this node's last backup of the environment (the job records'):
   * the progress total where the driver has no estimate.
   */
  previousSizes(): Promise<ReadonlyMap<string, number>>;
}

/**
 * Captures each element through compress → hash → store, then writes the manifest, the
 * commit point. A backup that fails or is cancelled deletes what it wrote: no manifest,
 * no objects, no multipart parts.
 */
export async function runBackup(ctx: RunContext, options: BackupRequest, setup: BackupSetup): Promise<Manifest> {
  const { logger, signal } = ctx;
  const { env } = options;
  const { store, repository, keys } = setup;
  const id = options.id ?? newBackupId();
  const log = logger.child({ env, backupId: id });
  const createdAt = new Date();

  // One listing for the manual limit and the parent snapshots (the catalog makes it a LIST and a GET).
  const listing = (options.trigger ?? 'manual') === 'manual' || repository ? listBackups(store, env, keys, new Date(), { updateCatalog: true }) : undefined;
  listing?.catch(() => {}); // awaited below, after other awaits: never an unhandled rejection meanwhile
  const replaced = await checkManualLimit(env, options, setup.manualLimit, listing);
  await sweepOrphans(ctx, setup, env);
  ctx.onProgress?.({ phase: 'prepare' });
  log.info({ phase: 'start', mode: options.live ? 'live' : 'consistent', elements: setup.elements.map(({ name }) => name), store: store.description }, 'backup started');
  // A safety backup keeps whatever part of the target exists (some of a service's databases).
  const partial = options.trigger === 'safety';
  const previous = await setup.previousSizes();
  // Files elements into a repository skip what their parent snapshot holds unchanged; read
  // now, before any freeze.
  const parents = repository && listing ? await parentSnapshots(ctx, env, repository, setup.elements, await listing) : new Map<string, ParentSnapshot>();
  const previousRoots = repository && listing ? lastVersions(setup.elements, await listing) : new Map<string, string>();
  const plan = setup.elements.map(({ name, driver }) => ({
    name,
    partial,
    driver,
    previousBytes: previous.get(name),
    parent: parents.get(name),
    previousRoot: previousRoots.get(name),
  }));
  const captures: Started[] = [];
  try {
    const { elements, pauseMs } = options.live
      ? await captureLive(ctx, setup, env, id, plan, captures)
      : await captureConsistent(ctx, setup, env, id, plan, captures);
    // The index of the chunks stored, before the manifest that names them.
    await repository?.commit({ signal });
    // Signed like every backup, safety backups included (manifest-mac.ts: what the MAC covers).
    const manifest: Manifest = signManifest({
      schema: 'storage-agent/manifest',
      version: MANIFEST_VERSION,
      id,
      env,
      createdAt: createdAt.toISOString(),
      completedAt: new Date().toISOString(),
      mode: options.live ? 'live' : 'consistent',
      pauseMs,
      trigger: options.trigger ?? 'manual',
      ...(options.restoredAt === undefined ? {} : { restoredAt: options.restoredAt }),
      keepUntil: options.keepForMs === undefined ? null : new Date(createdAt.getTime() + options.keepForMs).toISOString(),
      codeRef: options.codeRef ?? null,
      agent: setup.agent,
      // In the environment's service order, whatever order they were stored in.
      elements: plan.map(({ name }) => elements.find((e) => e.name === name)!),
    } satisfies Manifest, keys);
    throwIfCancelled(signal);
    ctx.onProgress?.({ phase: 'manifest' });
    await reachedPhase('backup:stored');
    await checkObjectsStored(store, manifest);
    await reachedPhase('backup:manifest');
    const manifestText = JSON.stringify(manifest, null, 2);
    await store.put(manifestKey(env, id), Readable.from([Buffer.from(manifestText)]), { signal });
    log.info({ phase: 'done', durationMs: Date.now() - createdAt.getTime(), pauseMs }, 'backup completed');
    await refreshCatalog(store, env, keys, { id, text: manifestText }, log);
    for (const old of replaced) {
      try {
        await deleteBackup(store, env, old);
        log.info({ phase: 'replaced', replacedBackupId: old }, 'oldest manual backup replaced');
      } catch (error) {
        // The new backup is committed: its success stands; the old one is deleted by hand or replaced next time.
        log.warn({ phase: 'replaced', replacedBackupId: old, err: toAgentError(error).message }, 'could not delete the replaced manual backup');
      }
    }
    return manifest;
  } catch (error) {
    const failure = toAgentError(error, 'E_CAPTURE_FAILED');
    log.error({ phase: 'failed', code: failure.code, err: failure.message }, 'backup failed; removing what it wrote');
    for (const { capture } of captures) capture.stream.destroy();
    await removePartialBackup(store, env, id, log);
    throw failure;
  } finally {
    await Promise.all(captures.map(({ capture }) => capture.release().catch(() => {})));
  }
}

interface Planned {
  name: string;
  driver: ServiceDriver;
  partial: boolean;
  /** The element's raw size in this node's last backup of the environment: the progress total where the driver has no estimate. */
  previousBytes: number | undefined;
  /** A files element into a repository: the parent snapshot (NO_PARENT for the first). */
  parent: ParentSnapshot | undefined;
  /** A dump into a repository: the root of its last version, which its changed chunks are stored as deltas against. */
  previousRoot: string | undefined;
}
type Started = Omit<Planned, 'partial'> & { capture: Capture };
interface Captured {
  elements: ElementRecord[];
  pauseMs: number | null;
}

/** Live: each service is read on its own, one after the other, nothing frozen. */
async function captureLive(ctx: RunContext, setup: BackupSetup, env: string, id: string, plan: Planned[], captures: Started[]): Promise<Captured> {
  const elements: ElementRecord[] = [];
  for (const planned of plan) {
    throwIfCancelled(ctx.signal);
    const started = await startCapture(planned, planned.driver.capture(captureOptions(planned, { signal: ctx.signal, consistent: false, partial: planned.partial })));
    captures.push(started);
    elements.push(await storeElement(ctx, setup, env, id, started, ctx.signal));
  }
  return { elements, pauseMs: null };
}

/**
 * Consistent: prepare every capture (connections, versions, checks: what needs no writers
 * paused), freeze the writers, fix every service's point in time on what was prepared
 * (snapshot open, fork done, mount snapshotted), thaw, then stream. Services that can only be
 * read live (a mount without snapshots) are streamed before the thaw, and the pause says what
 * that cost.
 */
async function captureConsistent(ctx: RunContext, setup: BackupSetup, env: string, id: string, plan: Planned[], captures: Started[]): Promise<Captured> {
  const { logger, signal } = ctx;
  const { freeze } = setup;
  const elements: ElementRecord[] = [];
  let pauseMs: number | null = null;
  const prepared: PreparedCapture[] = [];
  /** The elements read with the writers frozen, being stored; a failure of the backup stops them. */
  const liveRead: { name: string; storing: Promise<ElementRecord>; readMs: number }[] = [];
  const stopLiveRead = new AbortController();
  try {
    for (const planned of plan) {
      throwIfCancelled(signal);
      prepared.push(await prepareCapture(planned, captureOptions(planned, { signal, consistent: true, partial: planned.partial })));
    }
    await reachedPhase('backup:prepared');
    throwIfCancelled(signal); // a cancel while the last one prepared: nothing is frozen
    const targets = freeze ? [...(await Promise.all(freeze.cgroups.map(cgroupTarget))), ...freeze.filesystems.map(filesystemTarget)] : [];
    const lease =
      targets.length > 0
        ? await freezeWriters({ env, targets, journal: new FreezeJournal(setup.stateDir), deadlineMs: freeze!.deadline, signal, logger })
        : undefined;
    const frozenSignal = lease ? AbortSignal.any([signal, lease.signal]) : signal;
    const liveReadSignal = AbortSignal.any([frozenSignal, stopLiveRead.signal]);
    try {
      for (const [index, planned] of plan.entries()) {
        throwIfCancelled(frozenSignal);
        captures.push(await startCapture(planned, prepared[index]!.capture(frozenSignal)));
      }
      if (lease) await reachedPhase('freeze:capturing');
      for (const started of captures.filter((c) => !c.capture.pointInTime)) {
        // The writers wait only for the source to be read: what is still being compressed and
        // written (the last parts, the store's fsync) finishes after the thaw. A store that
        // retries through an outage must not hold the job past the deadline (or a cancel):
        // the upload is told to stop and ends on its own; the backup fails now.
        const begun = performance.now();
        const storing = storeElement(ctx, setup, env, id, started, liveReadSignal);
        storing.catch(() => {});
        // A source that did not end (destroyed by the store's failure: "Premature close") is
        // no error of its own: the storing's is the one to report.
        const read = finished(started.capture.stream).catch(() => storing);
        await settleOrAbandon(Promise.race([read, storing]), frozenSignal);
        liveRead.push({ name: started.name, storing, readMs: Math.round(performance.now() - begun) });
      }
    } finally {
      if (lease) pauseMs = Math.round((await lease.thaw()) * 10) / 10;
    }
    for (const { storing } of liveRead) {
      const element = await settleOrAbandon(storing, signal);
      elements.push(lease ? { ...element, readInsideFreeze: true } : element);
    }
    if (elements.length > 0 && lease) {
      // readMs: each one's share of the pause (bench/databases.ts reads it), less than its durationMs, which includes storing its end.
      const readMs = Object.fromEntries(liveRead.map((e) => [e.name, e.readMs]));
      logger.info({ env, pauseMs, readInsideFreeze: elements.map((e) => e.name), readMs }, 'the pause includes reading elements that could not be snapshotted');
    }
    throwIfCancelled(frozenSignal); // a deadline that passed while freezing fails the backup
  } catch (error) {
    stopLiveRead.abort(error);
    throw error;
  } finally {
    // What was prepared and never captured (a failure, a cancel, the deadline): its connection closes now.
    await Promise.all(prepared.map((p) => p.release().catch(() => {})));
  }
  // Stored side by side: a producer kept waiting behind another element's upload would time
  // out (mysqldump's server connection gives up after net_write_timeout). The first failure
  // stops the others.
  const sibling = new AbortController();
  const storing = AbortSignal.any([signal, sibling.signal]);
  const settled = await Promise.allSettled(
    captures
      .filter((c) => c.capture.pointInTime)
      .map((started) =>
        storeElement(ctx, setup, env, id, started, storing).catch((error: unknown) => {
          sibling.abort(error);
          throw error;
        }),
      ),
  );
  // Every upload has ended (or been aborted) before the caller cleans up after a failure.
  const failed = settled.find((result) => result.status === 'rejected');
  if (failed) throw sibling.signal.reason ?? failed.reason;
  return { elements: [...elements, ...settled.map((result) => (result as PromiseFulfilledResult<ElementRecord>).value)], pauseMs };
}

/**
 * The parent snapshot of each files service: its element in the newest restorable backup of the
 * environment that has a catalog for it. None (NO_PARENT) the first time, or when the parent
 * cannot be read: the backup then reads every file, as a first one does, and says so.
 */
async function parentSnapshots(ctx: RunContext, env: string, repository: Repository, elements: BackupSetup['elements'], listed: readonly BackupSummary[]): Promise<Map<string, ParentSnapshot>> {
  const parents = new Map<string, ParentSnapshot>();
  const files = elements.filter(({ driver }) => driver.kind === 'files').map(({ name }) => name);
  if (files.length === 0) return parents;
  for (const name of files) {
    // Only a signed manifest: an unsigned one (anyone who can write the bucket) could pair a
    // catalog with another element's root, and the next backup would take its files as unchanged.
    const backup = listed.find((b) => b.restorable && b.authenticated && b.manifest?.elements.some((e) => e.name === name && e.kind === 'files' && e.repository?.files));
    const element = backup?.manifest?.elements.find((e) => e.name === name);
    let parent = NO_PARENT;
    if (backup && element?.repository?.files) {
      try {
        parent = await loadParent(repository, element.repository.root, element.repository.files, ctx.signal);
      } catch (error) {
        ctx.logger.warn({ env, element: name, parentBackupId: backup.id, err: toAgentError(error).message }, 'cannot read the parent snapshot: every file is read');
      }
    }
    parents.set(name, parent);
  }
  return parents;
}

/**
 * The root of each dump element (mysql, redis) in the newest restorable backup that stored it
 * in the repository: a database dumped again is mostly its last dump with rows changed here
 * and there, so each changed chunk is stored as a delta against the last dump's (issue #13).
 */
function lastVersions(elements: BackupSetup['elements'], listed: readonly BackupSummary[]): Map<string, string> {
  const roots = new Map<string, string>();
  for (const { name, driver } of elements) {
    if (driver.kind === 'files') continue;
    for (const backup of listed) {
      const element = backup.restorable && backup.authenticated ? backup.manifest?.elements.find((e) => e.name === name && e.kind === driver.kind && e.repository) : undefined;
      if (element?.repository) {
        roots.set(name, element.repository.root);
        break;
      }
    }
  }
  return roots;
}

/**
 * Manual backups are limited per environment (safety and scheduled ones are not). Over the
 * limit, a new one fails before any work — or, with replaceOldest, names the oldest manual
 * backups to delete once the new one is committed (never before: a failed backup replaces none).
 * Expired and unsigned manual backups do not count.
 */
async function checkManualLimit(env: string, options: BackupRequest, limit: number, listing: Promise<BackupSummary[]> | undefined): Promise<string[]> {
  if ((options.trigger ?? 'manual') !== 'manual') return [];
  const listed = await listing!;
  // Signed ones only: unsigned manifests (anyone who can write the bucket) must neither block a
  // backup nor have --replace-oldest delete a real one.
  const manual = listed.filter((b) => b.restorable && b.authenticated && b.manifest?.trigger === 'manual');
  if (manual.length < limit) return [];
  if (!options.replaceOldest) {
    throw new AgentError(
      'E_MANUAL_LIMIT',
      `environment ${env} already has ${manual.length} manual backups, its limit (manualLimit: ${limit}); delete one ('backup delete'), or pass --replace-oldest`,
      { details: { env, limit, manual: manual.length } },
    );
  }
  return manual.slice(limit - 1).map((b) => b.id); // newest first: the oldest are at the end
}

/** The options of an element's capture: a files element into a repository marks its files against its parent snapshot. */
function captureOptions({ parent }: Planned, options: CaptureOptions): CaptureOptions {
  return parent ? { ...options, segments: { parent: parent.signatures } } : options;
}

/** The driver's prepare step, or — a driver without one — all of its capture left for the freeze. */
async function prepareCapture({ driver }: Planned, options: CaptureOptions): Promise<PreparedCapture> {
  if (driver.prepare) return driver.prepare(options);
  return { capture: (signal) => driver.capture({ ...options, signal }), release: async () => {} };
}

async function startCapture({ name, driver, previousBytes, parent, previousRoot }: Planned, capturing: Promise<Capture>): Promise<Started> {
  const capture = await capturing;
  // Awaited when the element is stored, which may come after the producer already failed; the
  // stream too may fail (a cancel destroys it) before its element's turn to be stored, and an
  // 'error' without a listener would take the whole process down. The failure still reaches
  // the pipeline that consumes the stream, and `result`.
  capture.result.catch(() => {});
  capture.stream.on('error', () => {});
  return { name, driver, capture, previousBytes, parent, previousRoot };
}

/** Streams one started capture through compress → hash → store, or into the repository. */
async function storeElement(ctx: RunContext, { store, repository, compression }: BackupSetup, env: string, id: string, started: Started, signal: AbortSignal): Promise<ElementRecord> {
  const { name, driver, capture } = started;
  const begun = Date.now();
  const totalBytes = (await driver.estimateBytes(signal)) ?? started.previousBytes;
  const { algorithm, level } = compression;
  // The estimate is a guess (a database's on-disk size): once passed, the total is what is done.
  const progress = (bytes: number) => ctx.onProgress?.({ phase: 'capture', element: name, bytes, ...(totalBytes ? { totalBytes: Math.max(totalBytes, bytes) } : {}) });
  // The element's total is known before its first bytes: the first report, whatever the size of its first chunk.
  progress(0);
  let stored: Pick<ElementRecord, 'objects' | 'storedBytes' | 'sha256' | 'repository' | 'compression' | 'rawBytes'>;
  let feeding: Promise<void> = Promise.resolve();
  try {
    if (repository) {
      // Chunks are compressed with zstd one by one; `get` writes a .zst of the whole element.
      const { parent } = started;
      const written = await repository.writeStream(parent ? repositoryItems(capture.stream, parent) : capture.stream, { signal, onBytes: progress, parent: started.previousRoot });
      const catalog = parent ? await repository.writeStream(catalogOf(written.segments), { signal }) : undefined;
      stored = {
        objects: [],
        storedBytes: written.newBytes + (catalog?.newBytes ?? 0),
        rawBytes: written.rawBytes,
        compression: 'zstd',
        repository: { root: written.root, chunks: written.chunks, newChunks: written.newChunks, ...(catalog ? { files: catalog.root } : {}) },
      };
    } else {
      const raw = new ByteCounter(progress);
      const digest = new DigestStream();
      feeding = pipeline(capture.stream, raw, createCompressor(algorithm, { level }), digest, { signal });
      feeding.catch(() => {}); // joined below
      const key = elementKey(env, id, name, `.${driver.format}${compressionExtension[algorithm]}`);
      const objects = await putSegmented(store, key, digest, signal);
      await feeding;
      stored = { objects, storedBytes: digest.bytes, rawBytes: raw.bytes, sha256: digest.sha256, compression: algorithm };
    }
  } catch (error) {
    capture.stream.destroy(); // stop the producer; its own failure, if any, explains more
    await feeding.catch(() => {});
    throw await producerFailure(capture.result, error);
  }
  const result = await capture.result;
  return {
    name,
    kind: driver.kind,
    format: driver.format,
    ...stored,
    durationMs: Date.now() - begun,
    warnings: result.warnings,
    facts: result.facts,
  };
}

/**
 * `work`, or the signal's reason as soon as it fires, whichever comes first. Abandoned work is
 * already aborted by the same signal; its own failure is expected and dropped.
 */
async function settleOrAbandon<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  work.catch(() => {});
  if (signal.aborted) throw signal.reason;
  let onAbort!: () => void;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/** The producer's error when it failed (a dump that died explains an upload that stopped). */
async function producerFailure(result: Promise<unknown>, uploadError: unknown): Promise<unknown> {
  try {
    await result;
    return uploadError;
  } catch (producerError) {
    const upload = toAgentError(uploadError);
    return upload.code === 'E_CANCELLED' || upload.code.startsWith('E_STORE') ? upload : producerError;
  }
}

/**
 * The commit point checks what it commits: every object the manifest names is in the store
 * with its size (one listing of the backup's prefix). Something else may have deleted one
 * since it was stored — a prune elsewhere, an operator, a lifecycle rule — and a manifest
 * naming it would list a backup as Restorable that no restore can read.
 */
async function checkObjectsStored(store: ObjectStore, manifest: Manifest): Promise<void> {
  const stored = new Map<string, number>();
  for await (const object of store.list(backupPrefix(manifest.env, manifest.id))) stored.set(object.key, object.size);
  for (const element of manifest.elements) {
    for (const object of element.objects) {
      const size = stored.get(object.key);
      if (size === object.bytes) continue;
      throw new AgentError(
        'E_BACKUP_INCOMPLETE',
        `object ${object.key} of element ${element.name} ${size === undefined ? 'is no longer in the store' : `has ${size} bytes in the store, not the ${object.bytes} written`}: something deleted or replaced it before the backup was committed (a prune by another node, an operator, a lifecycle rule); the backup is abandoned — run it again`,
        { details: { env: manifest.env, id: manifest.id, element: element.name, key: object.key, storedSize: size ?? null, expected: object.bytes } },
      );
    }
  }
}

/**
 * After the commit: the environment catalog learns the new backup, so the next listing is one
 * LIST and one GET. Never fails the backup, which is committed: a catalog left behind only
 * costs the next listing a read of the manifests it lacks.
 */
async function refreshCatalog(store: ObjectStore, env: string, keys: KeyRing, written: WrittenManifest, log: RunContext['logger']): Promise<void> {
  try {
    await listBackups(store, env, keys, new Date(), { updateCatalog: true, written });
  } catch (error) {
    log.warn({ phase: 'catalog', err: toAgentError(error).message }, 'could not refresh the environment catalog after the commit; the next listing reads the manifests');
  }
}

async function sweepOrphans(ctx: RunContext, { store, storeName, orphanUploadAge }: BackupSetup, env: string): Promise<void> {
  try {
    const swept = await store.sweepIncomplete(`${env}/`, new Date(Date.now() - orphanUploadAge));
    if (swept > 0) {
      ctx.logger.warn({ env, swept }, 'aborted incomplete uploads left by an earlier run');
      reportOrphanUploadsAborted({ store: storeName, count: swept });
    }
  } catch (error) {
    ctx.logger.warn({ env, err: toAgentError(error).message }, 'could not sweep incomplete uploads; will retry next run');
  }
}

/**
 * How long a failed backup waits for its objects to be deleted before it reports its failure:
 * a store that is down would otherwise hold the result (and the environment's lock) for its
 * whole retry budget. The delete goes on in the background; prune removes what it misses.
 */
const CLEANUP_WAIT_MS = 2_000;

async function removePartialBackup(store: ObjectStore, env: string, id: string, log: RunContext['logger']): Promise<void> {
  const removing = (async () => {
    try {
      await store.delete(await backupObjectKeys(store, env, id));
    } catch (error) {
      // The objects stay, but without a manifest they are never Restorable; prune removes them.
      log.warn({ err: toAgentError(error).message }, 'could not remove the objects of a failed backup');
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const waited = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), CLEANUP_WAIT_MS).unref()));
  const done = await Promise.race([removing.then(() => true), waited]);
  clearTimeout(timer);
  if (!done) log.warn({ waitedMs: CLEANUP_WAIT_MS }, 'the store is slow to delete the objects of the failed backup: left to finish in the background (prune removes what remains)');
}
