import { z } from 'zod';
import { AgentError, isErrorCode, type ErrorCode } from '../../errors.ts';
import { JOB_ID_PATTERN, JOB_KINDS, JOB_STATES, VERIFY_ALL, type JobRequest } from '../../jobs-wire.ts';
import { backupIdPattern, namePattern } from '../../snapshot/names.ts';
import { parseDuration } from '../../units.ts';

/**
 * The control-plane protocol: JSON-RPC 2.0 over one WebSocket at /v1 (docs/protocol.md).
 * Every message is checked against these schemas; params name environments, services, backups
 * and jobs only — never paths, commands or hosts: what runs and what is read is decided by the
 * node's own config.
 */
export const PROTOCOL_PATH = '/v1';

export type Role = 'viewer' | 'admin';

const env = z.string().regex(namePattern, 'must be an environment name (a-z, 0-9, - and _, 1-63 characters)');
const element = z.string().regex(namePattern, 'must be a service (element) name');
const backupId = z.string().regex(backupIdPattern, 'must be a backup id such as 20261122T034600123Z-k3j9x2ab');
const jobId = z.string().regex(JOB_ID_PATTERN, 'must be a job id such as job-20261122T034600123Z-k3j9x2ab');
const requestId = z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/, 'must be 1-128 characters of A-Z, a-z, 0-9, . _ : -');
const keepFor = z.union([z.string().max(32), z.number().positive().max(100 * 365 * 86_400)]).refine((v) => (parseDuration(v) ?? 0) > 0, 'must be a duration such as "30d", or seconds');

const noParams = z.object({}).strict();
/** Accept a backup whose manifest has no MAC (made before keys existed); an invalid MAC is always refused. */
const allowUnauthenticated = z.boolean().optional();

export const methods = {
  'agent.status': { role: 'viewer', params: noParams },
  'env.list': { role: 'viewer', params: noParams },
  'backup.list': { role: 'viewer', params: z.object({ env }).strict() },
  'backup.window': { role: 'viewer', params: z.object({ env }).strict() },
  'backup.show': { role: 'viewer', params: z.object({ env, id: backupId }).strict() },
  'backup.url': {
    role: 'admin',
    params: z.object({ env, id: backupId, element, expiresSeconds: z.number().int().min(1).max(7 * 86_400).default(3_600), allowUnauthenticated }).strict(),
  },
  'backup.create': {
    role: 'admin',
    params: z
      .object({
        env,
        live: z.boolean().optional(),
        elements: z.array(element).min(1).max(64).optional(),
        keepFor: keepFor.optional(),
        codeRef: z.string().regex(/^[\x21-\x7e]{1,200}$/, 'must be 1-200 printable characters').optional(),
        trigger: z.enum(['manual', 'scheduled']).optional(),
        replaceOldest: z.boolean().optional(),
        requestId: requestId.optional(),
      })
      .strict(),
  },
  'backup.restore': {
    role: 'admin',
    params: z
      .object({
        env,
        id: backupId.optional(),
        toTime: z.string().max(64).optional(),
        toPosition: z.string().max(240).optional(),
        toGtid: z.string().max(64).optional(),
        target: env.optional(),
        elements: z.array(element).min(1).max(64).optional(),
        safetyBackup: z.boolean().optional(),
        allowUnauthenticated,
        fromNode: z.string().regex(namePattern, 'must be a node id (a-z, 0-9, - and _, 1-63 characters)').optional(),
        requestId: requestId.optional(),
      })
      .strict(),
  },
  'backup.prune': { role: 'admin', params: z.object({ env, dryRun: z.boolean().optional(), requestId: requestId.optional() }).strict() },
  'backup.delete': { role: 'admin', params: z.object({ env, id: backupId, requestId: requestId.optional() }).strict() },
  'backup.verify': { role: 'admin', params: z.object({ env, id: backupId.or(z.literal(VERIFY_ALL)), allowUnauthenticated, readData: z.boolean().optional(), requestId: requestId.optional() }).strict() },
  'job.get': { role: 'viewer', params: z.object({ jobId }).strict() },
  'job.list': {
    role: 'viewer',
    params: z.object({ env: env.optional(), state: z.enum(JOB_STATES).optional(), kind: z.enum(JOB_KINDS).optional(), limit: z.number().int().min(1).max(1000).optional() }).strict(),
  },
  'job.cancel': { role: 'admin', params: z.object({ jobId }).strict() },
  'job.subscribe': { role: 'viewer', params: z.object({ jobId }).strict() },
  'job.unsubscribe': { role: 'viewer', params: z.object({ jobId }).strict() },
} as const satisfies Record<string, { role: Role; params: z.ZodType }>;

export type MethodName = keyof typeof methods;
export type MethodParams<M extends MethodName> = z.output<(typeof methods)[M]['params']>;
export type MethodInput<M extends MethodName> = z.input<(typeof methods)[M]['params']>;

export function isMethodName(name: string): name is MethodName {
  return Object.hasOwn(methods, name);
}

export function mayCall(role: Role, method: MethodName): boolean {
  return role === 'admin' || methods[method].role === 'viewer';
}

/** A request: every client message is one, with an id (the protocol has no client notifications). */
export const requestSchema = z
  .object({
    jsonrpc: z.literal('2.0'),
    id: z.union([z.string().max(128), z.number().int().safe()]),
    method: z.string().max(64),
    params: z.unknown().optional(),
  })
  .strict();
export type RpcId = string | number;

export const NOTIFICATIONS = ['job.progress', 'job.finished'] as const;
export type NotificationName = (typeof NOTIFICATIONS)[number];

export interface RpcErrorObject {
  code: number;
  message: string;
  data: { code: ErrorCode; details?: Record<string, unknown> };
}

export type RpcResponse = { jsonrpc: '2.0'; id: RpcId | null; result: unknown } | { jsonrpc: '2.0'; id: RpcId | null; error: RpcErrorObject };
export interface RpcNotification {
  jsonrpc: '2.0';
  method: NotificationName;
  params: unknown;
}

/** Protocol errors use JSON-RPC's own numbers; the agent's errors -32000 minus their exit code. */
const STANDARD_CODES: Partial<Record<ErrorCode, number>> = {
  E_PARSE_ERROR: -32700,
  E_INVALID_REQUEST: -32600,
  E_METHOD_NOT_FOUND: -32601,
  E_INVALID_PARAMS: -32602,
  E_INTERNAL: -32603,
};

export function rpcErrorOf(error: AgentError): RpcErrorObject {
  return {
    code: STANDARD_CODES[error.code] ?? -32000 - error.exitCode,
    message: error.message,
    data: { code: error.code, ...(error.details ? { details: error.details } : {}) },
  };
}

export function agentErrorOf(error: { code?: unknown; message?: unknown; data?: unknown }): AgentError {
  const data = (error.data ?? {}) as { code?: unknown; details?: unknown };
  const code = isErrorCode(data.code) ? data.code : 'E_PROTOCOL';
  const details = data.details && typeof data.details === 'object' ? (data.details as Record<string, unknown>) : undefined;
  return new AgentError(code, typeof error.message === 'string' ? error.message : 'the daemon answered with an error', details ? { details } : undefined);
}

/** The job request of a job method's (validated) params. */
export function jobRequestOf(method: 'backup.create' | 'backup.restore' | 'backup.delete' | 'backup.verify' | 'backup.prune', params: Record<string, unknown>): JobRequest {
  switch (method) {
    case 'backup.create': {
      const p = params as MethodParams<'backup.create'>;
      return {
        kind: method,
        env: p.env,
        ...(p.live !== undefined ? { live: p.live } : {}),
        ...(p.elements ? { elements: p.elements } : {}),
        ...(p.keepFor !== undefined ? { keepForMs: parseDuration(p.keepFor)! } : {}),
        ...(p.codeRef !== undefined ? { codeRef: p.codeRef } : {}),
        ...(p.trigger !== undefined ? { trigger: p.trigger } : {}),
        ...(p.replaceOldest !== undefined ? { replaceOldest: p.replaceOldest } : {}),
      };
    }
    case 'backup.restore': {
      const p = params as MethodParams<'backup.restore'>;
      return {
        kind: method,
        env: p.env,
        ...(p.id ? { id: p.id } : {}),
        ...(p.toTime !== undefined ? { toTime: p.toTime } : {}),
        ...(p.toPosition !== undefined ? { toPosition: p.toPosition } : {}),
        ...(p.toGtid !== undefined ? { toGtid: p.toGtid } : {}),
        ...(p.target ? { target: p.target } : {}),
        ...(p.elements ? { elements: p.elements } : {}),
        ...(p.safetyBackup !== undefined ? { safetyBackup: p.safetyBackup } : {}),
        ...(p.allowUnauthenticated !== undefined ? { allowUnauthenticated: p.allowUnauthenticated } : {}),
        ...(p.fromNode ? { fromNode: p.fromNode } : {}),
      };
    }
    case 'backup.prune': {
      const p = params as MethodParams<'backup.prune'>;
      return { kind: method, env: p.env, ...(p.dryRun !== undefined ? { dryRun: p.dryRun } : {}) };
    }
    case 'backup.delete': {
      const p = params as MethodParams<'backup.delete'>;
      return { kind: method, env: p.env, id: p.id };
    }
    case 'backup.verify': {
      const p = params as MethodParams<'backup.verify'>;
      return { kind: method, env: p.env, id: p.id, ...(p.allowUnauthenticated !== undefined ? { allowUnauthenticated: p.allowUnauthenticated } : {}), ...(p.readData ? { readData: true } : {}) };
    }
  }
}

/** The params of the job method for a job request (the client's side of jobRequestOf). */
export function paramsOfJobRequest(request: JobRequest, requestId?: string): Record<string, unknown> {
  const { kind: _kind, ...rest } = request;
  const params: Record<string, unknown> = { ...rest };
  if (request.kind === 'backup.create' && request.keepForMs !== undefined) {
    delete params.keepForMs;
    params.keepFor = Math.max(1, Math.round(request.keepForMs / 1000));
  }
  for (const [key, value] of Object.entries(params)) if (value === undefined) delete params[key];
  if (requestId !== undefined) params.requestId = requestId;
  return params;
}

/** zod issues as one line: `env: must be an environment name; elements.0: …`. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => `${issue.path.length ? issue.path.join('.') : '(params)'}: ${issue.message}`)
    .join('; ');
}
