import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { WebSocket } from 'ws';
import type { Sandbox } from './cli.ts';

const MAIN = path.resolve(import.meta.dirname, '../../src/agent/main.ts');

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await Promise.resolve(probe()).catch(() => undefined);
    if (value) return value;
    await sleep(25);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export interface RunningDaemon {
  child: ResultPromise;
  port: number;
  url: string;
  http: string;
  /** Everything the daemon printed on stdout so far. */
  stdout(): string;
  /** Its stdout parsed: every line must be a pino JSON object. */
  logs(): LogLine[];
  waitForLog(what: string, match: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Resolves with the exit code (null when killed by a signal) and the signal. */
  exited: Promise<{ exitCode: number | null; signal: string | null }>;
  stop(): Promise<void>;
}

/** Tokens written to files in the sandbox, and the daemon config that names them. */
export interface Tokens {
  admin: string;
  viewer: string;
  adminFile: string;
  viewerFile: string;
}

export async function writeTokens(sandbox: Sandbox): Promise<Tokens> {
  const admin = `adm-${randomBytes(18).toString('base64url')}`;
  const viewer = `view-${randomBytes(18).toString('base64url')}`;
  const adminFile = path.join(sandbox.dir, 'admin.token');
  const viewerFile = path.join(sandbox.dir, 'viewer.token');
  await writeFile(adminFile, `${admin}\n`, { mode: 0o600 });
  await writeFile(viewerFile, `${viewer}\n`, { mode: 0o600 });
  return { admin, viewer, adminFile, viewerFile };
}

export function daemonSection(tokens: Tokens, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    listen: { host: '127.0.0.1', port: 0 },
    tokens: [
      { file: tokens.adminFile, role: 'admin' },
      { file: tokens.viewerFile, role: 'viewer' },
    ],
    ...extra,
  };
}

/** The real daemon (`storage-agent daemon`) as a child process; resolves once it listens. */
export async function startDaemon(configPath: string, options: { env?: Record<string, string>; args?: string[] } = {}): Promise<RunningDaemon> {
  const child = execa(process.execPath, [MAIN, '--config', configPath, ...(options.args ?? []), 'daemon'], {
    reject: false,
    stdin: 'ignore',
    buffer: false,
    env: options.env,
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk;
  });
  const exited = child.then((result) => ({ exitCode: result.exitCode ?? null, signal: result.signal ?? null }));
  const logs = (): LogLine[] =>
    out
      .split('\n')
      .filter((line) => line.length > 0)
      .map((line) => JSON.parse(line) as LogLine);
  const waitForLog = (what: string, match: (line: LogLine) => boolean, timeoutMs = 30_000) =>
    waitFor(what, () => {
      if (child.exitCode !== null && child.exitCode !== undefined) throw new Error(`daemon exited ${child.exitCode}: ${err}${out}`);
      return logs().find(match);
    }, timeoutMs);
  let listening: LogLine;
  try {
    listening = await Promise.race([
      waitForLog('the daemon to listen', (l) => l.msg === 'daemon listening'),
      exited.then(({ exitCode }) => {
        throw new Error(`daemon exited ${exitCode} before listening:\n${err}\n${out}`);
      }),
    ]);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  const port = listening.port as number;
  return {
    child,
    port,
    url: `ws://127.0.0.1:${port}/v1`,
    http: `http://127.0.0.1:${port}`,
    stdout: () => out,
    logs,
    waitForLog,
    exited,
    async stop() {
      if (child.exitCode === null || child.exitCode === undefined) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

export interface RpcError {
  code: number;
  message: string;
  data: { code: string; details?: Record<string, unknown> };
}

export interface Notification {
  method: string;
  params: Record<string, unknown>;
}

/** A plain `ws` JSON-RPC client for tests: raw frames, calls, and the notifications received. */
export class TestClient {
  readonly ws: WebSocket;
  readonly notifications: Notification[] = [];
  readonly responses: { id: unknown; result?: unknown; error?: RpcError }[] = [];
  readonly #pending = new Map<string | number, { resolve: (v: { result?: unknown; error?: RpcError }) => void }>();
  #nextId = 1;
  closed: Promise<{ code: number; reason: string }>;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on('message', (data) => {
      const message = JSON.parse(data.toString()) as { id?: string | number | null; result?: unknown; error?: RpcError; method?: string; params?: Record<string, unknown> };
      if (message.method) {
        this.notifications.push({ method: message.method, params: message.params ?? {} });
        return;
      }
      this.responses.push({ id: message.id, result: message.result, error: message.error });
      const pending = message.id === null || message.id === undefined ? undefined : this.#pending.get(message.id);
      if (pending) {
        this.#pending.delete(message.id!);
        pending.resolve(message);
      }
    });
  }

  static connect(url: string, token?: string): Promise<TestClient> {
    const ws = new WebSocket(url, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new TestClient(ws)));
      ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
      ws.once('error', reject);
    });
  }

  /** Sends one request and resolves with its response (result or error). */
  request(method: string, params?: unknown): Promise<{ result?: unknown; error?: RpcError }> {
    const id = this.#nextId++;
    return new Promise((resolve) => {
      this.#pending.set(id, { resolve });
      this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, ...(params === undefined ? {} : { params }) }));
    });
  }

  /** A call that must succeed. */
  async call<T = unknown>(method: string, params?: unknown): Promise<T> {
    const answer = await this.request(method, params);
    if (answer.error) throw new Error(`${method} failed: ${answer.error.data.code}: ${answer.error.message}`);
    return answer.result as T;
  }

  async waitForNotification(match: (n: Notification) => boolean, timeoutMs = 60_000): Promise<Notification> {
    return waitFor('a notification', () => this.notifications.find(match), timeoutMs);
  }

  async close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    this.ws.close();
    await this.closed;
  }
}
