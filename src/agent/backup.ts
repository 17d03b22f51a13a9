import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AgentError, throwIfCancelled, toAgentError } from '../errors.ts';
import { newBackupId } from '../snapshot/backup-id.ts';
import { compressionExtension, createCompressor } from '../snapshot/compression.ts';
import { ByteCounter } from '../snapshot/counter.ts';
import { DigestStream } from '../snapshot/digest.ts';
import type { ServiceDriver } from '../snapshot/driver.ts';
import { elementKey, manifestKey, MANIFEST_VERSION, type ElementRecord, type Manifest } from '../snapshot/manifest.ts';
import { checkName } from '../snapshot/names.ts';
import type { ObjectStore } from '../transport/object-store.ts';
import { putSegmented } from '../transport/segments.ts';
import { backupObjectKeys } from './catalog.ts';
import { environmentOf, type Config } from './config.ts';
import type { OperationContext } from './context.ts';
import { createDriver } from './drivers.ts';
import { openEnvironmentStore } from './stores.ts';
import { AGENT_VERSION, HOST } from './version.ts';

export interface CreateBackupOptions {
  env: string;
  live?: boolean;
  /** Element (service) names; all of the environment's when absent. */
  elements?: readonly string[];
  keepForMs?: number;
  codeRef?: string;
  trigger?: Manifest['trigger'];
  /** Set by callers that must know the id before the backup ends (the job engine). */
  id?: string;
}

/**
 * Captures each element through compress → hash → store, then writes the manifest, the
 * commit point. A backup that fails or is cancelled deletes what it wrote: no manifest,
 * no objects, no multipart parts.
 */
export async function createBackup(ctx: OperationContext, options: CreateBackupOptions): Promise<Manifest> {
  const { config, logger, signal } = ctx;
  const env = checkName('environment', options.env);
  const services = selectServices(config, env, options.elements);
  const store = await openEnvironmentStore(config, env);
  const id = options.id ?? newBackupId();
  const log = logger.child({ env, backupId: id });
  const createdAt = new Date();

  await sweepOrphans(ctx, store, env);
  ctx.onProgress?.({ phase: 'prepare' });
  log.info({ phase: 'start', elements: services.map(([name]) => name), store: store.description }, 'backup started');
  try {
    const elements: ElementRecord[] = [];
    for (const [name, service] of services) {
      throwIfCancelled(signal);
      elements.push(await captureElement(ctx, store, env, id, name, createDriver(name, service)));
      log.info({ phase: 'element', element: name, storedBytes: elements.at(-1)!.storedBytes }, 'element stored');
    }
    const manifest: Manifest = {
      schema: 'storage-agent/manifest',
      version: MANIFEST_VERSION,
      id,
      env,
      createdAt: createdAt.toISOString(),
      completedAt: new Date().toISOString(),
      mode: options.live ? 'live' : 'consistent',
      pauseMs: null,
      trigger: options.trigger ?? 'manual',
      keepUntil: options.keepForMs === undefined ? null : new Date(createdAt.getTime() + options.keepForMs).toISOString(),
      codeRef: options.codeRef ?? null,
      agent: { version: AGENT_VERSION, host: HOST },
      elements,
    };
    throwIfCancelled(signal);
    ctx.onProgress?.({ phase: 'manifest' });
    await store.put(manifestKey(env, id), Readable.from([Buffer.from(JSON.stringify(manifest, null, 2))]), { signal });
    log.info({ phase: 'done', durationMs: Date.now() - createdAt.getTime() }, 'backup completed');
    return manifest;
  } catch (error) {
    const failure = toAgentError(error, 'E_CAPTURE_FAILED');
    log.error({ phase: 'failed', code: failure.code, err: failure.message }, 'backup failed; removing what it wrote');
    await removePartialBackup(ctx, store, env, id);
    throw failure;
  }
}

function selectServices(config: Config, env: string, elements: readonly string[] | undefined) {
  const services = Object.entries(environmentOf(config, env).services);
  if (!elements || elements.length === 0) return services;
  return elements.map((name) => {
    const found = services.find(([serviceName]) => serviceName === checkName('element', name));
    if (!found) {
      throw new AgentError('E_UNKNOWN_ELEMENT', `environment ${env} has no service "${name}"; its services: ${services.map(([n]) => n).join(', ')}`, {
        details: { env, element: name },
      });
    }
    return found;
  });
}

async function captureElement(
  ctx: OperationContext,
  store: ObjectStore,
  env: string,
  id: string,
  name: string,
  driver: ServiceDriver,
): Promise<ElementRecord> {
  const { config, signal } = ctx;
  const started = Date.now();
  const totalBytes = await driver.estimateBytes(signal);
  const { algorithm, level } = config.compression;
  const key = elementKey(env, id, name, `.${driver.format}${compressionExtension[algorithm]}`);
  const capture = await driver.capture({ signal, consistent: false });
  capture.result.catch(() => {}); // awaited below, possibly after the upload's own failure
  const raw = new ByteCounter((bytes) => ctx.onProgress?.({ phase: 'capture', element: name, bytes, ...(totalBytes ? { totalBytes } : {}) }));
  const digest = new DigestStream();
  const feeding = pipeline(capture.stream, raw, createCompressor(algorithm, { level }), digest, { signal });
  feeding.catch(() => {}); // joined below
  let objects;
  try {
    objects = await putSegmented(store, key, digest, signal);
  } catch (error) {
    capture.stream.destroy(); // stop the producer; its own failure, if any, explains more
    await feeding.catch(() => {});
    throw await producerFailure(capture.result, error);
  }
  await feeding;
  const result = await capture.result;
  return {
    name,
    kind: driver.kind,
    format: driver.format,
    compression: algorithm,
    objects,
    storedBytes: digest.bytes,
    rawBytes: raw.bytes,
    sha256: digest.sha256,
    durationMs: Date.now() - started,
    warnings: result.warnings,
    facts: result.facts,
  };
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

async function sweepOrphans(ctx: OperationContext, store: ObjectStore, env: string): Promise<void> {
  try {
    const swept = await store.sweepIncomplete(`${env}/`, new Date(Date.now() - ctx.config.orphanUploadAge));
    if (swept > 0) ctx.logger.warn({ env, swept }, 'aborted incomplete uploads left by an earlier run');
  } catch (error) {
    ctx.logger.warn({ env, err: toAgentError(error).message }, 'could not sweep incomplete uploads; will retry next run');
  }
}

async function removePartialBackup(ctx: OperationContext, store: ObjectStore, env: string, id: string): Promise<void> {
  try {
    await store.delete(await backupObjectKeys(store, env, id));
  } catch (error) {
    // The objects stay, but without a manifest they are never Restorable; prune removes them.
    ctx.logger.warn({ env, backupId: id, err: toAgentError(error).message }, 'could not remove the objects of a failed backup');
  }
}
