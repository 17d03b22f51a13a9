import { randomBytes, randomInt } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { mkdir, readdir, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { daemonSection, sleep, startDaemon, TestClient, waitFor, writeTokens, type RunningDaemon, type Tokens } from './support/daemon.ts';
import { connect, createDatabase, mariadbServer, mysqlServiceConfig, rows } from './support/mysql.ts';

interface Ticket {
  jobId: string;
  backupId?: string;
  state: string;
  position?: number;
  waitingFor?: string;
}
interface Job {
  id: string;
  state: string;
  backupId?: string;
  result?: { id: string };
  error?: { code: string };
}

/** A raw HTTP upgrade request: the status the daemon answers, before any socket exists. */
function upgradeStatus(port: number, requestPath: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: '127.0.0.1',
      port,
      path: requestPath,
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': randomBytes(16).toString('base64'), ...headers },
    });
    request.on('upgrade', (response, socket) => {
      socket.destroy();
      resolve({ status: response.statusCode ?? 0, headers: response.headers });
    });
    request.on('response', (response) => {
      response.resume();
      resolve({ status: response.statusCode ?? 0, headers: response.headers });
    });
    request.on('error', reject);
    request.end();
  });
}

describe('the daemon: WebSocket JSON-RPC protocol (real daemon process, real ws client)', () => {
  let sandbox: Sandbox;
  let tokens: Tokens;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    const small = path.join(sandbox.dir, 'small');
    const slow = path.join(sandbox.dir, 'slow');
    await mkdir(small);
    await mkdir(slow);
    await writeFile(path.join(small, 'index.html'), '<h1>hello</h1>');
    // A sparse file: several seconds of reading and compressing zeros, next to no disk.
    await writeFile(path.join(slow, 'sparse.bin'), '');
    await truncate(path.join(slow, 'sparse.bin'), 2560 * 1024 * 1024);
    await sandbox.writeConfig({
      daemon: daemonSection(tokens, { maxFrameBytes: '64KiB', heartbeat: '500ms' }),
      environments: { app: filesEnv({ uploads: small }), slow: filesEnv({ uploads: slow }) },
    });
    daemon = await startDaemon(sandbox.configPath);
  });
  afterAll(async () => {
    await daemon?.stop();
    await sandbox.cleanup();
  });

  it('refuses a missing or wrong token with HTTP 401 before the upgrade (no socket); a wrong path gets 404', async () => {
    const none = await upgradeStatus(daemon.port, '/v1', {});
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Bearer/);
    expect((await upgradeStatus(daemon.port, '/v1', { Authorization: `Bearer ${tokens.admin}x` })).status).toBe(401);
    expect((await upgradeStatus(daemon.port, '/v1', { Authorization: `Bearer ${tokens.admin.slice(0, -1)}` })).status).toBe(401);
    expect((await upgradeStatus(daemon.port, '/v1', { Authorization: `Basic ${Buffer.from(`u:${tokens.admin}`).toString('base64')}` })).status).toBe(401);
    expect((await upgradeStatus(daemon.port, '/v2', { Authorization: `Bearer ${tokens.admin}` })).status).toBe(404);
    await expect(TestClient.connect(daemon.url)).rejects.toMatchObject({ status: 401 });
    await expect(TestClient.connect(daemon.url, 'not-a-token-at-all-but-long')).rejects.toMatchObject({ status: 401 });
    // The real thing works, and the refusals were logged without the token.
    const client = await TestClient.connect(daemon.url, tokens.admin);
    expect(await client.call('agent.status')).toMatchObject({ agent: { program: 'daemon' } });
    await client.close();
    expect(daemon.logs().filter((l) => l.msg.includes('not authenticated')).length).toBeGreaterThanOrEqual(5);
    expect(daemon.stdout()).not.toContain(tokens.admin.slice(0, 12));
  });

  it('a viewer token reads (status, environments, backups, jobs) and is refused every admin method', async () => {
    const admin = await TestClient.connect(daemon.url, tokens.admin);
    const ticket = await admin.call<Ticket>('backup.create', { env: 'app' });
    await admin.call('job.subscribe', { jobId: ticket.jobId });
    await admin.waitForNotification((n) => n.method === 'job.finished' && n.params.id === ticket.jobId);
    await admin.close();

    const viewer = await TestClient.connect(daemon.url, tokens.viewer);
    const status = await viewer.call<{ host: { memory: { total: number } }; jobs: { concurrency: number } }>('agent.status');
    expect(status.host.memory.total).toBeGreaterThan(0);
    expect(await viewer.call('env.list')).toEqual([
      { name: 'app', store: 'default', services: [{ name: 'uploads', kind: 'files' }], freeze: false },
      { name: 'slow', store: 'default', services: [{ name: 'uploads', kind: 'files' }], freeze: false },
    ]);
    const backups = await viewer.call<{ id: string; restorable: boolean }[]>('backup.list', { env: 'app' });
    expect(backups.find((b) => b.id === ticket.backupId)?.restorable).toBe(true);
    expect(await viewer.call('backup.show', { env: 'app', id: ticket.backupId })).toMatchObject({ id: ticket.backupId, env: 'app' });
    expect(await viewer.call<Job>('job.get', { jobId: ticket.jobId })).toMatchObject({ state: 'succeeded' });
    expect((await viewer.call<Job[]>('job.list', { env: 'app' })).map((j) => j.id)).toContain(ticket.jobId);

    for (const [method, params] of [
      ['backup.create', { env: 'app' }],
      ['backup.restore', { env: 'app', id: ticket.backupId }],
      ['backup.delete', { env: 'app', id: ticket.backupId }],
      ['backup.verify', { env: 'app', id: ticket.backupId }],
      ['backup.url', { env: 'app', id: ticket.backupId, element: 'uploads' }],
      ['job.cancel', { jobId: ticket.jobId }],
    ] as const) {
      const answer = await viewer.request(method, params);
      expect(answer.error, method).toMatchObject({ code: -32013, data: { code: 'E_FORBIDDEN' } });
      expect(answer.error!.message).toContain('admin');
    }
    expect((await viewer.call<{ id: string }[]>('backup.list', { env: 'app' })).length).toBe(backups.length); // nothing happened
    await viewer.close();
  });

  it('bad JSON, bad requests, unknown methods and wrong params each get a JSON-RPC error with a stable code; the connection stays up', async () => {
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const raw = async (frame: string | Buffer, binary = false) => {
      const before = client.responses.length;
      client.ws.send(frame, { binary });
      await waitFor('an answer', () => client.responses.length > before);
      return client.responses[before]!;
    };
    expect(await raw('{"jsonrpc": "2.0", "id": 1, "method": ')).toMatchObject({ id: null, error: { code: -32700, data: { code: 'E_PARSE_ERROR' } } });
    expect(await raw('[]')).toMatchObject({ id: null, error: { code: -32600, data: { code: 'E_INVALID_REQUEST' } } });
    expect(await raw('{"jsonrpc":"2.0","method":"agent.status"}')).toMatchObject({ id: null, error: { code: -32600 } }); // no id
    expect(await raw('{"jsonrpc":"1.0","id":7,"method":"agent.status"}')).toMatchObject({ id: 7, error: { code: -32600 } });
    expect(await raw('{"jsonrpc":"2.0","id":8,"method":"agent.status","extra":1}')).toMatchObject({ id: 8, error: { code: -32600 } });
    expect(await raw(Buffer.from('{"jsonrpc":"2.0","id":9,"method":"agent.status"}'), true)).toMatchObject({ error: { code: -32600 } });

    expect(await client.request('system.exec', { cmd: 'id' })).toMatchObject({ error: { code: -32601, data: { code: 'E_METHOD_NOT_FOUND' } } });
    expect(await client.request('backup.list', {})).toMatchObject({ error: { code: -32602, data: { code: 'E_INVALID_PARAMS' } } });
    expect(await client.request('backup.list', ['app'])).toMatchObject({ error: { code: -32602 } });
    expect(await client.request('backup.list', { env: '../../etc' })).toMatchObject({ error: { code: -32602 } });
    // The wire names environments, services and backups only: a path or a command is refused.
    expect(await client.request('backup.list', { env: 'app', path: '/etc/shadow' })).toMatchObject({ error: { code: -32602 } });
    expect(await client.request('backup.create', { env: 'app', command: 'cat /etc/shadow' })).toMatchObject({ error: { code: -32602 } });
    expect(await client.request('backup.show', { env: 'app', id: 'latest' })).toMatchObject({ error: { code: -32602 } });
    expect(await client.request('backup.create', { env: 'app', elements: ['nope'] })).toMatchObject({
      error: { code: -32004, data: { code: 'E_UNKNOWN_ELEMENT' } },
    });
    expect(await client.request('backup.list', { env: 'nosuchenv' })).toMatchObject({ error: { code: -32004, data: { code: 'E_UNKNOWN_ENV' } } });
    expect(await client.request('backup.show', { env: 'app', id: '20200101T000000000Z-aaaaaaaa' })).toMatchObject({
      error: { code: -32004, data: { code: 'E_BACKUP_NOT_FOUND' } },
    });
    expect(await client.request('job.get', { jobId: 'job-20200101T000000000Z-aaaaaaaa' })).toMatchObject({ error: { data: { code: 'E_JOB_NOT_FOUND' } } });
    expect(await client.call('agent.status')).toMatchObject({ agent: { program: 'daemon' } });
    await client.close();
  });

  it('an oversized frame closes that connection (1009); the daemon serves the next client', async () => {
    const client = await TestClient.connect(daemon.url, tokens.admin);
    client.ws.send(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'backup.list', params: { env: 'x'.repeat(100 * 1024) } }));
    expect((await client.closed).code).toBe(1009);
    const next = await TestClient.connect(daemon.url, tokens.admin);
    expect(await next.call('env.list')).toHaveLength(2);
    await next.close();
  });

  it('10,000 random frames: each gets one JSON-RPC error, and the daemon then serves a new client normally', async () => {
    const client = await TestClient.connect(daemon.url, tokens.viewer);
    const frames: { data: string | Buffer; binary: boolean }[] = [];
    const methods = ['agent.status', 'backup.list', 'backup.create', 'job.get', 'x', ''];
    for (let i = 0; i < 10_000; i++) {
      const kind = i % 5;
      if (kind === 0) frames.push({ data: randomBytes(randomInt(1, 200)).toString('latin1'), binary: false });
      else if (kind === 1) frames.push({ data: randomBytes(randomInt(1, 200)), binary: true });
      else if (kind === 2) frames.push({ data: JSON.stringify([randomInt(1e6), 'x', null, { a: i }].slice(0, randomInt(1, 4))), binary: false });
      else if (kind === 3) {
        // Requests that are never valid: wrong params, unknown methods, or no id.
        const method = methods[randomInt(methods.length)]!;
        const params = [{ env: randomBytes(4).toString('hex').toUpperCase() }, { jobId: 'job-x' }, 42, 'str', { env: 'app', junk: true }][randomInt(5)];
        frames.push({ data: JSON.stringify({ jsonrpc: '2.0', id: i, method: method === 'agent.status' ? 'agent.statuz' : method, params }), binary: false });
      } else frames.push({ data: JSON.stringify({ jsonrpc: '2.0', method: 'agent.status', params: { n: i } }), binary: false });
    }
    for (const frame of frames) client.ws.send(frame.data, { binary: frame.binary });
    await waitFor('10,000 answers', () => client.responses.length >= 10_000, 60_000);
    await sleep(200);
    expect(client.responses).toHaveLength(10_000);
    expect(client.responses.every((r) => r.error && typeof r.error.code === 'number' && typeof r.error.data.code === 'string')).toBe(true);
    const codes = new Set(client.responses.map((r) => r.error!.data.code));
    expect([...codes].sort()).toEqual(expect.arrayContaining(['E_INVALID_REQUEST', 'E_PARSE_ERROR']));
    // The same connection and a new one both work.
    expect(await client.call('env.list')).toHaveLength(2);
    await client.close();
    const next = await TestClient.connect(daemon.url, tokens.viewer);
    expect(await next.call('agent.status')).toMatchObject({ agent: { program: 'daemon' } });
    await next.close();
  });

  it('a peer that stops answering pings is dropped by the heartbeat', async () => {
    // A raw socket that completes the upgrade and then never reads or answers again.
    const socket = net.connect(daemon.port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    socket.write(
      [
        'GET /v1 HTTP/1.1',
        `Host: 127.0.0.1:${daemon.port}`,
        'Connection: Upgrade',
        'Upgrade: websocket',
        'Sec-WebSocket-Version: 13',
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
        `Authorization: Bearer ${tokens.viewer}`,
        '',
        '',
      ].join('\r\n'),
    );
    let received = '';
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
    });
    const closed = new Promise((resolve) => socket.once('close', resolve));
    await waitFor('the 101 answer', () => received.startsWith('HTTP/1.1 101'));
    const started = Date.now();
    await Promise.race([closed, sleep(10_000).then(() => Promise.reject(new Error('the dead peer was not dropped')))]);
    expect(Date.now() - started).toBeLessThan(5_000);
    await daemon.waitForLog('the drop', (l) => l.msg.includes('missed its heartbeat'));
  });

  it('backup.create answers at once with {jobId, backupId}; job.progress notifications follow, then job.finished; the backup is Restorable', async () => {
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const ticket = await client.call<Ticket>('backup.create', { env: 'slow', codeRef: 'abc123' });
    expect(ticket.jobId).toMatch(/^job-/);
    expect(ticket.backupId).toMatch(/^\d{8}T\d{9}Z-[a-z0-9]{8}$/);
    const current = await client.call<Job>('job.subscribe', { jobId: ticket.jobId });
    expect(['queued', 'running']).toContain(current.state);
    const finished = await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === ticket.jobId, 90_000);
    expect(finished.params).toMatchObject({ state: 'succeeded', backupId: ticket.backupId, result: { id: ticket.backupId, codeRef: 'abc123' } });
    const progress = client.notifications.filter((n) => n.method === 'job.progress' && n.params.jobId === ticket.jobId);
    const withBytes = progress.map((n) => n.params.progress as { phase: string; bytes: number; rate?: number; etaSeconds?: number; elements: Record<string, { bytes: number; totalBytes?: number }> } | undefined).filter((p) => p && p.bytes > 0);
    expect(withBytes.length).toBeGreaterThanOrEqual(2);
    expect(withBytes.at(-1)!.bytes).toBeGreaterThan(withBytes[0]!.bytes);
    expect(withBytes.at(-1)!.elements.uploads!.bytes).toBe(withBytes.at(-1)!.bytes);
    expect(withBytes.some((p) => p!.phase === 'capture' && p!.rate! > 0)).toBe(true);
    // A mount's size is not known ahead (a walk would cost half the backup): no ETA is made up.
    expect(withBytes.every((p) => p!.etaSeconds === undefined)).toBe(true);
    expect(client.notifications.filter((n) => n.method === 'job.finished' && n.params.id === ticket.jobId)).toHaveLength(1);
    const backups = await client.call<{ id: string; restorable: boolean }[]>('backup.list', { env: 'slow' });
    expect(backups.find((b) => b.id === ticket.backupId)).toMatchObject({ restorable: true });
    await client.close();

    const metrics = await (await fetch(`${daemon.http}/metrics`, { headers: { Authorization: `Bearer ${tokens.viewer}` } })).text();
    expect(metrics).toMatch(/storage_agent_jobs_finished_total\{kind="backup.create",status="succeeded"\} [1-9]/);
    expect(metrics).toMatch(/storage_agent_backup_stored_bytes_total\{env="slow"\} [1-9]/);
    expect(metrics).toMatch(/storage_agent_last_success_timestamp_seconds\{env="slow",kind="backup.create"\} 1\d{9}/);
    expect(metrics).toMatch(/storage_agent_queue_length 0/);
    expect(metrics).toMatch(/storage_agent_process_resident_memory_bytes \d+/);
    const health = await fetch(`${daemon.http}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok' });
  });

  it('a dropped connection does not stop the job: a new connection subscribes again and sees it finish', async () => {
    const first = await TestClient.connect(daemon.url, tokens.admin);
    const ticket = await first.call<Ticket>('backup.create', { env: 'slow' });
    await first.call('job.subscribe', { jobId: ticket.jobId });
    await first.waitForNotification((n) => n.method === 'job.progress' && (n.params.progress as { bytes?: number } | undefined)?.bytes !== undefined);
    first.ws.terminate(); // no close handshake: the network went away
    await sleep(500);
    const second = await TestClient.connect(daemon.url, tokens.viewer);
    const job = await second.call<Job>('job.subscribe', { jobId: ticket.jobId });
    expect(job.state).toBe('running');
    const finished = await second.waitForNotification((n) => n.method === 'job.finished' && n.params.id === ticket.jobId, 90_000);
    expect(finished.params).toMatchObject({ state: 'succeeded' });
    expect((await second.call<{ id: string; restorable: boolean }[]>('backup.list', { env: 'slow' })).find((b) => b.id === ticket.backupId)?.restorable).toBe(true);
    await second.close();
  });

  it('backup.create with the same requestId returns the same job; the same requestId for another request is refused', async () => {
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const requestId = `req-${randomBytes(4).toString('hex')}`;
    const first = await client.call<Ticket>('backup.create', { env: 'app', requestId, codeRef: 'v1' });
    const again = await client.call<Ticket>('backup.create', { env: 'app', requestId, codeRef: 'v1' });
    expect(again.jobId).toBe(first.jobId);
    expect(again.backupId).toBe(first.backupId);
    expect(await client.request('backup.create', { env: 'slow', requestId })).toMatchObject({ error: { data: { code: 'E_REQUEST_CONFLICT' } } });
    await client.call('job.subscribe', { jobId: first.jobId });
    await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === first.jobId);
    expect((await client.call<Ticket>('backup.create', { env: 'app', requestId, codeRef: 'v1' })).jobId).toBe(first.jobId);
    expect((await client.call<Job[]>('job.list', { env: 'app', limit: 1000 })).filter((j) => j.backupId === first.backupId)).toHaveLength(1);
    await client.close();
  });

  it('two jobs for one environment: the second queues with its position and reason; cancel works on both, leaving no backup', async () => {
    const client = await TestClient.connect(daemon.url, tokens.admin);
    const before = await client.call<{ id: string }[]>('backup.list', { env: 'slow' });
    const first = await client.call<Ticket>('backup.create', { env: 'slow' });
    const second = await client.call<Ticket>('backup.create', { env: 'slow' });
    expect(second.state).toBe('queued');
    expect(second.position).toBe(1);
    expect(second.waitingFor).toContain(first.jobId);
    const queued = await client.call<Job & { position: number; waitingFor: string }>('job.get', { jobId: second.jobId });
    expect(queued).toMatchObject({ state: 'queued', position: 1 });
    expect((await client.call<{ active: Job[] }>('agent.status')).active.map((j) => j.id)).toEqual(expect.arrayContaining([first.jobId, second.jobId]));

    await client.call('job.subscribe', { jobId: second.jobId });
    const cancelled = await client.call<Job & { cancelRequested?: boolean }>('job.cancel', { jobId: first.jobId });
    expect(cancelled.cancelRequested).toBe(true);
    // The queue moves: the second starts when the first is gone.
    await client.waitForNotification((n) => n.method === 'job.progress' && n.params.jobId === second.jobId && n.params.state === 'running');
    expect(await client.call<Job>('job.get', { jobId: first.jobId })).toMatchObject({ state: 'cancelled', error: { code: 'E_CANCELLED' } });
    await client.call('job.cancel', { jobId: second.jobId });
    const end = await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === second.jobId);
    expect(end.params).toMatchObject({ state: 'cancelled' });
    expect(await client.call('backup.list', { env: 'slow' })).toEqual(before);
    await client.close();
  });

  it('its logs are pino JSON lines, one per job phase, without a token', () => {
    const lines = daemon.logs(); // throws if any line is not JSON
    expect(lines.every((l) => typeof l.level === 'number' && typeof l.time === 'string' && typeof l.msg === 'string')).toBe(true);
    const job = lines.find((l) => l.msg === 'job succeeded' && l.env === 'slow')!.jobId;
    const phases = lines.filter((l) => l.jobId === job && typeof l.phase === 'string').map((l) => l.phase);
    expect(phases).toEqual(expect.arrayContaining(['queued', 'started', 'prepare', 'capture', 'manifest', 'finished']));
    for (const token of [tokens.admin, tokens.viewer]) expect(daemon.stdout()).not.toContain(token);
  });
});

interface Progress {
  phase: string;
  bytes: number;
  elements: Record<string, { bytes: number; totalBytes?: number }>;
}
interface ProgressJob extends Job {
  progress?: Progress;
}

/** Every element's bytes within its total (where one is known), and the job's bytes their sum. */
function expectWithinTotals(progress: Progress | undefined, what: string): void {
  if (!progress) return;
  const elements = Object.values(progress.elements);
  for (const [name, e] of Object.entries(progress.elements)) {
    if (e.totalBytes !== undefined) expect(e.bytes, `${what}: ${name} at ${e.bytes} of ${e.totalBytes}`).toBeLessThanOrEqual(e.totalBytes);
  }
  expect(progress.bytes, what).toBe(elements.reduce((sum, e) => sum + e.bytes, 0));
}

describe('job progress end to end (real daemon, real MariaDB): it moves before the end and never passes its total', () => {
  const PASSWORD_ENV = 'SA_TEST_PROGRESS_MYSQL_PASSWORD';
  let sandbox: Sandbox;
  let tokens: Tokens;
  let daemon: RunningDaemon;
  let client: TestClient;
  let root: Connection;
  let db: string;
  let copy: string;

  beforeAll(async () => {
    sandbox = await createSandbox();
    tokens = await writeTokens(sandbox);
    const data = path.join(sandbox.dir, 'data');
    copy = path.join(sandbox.dir, 'copy');
    await mkdir(data);
    // 80 MiB that does not compress: the restore takes long enough to be watched.
    for (let i = 0; i < 4; i++) await writeFile(path.join(data, `random-${i}.bin`), randomBytes(20 << 20));
    const server = mariadbServer();
    process.env[PASSWORD_ENV] = server.password;
    root = await connect(server, { root: true });
    db = await createDatabase(root, 'progress');
    // A compressed table of repetitive text: information_schema's DATA_LENGTH (the progress
    // estimate) counts its compressed pages, a fraction of the SQL the dump writes of it.
    await root.query(`CREATE TABLE \`${db}\`.notes (id INT AUTO_INCREMENT PRIMARY KEY, body MEDIUMTEXT) ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=1`);
    await root.query(`USE \`${db}\``);
    await root.query(`INSERT INTO notes (body) SELECT REPEAT('abcdefgh', 7500) FROM seq_1_to_800`);
    await root.query(`ANALYZE TABLE \`${db}\`.notes`);
    await sandbox.writeConfig({
      daemon: daemonSection(tokens),
      environments: {
        data: filesEnv({ uploads: data }),
        copy: filesEnv({ uploads: copy }),
        sql: { services: { db: mysqlServiceConfig(server, [db], PASSWORD_ENV) } },
      },
    });
    daemon = await startDaemon(sandbox.configPath);
    client = await TestClient.connect(daemon.url, tokens.admin);
  });
  afterAll(async () => {
    await client?.close();
    await daemon?.stop();
    await root?.query(`DROP DATABASE IF EXISTS \`${db}\``).catch(() => {});
    await root?.end().catch(() => {});
    await sandbox.cleanup();
  });

  /** Starts a job with `method`, polls job.get until it ends; the polled records and the job.progress notifications. */
  async function watchJob(method: 'backup.create' | 'backup.restore', params: Record<string, unknown>) {
    const ticket = await client.call<Ticket>(method, params);
    await client.call('job.subscribe', { jobId: ticket.jobId });
    const polled: ProgressJob[] = [];
    for (const until = Date.now() + 90_000; ; await sleep(10)) {
      const job = await client.call<ProgressJob>('job.get', { jobId: ticket.jobId });
      polled.push(job);
      if (['succeeded', 'failed', 'cancelled', 'interrupted'].includes(job.state)) break;
      if (Date.now() > until) throw new Error(`job ${ticket.jobId} still ${job.state} after 90 s`);
    }
    await client.waitForNotification((n) => n.method === 'job.finished' && n.params.id === ticket.jobId);
    const notified = client.notifications
      .filter((n) => n.method === 'job.progress' && n.params.jobId === ticket.jobId)
      .map((n) => n.params.progress as Progress | undefined);
    return { ticket, polled, notified, end: polled.at(-1)! };
  }

  it('a restore job of an 80 MiB files element: job.get shows its bytes above 0 and below the total while it runs, never past the total', async () => {
    const backup = await watchJob('backup.create', { env: 'data' });
    expect(backup.end, JSON.stringify(backup.end.error)).toMatchObject({ state: 'succeeded' });
    const manifest = await client.call<{ elements: { name: string; rawBytes: number }[] }>('backup.show', { env: 'data', id: backup.ticket.backupId });
    const rawBytes = manifest.elements.find((e) => e.name === 'uploads')!.rawBytes;
    expect(rawBytes).toBeGreaterThan(80 << 20);

    const { polled, notified, end } = await watchJob('backup.restore', { env: 'data', id: backup.ticket.backupId, target: 'copy', safetyBackup: false });
    expect(end, JSON.stringify(end.error)).toMatchObject({ state: 'succeeded' });
    const running = polled.filter((j) => j.state === 'running' && j.progress);
    // Seen moving before the end: bytes above 0 and short of the element's total while still running.
    const partway = running.filter((j) => j.progress!.phase === 'stage' && j.progress!.bytes > 0 && j.progress!.bytes < rawBytes);
    expect(partway.length, `polls: ${JSON.stringify(running.map((j) => j.progress))}`).toBeGreaterThanOrEqual(1);
    expect(partway.every((j) => j.progress!.elements.uploads!.totalBytes === rawBytes)).toBe(true);
    // Never past the total, and never backwards while staging.
    for (const [i, job] of polled.entries()) expectWithinTotals(job.progress, `poll ${i} (${job.state})`);
    for (const [i, progress] of notified.entries()) expectWithinTotals(progress, `notification ${i}`);
    const staged = running.filter((j) => j.progress!.phase === 'stage').map((j) => j.progress!.bytes);
    expect(staged).toEqual([...staged].sort((a, b) => a - b));
    expect((await readdir(copy)).sort()).toEqual(['random-0.bin', 'random-1.bin', 'random-2.bin', 'random-3.bin']);
  });

  it("a MySQL backup whose estimate (information_schema's DATA_LENGTH) is far too low: its progress total follows the bytes, never below them", async () => {
    const [row] = await rows<{ bytes: string }>(root, 'SELECT SUM(DATA_LENGTH) AS bytes FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?', [db]);
    const estimate = Number(row!.bytes);
    const { ticket, polled, notified, end } = await watchJob('backup.create', { env: 'sql' });
    expect(end, JSON.stringify(end.error)).toMatchObject({ state: 'succeeded' });
    const manifest = await client.call<{ elements: { name: string; rawBytes: number }[] }>('backup.show', { env: 'sql', id: ticket.backupId });
    const rawBytes = manifest.elements.find((e) => e.name === 'db')!.rawBytes;
    expect(rawBytes, `dump ${rawBytes} B, estimate ${estimate} B`).toBeGreaterThan(10 * estimate);
    const seen = [...polled.map((j) => j.progress), ...notified].filter((p): p is Progress => p?.elements.db !== undefined);
    // The estimate was the total at first, and the dump went past it while the job was watched.
    expect(seen.some((p) => p.elements.db!.totalBytes === estimate)).toBe(true);
    expect(seen.filter((p) => p.phase === 'capture' && p.elements.db!.bytes > estimate).length, JSON.stringify(seen)).toBeGreaterThanOrEqual(1);
    for (const [i, progress] of seen.entries()) {
      expectWithinTotals(progress, `progress ${i}`);
      expect(progress.elements.db!.totalBytes, `progress ${i}`).toBeDefined();
    }
  });
});
