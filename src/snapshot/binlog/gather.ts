import { mkdir, open, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import pLimit from 'p-limit';
import { AgentError, throwIfCancelled } from '../../errors.ts';
import { requireFreeSpace } from '../free-space.ts';
import { binlogChainError, pointBefore, type BinlogArchive, type BinlogPoint, type BinlogRecord } from './archive.ts';

/** Where a replay stops: the end of a second (UTC), or a place in the binlog. */
export type ReplayStop = { kind: 'time'; ms: number } | { kind: 'position'; point: BinlogPoint } | { kind: 'gtid'; gtid: Gtid };

/** A MariaDB GTID, `domain-server-seq`. */
export interface Gtid {
  domain: number;
  server: number;
  seq: number;
}

export function parseGtid(text: string): Gtid | undefined {
  const m = /^(\d{1,10})-(\d{1,10})-(\d{1,20})$/.exec(text);
  return m ? { domain: Number(m[1]), server: Number(m[2]), seq: Number(m[3]) } : undefined;
}

/** The sequence number a GTID position (`gtid_binlog_pos`: one GTID per domain, comma-separated) holds for a domain. */
export function seqInDomain(position: string, domain: number): number | undefined {
  for (const part of position.split(',')) {
    const gtid = parseGtid(part.trim());
    if (gtid?.domain === domain) return gtid.seq;
  }
  return undefined;
}

/** What a replay needs on disk: the binlog files, verified, from the base's position to the stop. */
export interface GatheredBinlog {
  /** Local copies, in order. The first holds its header and the bytes from `start` on (the rest of it is a hole). */
  files: string[];
  start: BinlogPoint;
  /** The newest record used: the stored stream reaches this far. */
  last: BinlogRecord;
  /** How many segments and bytes were read. */
  segments: number;
  bytes: number;
}

const RECORDS_IN_FLIGHT = 16;
const SEGMENTS_IN_FLIGHT = 4;

/**
 * Reads from the archive the binlog a point-in-time restore replays: from `start` (the base
 * backup's exact position) to the first record past `stop`, every record authenticated and
 * linked to the one before it (a missing or replaced record is E_BINLOG_CHAIN), every segment
 * checked against its record, written into `dir` as the server's files were. A stop the stored
 * stream does not reach yet is E_PITR_OUT_OF_WINDOW, saying how far it does reach.
 */
export async function gatherBinlog(archive: BinlogArchive, start: BinlogPoint, stop: ReplayStop, dir: string, signal: AbortSignal): Promise<GatheredBinlog> {
  const found = await chainHolding(archive, start, signal);
  if (!found) {
    throw new AgentError(
      'E_PITR_OUT_OF_WINDOW',
      `the stored binlog of ${archive.env}/${archive.service} does not hold ${start.file}:${start.position}, where the base backup starts: the stream was not running then, or that part was pruned; choose a later base backup (or time)`,
      { details: { file: start.file, position: start.position } },
    );
  }
  const { chain, seqs } = found;
  const limit = pLimit(RECORDS_IN_FLIGHT);
  // Records from the file's first segment (its header) on, read ahead in parallel, checked in order.
  const headerAt = await lastAtOrBefore(archive, chain, seqs, { file: start.file, position: 0 }, signal);
  const fromAt = await lastAtOrBefore(archive, chain, seqs, start, signal);
  const used: BinlogRecord[] = [];
  let previous: BinlogRecord | undefined;
  let reached = false;
  for (let batch = fromAt; batch < seqs.length && !reached; batch += RECORDS_IN_FLIGHT) {
    const records = await Promise.all(seqs.slice(batch, batch + RECORDS_IN_FLIGHT).map((seq) => limit(() => archive.readRecord(chain, seq, signal))));
    for (const record of records) {
      if (previous && (record.seq !== previous.seq + 1 || record.previous !== previous.mac.value)) {
        throw binlogChainError(
          `the stored binlog of ${archive.env}/${archive.service} is broken after ${previous.file}:${previous.end} (chain ${chain}, record ${previous.seq + 1} is missing or was replaced); it cannot be replayed past there: restore to an earlier point`,
          { chain, seq: previous.seq + 1 },
        );
      }
      used.push(record);
      previous = record;
      if (reaches(record, stop)) {
        reached = true;
        break;
      }
    }
  }
  const last = used[used.length - 1]!;
  if (!reached) {
    const newest = last.lastEventMs === null ? 'none' : new Date(last.lastEventMs).toISOString();
    throw new AgentError(
      'E_PITR_OUT_OF_WINDOW',
      `the stored binlog of ${archive.env}/${archive.service} reaches ${last.file}:${last.end} (newest event ${newest}), not ${describeStop(stop)}: a point is restorable once an event after it is stored; retry later or choose an earlier point`,
      { details: { file: last.file, end: last.end, newestEvent: newest } },
    );
  }
  const header = headerAt === fromAt ? [] : [await archive.readRecord(chain, seqs[headerAt]!, signal)];
  if (header[0] && (header[0].file !== start.file || header[0].offset !== 0)) {
    throw binlogChainError(`the stored binlog of ${archive.env}/${archive.service} lacks the start of ${start.file}`, { file: start.file });
  }
  // Written under the state dir: refused up front when it would not fit, rather than half way.
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await requireFreeSpace(dir, [...header, ...used].reduce((sum, r) => sum + r.end - r.offset, 0), `the binlog of ${archive.service} to replay`);
  return { ...(await writeFiles(archive, [...header, ...used], dir, signal)), start, last };
}

/** The chain whose stored span holds `start`: its first record at or before it, its newest at or after it. */
export async function chainHolding(archive: BinlogArchive, start: BinlogPoint, signal: AbortSignal): Promise<{ chain: string; seqs: number[] } | undefined> {
  for (const { chain, seqs } of await archive.chains()) {
    throwIfCancelled(signal);
    const first = await archive.readRecord(chain, seqs[0]!, signal);
    if (pointBefore(start, { file: first.file, position: first.offset })) continue;
    const newest = await archive.readRecord(chain, seqs[seqs.length - 1]!, signal);
    if (pointBefore({ file: newest.file, position: newest.end }, start)) return undefined; // newer chains begin later still
    return { chain, seqs };
  }
  return undefined;
}

/** Whether a chain whose first and newest records are these holds `point`, from its first byte to past its last. */
export function spanHolds(first: BinlogRecord, newest: BinlogRecord, point: BinlogPoint): boolean {
  return !pointBefore(point, { file: first.file, position: first.offset }) && !pointBefore({ file: newest.file, position: newest.end }, point);
}

/** The index (in seqs) of the last record beginning at or before `point`: a binary search over records, which are in stream order. */
export async function lastAtOrBefore(archive: BinlogArchive, chain: string, seqs: number[], point: BinlogPoint, signal: AbortSignal): Promise<number> {
  let low = 0;
  let high = seqs.length - 1;
  while (low < high) {
    const middle = Math.ceil((low + high) / 2);
    const record = await archive.readRecord(chain, seqs[middle]!, signal);
    if (pointBefore(point, { file: record.file, position: record.offset })) high = middle - 1;
    else low = middle;
  }
  return low;
}


/** Whether a record carries the stream past the stop: an event after the stop's second, the commit of the stop's transaction (or a later one), or bytes past its position. */
function reaches(record: BinlogRecord, stop: ReplayStop): boolean {
  if (stop.kind === 'time') return record.lastEventMs !== null && record.lastEventMs >= stop.ms;
  if (stop.kind === 'gtid') return record.lastGtid !== null && (seqInDomain(record.lastGtid, stop.gtid.domain) ?? -1) >= stop.gtid.seq;
  return !pointBefore({ file: record.file, position: record.end }, stop.point);
}

export function describeStop(stop: ReplayStop): string {
  if (stop.kind === 'gtid') return `GTID ${stop.gtid.domain}-${stop.gtid.server}-${stop.gtid.seq}`;
  return stop.kind === 'time' ? new Date(stop.ms - 1000).toISOString() : `${stop.point.file}:${stop.point.position}`;
}

/** Each record's segment, verified, written at its offset in its file; a few read at once. */
async function writeFiles(archive: BinlogArchive, records: BinlogRecord[], dir: string, signal: AbortSignal): Promise<{ files: string[]; segments: number; bytes: number }> {
  const handles = new Map<string, FileHandle>();
  const limit = pLimit(SEGMENTS_IN_FLIGHT);
  let bytes = 0;
  try {
    for (const record of records) {
      if (!handles.has(record.file)) handles.set(record.file, await open(path.join(dir, record.file), 'wx', 0o600));
    }
    await Promise.all(
      records.map((record) =>
        limit(async () => {
          const data = await archive.readSegment(record, signal);
          await handles.get(record.file)!.write(data, 0, data.length, record.offset);
          bytes += data.length;
        }),
      ),
    );
  } finally {
    await Promise.all([...handles.values()].map((h) => h.close()));
  }
  return { files: [...handles.keys()].map((file) => path.join(dir, file)), segments: records.length, bytes };
}
