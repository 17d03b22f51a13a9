import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { zstdCompress, zstdDecompress } from 'node:zlib';
import { z } from 'zod';
import { AgentError, throwIfCancelled } from '../../errors.ts';
import { open, seal } from '../../transport/repository/blob-crypto.ts';
import type { ObjectStore } from '../../transport/stores/object-store.ts';
import { macProblem, signRecord, type KeyRing, type ManifestMac } from '../manifest-mac.ts';
import { readAtMost } from '../read-at-most.ts';
import { binlogOrder, type BinlogSegment, type SegmentSink, type StreamPosition } from './segment.ts';

/**
 * The binary log of a mysql service as stored (docs/pitr.md):
 *
 *   <env>/pitr/<service>/<chain>/<seq>.json   a record: what segment <seq> holds, MACed
 *   <env>/pitr/<service>/<chain>/<seq>.zst    the segment's bytes, one zstd frame
 *
 * A chain is an unbroken run of the server's binlog, from where the streamer started to where it
 * is now: `<start, epoch ms, 13 digits>-<8 random hex>`, so that key order is time order. Each
 * record names the MAC of the one before it, so a record removed or replaced from the middle
 * breaks the chain where it happened, and the record binds its env, service, chain and seq, so
 * it cannot be moved to another place of the bucket. A gap (the server purged a file the agent
 * had not read) starts a new chain: no restore replays across it.
 *
 * In an environment with a repository the segments are sealed (AES-256-GCM under the repository's
 * binlog key, bound to their place): the binlog holds every row the application wrote, and the
 * repository's promise that the bucket reveals no content covers it too. A record says so
 * (`sealed`, under its MAC), and its sha256 is then of the sealed bytes, so that it says nothing
 * about the content either.
 *
 * `pitr/` sorts after `catalog.json`: a backup listing (catalog.ts) stops before it.
 */
const DOMAIN = 'storage-agent/binlog-record/v1\n';
const RECORD_VERSION = 1;
/** A record is a few hundred bytes; anything much larger is not ours. */
const MAX_RECORD_BYTES = 64 * 1024;
const SEQ_DIGITS = 10;
const CHAIN_PATTERN = /^\d{13}-[0-9a-f]{8}$/;
const FILE_PATTERN = /^[A-Za-z0-9._-]{1,200}\.\d{1,10}$/;

export const pitrPrefix = (env: string, service: string): string => `${env}/pitr/${service}/`;
const chainPrefix = (env: string, service: string, chain: string): string => `${pitrPrefix(env, service)}${chain}/`;
const seqName = (seq: number): string => String(seq).padStart(SEQ_DIGITS, '0');
export const recordKey = (env: string, service: string, chain: string, seq: number): string => `${chainPrefix(env, service, chain)}${seqName(seq)}.json`;
export const segmentKey = (env: string, service: string, chain: string, seq: number): string => `${chainPrefix(env, service, chain)}${seqName(seq)}.zst`;

const recordSchema = z
  .object({
    version: z.literal(RECORD_VERSION),
    env: z.string(),
    service: z.string(),
    chain: z.string().regex(CHAIN_PATTERN),
    seq: z.number().int().min(0),
    file: z.string().regex(FILE_PATTERN),
    offset: z.number().int().min(0),
    end: z.number().int().min(0),
    storedBytes: z.number().int().min(0),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    firstEventMs: z.number().int().nullable(),
    /** The newest event time of the chain up to and including this record: the window's end, whatever order replayed events came in. */
    lastEventMs: z.number().int().nullable(),
    lastGtid: z.string().max(200).nullable(),
    closed: z.boolean(),
    /** The stored bytes are a sealed zstd frame (absent: the frame itself). */
    sealed: z.literal(true).optional(),
    /** The previous record's MAC value; null for a chain's first. */
    previous: z.string().regex(/^[0-9a-f]{64}$/).nullable(),
    /** Why this chain began (the first record only): the first start, or the gap it follows. */
    reason: z.string().max(500).nullable(),
    writtenAt: z.string().datetime(),
    mac: z.object({ keyId: z.string(), alg: z.literal('HMAC-SHA256'), value: z.string().regex(/^[0-9a-f]{64}$/) }),
  })
  .strict()
  .refine((r) => r.end >= r.offset, 'end is before offset');
export type BinlogRecord = z.infer<typeof recordSchema>;

/** A place in a server's binlog: the file and the byte offset in it. */
export interface BinlogPoint {
  file: string;
  position: number;
}

/** Whether a place in the binlog comes before another. */
export function pointBefore(a: BinlogPoint, b: BinlogPoint): boolean {
  const files = binlogOrder(a.file, b.file);
  return files < 0 || (files === 0 && a.position < b.position);
}

export function binlogChainError(message: string, details?: Record<string, unknown>): AgentError {
  return new AgentError('E_BINLOG_CHAIN', message, details ? { details } : undefined);
}

const compress = promisify(zstdCompress);
const decompress = promisify(zstdDecompress);

/**
 * How segments are encrypted: with the environment's repository key, opened on first use (a
 * reader of an unsealed chain never opens it). `sealNew`: new segments are sealed (the
 * environment keeps a repository); sealed ones are opened whatever it says now.
 */
export interface SegmentSealing {
  readonly sealNew: boolean;
  /** The key (E_REPOSITORY_KEY when the repository cannot be opened). */
  key(): Promise<Buffer>;
}

const sealedData = (env: string, service: string, chain: string, seq: number) => Buffer.from(`storage-agent/binlog-segment/v1\n${env}\n${service}\n${chain}\n${seq}`);
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/**
 * The binlog of one service in one environment's store: written by the streamer (as its
 * SegmentSink), read by restores and listings. One writer at a time (the node owning the
 * environment runs its streamer), any number of readers.
 */
export class BinlogArchive implements SegmentSink {
  readonly #store: ObjectStore;
  readonly #env: string;
  readonly #service: string;
  readonly #keys: KeyRing;
  readonly #sealing: SegmentSealing;
  /** The newest stored record (this writer's), once known. */
  #head: BinlogRecord | undefined;
  #headKnown = false;
  /** Set by restart(): the next append starts a new chain, saying why. */
  #restartReason: string | undefined;

  constructor(store: ObjectStore, env: string, service: string, keys: KeyRing, sealing: SegmentSealing) {
    this.#store = store;
    this.#env = env;
    this.#service = service;
    this.#keys = keys;
    this.#sealing = sealing;
  }

  get env(): string {
    return this.#env;
  }

  get service(): string {
    return this.#service;
  }

  /** Chains newest first, each with its records' seqs in order (from the listing: not yet verified). */
  async chains(): Promise<{ chain: string; seqs: number[] }[]> {
    const prefix = pitrPrefix(this.#env, this.#service);
    const chains = new Map<string, number[]>();
    for await (const object of this.#store.list(prefix)) {
      const m = /^([^/]+)\/(\d{10})\.json$/.exec(object.key.slice(prefix.length));
      if (!m || !CHAIN_PATTERN.test(m[1]!)) continue; // not ours: ignored, as in a backup listing
      const seqs = chains.get(m[1]!) ?? [];
      seqs.push(Number(m[2]));
      chains.set(m[1]!, seqs);
    }
    return [...chains.entries()].sort(([a], [b]) => (a < b ? 1 : -1)).map(([chain, seqs]) => ({ chain, seqs }));
  }

  /** A record, authenticated and checked to be the one its key names. */
  async readRecord(chain: string, seq: number, signal?: AbortSignal): Promise<BinlogRecord> {
    const key = recordKey(this.#env, this.#service, chain, seq);
    const bytes = await readAtMost(await this.#store.get(key, { signal }), MAX_RECORD_BYTES);
    let raw: unknown;
    try {
      if (!bytes) throw new Error('too large');
      raw = JSON.parse(bytes.toString('utf8'));
    } catch {
      throw binlogChainError(`binlog record ${key} is not JSON (or is over 64 KiB): it was not written by the agent; restore to a point before it or after the next base backup`, { key });
    }
    const problem = macProblem(DOMAIN, raw, this.#keys);
    if (problem) throw binlogChainError(`binlog record ${key} is not authenticated (${problem}); it is refused`, { key });
    const parsed = recordSchema.safeParse(raw);
    if (!parsed.success) throw binlogChainError(`binlog record ${key} is not a valid record: ${parsed.error.issues[0]?.message ?? 'invalid'}`, { key });
    const record = parsed.data;
    if (record.env !== this.#env || record.service !== this.#service || record.chain !== chain || record.seq !== seq) {
      throw binlogChainError(`binlog record ${key} was signed for another place (${record.env}/${record.service}/${record.chain}/${record.seq}); it is refused`, { key });
    }
    return record;
  }

  /** The bytes of a record's segment, checked against it (size, sha256, seal) before anyone uses them. */
  async readSegment(record: BinlogRecord, signal?: AbortSignal): Promise<Buffer> {
    const key = segmentKey(this.#env, this.#service, record.chain, record.seq);
    const stored = (await readAtMost(await this.#store.get(key, { signal }), record.storedBytes)) ?? Buffer.alloc(0);
    const bytes = stored.length === record.storedBytes ? await this.#unpack(record, stored) : undefined;
    if (!bytes || bytes.length !== record.end - record.offset || (!record.sealed && sha256(bytes) !== record.sha256)) {
      throw binlogChainError(
        `binlog segment ${key} (${record.file} bytes ${record.offset}-${record.end}) does not match its record: it is damaged or was replaced; restore to a point before it`,
        { key, file: record.file, offset: record.offset },
      );
    }
    return bytes;
  }

  /** The server's bytes of a stored segment, or undefined when they are not what the record names. */
  async #unpack(record: BinlogRecord, stored: Buffer): Promise<Buffer | undefined> {
    let frame: Buffer | undefined = stored;
    if (record.sealed) {
      frame = sha256(stored) === record.sha256 ? open(await this.#sealing.key(), stored, sealedData(this.#env, this.#service, record.chain, record.seq)) : undefined;
    }
    try {
      // Bounded by the record: a forged frame cannot inflate past the bytes it claims.
      return frame && (await decompress(frame, { maxOutputLength: Math.max(1, record.end - record.offset) }));
    } catch {
      return undefined;
    }
  }

  /**
   * Deletes a chain's records and segments before `seq` (all of it when undefined), records
   * first: a record never names bytes that are gone, and bytes a killed run left are found
   * by the next one (any key of that chain below the cut). Returns how many records went.
   */
  async deleteBefore(chain: string, seq: number | undefined, dryRun: boolean): Promise<number> {
    const prefix = chainPrefix(this.#env, this.#service, chain);
    const records: string[] = [];
    const segments: string[] = [];
    for await (const object of this.#store.list(prefix)) {
      const m = /^(\d{10})\.(json|zst)$/.exec(object.key.slice(prefix.length));
      if (!m || (seq !== undefined && Number(m[1]) >= seq)) continue;
      (m[2] === 'json' ? records : segments).push(object.key);
    }
    if (!dryRun) {
      await this.#store.delete(records);
      await this.#store.delete(segments);
    }
    return records.length;
  }

  // ---------------------------------------------------------------- writing (SegmentSink)

  async resume(signal: AbortSignal): Promise<StreamPosition | undefined> {
    const head = await this.#findHead(signal);
    return head ? { file: head.file, end: head.end, closed: head.closed } : undefined;
  }

  async restart(reason: string): Promise<void> {
    this.#restartReason = reason;
  }

  async append(segment: BinlogSegment, signal: AbortSignal): Promise<void> {
    throwIfCancelled(signal);
    const head = await this.#findHead(signal);
    const startsChain = head === undefined || this.#restartReason !== undefined;
    if (!startsChain) checkContinues(head, segment);
    const chain = startsChain ? `${String(Date.now()).padStart(13, '0')}-${randomBytes(4).toString('hex')}` : head.chain;
    const seq = startsChain ? 0 : head.seq + 1;
    const sealed = this.#sealing.sealNew;
    const frame = await compress(segment.bytes);
    const stored = sealed ? seal(await this.#sealing.key(), [frame], sealedData(this.#env, this.#service, chain, seq)) : frame;
    // The bytes first, their record last: a record is only ever written for stored bytes, and
    // a crash in between leaves bytes the next append of the same seq overwrites.
    await this.#store.put(segmentKey(this.#env, this.#service, chain, seq), Readable.from([stored]), { signal });
    const record = signRecord(
      DOMAIN,
      {
        version: RECORD_VERSION,
        env: this.#env,
        service: this.#service,
        chain,
        seq,
        file: segment.file,
        offset: segment.offset,
        end: segment.end,
        storedBytes: stored.length,
        sha256: sha256(sealed ? stored : segment.bytes),
        firstEventMs: segment.firstEventMs,
        lastEventMs: startsChain ? segment.lastEventMs : newestOf(head.lastEventMs, segment.lastEventMs),
        lastGtid: segment.lastGtid,
        closed: segment.closed,
        ...(sealed ? { sealed: true as const } : {}),
        previous: startsChain ? null : head.mac.value,
        reason: startsChain ? (this.#restartReason ?? (head ? 'a new chain' : 'the first start of the stream')) : null,
        writtenAt: new Date().toISOString(),
      } as const,
      this.#keys,
    ) as BinlogRecord & { mac: ManifestMac };
    await this.#store.put(recordKey(this.#env, this.#service, chain, seq), Readable.from([Buffer.from(JSON.stringify(record))]), { signal });
    this.#head = record;
    this.#restartReason = undefined;
  }

  /**
   * The newest record of the newest chain. One that does not verify (damaged, forged) cannot be
   * continued: the next append starts a new chain, and says why.
   */
  async #findHead(signal: AbortSignal): Promise<BinlogRecord | undefined> {
    if (this.#headKnown) return this.#head;
    const [newest] = await this.chains();
    if (newest) {
      const seq = newest.seqs[newest.seqs.length - 1]!;
      try {
        this.#head = await this.readRecord(newest.chain, seq, signal);
      } catch (error) {
        if (!(error instanceof AgentError) || error.code !== 'E_BINLOG_CHAIN') throw error;
        this.#restartReason = `the newest stored record (${newest.chain}/${seq}) did not verify: ${error.message}`;
        this.#head = undefined;
      }
    }
    this.#headKnown = true;
    return this.#head;
  }
}

/** A segment continues the head: the same file from its end, or, once it is closed, a later file from byte 0. */
function checkContinues(head: BinlogRecord, segment: BinlogSegment): void {
  const same = segment.file === head.file && segment.offset === head.end;
  const next = head.closed && binlogOrder(segment.file, head.file) > 0 && segment.offset === 0;
  if (!same && !next) {
    throw new AgentError(
      'E_INTERNAL',
      `binlog segment ${segment.file}:${segment.offset} does not continue the stored stream (${head.file}:${head.end}${head.closed ? ', closed' : ''})`,
    );
  }
  if (segment.end - segment.offset !== segment.bytes.length) throw new AgentError('E_INTERNAL', `binlog segment ${segment.file}:${segment.offset} holds ${segment.bytes.length} bytes, not ${segment.end - segment.offset}`);
}

/** The later of two event times, either of which may be unknown. */
function newestOf(a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.max(a, b);
}
