/**
 * An HTTP proxy in front of the test RGW that forwards S3 requests unchanged and, by rule,
 * injects the faults a fleet meets: 503 SlowDown, connections reset mid-request, answers cut
 * short, gateways that accept and then say nothing. It counts requests by S3 operation.
 *
 * SigV4 signs the Host header, and the client signs the proxy's host:port (its endpoint). The
 * request goes on with every header as it came, Host included, and RGW checks the signature
 * against the Host it receives, so it verifies (test/s3-fault-proxy.test.ts proves it). Path-style
 * addressing only (the agent's default): the bucket is the first path segment.
 */
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type S3Operation =
  | 'ListBuckets'
  | 'CreateBucket'
  | 'HeadBucket'
  | 'DeleteBucket'
  | 'ListObjects'
  | 'ListObjectsV2'
  | 'ListMultipartUploads'
  | 'DeleteObjects'
  | 'GetObject'
  | 'HeadObject'
  | 'PutObject'
  | 'CopyObject'
  | 'DeleteObject'
  | 'CreateMultipartUpload'
  | 'UploadPart'
  | 'UploadPartCopy'
  | 'ListParts'
  | 'CompleteMultipartUpload'
  | 'AbortMultipartUpload';

export interface ProxiedRequest {
  method: string;
  /** An S3Operation, or `<METHOD> <bucket|object> <query keys>` for a request not named there. */
  operation: string;
  bucket: string;
  key: string;
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
}

export type Fault =
  /** 503 with S3's SlowDown XML error, after the request body was read. */
  | { type: 'slowDown' }
  /** The connection reset (RST) once this many bytes of the request body arrived (default 0). */
  | { type: 'reset'; afterBytes?: number }
  /** The real answer's headers (Content-Length and all), then this many body bytes, then close. */
  | { type: 'truncate'; afterBytes: number }
  /** Nothing at all for `ms`, then the request goes on; without `ms`, nothing ever. */
  | { type: 'stall'; ms?: number };

export interface FaultRule {
  /** The operation faulted; any operation when absent. */
  operation?: S3Operation;
  /** A further condition on the request (a key, a part number…). */
  match?: (request: ProxiedRequest) => boolean;
  fault: Fault;
  /** How many requests get the fault; every matching one when absent. */
  times?: number;
  /** Matching requests let through before the fault starts (default 0). */
  skip?: number;
  /** The chance (0–1) that a matching request gets the fault (default 1). */
  probability?: number;
}

export interface InjectedFault {
  /** Requests this rule faulted so far. */
  readonly hits: number;
  remove(): void;
}

export interface FaultProxy {
  /** The endpoint to give the S3 client: http://127.0.0.1:<port>. */
  url: string;
  /** Requests that reached the proxy by operation, faulted or not (each attempt counts). */
  counts(): Record<string, number>;
  /** The requests counted, in the order they arrived, headers and all (what a retry asked for). */
  requests(): ProxiedRequest[];
  /** Empties counts() and requests(). */
  resetCounts(): void;
  /** Adds a rule; the first rule that fires for a request decides its fault. */
  inject(rule: FaultRule): InjectedFault;
  /** Removes every rule: requests pass unharmed. */
  clear(): void;
  close(): Promise<void>;
}

/** What a path-style request is: its bucket, key and S3 operation (from method, path and query). */
export function describeS3Request(method: string, rawUrl: string, headers: IncomingHttpHeaders): ProxiedRequest {
  const url = new URL(rawUrl, 'http://proxy');
  const query = url.searchParams;
  const [bucket = '', ...rest] = decodeURIComponent(url.pathname).replace(/^\//, '').split('/');
  const key = rest.join('/');
  return { method, operation: operationOf(method, bucket, key, query, headers), bucket, key, query, headers };
}

function operationOf(method: string, bucket: string, key: string, query: URLSearchParams, headers: IncomingHttpHeaders): string {
  // The SDK adds ?x-id=<operation> to some requests; the operation is told without it, as for any client.
  const keys = [...query.keys()].filter((name) => name !== 'x-id');
  const copy = headers['x-amz-copy-source'] !== undefined;
  if (!bucket) return method === 'GET' ? 'ListBuckets' : `${method} /`;
  if (!key) {
    if (method === 'GET' && query.has('uploads')) return 'ListMultipartUploads';
    if (method === 'GET' && query.get('list-type') === '2') return 'ListObjectsV2';
    if (method === 'POST' && query.has('delete')) return 'DeleteObjects';
    const plain: Record<string, S3Operation> = { GET: 'ListObjects', PUT: 'CreateBucket', HEAD: 'HeadBucket', DELETE: 'DeleteBucket' };
    return (keys.every((name) => ['prefix', 'marker', 'max-keys', 'delimiter', 'encoding-type'].includes(name)) && plain[method]) || `${method} bucket ${keys.join(',')}`;
  }
  const upload = query.has('uploadId');
  switch (method) {
    case 'GET':
      return upload ? 'ListParts' : 'GetObject';
    case 'HEAD':
      return 'HeadObject';
    case 'PUT':
      if (query.has('partNumber')) return copy ? 'UploadPartCopy' : 'UploadPart';
      return copy ? 'CopyObject' : 'PutObject';
    case 'POST':
      if (query.has('uploads')) return 'CreateMultipartUpload';
      if (upload) return 'CompleteMultipartUpload';
      break;
    case 'DELETE':
      return upload ? 'AbortMultipartUpload' : 'DeleteObject';
  }
  return `${method} object ${keys.join(',')}`;
}

const slowDownBody = (resource: string) =>
  '<?xml version="1.0" encoding="UTF-8"?>\n' +
  `<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><Resource>${resource.replace(/[<>&]/g, '')}</Resource><RequestId>fault-proxy</RequestId></Error>`;

/** Starts the proxy on 127.0.0.1 (a free port) in front of `target` (the RGW endpoint). */
export async function startFaultProxy(target: URL | string): Promise<FaultProxy> {
  const upstream = new URL(target);
  const agent = new http.Agent({ keepAlive: true });
  const rules = new Set<{ rule: FaultRule; seen: number; hits: number }>();
  let counts: Record<string, number> = {};
  let requests: ProxiedRequest[] = [];
  const stalls = new Set<NodeJS.Timeout>();

  const pick = (request: ProxiedRequest): Fault | undefined => {
    for (const entry of rules) {
      const { rule } = entry;
      if (rule.operation !== undefined && rule.operation !== request.operation) continue;
      if (rule.match && !rule.match(request)) continue;
      entry.seen++;
      if (entry.seen <= (rule.skip ?? 0) || entry.hits >= (rule.times ?? Infinity)) continue;
      if (Math.random() >= (rule.probability ?? 1)) continue;
      entry.hits++;
      return rule.fault;
    }
    return undefined;
  };

  /** Sends the request on to RGW as it came; with `truncateAfter`, cuts the answer's body there. */
  const forward = (req: IncomingMessage, res: ServerResponse, truncateAfter?: number) => {
    let cut = false;
    const out = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers, agent }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, answer.headers);
      if (truncateAfter === undefined) return void answer.pipe(res);
      let left = truncateAfter;
      answer.on('data', (chunk: Buffer) => {
        if (cut) return;
        res.write(chunk.subarray(0, left));
        left -= chunk.length;
        if (left > 0) return;
        // The headers promised more: the client sees the connection end mid-body.
        cut = true;
        answer.destroy();
        res.socket?.end();
      });
      answer.on('end', () => res.end());
    });
    out.on('error', () => {
      if (cut) return;
      if (res.headersSent) res.socket?.destroy();
      else res.writeHead(502).end();
    });
    res.on('close', () => {
      if (!res.writableFinished) out.destroy();
    });
    req.pipe(out);
  };

  const server = http.createServer((req, res) => {
    const request = describeS3Request(req.method ?? 'GET', req.url ?? '/', req.headers);
    counts[request.operation] = (counts[request.operation] ?? 0) + 1;
    requests.push(request);
    const fault = pick(request);
    switch (fault?.type) {
      case undefined:
        return forward(req, res);
      case 'slowDown':
        req.resume();
        req.on('end', () => {
          const body = slowDownBody(`/${request.bucket}/${request.key}`);
          res.writeHead(503, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) }).end(body);
        });
        return;
      case 'reset': {
        const afterBytes = fault.afterBytes ?? 0;
        let received = 0;
        const reset = () => {
          if (!req.socket.destroyed) req.socket.resetAndDestroy();
        };
        if (afterBytes === 0) return reset();
        req.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received >= afterBytes) reset();
        });
        req.on('end', reset);
        return;
      }
      case 'truncate':
        return forward(req, res, fault.afterBytes);
      case 'stall': {
        // The request is left unread, as by a hung gateway: a sender blocks once the socket's buffers fill.
        if (fault.ms === undefined) return;
        const timer = setTimeout(() => {
          stalls.delete(timer);
          if (!req.socket.destroyed) forward(req, res);
        }, fault.ms);
        stalls.add(timer);
        return;
      }
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    counts: () => ({ ...counts }),
    requests: () => [...requests],
    resetCounts: () => {
      counts = {};
      requests = [];
    },
    inject: (rule) => {
      const entry = { rule, seen: 0, hits: 0 };
      rules.add(entry);
      return {
        get hits() {
          return entry.hits;
        },
        remove: () => void rules.delete(entry),
      };
    },
    clear: () => rules.clear(),
    close: async () => {
      rules.clear();
      for (const timer of stalls) clearTimeout(timer);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      agent.destroy();
      await closed;
    },
  };
}
