import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { AgentError, toAgentError } from '../../errors.ts';
import { isFinished, type JobEvent, type JobRecord, type JobRequest } from '../../jobs-wire.ts';
import type { TokenRing } from './auth.ts';
import {
  describeIssues,
  isMethodName,
  jobRequestOf,
  mayCall,
  methods,
  PROTOCOL_PATH,
  requestSchema,
  rpcErrorOf,
  type MethodName,
  type MethodParams,
  type NotificationName,
  type Role,
  type RpcId,
} from './protocol.ts';

/**
 * What the control plane serves: one call per protocol method (the agent's AgentApi calls, which
 * the daemon's LocalAgent implements), the events of a job for job.subscribe, and the job counts
 * /healthz shows. Results go onto the wire as they are: only jobs' records are looked into.
 */
export interface ServedAgent {
  status(): Promise<unknown>;
  envList(): Promise<unknown>;
  backupList(params: MethodParams<'backup.list'>): Promise<unknown>;
  backupWindow(params: MethodParams<'backup.window'>): Promise<unknown>;
  backupShow(params: MethodParams<'backup.show'>): Promise<unknown>;
  backupUrl(params: MethodParams<'backup.url'>): Promise<unknown>;
  submit(request: JobRequest, options: { requestId?: string }): Promise<{ jobId: string }>;
  jobGet(jobId: string): Promise<JobRecord>;
  jobList(filter: MethodParams<'job.list'>): Promise<JobRecord[]>;
  jobCancel(jobId: string): Promise<JobRecord>;
  /** Calls `listener` with the job's events until it finishes; the function returned stops it sooner. */
  watch(jobId: string, listener: (event: JobEvent) => void): () => void;
  jobCounts(): { running: number; queued: number };
}

export interface ProtocolOptions {
  agent: ServedAgent;
  /** The current tokens (replaced on SIGHUP). */
  tokens: () => TokenRing;
  logger: Logger;
  maxFrameBytes: number;
  heartbeatMs: number;
}

export interface HttpContext {
  metrics: Registry;
  agent: ServedAgent;
  /** The agent's version, which /healthz shows a client with a token. */
  version: string;
  /** The current tokens (replaced on SIGHUP). */
  tokens: () => TokenRing;
  /** daemon.metrics.requireToken of the current config. */
  metricsNeedToken: () => boolean;
  draining: () => boolean;
}

/**
 * The plain HTTP side of the listener. What a client without a token sees is decided here:
 * /healthz answers everyone with its status only (a load balancer's probe needs no secret);
 * with a valid token (any role) it adds the version and the job counts. /metrics names
 * environments, their byte counts and the process's details, so it wants a token (any role,
 * `Authorization: Bearer`, checked by the TokenRing in constant time) unless
 * daemon.metrics.requireToken is false.
 */
export async function serveHttp(request: IncomingMessage, response: ServerResponse, context: HttpContext): Promise<void> {
  const path = (request.url ?? '/').split('?')[0];
  try {
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain' }).end('method not allowed\n');
    } else if (path === '/healthz') {
      const draining = context.draining();
      const status = { status: draining ? 'stopping' : 'ok' };
      const known = context.tokens().authenticate(request.headers.authorization) !== undefined;
      const jobs = context.agent.jobCounts();
      const body = known ? { ...status, version: context.version, jobs: { running: jobs.running, queued: jobs.queued } } : status;
      response.writeHead(draining ? 503 : 200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' }).end(`${JSON.stringify(body)}\n`);
    } else if (path === '/metrics') {
      if (context.metricsNeedToken() && context.tokens().authenticate(request.headers.authorization) === undefined) {
        response
          .writeHead(401, { 'WWW-Authenticate': 'Bearer realm="storage-agent"', 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' })
          .end('/metrics needs a bearer token (any role; daemon.metrics.requireToken: false opens it)\n');
        return;
      }
      const text = await context.metrics.metrics();
      response.writeHead(200, { 'Content-Type': context.metrics.contentType, 'Cache-Control': 'no-store' }).end(text);
    } else {
      response.writeHead(404, { 'Content-Type': 'text/plain' }).end(`not found: /healthz, /metrics and the WebSocket protocol at ${PROTOCOL_PATH}\n`);
    }
  } catch (error) {
    response.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${toAgentError(error).message}\n`);
  }
}

/** Requests one connection may have in flight; more are answered E_BUSY. */
const MAX_IN_FLIGHT = 256;
const MAX_CONNECTIONS = 1_000;
/** Progress notifications are skipped (never responses or job.finished) while a peer lags this much. */
const SLOW_PEER_BYTES = 1 << 20;

interface Session {
  id: string;
  ws: WebSocket;
  role: Role;
  peer: string;
  alive: boolean;
  inFlight: number;
  subscriptions: Map<string, { off: () => void; finishedSent: boolean }>;
}

/**
 * The WebSocket side of the daemon: authenticates the HTTP upgrade (Bearer token → role;
 * 401 and no socket otherwise), then speaks JSON-RPC 2.0 with every message validated,
 * dispatching onto the agent. A dropped connection only drops its subscriptions: jobs go on.
 */
export class ProtocolServer {
  readonly #options: ProtocolOptions;
  readonly #wss: WebSocketServer;
  readonly #sessions = new Set<Session>();
  readonly #heartbeat: NodeJS.Timeout;

  constructor(options: ProtocolOptions) {
    this.#options = options;
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: options.maxFrameBytes, perMessageDeflate: false, clientTracking: false });
    this.#heartbeat = setInterval(() => this.#beat(), options.heartbeatMs);
    this.#heartbeat.unref();
  }

  get connections(): number {
    return this.#sessions.size;
  }

  /** The HTTP server's 'upgrade' listener. */
  handleUpgrade(request: IncomingMessage, socket: Duplex, head: Buffer): void {
    const { logger } = this.#options;
    const peer = `${request.socket.remoteAddress ?? '?'}:${request.socket.remotePort ?? '?'}`;
    socket.on('error', () => {});
    const path = (request.url ?? '/').split('?')[0];
    if (path !== PROTOCOL_PATH) return refuse(socket, 404, 'Not Found', `the protocol is served at ${PROTOCOL_PATH}`);
    const role = this.#options.tokens().authenticate(request.headers.authorization);
    if (!role) {
      logger.warn({ peer, reason: request.headers.authorization ? 'unknown token' : 'no bearer token' }, 'refused a connection: not authenticated');
      return refuse(socket, 401, 'Unauthorized', 'a valid bearer token is required', { 'WWW-Authenticate': 'Bearer realm="storage-agent"' });
    }
    if (this.#sessions.size >= MAX_CONNECTIONS) return refuse(socket, 503, 'Service Unavailable', 'too many connections');
    this.#wss.handleUpgrade(request, socket, head, (ws) => this.#open(ws, role, peer));
  }

  /** Closes every connection (1001, going away). */
  async close(): Promise<void> {
    clearInterval(this.#heartbeat);
    const closing = [...this.#sessions].map(
      (session) =>
        new Promise<void>((resolve) => {
          session.ws.once('close', () => resolve());
          session.ws.close(1001, 'the agent is stopping');
          setTimeout(() => {
            session.ws.terminate();
            resolve();
          }, 1_000).unref();
        }),
    );
    await Promise.all(closing);
    this.#wss.close();
  }

  #open(ws: WebSocket, role: Role, peer: string): void {
    const session: Session = { id: randomBytes(4).toString('hex'), ws, role, peer, alive: true, inFlight: 0, subscriptions: new Map() };
    this.#sessions.add(session);
    const log = this.#options.logger.child({ connection: session.id });
    log.info({ peer, role }, 'client connected');
    ws.on('pong', () => {
      session.alive = true;
    });
    ws.on('message', (data, isBinary) => {
      session.alive = true;
      void this.#onMessage(session, data, isBinary);
    });
    ws.on('error', (error) => {
      // Oversized frames land here (ws closes with 1009); so do broken peers.
      log.warn({ err: error.message, code: (error as { code?: string }).code }, 'connection error');
    });
    ws.on('close', (code) => {
      this.#sessions.delete(session);
      for (const { off } of session.subscriptions.values()) off();
      session.subscriptions.clear();
      log.info({ code }, 'client disconnected');
    });
  }

  async #onMessage(session: Session, data: RawData, isBinary: boolean): Promise<void> {
    if (isBinary) return this.#fail(session, null, new AgentError('E_INVALID_REQUEST', 'binary frames are not accepted: send JSON-RPC requests as text'));
    let message: unknown;
    try {
      message = JSON.parse(rawText(data));
    } catch (error) {
      return this.#fail(session, null, new AgentError('E_PARSE_ERROR', `not JSON: ${(error as Error).message}`));
    }
    const parsed = requestSchema.safeParse(message);
    if (!parsed.success) {
      const id = (message as { id?: unknown } | null)?.id;
      const echo = (typeof id === 'string' && id.length <= 128) || (typeof id === 'number' && Number.isSafeInteger(id)) ? id : null;
      return this.#fail(session, echo, new AgentError('E_INVALID_REQUEST', `not a JSON-RPC 2.0 request with an id: ${describeIssues(parsed.error)}`));
    }
    const { id, method, params } = parsed.data;
    if (!isMethodName(method)) {
      return this.#fail(session, id, new AgentError('E_METHOD_NOT_FOUND', `unknown method ${JSON.stringify(method.slice(0, 64))}; methods: ${Object.keys(methods).join(', ')}`));
    }
    if (!mayCall(session.role, method)) {
      return this.#fail(session, id, new AgentError('E_FORBIDDEN', `${method} needs the admin role; this token has the ${session.role} role`, { details: { method, role: session.role } }));
    }
    const checked = methods[method].params.safeParse(params ?? {});
    if (!checked.success) return this.#fail(session, id, new AgentError('E_INVALID_PARAMS', `${method}: ${describeIssues(checked.error)}`));
    if (session.inFlight >= MAX_IN_FLIGHT) return this.#fail(session, id, new AgentError('E_BUSY', `more than ${MAX_IN_FLIGHT} requests in flight on this connection`));
    session.inFlight++;
    try {
      if (method === 'job.subscribe') return await this.#subscribe(session, id, (checked.data as MethodParams<'job.subscribe'>).jobId);
      const result = await this.#call(session, method, checked.data as Record<string, unknown>);
      this.#send(session, { jsonrpc: '2.0', id, result: result ?? null });
    } catch (error) {
      this.#fail(session, id, toAgentError(error));
    } finally {
      session.inFlight--;
    }
  }

  async #call(session: Session, method: Exclude<MethodName, 'job.subscribe'>, params: Record<string, unknown>): Promise<unknown> {
    const { agent } = this.#options;
    switch (method) {
      case 'agent.status':
        return agent.status();
      case 'env.list':
        return agent.envList();
      case 'backup.list':
        return agent.backupList(params as MethodParams<'backup.list'>);
      case 'backup.window':
        return agent.backupWindow(params as MethodParams<'backup.window'>);
      case 'backup.show':
        return agent.backupShow(params as MethodParams<'backup.show'>);
      case 'backup.url':
        return agent.backupUrl(params as MethodParams<'backup.url'>);
      case 'backup.create':
      case 'backup.restore':
      case 'backup.delete':
      case 'backup.verify':
      case 'backup.prune': {
        const requestId = (params as { requestId?: string }).requestId;
        const ticket = await agent.submit(jobRequestOf(method, params), requestId === undefined ? {} : { requestId });
        this.#options.logger.info({ connection: session.id, method, jobId: ticket.jobId, env: params.env }, 'job submitted');
        return ticket;
      }
      case 'job.get':
        return agent.jobGet((params as MethodParams<'job.get'>).jobId);
      case 'job.list':
        return agent.jobList(params as MethodParams<'job.list'>);
      case 'job.cancel':
        this.#options.logger.info({ connection: session.id, jobId: params.jobId }, 'job cancel requested by a client');
        return agent.jobCancel((params as MethodParams<'job.cancel'>).jobId);
      case 'job.unsubscribe': {
        const jobId = (params as MethodParams<'job.unsubscribe'>).jobId;
        session.subscriptions.get(jobId)?.off();
        return { unsubscribed: session.subscriptions.delete(jobId) };
      }
    }
  }

  /**
   * Answers with the job as it is now, then notifies job.progress until one job.finished —
   * at once when the job had already ended, so a client has a single way to learn the end.
   */
  async #subscribe(session: Session, id: RpcId, jobId: string): Promise<void> {
    const { agent } = this.#options;
    const current = await agent.jobGet(jobId);
    this.#send(session, { jsonrpc: '2.0', id, result: current });
    if (session.subscriptions.has(jobId)) return;
    const subscription = { off: () => {}, finishedSent: false };
    session.subscriptions.set(jobId, subscription);
    const finish = (job: JobRecord) => {
      if (subscription.finishedSent) return;
      subscription.finishedSent = true;
      this.#notify(session, 'job.finished', job);
      subscription.off();
      if (session.subscriptions.get(jobId) === subscription) session.subscriptions.delete(jobId);
    };
    if (isFinished(current.state)) return finish(current);
    subscription.off = agent.watch(jobId, (event: JobEvent) => {
      if (event.type === 'finished') finish(event.job);
      else this.#notify(session, 'job.progress', progressOf(event.job), true);
    });
    // It may have ended between the first look and the watch.
    const again = await agent.jobGet(jobId);
    if (isFinished(again.state)) finish(again);
  }

  #notify(session: Session, method: NotificationName, params: unknown, droppable = false): void {
    if (droppable && session.ws.bufferedAmount > SLOW_PEER_BYTES) return;
    this.#send(session, { jsonrpc: '2.0', method, params });
  }

  #fail(session: Session, id: RpcId | null, error: AgentError): void {
    let failure = error;
    if (error.code === 'E_INTERNAL') {
      // Internal errors may carry paths or library details: the log gets them, the wire does not.
      const ref = randomBytes(4).toString('hex');
      this.#options.logger.error({ connection: session.id, ref, err: error.message }, 'internal error answering a request');
      failure = new AgentError('E_INTERNAL', `internal error (logged on the node as ref ${ref})`);
    }
    this.#send(session, { jsonrpc: '2.0', id, error: rpcErrorOf(failure) });
  }

  #send(session: Session, message: unknown): void {
    if (session.ws.readyState !== WebSocket.OPEN) return;
    session.ws.send(JSON.stringify(message));
  }

  /** Drops peers that did not answer the last ping; pings the others. */
  #beat(): void {
    for (const session of this.#sessions) {
      if (!session.alive) {
        this.#options.logger.warn({ connection: session.id, peer: session.peer }, 'dropping a connection that missed its heartbeat');
        session.ws.terminate();
        continue;
      }
      session.alive = false;
      session.ws.ping();
    }
  }
}

/** What job.progress carries: the job's state, place in the queue and progress. */
export function progressOf(job: JobRecord): Record<string, unknown> {
  return {
    jobId: job.id,
    kind: job.kind,
    env: job.env,
    state: job.state,
    ...(job.position !== undefined ? { position: job.position } : {}),
    ...(job.waitingFor !== undefined ? { waitingFor: job.waitingFor } : {}),
    ...(job.cancelRequested ? { cancelRequested: true } : {}),
    ...(job.progress ? { progress: job.progress } : {}),
  };
}

function rawText(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

function refuse(socket: Duplex, status: number, reason: string, body: string, headers: Record<string, string> = {}): void {
  const text = `${body}\n`;
  const lines = [
    `HTTP/1.1 ${status} ${reason}`,
    'Connection: close',
    'Content-Type: text/plain; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(text)}`,
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.end(`${lines.join('\r\n')}\r\n\r\n${text}`);
}
