import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';

/**
 * Private redis-server processes for the tests: each in its own temp directory, on a free
 * port of 127.0.0.1, addressed by PID (never the system service). As root they run as the
 * Debian `redis` user, as in production, so a read-only directory is read-only to them.
 */
export interface RedisServerOptions {
  appendonly?: boolean;
  /** false: `--save ''` (no save points); true (default): Redis's default save points. */
  save?: boolean;
  password?: string;
}

export interface TestRedis {
  readonly port: number;
  readonly dir: string;
  readonly password: string | undefined;
  readonly pid: number;
  /** A new connection (closed by stop()); `db` selects the database. */
  client(db?: number): Redis;
  /** SIGKILL (a crash: only what is on disk survives), then start again on the same dir and port. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  /** The agent's config entry for this server; the password is read from `passwordEnv`. */
  serviceConfig(passwordEnv?: string): Record<string, unknown>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

function redisUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const uid = Number(execFileSync('id', ['-u', 'redis'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'redis'], { encoding: 'utf8' }).trim());
    return { uid, gid };
  } catch {
    return undefined;
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export async function startRedis(options: RedisServerOptions = {}): Promise<TestRedis> {
  const dir = await mkdtemp(path.join(tmpdir(), 'sa-redis-'));
  const user = redisUser();
  if (user) await chown(dir, user.uid, user.gid);
  const port = await freePort();
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--dir', dir,
    '--dbfilename', 'dump.rdb',
    '--logfile', path.join(dir, 'redis.log'),
    '--daemonize', 'no',
    '--appendonly', options.appendonly ? 'yes' : 'no',
    '--enable-protected-configs', 'yes',
    ...(options.save === false ? ['--save', ''] : []),
    ...(options.password ? ['--requirepass', options.password] : []),
  ];
  const clients = new Set<Redis>();
  let child: ChildProcess;

  const launch = async () => {
    child = spawn('redis-server', args, { stdio: ['ignore', 'ignore', 'pipe'], ...(user ?? {}) });
    running.add(child);
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`redis-server exited (${code}) at start: ${stderr}`))));
    exited.catch(() => {});
    await Promise.race([waitUntilReady(port, options.password), exited]);
  };
  const kill = async () => {
    for (const c of clients) c.disconnect();
    clients.clear();
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await gone;
    }
    running.delete(child);
  };
  await launch();
  return {
    port,
    dir,
    password: options.password,
    get pid() {
      return child.pid!;
    },
    client(db = 0) {
      const c = new Redis({ port, host: '127.0.0.1', db, password: options.password, maxRetriesPerRequest: 1, lazyConnect: false });
      c.on('error', () => {});
      clients.add(c);
      return c;
    },
    async restart() {
      await kill();
      await launch();
    },
    async stop() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
    serviceConfig(passwordEnv) {
      return { kind: 'redis', host: '127.0.0.1', port, ...(passwordEnv ? { password: { env: passwordEnv } } : {}) };
    },
  };
}

async function waitUntilReady(port: number, password: string | undefined): Promise<void> {
  const until = Date.now() + 15_000;
  for (;;) {
    const probe = new Redis({ port, host: '127.0.0.1', password, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false });
    probe.on('error', () => {});
    try {
      await probe.connect();
      const info = String(await probe.info('persistence'));
      if (/\bloading:0\b/.test(info)) return;
    } catch {
      // not up yet
    } finally {
      probe.disconnect();
    }
    if (Date.now() > until) throw new Error(`redis-server on port ${port} did not come up`);
    await sleep(20);
  }
}

// ------------------------------------------------------------------ data

/** Every byte value once: the binary-safety probe for keys and values. */
export const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

/**
 * Writes every data type into each of `dbs`: small and large encodings (listpack/intset and
 * hashtable/quicklist/skiplist), binary keys and values, integers, a 200 KB string, TTLs, and
 * a stream with a consumer group and pending entries. `tag` makes distinct data sets.
 */
export async function fillAllTypes(server: TestRedis, dbs: readonly number[], tag = 'a'): Promise<number> {
  let total = 0;
  for (const db of dbs) {
    const c = server.client(db);
    const p = (name: string) => `${tag}:${name}`;
    const binKey = Buffer.concat([Buffer.from(`${tag}:bin:`), ALL_BYTES, Buffer.from([db])]);
    const pipe = c.pipeline();
    pipe.set(p('str'), `hello ${db}`);
    pipe.set(p('int'), String(12345 + db));
    pipe.set(p('big'), Buffer.alloc(200_000, `${tag}${db}-`));
    pipe.set(binKey, Buffer.concat([ALL_BYTES, ALL_BYTES.reverse()]));
    ALL_BYTES.reverse();
    pipe.set(p('ttl'), 'expires', 'PX', 3_600_000 + db);
    pipe.hset(p('hash:small'), 'a', '1', 'b', '2');
    const bigHash: (string | Buffer)[] = [];
    for (let i = 0; i < 300; i++) bigHash.push(`f${i}`, i === 7 ? ALL_BYTES : `v${i}-${tag}`);
    pipe.hset(p('hash:big'), ...bigHash);
    pipe.hset(binKey.subarray(0, 40), ALL_BYTES, ALL_BYTES);
    pipe.pexpire(p('hash:big'), 7_200_000);
    pipe.rpush(p('list:small'), 'x', 'y', 'z');
    pipe.rpush(p('list:big'), ...Array.from({ length: 1000 }, (_, i) => (i % 100 === 0 ? ALL_BYTES : `item-${i}`)));
    pipe.sadd(p('set:int'), ...Array.from({ length: 50 }, (_, i) => String(i * 3)));
    pipe.sadd(p('set:str'), 'red', 'green', 'blue', ALL_BYTES);
    pipe.sadd(p('set:big'), ...Array.from({ length: 600 }, (_, i) => `member-${i}-${tag}`));
    pipe.pexpire(p('set:big'), 5_000_000);
    pipe.zadd(p('zset:small'), 1, 'one', 2.5, 'two-and-a-half', -3, 'minus');
    const bigZset: (string | number | Buffer)[] = ['-inf', 'bottom', '+inf', 'top', 0, ALL_BYTES];
    for (let i = 0; i < 300; i++) bigZset.push(i / 7, `m${i}`);
    pipe.zadd(p('zset:big'), ...bigZset);
    for (let i = 0; i < 20; i++) pipe.xadd(p('stream'), `${1_700_000_000_000 + i}-${db}`, 'n', String(i), 'blob', i === 3 ? ALL_BYTES : 'x');
    pipe.xgroup('CREATE', p('stream'), 'workers', '0');
    pipe.xreadgroup('GROUP', 'workers', 'alice', 'COUNT', '5', 'STREAMS', p('stream'), '>');
    pipe.xack(p('stream'), 'workers', `${1_700_000_000_000 + 1}-${db}`);
    const replies = await pipe.exec();
    const failed = replies?.find(([error]) => error);
    if (failed) throw failed[0];
    total += Number(await c.dbsize());
  }
  return total;
}

// ------------------------------------------------------------------ comparison

export interface KeyState {
  db: number;
  key: Buffer;
  type: string;
  pttl: number;
  dump: Buffer;
  /** Order-independent content of hashes and sets, whose DUMP follows hash-table order. */
  content: string | undefined;
}

/** Every key of every database: TYPE, PTTL and DUMP (binary-safe), keyed "db/hex(key)". */
export async function readAll(server: TestRedis): Promise<Map<string, KeyState>> {
  const admin = server.client();
  const databases = Number(((await admin.config('GET', 'databases')) as string[])[1]);
  const all = new Map<string, KeyState>();
  for (let db = 0; db < databases; db++) {
    const c = server.client(db);
    let cursor = '0';
    do {
      const [next, keys] = await c.scanBuffer(cursor, 'COUNT', 1000);
      cursor = next.toString();
      // One round trip per SCAN batch (a key at a time took ~1.4 s for 12,000 keys).
      const pipe = c.pipeline();
      for (const key of keys) pipe.type(key).pttl(key).dumpBuffer(key);
      const replies = (await pipe.exec()) ?? [];
      for (const [i, key] of keys.entries()) {
        const [type, pttl, dump] = replies.slice(i * 3, i * 3 + 3).map(([error, value]) => {
          if (error) throw error;
          return value;
        }) as [string, number, Buffer];
        all.set(`${db}/${key.toString('hex')}`, { db, key, type, pttl, dump, content: await contentOf(c, key, type) });
      }
    } while (cursor !== '0');
    c.disconnect();
  }
  return all;
}

async function contentOf(c: Redis, key: Buffer, type: string): Promise<string | undefined> {
  if (type === 'set') return (await c.smembersBuffer(key)).map((m) => m.toString('hex')).sort().join(',');
  if (type === 'hash') {
    const flat = (await c.callBuffer('HGETALL', key)) as Buffer[];
    const pairs: string[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) pairs.push(`${flat[i]!.toString('hex')}=${flat[i + 1]!.toString('hex')}`);
    return pairs.sort().join(',');
  }
  return undefined;
}

/**
 * The differences between two servers' data, key by key; empty when equal. DUMPs must match
 * (hashes and sets may instead match by content: their DUMP follows hash-table order), PTTLs
 * within `ttlToleranceMs` (both count down from the same absolute expiry).
 */
export function diffData(expected: Map<string, KeyState>, actual: Map<string, KeyState>, ttlToleranceMs = 30_000): string[] {
  const differences: string[] = [];
  const label = (s: KeyState) => `db${s.db} key ${JSON.stringify(s.key.toString('latin1')).slice(0, 60)}`;
  for (const [id, want] of expected) {
    const got = actual.get(id);
    if (!got) {
      differences.push(`missing ${label(want)}`);
      continue;
    }
    if (got.type !== want.type) differences.push(`${label(want)}: type ${got.type}, expected ${want.type}`);
    else if (!got.dump.equals(want.dump) && (want.content === undefined || got.content !== want.content)) differences.push(`${label(want)}: value differs`);
    if ((want.pttl < 0 || got.pttl < 0) && want.pttl !== got.pttl) differences.push(`${label(want)}: pttl ${got.pttl}, expected ${want.pttl}`);
    else if (Math.abs(want.pttl - got.pttl) > ttlToleranceMs) differences.push(`${label(want)}: pttl ${got.pttl}, expected about ${want.pttl}`);
  }
  for (const [id, got] of actual) if (!expected.has(id)) differences.push(`unexpected ${label(got)}`);
  return differences;
}
