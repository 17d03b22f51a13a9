import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { addAbortSignal, Readable, Writable, type Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AgentError, isAgentError, toAgentError } from '../../errors.ts';
import { reachedPhase } from '../../phase-hook.ts';
import { compressionExtension, createCompressor, createDecompressor, type Compression } from '../compression.ts';
import { DigestStream, LengthCheck, sizeMismatch, VerifyStream } from '../digest.ts';
import type { ElementRecord, Manifest } from '../manifest.ts';
import { chooseDatabase, singleDatabaseStages, type DatabaseChoice } from '../mysql/single-database.ts';
import { checkName } from '../names.ts';
import { objectNotFound, type ObjectStore } from '../../transport/stores/object-store.ts';
import type { Repository } from '../../transport/repository/repository.ts';
import { readSegmented } from '../../transport/stores/segments.ts';
import { DownloadJournal } from './download-journal.ts';

/**
 * Where a backup's elements are read from: archives in the store, or — for elements stored in
 * it (issue #13) — the environment's repository, opened on first use.
 */
export interface BackupStorage {
  store: ObjectStore;
  repository(): Promise<Repository>;
}

export function findElement(manifest: Manifest, name: string): ElementRecord {
  const found = manifest.elements.find((e) => e.name === checkName('element', name));
  if (!found) {
    throw new AgentError(
      'E_UNKNOWN_ELEMENT',
      `backup ${manifest.id} has no element "${name}"; its elements: ${manifest.elements.map((e) => e.name).join(', ')}`,
      { details: { env: manifest.env, id: manifest.id, element: name } },
    );
  }
  return found;
}

/**
 * The stored bytes of an element, failing unless size and sha256 match the manifest (size as
 * soon as it is exceeded, sha256 at the end). Destroying the stream stops the store read.
 */
function readVerified(store: ObjectStore, manifest: Manifest, element: ElementRecord, signal: AbortSignal): Readable {
  const out = new VerifyStream({ bytes: element.storedBytes, sha256: element.sha256!, what: elementLabel(manifest, element) });
  // pipeline(), not pipe(): a consumer that destroys `out` must also end the store's request.
  pipeline(readSegmented(store, element.objects.map((o) => o.key), signal), out).catch(() => {}); // the failure is out's error
  return out;
}

export interface DecompressOptions {
  /** Raw (decompressed) bytes handed on so far, after each chunk: restore progress. */
  onBytes?: (rawBytes: number) => void;
}

/**
 * The element's raw archive (tar, SQL, RDB): its stored bytes verified (readVerified) and
 * decompressed, never more bytes than the manifest's rawBytes (a decompression bomb fails
 * E_ARCHIVE_CORRUPT as soon as it passes them). It ends only once both checks passed.
 *
 * Nothing starts before the first read: no store request, no decompressor process. The stream
 * owns all it starts, and whoever stops reading early (the consumer failed, or was cancelled)
 * must destroy() it; that, or an abort of `signal`, ends the store read and the `zstd` child,
 * and 'close' is emitted once the child has exited. consumeElement does this for a restore. A failure to decompress is explained by
 * the stored bytes when they are wrong: the rest of them is read (not decompressed) to their
 * end, and their E_SIZE_MISMATCH / E_CHECKSUM_MISMATCH is reported instead of E_ARCHIVE_CORRUPT.
 */
export function readDecompressed(store: ObjectStore, manifest: Manifest, element: ElementRecord, signal: AbortSignal, options: DecompressOptions = {}): DecompressedElement {
  return addAbortSignal(signal, new DecompressedElement(store, manifest, element, signal, options));
}

/**
 * Hands the element's raw archive (readDecompressed) to `consume` (a driver's stage) and
 * destroys it when `consume` settles: nothing it started outlives the call. A consumer can
 * fail on corrupt bytes before the decompressor or the sha256 notices (a tar or SQL parse
 * error on what a damaged frame let through): when it fails after reading some of the archive
 * and before the stored bytes were checked to their end, they are read back (verifyElement),
 * and their E_CHECKSUM_MISMATCH / E_SIZE_MISMATCH is thrown instead of the consumer's error.
 */
export async function consumeElement<T>(
  storage: BackupStorage,
  manifest: Manifest,
  element: ElementRecord,
  signal: AbortSignal,
  consume: (source: Readable) => Promise<T>,
  options: DecompressOptions = {},
): Promise<T> {
  if (element.repository) {
    const source = readFromRepository(storage, manifest, element, signal, options);
    try {
      return await consume(source);
    } finally {
      source.destroy();
    }
  }
  const { store } = storage;
  const source = readDecompressed(store, manifest, element, signal, options);
  try {
    return await consume(source);
  } catch (error) {
    source.destroy();
    if (!source.started || source.storedBytesChecked || signal.aborted || isAgentError(error, 'E_CHECKSUM_MISMATCH') || isAgentError(error, 'E_SIZE_MISMATCH')) throw error;
    const stored = await verifyElement(storage, manifest, element, signal).then(
      () => undefined,
      (failure: unknown) => failure,
    );
    throw isAgentError(stored, 'E_CHECKSUM_MISMATCH') || isAgentError(stored, 'E_SIZE_MISMATCH') ? stored : error;
  } finally {
    source.destroy();
    // 'close' comes once the decompressor's child has exited (and never rejects, unlike once()).
    if (!source.closed) await new Promise<void>((resolve) => source.once('close', () => resolve()));
  }
}

/**
 * An element's raw archive from the repository: every chunk authenticated as it arrives
 * (E_REPOSITORY_CORRUPT otherwise), and exactly the manifest's rawBytes, or E_ARCHIVE_CORRUPT.
 */
function readFromRepository(storage: BackupStorage, manifest: Manifest, element: ElementRecord, signal: AbortSignal, options: DecompressOptions = {}): Readable {
  const check = new LengthCheck(element.rawBytes, elementLabel(manifest, element), options.onBytes);
  const root = element.repository!.root;
  void (async () => {
    const repository = await storage.repository();
    await pipeline(repository.readStream(root, { signal }), check, { signal });
  })().catch((error: unknown) => check.destroy(error as Error));
  return check;
}

class DecompressedElement extends Readable {
  readonly #compression: Compression;
  readonly #open: () => { stored: Readable; check: LengthCheck };
  readonly #label: string;
  readonly #parts: (Readable | Writable)[] = [];
  #decoder: Duplex | undefined;
  #started = false;
  #storedBytesChecked = false;
  /** The held write callback of the decoded side, waiting for the consumer to read. */
  #wantMore: (() => void) | undefined;

  constructor(store: ObjectStore, manifest: Manifest, element: ElementRecord, signal: AbortSignal, options: DecompressOptions) {
    super({ highWaterMark: 1 << 20 });
    this.#label = elementLabel(manifest, element);
    this.#compression = element.compression;
    this.#open = () => ({
      stored: readVerified(store, manifest, element, signal),
      check: new LengthCheck(element.rawBytes, this.#label, options.onBytes),
    });
  }

  /** Whether reading began (the store was asked for the bytes). */
  get started(): boolean {
    return this.#started;
  }

  /** Whether the stored bytes were read to their end and matched size and sha256. */
  get storedBytesChecked(): boolean {
    return this.#storedBytesChecked;
  }

  override _read(): void {
    if (!this.#started) {
      this.#started = true;
      this.#run().then(
        () => this.push(null),
        (error: unknown) => this.destroy(error as Error),
      );
    }
    const resume = this.#wantMore;
    this.#wantMore = undefined;
    resume?.();
  }

  override _destroy(error: Error | null, done: (error?: Error | null) => void): void {
    for (const part of this.#parts) part.destroy();
    this.#wantMore = undefined;
    const decoder = this.#decoder;
    if (!decoder || decoder.closed) return done(error);
    // The decompressor's 'close' comes once its child process has exited.
    decoder.once('close', () => done(error));
  }

  async #run(): Promise<void> {
    const decoder = await createDecompressor(this.#compression);
    if (this.destroyed) {
      // Destroyed while the decoder was made: nothing else would end it, and nothing is read.
      // Its premature-close error has nobody to tell (the stream already reported its own end).
      decoder.on('error', () => {});
      decoder.destroy();
      return;
    }
    const { stored, check } = this.#open();
    const feed = new DecoderFeed(decoder);
    const deliver = new Writable({
      highWaterMark: 1 << 20,
      write: (chunk: Buffer, _encoding, next) => {
        if (this.push(chunk)) next();
        else this.#wantMore = next;
      },
    });
    this.#decoder = decoder;
    this.#parts.push(stored, feed, decoder, check, deliver);
    const read = pipeline(stored, feed).then(() => {
      this.#storedBytesChecked = true;
    });
    // A failed read (store, size, sha256) is the whole story: stop decompressing.
    read.catch(() => decoder.destroy());
    const decodeFailure = await pipeline(decoder, check, deliver).then(
      () => undefined,
      (error: unknown) => error,
    );
    if (decodeFailure === undefined) return read;
    feed.discard();
    await read;
    throw archiveCorrupt(decodeFailure, this.#label);
  }
}

/**
 * Writes the stored bytes into the decoder until discard(), then only lets them through: once
 * the decoder has failed, the rest of the stored bytes is still read, for its size and sha256.
 */
class DecoderFeed extends Writable {
  #decoder: Writable | undefined;
  #held: (() => void) | undefined;

  constructor(decoder: Writable) {
    super({ highWaterMark: 1 << 20 });
    this.#decoder = decoder;
  }

  discard(): void {
    this.#decoder = undefined;
    this.#release();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    const decoder = this.#decoder;
    if (!decoder) return done();
    if (decoder.write(chunk)) return done();
    this.#held = done;
    decoder.once('drain', () => this.#release());
  }

  override _final(done: (error?: Error | null) => void): void {
    this.#decoder?.end();
    done();
  }

  #release(): void {
    const held = this.#held;
    this.#held = undefined;
    held?.();
  }
}

function elementLabel(manifest: Manifest, element: ElementRecord): string {
  return `element ${element.name} of backup ${manifest.id}`;
}

/** A decompression failure over stored bytes that match their manifest: the archive itself is bad. */
function archiveCorrupt(error: unknown, label: string): AgentError {
  if (isAgentError(error)) return error;
  const failure = toAgentError(error);
  if (failure.code === 'E_CANCELLED') return failure;
  // execa's message is "Command failed with exit code 1: zstd -q -d -c" and zstd's own words.
  const stderr = (error as { stderr?: unknown }).stderr;
  const reason = typeof stderr === 'string' && stderr.trim() ? stderr.trim() : failure.message;
  return new AgentError(
    'E_ARCHIVE_CORRUPT',
    `${label}: the archive is corrupt and cannot be decompressed (${reason}), although the stored object matches its manifest's size and sha256 — restore from another backup`,
    { cause: error },
  );
}

/**
 * Writes an element stored in the repository to `key` as the standard archive `get` writes
 * (zstd of its whole stream), for a URL to serve. Every chunk is authenticated on the way.
 * Returns the sha256 and size of the bytes written: the manifest has none for this archive,
 * and whoever can write the bucket can replace it once written, so these are what a
 * downloader checks the URL's bytes against.
 */
export async function materializeElement(storage: BackupStorage, manifest: Manifest, element: ElementRecord, key: string, signal: AbortSignal): Promise<{ sha256: string; bytes: number }> {
  const compressed = createCompressor('zstd', { level: GET_LEVEL });
  const digest = new DigestStream();
  const feeding = pipeline(readFromRepository(storage, manifest, element, signal), compressed, digest, { signal });
  feeding.catch(() => {}); // joined below
  try {
    await storage.store.put(key, digest, { signal });
  } catch (error) {
    digest.destroy();
    await feeding.catch(() => {});
    throw error;
  }
  await feeding;
  return { sha256: digest.sha256, bytes: digest.bytes };
}

/**
 * The key of an element's one stored object, after a HEAD showed it has the size the
 * authenticated manifest records (E_SIZE_MISMATCH otherwise, as verify says of a wrong size).
 * For `backup url`, which hands out the object without reading it: an object replaced by one
 * of another size is refused here; one of the same size only the downloader's sha256 catches.
 */
export async function storedObjectOfSize(store: ObjectStore, manifest: Manifest, element: ElementRecord): Promise<string> {
  const object = element.objects[0]!;
  const info = await store.head(object.key);
  if (!info) throw objectNotFound(object.key);
  if (info.size !== object.bytes) throw sizeMismatch(elementLabel(manifest, element), `object ${object.key} is ${info.size} bytes`, object.bytes, info.size);
  return object.key;
}

/** The file name `get` writes: `<element>.<format><compression ext>` (db.sql.gz, uploads.tar.zst). */
export function artifactFileName(element: ElementRecord): string {
  return `${element.name}.${element.format}${compressionExtension[element.compression]}`;
}

/** Level of a MySQL dump `get` recompresses: the backup's default, the fastest. */
const GET_LEVEL = 1;

/**
 * Downloads one element as a standard archive, verified; the file appears only when complete
 * (temp + rename). The temp file is journaled in the state directory before it is created
 * (download-journal.ts): one that a killed get leaves is removed by the next start. `to` may be an existing directory (the file is artifactFileName inside it)
 * or a file path in one. Files and Redis elements, and a MySQL element with --all-databases,
 * are the stored bytes. Otherwise a MySQL element's dump is cut to one database (chooseDatabase)
 * without CREATE DATABASE or USE, so that it loads into the database the user names, and
 * recompressed in its stored format: the file name stays <element>.sql.zst.
 */
export async function downloadElement(
  storage: BackupStorage,
  manifest: Manifest,
  element: ElementRecord,
  to: string,
  signal: AbortSignal,
  options: DatabaseChoice & { stateDir: string },
): Promise<{ path: string; bytes: number; verified: string; database?: string }> {
  const database = chooseDatabase(element, options);
  const file = await downloadTarget(to, element);
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.partial-${process.pid}`);
  const partials = new DownloadJournal(options.stateDir);
  const journaled = await partials.record(`${process.pid}-${randomBytes(4).toString('hex')}`, { pid: process.pid, path: temp });
  let bytes = element.storedBytes;
  try {
    const sink = () => createWriteStream(temp, { flags: 'wx', mode: 0o600 });
    if (database === undefined && element.repository) {
      // A standard .tar.zst / .sql.zst / .rdb.zst, whatever the repository's chunks are.
      await pipeline(readFromRepository(storage, manifest, element, signal), createCompressor('zstd', { level: GET_LEVEL }), sink(), { signal });
      bytes = (await stat(temp)).size;
    } else if (database === undefined) {
      await pipeline(readVerified(storage.store, manifest, element, signal), sink(), { signal });
    } else {
      const stages = singleDatabaseStages(database, elementLabel(manifest, element));
      await consumeElement(storage, manifest, element, signal, (source) =>
        pipeline(source, ...stages, createCompressor(element.compression, { level: GET_LEVEL }), sink(), { signal }),
      );
      bytes = (await stat(temp)).size;
    }
    await reachedPhase('get:written');
    await rename(temp, file);
  } catch (error) {
    await rm(temp, { force: true });
    throw toAgentError(error, 'E_STORE_IO');
  } finally {
    await partials.remove(journaled);
  }
  // What was checked, for the user: an archive's sha256, or every chunk's authentication.
  const verified = element.repository ? 'every chunk authenticated' : 'sha256 verified';
  return { path: file, bytes, verified, ...(database === undefined ? {} : { database }) };
}

async function downloadTarget(to: string, element: ElementRecord): Promise<string> {
  const isDirectory = (at: string) => stat(at).then((s) => s.isDirectory(), () => false);
  if (await isDirectory(to)) return path.join(to, artifactFileName(element));
  // A trailing slash means a directory: never write a file of that name instead.
  if (to.endsWith(path.sep)) {
    throw new AgentError('E_USAGE', `--to ${to}: no such directory; create it first, or give a file path`, { details: { to } });
  }
  const file = path.resolve(to);
  const parent = path.dirname(file);
  if (!(await isDirectory(parent))) {
    throw new AgentError('E_USAGE', `--to ${to}: directory ${parent} does not exist; create it first, or give a path in an existing directory`, { details: { to } });
  }
  return file;
}

export interface ElementCheck {
  element: string;
  ok: boolean;
  bytes: number;
  code?: string;
  message?: string;
}

/**
 * Reads back the element's stored objects and rejects unless size and sha256 match the
 * manifest (E_SIZE_MISMATCH, E_CHECKSUM_MISMATCH, E_STORE_IO, E_CANCELLED). A restore whose
 * consumer failed before the stream ended (a parse or load error) can ask this whether the
 * stored bytes explain it better.
 */
export async function verifyElement(storage: BackupStorage, manifest: Manifest, element: ElementRecord, signal: AbortSignal, options: { readData?: boolean } = {}): Promise<void> {
  try {
    // Archives are read whole (their sha256 is the check); repository elements' chunks only with readData.
    if (element.repository) {
      const repository = await storage.repository();
      for (const root of [element.repository.root, element.repository.files]) if (root) await repository.check(root, { signal, readData: options.readData ?? true });
    }
    else await pipeline(readVerified(storage.store, manifest, element, signal), new Writable({ write: (_chunk, _encoding, done) => done() }), { signal });
  } catch (error) {
    throw toAgentError(error, 'E_STORE_IO');
  }
}

/** Reads back every object of the backup and checks sizes and sha256 against the manifest. */
export async function verifyBackup(storage: BackupStorage, manifest: Manifest, signal: AbortSignal, options: { readData: boolean }): Promise<ElementCheck[]> {
  return (await verifyBackups(storage, [manifest], signal, options))[0]!.elements;
}

/**
 * verifyBackup of several backups of one environment. Their repository elements are checked
 * together, each chunk read once: a damaged chunk fails every backup that holds it, and only
 * those (`backup verify ENV all`).
 */
export async function verifyBackups(
  storage: BackupStorage,
  manifests: readonly Manifest[],
  signal: AbortSignal,
  options: { readData: boolean },
): Promise<{ id: string; elements: ElementCheck[] }[]> {
  const rootsOf = (element: ElementRecord) => (element.repository ? [element.repository.root, ...(element.repository.files ? [element.repository.files] : [])] : []);
  const roots = manifests.flatMap((m) => m.elements.flatMap(rootsOf));
  let damaged = new Map<string, AgentError | undefined>();
  let unreadable: AgentError | undefined; // the repository itself: its key, its index
  if (roots.length > 0) {
    try {
      damaged = await (await storage.repository()).checkMany(roots, { signal, readData: options.readData });
    } catch (error) {
      unreadable = toAgentError(error, 'E_STORE_IO');
      if (unreadable.code === 'E_CANCELLED') throw unreadable;
    }
  }
  const results: { id: string; elements: ElementCheck[] }[] = [];
  for (const manifest of manifests) {
    const checks: ElementCheck[] = [];
    for (const element of manifest.elements) {
      let failure: AgentError | undefined;
      if (element.repository) failure = unreadable ?? rootsOf(element).map((root) => damaged.get(root)).find((f) => f !== undefined);
      else {
        try {
          await verifyElement(storage, manifest, element, signal, options);
        } catch (error) {
          failure = toAgentError(error);
          if (failure.code === 'E_CANCELLED') throw failure;
        }
      }
      checks.push(failure ? { element: element.name, ok: false, bytes: element.storedBytes, code: failure.code, message: failure.message } : { element: element.name, ok: true, bytes: element.storedBytes });
    }
    results.push({ id: manifest.id, elements: checks });
  }
  return results;
}
