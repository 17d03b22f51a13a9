import { readFileSync } from 'node:fs';

/** A process, told apart from a later one that reuses its pid by its start time (/proc). */
export interface ProcessIdentity {
  pid: number;
  startTime: number | null;
}

/** Exited but not yet reaped by its parent (Z), or being torn down (X): it will never run again. */
const DEAD_STATES = new Set(['Z', 'X']);

interface ProcStat {
  state: string;
  startTime: number | null;
}

/**
 * Fields 3 (state) and 22 (start time, clock ticks since boot) of /proc/PID/stat; undefined
 * when there is no such process, null when it cannot be read for another reason.
 */
function readStat(pid: number): ProcStat | null | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : null;
  }
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const startTime = Number(fields[19]);
  return { state: fields[0] ?? '', startTime: Number.isSafeInteger(startTime) ? startTime : null };
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or null. */
export function processStartTime(pid: number): number | null {
  return readStat(pid)?.startTime ?? null;
}

let self: ProcessIdentity | undefined;
export function currentProcess(): ProcessIdentity {
  self ??= { pid: process.pid, startTime: processStartTime(process.pid) };
  return self;
}

/**
 * Whether a process exists and can still run. kill(pid, 0) alone says yes for a zombie — a
 * daemon SIGKILLed under a parent that has not reaped it yet — so its /proc state decides;
 * EPERM means it exists, owned by someone else. Where /proc cannot be read, kill's answer stands.
 */
export function isProcessAlive(pid: number): boolean {
  return readLiveStat(pid) !== undefined;
}

/**
 * Whether the very process `owner` names is alive: its pid runs, and (when its start time was
 * recorded) it started when the record says — a reused pid is another process.
 */
export function isAlive(owner: ProcessIdentity): boolean {
  const stat = readLiveStat(owner.pid);
  if (stat === undefined) return false;
  return owner.startTime === null || stat === null || stat.startTime === null || stat.startTime === owner.startTime;
}

/** /proc stat of a live process (null: alive, stat unreadable); undefined when it is dead. */
function readLiveStat(pid: number): ProcStat | null | undefined {
  // kill(0, 0) and kill(-1, 0) address process groups: no record names those.
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return undefined;
  }
  const stat = readStat(pid);
  return stat && DEAD_STATES.has(stat.state) ? undefined : stat;
}
