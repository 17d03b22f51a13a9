import {
  AbortMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { ConfiguredRetryStrategy } from '@smithy/util-retry';
import { Readable } from 'node:stream';
import { AgentError, cancelled } from '../errors.ts';
import type { GetOptions, ObjectInfo, ObjectStore, PutOptions } from './object-store.ts';
import { UploadMemory } from './upload-memory.ts';
import type { UploadJournal } from './upload-journal.ts';

export interface S3StoreOptions {
  name: string;
  endpoint?: string | undefined;
  region: string;
  bucket: string;
  /** Key prefix inside the bucket ('' or ending with '/'). */
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  forcePathStyle: boolean;
  partSize: number;
  partsInFlight: number;
  /** S3 allows 10,000 parts; lower only to test segmenting without writing 50 GB. */
  maxParts: number;
  maxAttempts: number;
  journal: UploadJournal;
}

/** How long a cancelled upload may take to finish its parts in flight and abort itself. */
const CANCEL_GRACE_MS = 10_000;

/**
 * S3-compatible object storage through @aws-sdk/lib-storage's `Upload`: memory is bounded by
 * partSize × partsInFlight; the SDK's own retry strategy retries parts (no retry loop here).
 */
export class S3ObjectStore implements ObjectStore {
  readonly kind = 's3';
  readonly maxObjectBytes: number;
  readonly description: string;
  readonly #client: S3Client;
  readonly #options: S3StoreOptions;
  /** Upload ids, captured as CreateMultipartUpload answers, by full key. */
  readonly #uploadIds = new Map<string, (id: string | undefined) => void>();
  /** The memory of each upload in progress, by full key. */
  readonly #uploadMemory = new Map<string, UploadMemory>();

  constructor(options: S3StoreOptions) {
    this.#options = options;
    this.maxObjectBytes = options.partSize * options.maxParts;
    this.description = `s3:${options.bucket}/${options.prefix}${options.endpoint ? ` at ${options.endpoint}` : ''}`;
    this.#client = new S3Client({
      endpoint: options.endpoint,
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      credentials: { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey },
      // The SDK's own retry, with a backoff floor: the default's full jitter can spend all its
      // attempts within a second, shorter than a gateway restart; 1, 2, 4, 8… s rides it out.
      retryStrategy: new ConfiguredRetryStrategy(options.maxAttempts, (attempt) => Math.min(500 * 2 ** attempt, 20_000)),
      // Streamed PutObject fails on RGW 16 with the SDK's default flexible checksums (411),
      // and WHEN_REQUIRED is ~40 % faster: our own sha256 covers integrity end to end.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    // lib-storage keeps the upload id to itself; the journal needs it to abort what a crash
    // leaves behind, so it is read off the CreateMultipartUpload answer as it passes.
    this.#client.middlewareStack.add(
      (next, context) => async (args) => {
        const result = await next(args);
        if (context.commandName === 'CreateMultipartUploadCommand') {
          const key = (args.input as { Key?: string }).Key ?? '';
          this.#uploadIds.get(key)?.((result.output as { UploadId?: string }).UploadId);
        }
        return result;
      },
      { step: 'initialize', name: 'storageAgentCaptureUploadId' },
    );
    this.#client.middlewareStack.add(
      (next, context) => async (args) => {
        const { Key, PartNumber, Body } = args.input as { Key?: string; PartNumber?: number; Body?: unknown };
        const memory = context.commandName === 'UploadPartCommand' ? this.#uploadMemory.get(Key ?? '') : undefined;
        if (!memory || PartNumber === undefined) return next(args);
        memory.started(PartNumber, Body);
        const result = await next(args);
        memory.succeeded(PartNumber, Body);
        return result;
      },
      { step: 'initialize', name: 'storageAgentUploadMemory' },
    );
  }

  async put(key: string, body: Readable, options: PutOptions = {}): Promise<void> {
    const fullKey = this.#fullKey(key);
    const { journal, bucket, name } = this.#options;
    const entry = { store: name, bucket, key: fullKey, startedAt: new Date().toISOString(), pid: process.pid };
    await journal.record(entry);
    let uploadId: string | undefined;
    this.#uploadIds.set(fullKey, (id) => {
      uploadId = id;
      void journal.record({ ...entry, ...(id ? { uploadId: id } : {}) }).catch(() => {});
    });
    const memory = new UploadMemory(this.#options.partSize);
    this.#uploadMemory.set(fullKey, memory);
    const upload = new Upload({
      client: this.#client,
      params: { Bucket: bucket, Key: fullKey, Body: memory.track(body) },
      partSize: this.#options.partSize,
      queueSize: this.#options.partsInFlight,
      leavePartsOnError: false,
    });
    const signal = options.signal;
    // Cancel by failing the body: lib-storage then lets the parts in flight end and aborts the
    // multipart upload before done() rejects. upload.abort() alone would return at once and
    // leave that abort racing behind us, so it is only the fallback after a grace period.
    let graceTimer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      body.destroy(cancelled(signal!));
      graceTimer = setTimeout(() => void upload.abort(), CANCEL_GRACE_MS);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal?.aborted) onAbort();
      await upload.done();
      memory.completed();
      await journal.remove(entry);
    } catch (error) {
      body.destroy();
      await this.#abortLeftovers(fullKey, uploadId).then(
        () => journal.remove(entry),
        () => {}, // still unreachable: the journal entry stays for the next run's sweep
      );
      if (signal?.aborted) throw cancelled(signal);
      throw storeError(error, `cannot upload ${key} to ${this.description}`);
    } finally {
      clearTimeout(graceTimer);
      signal?.removeEventListener('abort', onAbort);
      this.#uploadIds.delete(fullKey);
      this.#uploadMemory.delete(fullKey);
      memory.forget();
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<Readable> {
    try {
      const answer = await this.#client.send(new GetObjectCommand({ Bucket: this.#options.bucket, Key: this.#fullKey(key) }), {
        abortSignal: options.signal,
      });
      if (!(answer.Body instanceof Readable)) throw new AgentError('E_STORE_IO', `unexpected body type for ${key}`);
      return answer.Body;
    } catch (error) {
      throw storeError(error, `cannot read ${key} from ${this.description}`, key);
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const answer = await this.#client.send(new HeadObjectCommand({ Bucket: this.#options.bucket, Key: this.#fullKey(key) }));
      return { key, size: answer.ContentLength ?? 0, lastModified: answer.LastModified ?? new Date(0) };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw storeError(error, `cannot stat ${key} in ${this.description}`);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const strip = this.#options.prefix.length;
    let token: string | undefined;
    do {
      let page;
      try {
        page = await this.#client.send(
          new ListObjectsV2Command({ Bucket: this.#options.bucket, Prefix: this.#fullKey(prefix, true), ContinuationToken: token }),
        );
      } catch (error) {
        throw storeError(error, `cannot list ${prefix} in ${this.description}`);
      }
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        yield { key: object.Key.slice(strip), size: object.Size ?? 0, lastModified: object.LastModified ?? new Date(0) };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async delete(keys: readonly string[]): Promise<void> {
    // DeleteObjects takes at most 1,000 keys a request.
    for (let start = 0; start < keys.length; start += 1000) {
      const batch = keys.slice(start, start + 1000).map((key) => ({ Key: this.#fullKey(key) }));
      try {
        const answer = await this.#client.send(
          new DeleteObjectsCommand({ Bucket: this.#options.bucket, Delete: { Objects: batch, Quiet: true } }),
        );
        const failed = (answer.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
        if (failed.length > 0) {
          throw new AgentError('E_STORE_IO', `cannot delete ${failed.length} object(s), first ${failed[0]?.Key}: ${failed[0]?.Message}`);
        }
      } catch (error) {
        throw storeError(error, `cannot delete objects from ${this.description}`);
      }
    }
  }

  async sweepIncomplete(prefix: string, olderThan: Date): Promise<number> {
    let swept = 0;
    for (const entry of await this.#options.journal.orphans(this.#options.name, new Set(this.#uploadIds.keys()))) {
      swept += await this.#abortLeftovers(entry.key, entry.uploadId);
      await this.#options.journal.remove(entry);
    }
    for (const upload of await this.#listUploads(this.#fullKey(prefix, true))) {
      if (upload.initiated < olderThan) {
        await this.#abortUpload(upload.key, upload.uploadId);
        swept++;
      }
    }
    return swept;
  }

  async presignGet(key: string, expiresInSeconds: number): Promise<string> {
    const command = new GetObjectCommand({ Bucket: this.#options.bucket, Key: this.#fullKey(key) });
    return getSignedUrl(this.#client, command, { expiresIn: expiresInSeconds });
  }

  /** Aborts every multipart upload of `fullKey` (ours: keys hold a unique backup id). */
  async #abortLeftovers(fullKey: string, knownId: string | undefined): Promise<number> {
    const uploads = await this.#listUploads(fullKey);
    let aborted = 0;
    for (const upload of uploads.filter((u) => u.key === fullKey || u.uploadId === knownId)) {
      await this.#abortUpload(upload.key, upload.uploadId);
      aborted++;
    }
    return aborted;
  }

  async #abortUpload(fullKey: string, uploadId: string): Promise<void> {
    try {
      await this.#client.send(new AbortMultipartUploadCommand({ Bucket: this.#options.bucket, Key: fullKey, UploadId: uploadId }));
    } catch (error) {
      if (!isNotFound(error)) throw storeError(error, `cannot abort upload ${uploadId} of ${fullKey}`);
    }
  }

  async #listUploads(prefix: string): Promise<{ key: string; uploadId: string; initiated: Date }[]> {
    const found: { key: string; uploadId: string; initiated: Date }[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    do {
      let page;
      try {
        page = await this.#client.send(
          new ListMultipartUploadsCommand({ Bucket: this.#options.bucket, Prefix: prefix, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
        );
      } catch (error) {
        throw storeError(error, `cannot list multipart uploads under ${prefix} in ${this.description}`);
      }
      for (const upload of page.Uploads ?? []) {
        if (upload.Key && upload.UploadId) found.push({ key: upload.Key, uploadId: upload.UploadId, initiated: upload.Initiated ?? new Date(0) });
      }
      keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
      uploadIdMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
    } while (keyMarker);
    return found;
  }

  #fullKey(key: string, isPrefix = false): string {
    if (!isPrefix && (key === '' || key.split('/').some((p) => p === '' || p === '.' || p === '..'))) {
      throw new AgentError('E_INVALID_NAME', `invalid object key ${JSON.stringify(key)}`);
    }
    return this.#options.prefix + key;
  }
}

function isNotFound(error: unknown): boolean {
  if (!(error instanceof S3ServiceException)) return false;
  return error.$metadata.httpStatusCode === 404 || error.name === 'NoSuchKey' || error.name === 'NotFound' || error.name === 'NoSuchUpload';
}

function storeError(error: unknown, message: string, key?: string): AgentError {
  if (error instanceof AgentError) return error;
  if ((error as Error)?.name === 'AbortError') return new AgentError('E_CANCELLED', 'the operation was cancelled', { cause: error });
  if (key !== undefined && isNotFound(error)) {
    return new AgentError('E_OBJECT_NOT_FOUND', `object ${key} does not exist`, { cause: error, details: { key } });
  }
  const detail = (error as Error)?.message || (error as Error)?.name || String(error);
  if (error instanceof S3ServiceException) {
    const status = error.$metadata.httpStatusCode ?? 0;
    if (status === 403) return new AgentError('E_STORE_IO', `${message}: access denied (${error.name}); check the store's credentials`, { cause: error });
    if (error.name === 'NoSuchBucket') return new AgentError('E_STORE_IO', `${message}: the bucket does not exist; create it first`, { cause: error });
    if (status >= 500) return new AgentError('E_STORE_UNAVAILABLE', `${message}: the S3 service failed (${status} ${error.name}); retry later`, { cause: error });
    return new AgentError('E_STORE_IO', `${message}: ${detail}`, { cause: error });
  }
  return new AgentError('E_STORE_UNAVAILABLE', `${message}: ${detail}; check the endpoint is reachable and retry`, { cause: error });
}
