import { AgentError } from '../../errors.ts';
import { pointBefore, type BinlogArchive, type BinlogPoint } from '../binlog/archive.ts';
import { describeStop, parseGtid, seqInDomain, type ReplayStop } from '../binlog/gather.ts';
import type { Manifest, ElementRecord } from '../manifest.ts';
import type { KeyRing } from '../manifest-mac.ts';
import type { ObjectStore } from '../../transport/stores/object-store.ts';
import { chainHolding, lastAtOrBefore, spanHolds } from '../binlog/gather.ts';
import { listBackups, type BackupSummary } from './catalog.ts';

/**
 * Where a base backup's mysql element starts in the binlog: the position recorded under FLUSH
 * TABLES WITH READ LOCK, so that the dump holds exactly the transactions before it. A live
 * backup's position is read just before its snapshot (commits in between would be replayed
 * twice): never a base.
 */
export function basePoint(element: ElementRecord): BinlogPoint | undefined {
  const { binlogFile, binlogPosition, binlogExact } = element.facts;
  if (typeof binlogFile !== 'string' || typeof binlogPosition !== 'number' || binlogExact !== true) return undefined;
  return { file: binlogFile, position: binlogPosition };
}

/**
 * When the base's data is from: the time its position was taken (`binlogAt`), or, for backups
 * made before that fact was recorded, the end of the backup (later than the snapshot, so a base
 * is never taken for a point it is newer than).
 */
function baseTimeMs(manifest: Manifest, element: ElementRecord): number {
  const at = element.facts.binlogAt;
  return Date.parse(typeof at === 'string' ? at : manifest.completedAt);
}

function isBaseFor(manifest: Manifest, element: ElementRecord, stop: ReplayStop): boolean {
  const point = basePoint(element);
  if (!point) return false;
  if (stop.kind === 'time') return baseTimeMs(manifest, element) < stop.ms;
  if (stop.kind === 'gtid') {
    // The base holds every transaction of the domain up to its position's seq: one before the stop.
    const at = typeof element.facts.gtid === 'string' ? seqInDomain(element.facts.gtid, stop.gtid.domain) : undefined;
    return at !== undefined && at < stop.gtid.seq;
  }
  return !pointBefore(stop.point, point);
}

/**
 * The newest restorable, authenticated backup of `env` that can start a replay to `stop` for
 * every one of `elements` (its mysql elements with a point-in-time stream).
 */
export async function chooseBase(store: ObjectStore, env: string, keys: KeyRing, stop: ReplayStop, elements: readonly string[]): Promise<Manifest> {
  for (const summary of await listBackups(store, env, keys)) {
    const manifest = summary.manifest;
    if (!summary.restorable || !summary.authenticated || !manifest) continue;
    const ok = elements.every((name) => {
      const element = manifest.elements.find((e) => e.name === name);
      return element !== undefined && isBaseFor(manifest, element, stop);
    });
    if (ok) return manifest;
  }
  throw new AgentError(
    'E_PITR_OUT_OF_WINDOW',
    `no authenticated backup of ${env} holding ${elements.join(', ')} with an exact binlog position (a consistent backup) is older than ${describeStop(stop)}: that point is before the restorable window (see 'backup list ${env}')`,
    { details: { env, elements: [...elements] } },
  );
}

/** The same check for a base the user named (`backup restore ENV ID --to-time …`). */
export function checkBase(manifest: Manifest, element: ElementRecord, stop: ReplayStop): BinlogPoint {
  const point = basePoint(element);
  if (!point) {
    throw new AgentError(
      'E_PITR_OUT_OF_WINDOW',
      `element ${element.name} of backup ${manifest.env}/${manifest.id} has no exact binlog position (a live backup, or binary logging was off): it cannot start a point-in-time restore; leave out the backup id to use the newest one that can`,
    );
  }
  if (!isBaseFor(manifest, element, stop)) {
    throw new AgentError('E_PITR_OUT_OF_WINDOW', `backup ${manifest.env}/${manifest.id} is not older than ${describeStop(stop)}: a replay only goes forward; name an older backup, or leave out the id`);
  }
  return point;
}


/**
 * The point a request names: `toTime` (ISO 8601 with its zone; the whole second it names is
 * included), `toPosition` (`FILE:POSITION`, a binlog file of the server and a byte offset in
 * it) or `toGtid` (the last transaction applied, included). One of them at most.
 */
export function parsePoint(request: { toTime?: string | undefined; toPosition?: string | undefined; toGtid?: string | undefined }): ReplayStop | undefined {
  const { toTime, toPosition, toGtid } = request;
  const given = [toTime, toPosition, toGtid].filter((v) => v !== undefined).length;
  if (given === 0) return undefined;
  if (given > 1) throw new AgentError('E_USAGE', 'give one of --to-time, --to-position and --to-gtid, not several');
  if (toGtid !== undefined) {
    const gtid = parseGtid(toGtid);
    if (!gtid) throw new AgentError('E_USAGE', `--to-gtid ${JSON.stringify(toGtid.slice(0, 60))} is not a MariaDB GTID such as 0-1-4242 (domain-server-sequence): the transaction restored last`);
    return { kind: 'gtid', gtid };
  }
  if (toTime !== undefined) {
    const ms = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(toTime) ? Date.parse(toTime) : NaN;
    if (Number.isNaN(ms)) throw new AgentError('E_USAGE', `--to-time ${JSON.stringify(toTime.slice(0, 60))} is not a time such as 2026-12-01T10:15:30Z (ISO 8601, with Z or an offset)`);
    // Every transaction of that second is in; the replay stops at the first event of the next.
    return { kind: 'time', ms: Math.floor(ms / 1000) * 1000 + 1000 };
  }
  const m = /^([A-Za-z0-9._-]{1,200}\.\d{1,10}):(\d{1,15})$/.exec(toPosition!);
  if (!m) throw new AgentError('E_USAGE', `--to-position ${JSON.stringify(toPosition!.slice(0, 60))} is not FILE:POSITION, such as binlog.000042:1234 (SHOW BINARY LOGS names the files)`);
  return { kind: 'position', point: { file: m[1]!, position: Number(m[2]) } };
}

/** What `backup window` shows of one service's point-in-time restores. */
export interface PitrWindow {
  service: string;
  /** The oldest point restorable: the oldest base backup the current chain holds (its position's time); null when none does yet. */
  from: string | null;
  fromBackup: string | null;
  /** The newest stored event: points up to the second before it are restorable. Null when nothing is stored. */
  to: string | null;
  /** When the newest segment was stored. */
  storedAt: string | null;
  /** The current chain, and why it began (the first start, or the gap it follows). */
  chain: string | null;
  chainReason: string | null;
  /**
   * Restores into the service inside the window, oldest first: no point from when one began
   * (`from`) to the base backup taken after it (`to`, `backup`) can be restored, because the
   * binlog before a restore does not replay over it.
   */
  gaps: { from: string; to: string; backup: string }[];
}

/**
 * The restorable window of each streamed service of `env`: from the oldest base backup inside
 * the newest chain of its stored binlog to the newest event stored. Records read are
 * authenticated (a forged one fails the listing with E_BINLOG_CHAIN).
 */
export async function pitrWindows(store: ObjectStore, env: string, keys: KeyRing, archives: readonly BinlogArchive[]): Promise<PitrWindow[]> {
  if (archives.length === 0) return [];
  const backups = (await listBackups(store, env, keys)).filter((b) => b.restorable && b.authenticated && b.manifest);
  const windows: PitrWindow[] = [];
  for (const archive of archives) {
    const [newest] = await archive.chains();
    if (!newest) {
      windows.push({ service: archive.service, from: null, fromBackup: null, to: null, storedAt: null, chain: null, chainReason: null, gaps: [] });
      continue;
    }
    const first = await archive.readRecord(newest.chain, newest.seqs[0]!);
    const last = await archive.readRecord(newest.chain, newest.seqs[newest.seqs.length - 1]!);
    let oldest: { id: string; ms: number } | undefined;
    const restores: { from: number; to: number; backup: string }[] = [];
    for (const { manifest } of backups) {
      const element = manifest!.elements.find((e) => e.name === archive.service);
      const point = element && basePoint(element);
      if (!element || !point || pointBefore(point, { file: first.file, position: first.offset })) continue;
      const ms = baseTimeMs(manifest!, element);
      // A restore during this chain is a gap from the moment it ends, even while the stream has
      // not stored as far as its base yet (a stream running behind, or only just restarted).
      if (manifest!.restoredAt) restores.push({ from: Date.parse(manifest!.restoredAt), to: ms, backup: manifest!.id });
      if (spanHolds(first, last, point) && (!oldest || ms < oldest.ms)) oldest = { id: manifest!.id, ms };
    }
    // A restore before the oldest base is not inside the window: nothing before that base restores anyway.
    const gaps = restores
      .filter((r) => oldest && r.from > oldest.ms)
      .sort((a, b) => a.from - b.from)
      .map((r) => ({ from: new Date(r.from).toISOString(), to: new Date(r.to).toISOString(), backup: r.backup }));
    windows.push({
      service: archive.service,
      from: oldest ? new Date(oldest.ms).toISOString() : null,
      fromBackup: oldest?.id ?? null,
      to: last.lastEventMs === null ? null : new Date(last.lastEventMs).toISOString(),
      storedAt: last.writtenAt,
      chain: newest.chain,
      chainReason: first.reason,
      gaps,
    });
  }
  return windows;
}


/** A service's point-in-time window as retention keeps it: the base backup it starts from. */
export interface PitrAnchor {
  service: string;
  backupId: string;
  point: BinlogPoint;
}

/**
 * The base backup each streamed service's window starts from: the newest restorable,
 * authenticated backup with an exact position for it whose snapshot is at or before now − window
 * (so every second of the window has a base before it), or the oldest such backup when none is
 * that old yet. Retention keeps it whatever the tiers say; the binlog before it is deleted.
 */
export function pitrAnchors(backups: readonly BackupSummary[], services: readonly { name: string; windowMs: number }[], now: Date): PitrAnchor[] {
  const anchors: PitrAnchor[] = [];
  for (const { name, windowMs } of services) {
    const bases = backups
      .filter((b) => b.restorable && b.authenticated && b.manifest)
      .flatMap((b) => {
        const element = b.manifest!.elements.find((e) => e.name === name);
        const point = element && basePoint(element);
        return element && point ? [{ backupId: b.id, point, ms: baseTimeMs(b.manifest!, element) }] : [];
      })
      .sort((a, b) => a.ms - b.ms);
    const start = now.getTime() - windowMs;
    const anchor = bases.filter((b) => b.ms <= start).at(-1) ?? bases[0];
    if (anchor) anchors.push({ service: name, backupId: anchor.backupId, point: anchor.point });
  }
  return anchors;
}

/**
 * Deletes the stored binlog a replay from the anchor never reads: every chain older than the
 * anchor's, and in its chain every record before the first one of the anchor's file (that one
 * holds the file's header, which decoding needs). A chain that does not hold the anchor is
 * left alone (nothing is deleted on a guess). Returns how many records went.
 */
export async function pruneBinlog(archive: BinlogArchive, anchor: PitrAnchor, dryRun: boolean, signal: AbortSignal = new AbortController().signal): Promise<number> {
  const found = await chainHolding(archive, anchor.point, signal);
  if (!found) return 0;
  const header = await lastAtOrBefore(archive, found.chain, found.seqs, { file: anchor.point.file, position: 0 }, signal);
  let deleted = await archive.deleteBefore(found.chain, found.seqs[header]!, dryRun);
  // Chain ids begin with their start time: the ones sorting before it are older.
  for (const { chain } of await archive.chains()) if (chain < found.chain) deleted += await archive.deleteBefore(chain, undefined, dryRun);
  return deleted;
}
