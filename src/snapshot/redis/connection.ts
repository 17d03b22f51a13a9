import { open } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import { AgentError, type ErrorCode } from '../../errors.ts';

/** Where and how to reach one Redis server (from the service's config). */
export interface RedisAddress {
  host: string;
  port: number;
  /** A unix socket; wins over host/port when set. */
  socket?: string | undefined;
  password?: string | undefined;
}

/** A field → value view of one or more INFO sections. */
export type Info = Map<string, string>;

const CONNECT_TIMEOUT_MS = 10_000;
/** No single command of the driver may hang longer than this (BGSAVE returns after the fork). */
const COMMAND_TIMEOUT_MS = 30_000;

export function describeAddress(address: RedisAddress): string {
  return address.socket ?? `${address.host}:${address.port}`;
}

/**
 * One connection of the agent's own, without ioredis's reconnects and offline queue: a
 * command either reaches this server now or fails, so a lost connection fails the job instead
 * of silently replaying commands (a CLIENT PAUSE, a REPLICAOF) on a new one.
 */
export async function connect(address: RedisAddress, failure: ErrorCode, what: string): Promise<Redis> {
  let lastError: Error | undefined;
  // Loaded on first use: an agent without Redis services never pays for the client's memory.
  const { Redis } = await import('ioredis');
  const client = new Redis({
    ...(address.socket ? { path: address.socket } : { host: address.host, port: address.port }),
    ...(address.password ? { password: address.password } : {}),
    connectionName: 'storage-agent',
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: CONNECT_TIMEOUT_MS,
    commandTimeout: COMMAND_TIMEOUT_MS,
  });
  client.on('error', (error: Error) => {
    lastError = error;
  });
  try {
    await client.connect();
    // INFO, not PING: PING is refused with MISCONF after a failed save, INFO always answers.
    await client.info('server');
  } catch (error) {
    disconnect(client);
    const reason = lastError && lastError !== error ? `${lastError.message} (${(error as Error).message})` : (error as Error).message;
    throw new AgentError(failure, `${what}: cannot connect to Redis at ${describeAddress(address)}: ${reason}`, { cause: lastError ?? error });
  }
  return client;
}

export function parseInfo(text: string): Info {
  const fields: Info = new Map();
  for (const line of text.split('\r\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1));
  }
  return fields;
}

export async function info(client: Redis, ...sections: string[]): Promise<Info> {
  return parseInfo(String(await client.call('INFO', ...sections)));
}

export function infoNumber(fields: Info, name: string): number | undefined {
  const value = fields.get(name);
  if (value === undefined) return undefined;
  const parsed = Number(value);
  return Number.isFinite(parsed) ? parsed : undefined;
}

export async function configGet(client: Redis, name: string): Promise<string> {
  const reply = (await client.call('CONFIG', 'GET', name)) as string[];
  const index = reply.indexOf(name);
  if (index < 0 || index + 1 >= reply.length) throw new Error(`CONFIG GET ${name} returned nothing`);
  return reply[index + 1]!;
}

/** Keys per database from INFO keyspace ("db0:keys=3,expires=1,…"). */
export function keyspaceOf(fields: Info): { keys: number; keyspace: string } {
  const parts: string[] = [];
  let keys = 0;
  for (const [name, value] of fields) {
    if (!/^db\d+$/.test(name)) continue;
    const count = Number(/(?:^|,)keys=(\d+)/.exec(value)?.[1] ?? 0);
    keys += count;
    parts.push(`${name}=${count}`);
  }
  return { keys, keyspace: parts.join(',') };
}

/** Sleeps `ms`, or rejects with the signal's reason as soon as it fires. */
export async function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  await sleep(ms, undefined, signal ? { signal } : undefined);
}

/** Polling interval that starts short (small data sets finish in milliseconds) and grows. */
export function* backoff(first = 10, max = 250): Generator<number> {
  for (let ms = first; ; ms = Math.min(max, ms * 2)) yield ms;
}

/** Where Redis's log file ended when an operation began: what it logs next is about it. */
export interface LogCursor {
  file: string;
  offset: number;
}

/** Undefined when Redis logs to stdout (logfile "") or its file cannot be read. */
export async function logCursor(client: Redis): Promise<LogCursor | undefined> {
  try {
    const logfile = await configGet(client, 'logfile');
    if (!logfile) return undefined;
    const file = path.isAbsolute(logfile) ? logfile : path.resolve(await configGet(client, 'dir'), logfile);
    const handle = await open(file, 'r');
    try {
      return { file, offset: (await handle.stat()).size };
    } finally {
      await handle.close();
    }
  } catch {
    return undefined;
  }
}

const LOG_READ_MAX = 256 * 1024;

/** The log lines Redis wrote since `cursor` (at most the last 256 KiB of them). */
export async function logSince(cursor: LogCursor | undefined): Promise<string[] | undefined> {
  if (!cursor) return undefined;
  try {
    const handle = await open(cursor.file, 'r');
    try {
      const { size } = await handle.stat();
      const from = size < cursor.offset ? 0 : Math.max(cursor.offset, size - LOG_READ_MAX); // rotated: all of the new file
      const buffer = Buffer.alloc(size - from);
      await handle.read(buffer, 0, buffer.length, from);
      return buffer.toString('utf8').split('\n').filter((line) => line.trim() !== '');
    } finally {
      await handle.close();
    }
  } catch {
    return undefined;
  }
}

/** The warning lines ("#" level) among `lines`, without pid/role/time, the last `count` of them. */
export function warningsIn(lines: readonly string[] | undefined, count = 2): string | undefined {
  const warnings = (lines ?? []).filter((line) => / # /.test(line)).map((line) => line.replace(/^\d+:[A-Z] [^#]*# /, '').trim());
  return warnings.length ? warnings.slice(-count).join('; ') : undefined;
}

/** A Redis error reply's text without ioredis's decoration. */
export function replyText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Closes a client. One a refused or dropped connection has already ended (no retries) is left
 * alone: disconnect() would only arm ioredis's 2 s timer for a socket already closed, which kept
 * a CLI alive that long after it printed its error.
 */
export function disconnect(client: Redis): void {
  if (client.status !== 'end') client.disconnect();
}
