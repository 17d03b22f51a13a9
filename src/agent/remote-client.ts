import { WebSocket } from 'ws';
import { AgentError, toAgentError } from '../errors.ts';
import type { Manifest } from '../snapshot/manifest.ts';
import { agentErrorOf, paramsOfJobRequest, PROTOCOL_PATH, type MethodInput, type MethodName } from '../transport/ws/protocol.ts';
import type { BackupSummary } from '../snapshot/pipeline/catalog.ts';
import type { PitrWindow } from '../snapshot/pipeline/point-in-time.ts';
import { errorOfRecord, type AgentApi, type AgentStatus, type EnvSummary, type JobTicket, type UrlResult } from './jobs/api.ts';
import type { JobEvent, JobRecord, JobRequest } from '../jobs-wire.ts';
import type { JobFilter } from './jobs/engine.ts';

export interface RemoteOptions {
  /** ws://HOST:PORT or wss://HOST:PORT; the path defaults to /v1. */
  url: string;
  token: string;
  /** How long `follow` keeps trying to reconnect after the connection dropped. */
  reconnectForMs?: number;
  connectTimeoutMs?: number;
}

type Pending = { resolve: (value: unknown) => void; reject: (error: AgentError) => void };
type NotificationListener = (method: string, params: Record<string, unknown>) => void;

/**
 * The reference client of the protocol (docs/protocol.md), used by the CLI's --remote: the
 * AgentApi over JSON-RPC. A dropped connection fails the calls in flight; `follow` reconnects
 * and subscribes again, since the job goes on in the daemon.
 */
export class RemoteAgent implements AgentApi {
  readonly mode = 'remote' as const;
  readonly url: string;
  readonly #options: RemoteOptions;
  #ws!: WebSocket;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  readonly #listeners = new Set<NotificationListener>();
  readonly #dropListeners = new Set<(error: AgentError) => void>();
  #closing = false;

  private constructor(options: RemoteOptions) {
    this.#options = options;
    this.url = normaliseUrl(options.url);
  }

  static async connect(options: RemoteOptions): Promise<RemoteAgent> {
    const agent = new RemoteAgent(options);
    await agent.#connect();
    return agent;
  }

  /** One JSON-RPC call; rejects with the daemon's error as an AgentError (same code). */
  call(method: MethodName, params: Record<string, unknown> = {}): Promise<unknown> {
    if (this.#ws.readyState !== WebSocket.OPEN) return Promise.reject(this.#unavailable('the connection is closed'));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }), (error) => {
        if (error && this.#pending.delete(id)) reject(this.#unavailable(error.message));
      });
    });
  }

  /** Notifications (job.progress, job.finished) as they arrive. */
  onNotification(listener: NotificationListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  status(): Promise<AgentStatus> {
    return this.call('agent.status') as Promise<AgentStatus>;
  }

  envList(): Promise<EnvSummary[]> {
    return this.call('env.list') as Promise<EnvSummary[]>;
  }

  backupList(params: MethodInput<'backup.list'>): Promise<BackupSummary[]> {
    return this.call('backup.list', params) as Promise<BackupSummary[]>;
  }

  backupWindow(params: MethodInput<'backup.window'>): Promise<PitrWindow[]> {
    return this.call('backup.window', params) as Promise<PitrWindow[]>;
  }

  backupShow(params: MethodInput<'backup.show'>): Promise<Manifest> {
    return this.call('backup.show', params) as Promise<Manifest>;
  }

  backupUrl(params: MethodInput<'backup.url'>): Promise<UrlResult> {
    return this.call('backup.url', params) as Promise<UrlResult>;
  }

  submit(request: JobRequest, options: { requestId?: string } = {}): Promise<JobTicket> {
    return this.call(request.kind, paramsOfJobRequest(request, options.requestId)) as Promise<JobTicket>;
  }

  jobGet(jobId: string): Promise<JobRecord> {
    return this.call('job.get', { jobId }) as Promise<JobRecord>;
  }

  jobList(filter: JobFilter = {}): Promise<JobRecord[]> {
    return this.call('job.list', { ...filter }) as Promise<JobRecord[]>;
  }

  jobCancel(jobId: string): Promise<JobRecord> {
    return this.call('job.cancel', { jobId }) as Promise<JobRecord>;
  }

  /**
   * Subscribes and resolves with the job's final record (job.finished). When the connection
   * drops, reconnects for up to `reconnectForMs` and subscribes again.
   */
  async follow(jobId: string, onEvent?: (event: JobEvent) => void): Promise<JobRecord> {
    const deadline = Date.now() + (this.#options.reconnectForMs ?? 30_000);
    for (;;) {
      try {
        return await this.#followOnce(jobId, onEvent);
      } catch (error) {
        const failure = toAgentError(error);
        if (failure.code !== 'E_DAEMON_UNAVAILABLE' || this.#closing) throw failure;
        if (Date.now() > deadline) {
          throw new AgentError('E_DAEMON_UNAVAILABLE', `lost the daemon while following job ${jobId} (${failure.message}); the job goes on there: 'jobs wait ${jobId}' follows it again`, {
            details: { jobId },
          });
        }
        await sleep(1_000);
        await this.#connect().catch(() => {});
      }
    }
  }

  failureOf(job: JobRecord): AgentError {
    return errorOfRecord(job);
  }

  async close(): Promise<void> {
    this.#closing = true;
    if (this.#ws.readyState === WebSocket.CLOSED) return;
    await new Promise<void>((resolve) => {
      this.#ws.once('close', () => resolve());
      this.#ws.close(1000);
      setTimeout(() => {
        this.#ws.terminate();
        resolve();
      }, 1_000).unref();
    });
  }

  #followOnce(jobId: string, onEvent: ((event: JobEvent) => void) | undefined): Promise<JobRecord> {
    return new Promise<JobRecord>((resolve, reject) => {
      const done = () => {
        offNotification();
        this.#dropListeners.delete(onDrop);
      };
      const offNotification = this.onNotification((method, params) => {
        if (method === 'job.finished' && params.id === jobId) {
          done();
          resolve(params as unknown as JobRecord);
        } else if (method === 'job.progress' && params.jobId === jobId) {
          onEvent?.({ type: 'progress', job: { ...params, id: jobId } as unknown as JobRecord });
        }
      });
      const onDrop = (error: AgentError) => {
        done();
        reject(error);
      };
      this.#dropListeners.add(onDrop);
      (this.call('job.subscribe', { jobId }) as Promise<JobRecord>).then(
        (record) => onEvent?.({ type: 'changed', job: record }),
        (error: AgentError) => {
          done();
          reject(error);
        },
      );
    });
  }

  async #connect(): Promise<void> {
    const ws = new WebSocket(this.url, {
      headers: { Authorization: `Bearer ${this.#options.token}` },
      handshakeTimeout: this.#options.connectTimeoutMs ?? 10_000,
      perMessageDeflate: false,
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_request, response) => {
        const status = response.statusCode ?? 0;
        response.resume();
        ws.terminate();
        reject(
          status === 401
            ? new AgentError('E_UNAUTHORIZED', `the daemon at ${this.url} refused the token (HTTP 401): check --token-file`)
            : this.#unavailable(`HTTP ${status} ${response.statusMessage ?? ''}`.trim()),
        );
      });
      ws.once('error', (error: NodeJS.ErrnoException) => reject(this.#unavailable(error.code ?? error.message)));
    });
    ws.on('error', () => {}); // reported through 'close'
    ws.on('message', (data) => this.#onMessage(data.toString()));
    ws.on('close', (code, reason) => {
      const error = this.#unavailable(`connection closed (${code}${reason.length ? ` ${reason.toString()}` : ''})`);
      for (const pending of this.#pending.values()) pending.reject(error);
      this.#pending.clear();
      for (const listener of [...this.#dropListeners]) listener(error);
    });
    this.#ws = ws;
  }

  #onMessage(text: string): void {
    let message: { id?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown; data?: unknown }; method?: unknown; params?: unknown };
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof message.method === 'string') {
      for (const listener of [...this.#listeners]) listener(message.method, (message.params ?? {}) as Record<string, unknown>);
      return;
    }
    const pending = typeof message.id === 'number' ? this.#pending.get(message.id) : undefined;
    if (!pending) return;
    this.#pending.delete(message.id as number);
    if (message.error) pending.reject(agentErrorOf(message.error));
    else pending.resolve(message.result);
  }

  #unavailable(why: string): AgentError {
    return new AgentError('E_DAEMON_UNAVAILABLE', `cannot reach the daemon at ${this.url}: ${why}; is storage-agent.service running?`);
  }
}

function normaliseUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new AgentError('E_USAGE', `--remote ${JSON.stringify(text)}: use ws://HOST:PORT or wss://HOST:PORT`);
  }
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw new AgentError('E_USAGE', `--remote ${JSON.stringify(text)}: use ws://HOST:PORT or wss://HOST:PORT`);
  if (url.pathname === '' || url.pathname === '/') url.pathname = PROTOCOL_PATH;
  return url.toString();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
