import {
  AbortMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  S3Client,
  S3ServiceException,
  type ServiceInputTypes,
  type ServiceOutputTypes,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { FinalizeRequestMiddleware } from '@smithy/types';
import { ConfiguredRetryStrategy } from '@smithy/util-retry';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentError, cancelled, throwIfCancelled } from '../../errors.ts';
import { checkRange, objectNotFound, objectRangeError, type GetOptions, type ObjectInfo, type ObjectStore, type PutOptions } from './object-store.ts';
import { reportStoreRequestFailure } from './store-telemetry.ts';
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
  /** How long to wait for a TCP connection, in ms. */
  connectTimeout: number;
  /** How long a request may go without a byte either way, in ms: a hung gateway or OSD. */
  requestTimeout: number;
  journal: UploadJournal;
}

/** How long a cancelled upload may take to finish its parts in flight and abort itself. */
const CANCEL_GRACE_MS = 10_000;

/** The requests that end a multipart upload: after them its id is gone, for good reason. */
const MULTIPART_ENDINGS = new Set(['CompleteMultipartUploadCommand', 'AbortMultipartUploadCommand']);

/**
 * The wait before retry `attempt` (1 for the first retry): 1, 2, 4, 8… s, at most 20 s. The
 * default's full jitter can spend all its attempts within a second, shorter than a gateway
 * restart; this rides it out.
 */
const backoffMs = (attempt: number) => Math.min(500 * 2 ** attempt, 20_000);

/** Bytes `start` to `end` (inclusive), or to the object's end without `end`. */
interface ByteRange {
  start: number;
  end?: number | undefined;
}

/** One GetObject's answer: its body, Content-Length, ETag and Content-Range. */
interface GetAnswer {
  body: Readable;
  length: number | undefined;
  etag: string | undefined;
  range: string | undefined;
}

/**
 * S3-compatible object storage through @aws-sdk/lib-storage's `Upload`: memory is bounded by
 * partSize × partsInFlight; the SDK's own retry strategy retries every request (no retry loop
 * here), and a read whose body breaks off resumes where it stopped (the SDK cannot: it is done
 * once the headers are in).
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
  /** Full keys of uploads in progress whose multipart upload S3 no longer knows (NoSuchUpload). */
  readonly #uploadsGone = new Set<string>();

  constructor(options: S3StoreOptions) {
    this.#options = options;
    this.maxObjectBytes = options.partSize * options.maxParts;
    this.description = `s3:${options.bucket}/${options.prefix}${options.endpoint ? ` at ${options.endpoint}` : ''}`;
    this.#client = new S3Client({
      endpoint: options.endpoint,
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      credentials: { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey },
      // Without timeouts a gateway that accepts a connection and then sends nothing hangs the
      // request forever. The handler's own `requestTimeout` is a deadline for the whole request
      // that only warns (unless throwOnRequestTimeout) and would fail a large part on a slow
      // link; `socketTimeout` is the idle timeout we mean: it fails the attempt with a
      // TimeoutError the retry strategy retries, response bodies included.
      requestHandler: new NodeHttpHandler({ connectionTimeout: options.connectTimeout, socketTimeout: options.requestTimeout }),
      // The SDK's own retry, with a backoff floor (backoffMs).
      retryStrategy: new ConfiguredRetryStrategy(options.maxAttempts, backoffMs),
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
    // An upload someone else aborted (another node's sweep, an operator, a lifecycle rule)
    // answers NoSuchUpload, and lib-storage then fails with whatever its own abort said: noted
    // here so put() can say what happened. Only an answer to a first attempt counts for Complete
    // and Abort: after a retry it may be the answer to our own attempt whose reply was lost.
    this.#client.middlewareStack.add(
      (next, context) => async (args) => {
        try {
          return await next(args);
        } catch (error) {
          const key = (args.input as { Key?: string }).Key ?? '';
          const firstAttempt = ((error as { $metadata?: { attempts?: number } }).$metadata?.attempts ?? 1) === 1;
          const multipart = context.commandName === 'UploadPartCommand' || (firstAttempt && MULTIPART_ENDINGS.has(context.commandName ?? ''));
          if (multipart && this.#uploadIds.has(key) && (error as Error)?.name === 'NoSuchUpload') this.#uploadsGone.add(key);
          throw error;
        }
      },
      { step: 'initialize', name: 'storageAgentUploadGone' },
    );
    this.#observeAttempts();
  }

  /**
   * Reports every failed attempt (store-telemetry.ts) with the SDK's own verdict on it. A
   * middleware inside the retry loop sees each attempt; whether a failure is retried is known
   * only when the retry middleware calls the next attempt (after the backoff) or gives up, which
   * the middleware outside the loop sees. So the failure is held until one of them runs, rather
   * than guessing the retry strategy's decision (error class, attempts, retry capacity).
   */
  #observeAttempts(): void {
    const requests = new WeakMap<object, { attempt: number; failure?: { error: unknown } }>();
    const operation = (commandName: string | undefined) => (commandName ?? 'Unknown').replace(/Command$/, '');
    const eachAttempt: FinalizeRequestMiddleware<ServiceInputTypes, ServiceOutputTypes> = (next, context) => async (args) => {
      const request = requests.get(context) ?? { attempt: 0 };
      requests.set(context, request);
      if (request.failure) this.#reportFailure(operation(context.commandName), request.attempt, request.failure.error, true);
      request.attempt++;
      request.failure = undefined;
      try {
        return await next(args);
      } catch (error) {
        request.failure = { error };
        throw error;
      }
    };
    const lastAttempt: FinalizeRequestMiddleware<ServiceInputTypes, ServiceOutputTypes> = (next, context) => async (args) => {
      try {
        return await next(args);
      } catch (error) {
        const request = requests.get(context);
        if (request?.failure) this.#reportFailure(operation(context.commandName), request.attempt, request.failure.error, false);
        throw error;
      }
    };
    this.#client.middlewareStack.addRelativeTo(eachAttempt, { relation: 'after', toMiddleware: 'retryMiddleware', name: 'storageAgentEachAttempt' });
    this.#client.middlewareStack.addRelativeTo(lastAttempt, { relation: 'before', toMiddleware: 'retryMiddleware', name: 'storageAgentLastAttempt' });
  }

  #reportFailure(operation: string, attempt: number, error: unknown, willRetry: boolean): void {
    // "No such object" answers whether an object exists (head, the manifest of a backup still
    // uploading), and 416 that a range starts past the object's end (E_OBJECT_RANGE): answers,
    // not failures of the store.
    const name = (error as Error)?.name;
    if (error instanceof S3ServiceException && (name === 'NoSuchKey' || name === 'NotFound' || error.$metadata.httpStatusCode === 416)) return;
    reportStoreRequestFailure({ store: this.#options.name, operation, attempt, ...describeFailure(error), willRetry });
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
      if (this.#uploadsGone.has(fullKey)) {
        throw new AgentError(
          'E_UPLOAD_ABORTED',
          `cannot upload ${key} to ${this.description}: its multipart upload was aborted by another party while it ran ` +
            "(another node's orphan sweep with an orphanUploadAge shorter than a backup takes, an operator, or a bucket lifecycle rule); " +
            'nothing was stored: the backup can be retried',
          { cause: error, details: { key } },
        );
      }
      throw this.#storeError(error, `cannot upload ${key} to ${this.description}`);
    } finally {
      clearTimeout(graceTimer);
      signal?.removeEventListener('abort', onAbort);
      this.#uploadsGone.delete(fullKey);
      this.#uploadIds.delete(fullKey);
      this.#uploadMemory.delete(fullKey);
      memory.forget();
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<Readable> {
    const first = await this.#getObject(key, undefined, undefined, options.signal);
    return this.#resumingStream(key, first, { start: 0 }, options.signal);
  }

  async getRange(key: string, offset: number, length: number, options: GetOptions = {}): Promise<Readable> {
    checkRange(key, offset, length);
    const { signal } = options;
    throwIfCancelled(signal);
    if (length === 0) {
      // No GetObject range is empty: whether the key exists and offset is within it is HEAD's answer.
      const info = await this.head(key);
      if (!info) throw objectNotFound(key);
      if (offset > info.size) throw objectRangeError(key, offset, length, info.size, this.description);
      return Readable.from([]);
    }
    const range = { start: offset, end: offset + length - 1 };
    const first = await this.#getObject(key, range, undefined, signal);
    try {
      // S3 answers a range that runs past the end with the part that exists (or 416 when none
      // does, see #getObject): a short object is told before any byte is read, not by a short stream.
      const size = first.range === undefined ? first.length : sizeOf(first.range);
      if (size !== undefined && size < offset + length) throw objectRangeError(key, offset, length, size, this.description);
      this.#expectRange(key, first.range, range);
    } catch (error) {
      first.body.destroy();
      throw error;
    }
    return this.#resumingStream(key, first, range, signal);
  }

  /**
   * One GetObject (of bytes `range.start` to `range.end`, or to the end without it, of the
   * version `etag`, when given), its body a stream.
   */
  async #getObject(key: string, range: ByteRange | undefined, etag: string | undefined, signal: AbortSignal | undefined) {
    try {
      const answer = await this.#client.send(
        new GetObjectCommand({
          Bucket: this.#options.bucket,
          Key: this.#fullKey(key),
          ...(range === undefined ? {} : { Range: `bytes=${range.start}-${range.end ?? ''}`, IfMatch: etag }),
        }),
        { abortSignal: signal },
      );
      if (!(answer.Body instanceof Readable)) throw new AgentError('E_STORE_IO', `unexpected body type for ${key}`);
      return { body: answer.Body, length: answer.ContentLength, etag: answer.ETag, range: answer.ContentRange };
    } catch (error) {
      // 416: the range starts at or past the object's end (S3 says no size with it).
      if (range && error instanceof S3ServiceException && error.$metadata.httpStatusCode === 416) {
        throw objectRangeError(key, range.start, (range.end ?? range.start) - range.start + 1, undefined, this.description);
      }
      throw this.#storeError(error, `cannot read ${key} from ${this.description}`, key);
    }
  }

  /** That a ranged answer is the range asked for: a store that ignores Range sends the whole object. */
  #expectRange(key: string, answered: string | undefined, asked: ByteRange): void {
    if (answered?.startsWith(`bytes ${asked.start}-${asked.end === undefined ? '' : `${asked.end}/`}`)) return;
    const what = asked.end === undefined ? `the bytes from ${asked.start}` : `bytes ${asked.start}-${asked.end}`;
    throw new AgentError(
      'E_STORE_IO',
      `cannot read ${key} from ${this.description}: asked for ${what}, the store answered ${answered ?? 'the whole object'}; check that it serves byte ranges (HTTP Range)`,
    );
  }

  #resumingStream(key: string, first: GetAnswer, range: ByteRange, signal: AbortSignal | undefined): Readable {
    return Readable.from(this.#resumingBody(key, first, range, signal), { objectMode: false, highWaterMark: 1 << 20 });
  }

  /**
   * The bytes of `range` (the whole object from `start` 0 without an end), read again from where
   * they stopped when the body breaks off (a reset, a truncated answer, requestTimeout of
   * silence), up to maxAttempts reads with the SDK's backoff between them. Each resumption asks
   * for the rest of the range of the same version (If-Match its ETag).
   */
  async *#resumingBody(key: string, first: GetAnswer, range: ByteRange, signal: AbortSignal | undefined) {
    let body = first.body;
    let received = 0;
    try {
      for (let attempt = 1; ; attempt++) {
        const chunks = body[Symbol.asyncIterator]();
        let failure: unknown;
        // Only reads are caught: an error thrown into the generator at `yield` is the consumer's.
        for (;;) {
          let step: IteratorResult<Buffer>;
          try {
            step = (await chunks.next()) as IteratorResult<Buffer>;
          } catch (error) {
            failure = error;
            break;
          }
          if (step.done) break;
          received += step.value.length;
          yield step.value;
        }
        // Every byte in: a failure after the last one cost nothing.
        if (first.length === undefined ? failure === undefined : received >= first.length) return;
        failure ??= Object.assign(new Error(`the answer ended after ${received} of ${first.length} bytes`), { code: 'Truncated' });
        if (signal?.aborted) throw cancelled(signal);
        const willRetry = attempt < this.#options.maxAttempts;
        this.#reportFailure('GetObject', attempt, failure, willRetry);
        if (!willRetry) {
          throw this.#storeError(failure, `cannot read ${key} from ${this.description} (the answer broke off after ${received} of ${first.length ?? '?'} bytes, ${attempt} attempts)`);
        }
        body.destroy();
        await sleep(backoffMs(attempt), undefined, { signal }).catch(() => {
          throw cancelled(signal!);
        });
        const rest: ByteRange = { start: range.start + received, end: range.end };
        const answer = await this.#getObject(key, rest, first.etag, signal);
        body = answer.body;
        this.#expectRange(key, answer.range, rest);
      }
    } finally {
      body.destroy();
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const answer = await this.#client.send(new HeadObjectCommand({ Bucket: this.#options.bucket, Key: this.#fullKey(key) }));
      return { key, size: answer.ContentLength ?? 0, lastModified: answer.LastModified ?? new Date(0) };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw this.#storeError(error, `cannot stat ${key} in ${this.description}`);
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
        throw this.#storeError(error, `cannot list ${prefix} in ${this.description}`);
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
        throw this.#storeError(error, `cannot delete objects from ${this.description}`);
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
      if (!isNotFound(error)) throw this.#storeError(error, `cannot abort upload ${uploadId} of ${fullKey}`);
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
        throw this.#storeError(error, `cannot list multipart uploads under ${prefix} in ${this.description}`);
      }
      for (const upload of page.Uploads ?? []) {
        if (upload.Key && upload.UploadId) found.push({ key: upload.Key, uploadId: upload.UploadId, initiated: upload.Initiated ?? new Date(0) });
      }
      keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
      uploadIdMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
    } while (keyMarker);
    return found;
  }

  #storeError(error: unknown, message: string, key?: string): AgentError {
    if (error instanceof AgentError) return error;
    if ((error as Error)?.name === 'AbortError') return new AgentError('E_CANCELLED', 'the operation was cancelled', { cause: error });
    if (key !== undefined && isNotFound(error)) return objectNotFound(key, error);
    const detail = (error as Error)?.message || (error as Error)?.name || String(error);
    if (error instanceof S3ServiceException) {
      const status = error.$metadata.httpStatusCode ?? 0;
      if (status === 403) return new AgentError('E_STORE_IO', `${message}: access denied (${error.name}); check the store's credentials`, { cause: error });
      if (error.name === 'NoSuchBucket') return new AgentError('E_STORE_IO', `${message}: the bucket does not exist; create it first`, { cause: error });
      if (status >= 500) return new AgentError('E_STORE_UNAVAILABLE', `${message}: the S3 service failed (${status} ${error.name}); retry later`, { cause: error });
      return new AgentError('E_STORE_IO', `${message}: ${detail}`, { cause: error });
    }
    if (describeFailure(error).timeout) return new AgentError('E_STORE_UNAVAILABLE', `${message}: ${this.#timeoutAdvice(error, detail)}`, { cause: error });
    return new AgentError('E_STORE_UNAVAILABLE', `${message}: ${detail}; check the endpoint is reachable and retry`, { cause: error });
  }

  /** What a timed-out request means and what to check, with the setting that ran out. */
  #timeoutAdvice(error: unknown, detail: string): string {
    const attempts = (error as { $metadata?: { attempts?: number } }).$metadata?.attempts;
    const tries = attempts ? `, ${attempts} attempt${attempts === 1 ? '' : 's'}` : '';
    const seconds = (ms: number) => `${ms / 1000} s`;
    // The handler says which of its timers fired only in its message.
    if (/establish a connection/.test(detail)) {
      return `timed out connecting (no connection within connectTimeout ${seconds(this.#options.connectTimeout)}${tries}); check that the endpoint is reachable (address, firewall, the gateway running)`;
    }
    return (
      `timed out (the S3 endpoint sent nothing for requestTimeout ${seconds(this.#options.requestTimeout)}${tries}): ` +
      'a hung or overloaded gateway or OSD; check the gateway (RGW) and the health of the cluster behind it (slow or blocked OSD requests), or raise requestTimeout for a slow link'
    );
  }

  #fullKey(key: string, isPrefix = false): string {
    if (!isPrefix && (key === '' || key.split('/').some((p) => p === '' || p === '.' || p === '..'))) {
      throw new AgentError('E_INVALID_NAME', `invalid object key ${JSON.stringify(key)}`);
    }
    return this.#options.prefix + key;
  }
}

/** The object's size from a Content-Range ("bytes 0-99/1234"), when the store said it. */
function sizeOf(contentRange: string): number | undefined {
  const size = /\/(\d+)$/.exec(contentRange)?.[1];
  return size === undefined ? undefined : Number(size);
}

function isNotFound(error: unknown): boolean {
  if (!(error instanceof S3ServiceException)) return false;
  return error.$metadata.httpStatusCode === 404 || error.name === 'NoSuchKey' || error.name === 'NotFound' || error.name === 'NoSuchUpload';
}

/** How a failed attempt is reported: its code, the HTTP status of the answer, whether it timed out. */
function describeFailure(error: unknown): { code: string; status: number | undefined; timeout: boolean } {
  if (error instanceof S3ServiceException) return { code: error.name, status: error.$metadata.httpStatusCode, timeout: false };
  const { name, code } = (error ?? {}) as { name?: unknown; code?: unknown };
  // The http handler names ECONNRESET and EPIPE "TimeoutError" too: the system code tells them apart.
  if (typeof code === 'string') return { code, status: undefined, timeout: code === 'ETIMEDOUT' };
  return { code: typeof name === 'string' && name ? name : 'Error', status: undefined, timeout: name === 'TimeoutError' };
}
