import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSecret } from '../src/agent/config.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { createCgroup, type TestCgroup } from './support/cgroup.ts';
import { cli, createSandbox, s3StoreConfig, startCli, type Sandbox } from './support/cli.ts';
import { daemonSection, startDaemon, writeTokens } from './support/daemon.ts';
import { connect, createDatabase, mariadbServer, rows, runSql } from './support/mysql.ts';
import { startRedis, type TestRedis } from './support/redis.ts';
import { createTestBucket } from './support/s3.ts';
import { s3TestServer } from './support/servers.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A file with exactly `mode` (writeFile's mode is masked by the umask). */
async function secretFile(file: string, content: string, mode: number): Promise<string> {
  await writeFile(file, content);
  await chmod(file, mode);
  return file;
}

describe('secret and token files: private to their owner, not empty, or refused', () => {
  let sandbox: Sandbox;
  beforeAll(async () => {
    sandbox = await createSandbox();
  });
  afterAll(async () => {
    await sandbox?.cleanup();
  });

  it.each([0o644, 0o640, 0o604, 0o660, 0o620, 0o610, 0o601])('mode %o → E_SECRET_UNAVAILABLE naming the file, its mode and chmod 600', async (mode) => {
    const file = await secretFile(path.join(sandbox.dir, `pw-${mode.toString(8)}`), 'hunter2-but-longer\n', mode);
    await expect(readSecret({ file }, 'services.db.password')).rejects.toMatchObject({
      code: 'E_SECRET_UNAVAILABLE',
      message: `services.db.password: secret file ${file} is accessible by group or others (mode 0${mode.toString(8)}); a secret must be private to its owner: chmod 600 ${file}`,
    });
  });

  it('0600 and 0400 are read (trimmed); a symlink is followed and its target’s mode counts', async () => {
    const file = await secretFile(path.join(sandbox.dir, 'pw-ok'), '  s3cret-value \n', 0o600);
    expect(await readSecret({ file }, 'x')).toBe('s3cret-value');
    await chmod(file, 0o400);
    expect(await readSecret({ file }, 'x')).toBe('s3cret-value');
    const link = path.join(sandbox.dir, 'pw-link'); // a symlink's own mode is 0777
    await symlink(file, link);
    expect(await readSecret({ file: link }, 'x')).toBe('s3cret-value');
    await chmod(file, 0o644);
    await expect(readSecret({ file: link }, 'x')).rejects.toThrow(`secret file ${link} is accessible by group or others (mode 0644)`);
  });

  it('an empty or blank secret file is refused, not taken for "no password"', async () => {
    for (const content of ['', '\n', '  \n\n']) {
      const file = await secretFile(path.join(sandbox.dir, 'pw-empty'), content, 0o600);
      await expect(readSecret({ file }, 'services.cache.password')).rejects.toMatchObject({
        code: 'E_SECRET_UNAVAILABLE',
        message: `services.cache.password: secret file ${file} is empty: write the secret into it, or remove the setting`,
      });
    }
  });

  it('a file owned by another user, a directory and a missing file are refused naming the file', async () => {
    const foreign = await secretFile(path.join(sandbox.dir, 'pw-foreign'), 'value', 0o600);
    await chown(foreign, 4242, 4242);
    await expect(readSecret({ file: foreign }, 'x')).rejects.toThrow(`secret file ${foreign} is owned by uid 4242, neither root nor the agent's user`);
    const dir = path.join(sandbox.dir, 'pw-dir');
    await mkdir(dir, { mode: 0o700 });
    await expect(readSecret({ file: dir }, 'x')).rejects.toThrow(`secret file ${dir} is not a regular file`);
    const missing = path.join(sandbox.dir, 'nope');
    await expect(readSecret({ file: missing }, 'x')).rejects.toMatchObject({ code: 'E_SECRET_UNAVAILABLE', message: `x: cannot read secret file ${missing}: ENOENT` });
  });

  it('--token-file readable by others → exit 3 before any connection; 0600 is used', async () => {
    const file = await secretFile(path.join(sandbox.dir, 'cli.token'), `${randomBytes(18).toString('base64url')}\n`, 0o644);
    const refused = await cli(['--json', '--remote', 'ws://127.0.0.1:1/v1', '--token-file', file, 'status']);
    expect(refused.exitCode).toBe(3);
    expect(JSON.parse(refused.stdout)).toMatchObject({ error: { code: 'E_SECRET_UNAVAILABLE' } });
    expect(refused.stderr).toContain(`chmod 600 ${file}`);
    await chmod(file, 0o600);
    // Accepted: the next thing to fail is the connection (nothing listens on port 1).
    expect((await cli(['--remote', 'ws://127.0.0.1:1/v1', '--token-file', file, 'status'])).exitCode).toBe(14);
  });

  it('the daemon does not start with a token file readable by its group, nor with an empty one (exit 3)', async () => {
    const tokens = await writeTokens(sandbox);
    await sandbox.writeConfig({ daemon: daemonSection(tokens), environments: {} });
    await chmod(tokens.viewerFile, 0o640);
    await expect(startDaemon(sandbox.configPath)).rejects.toThrow(/exited 3 before listening[\s\S]*daemon\.tokens: secret file \S+viewer\.token is accessible by group or others \(mode 0640\)/);
    await secretFile(tokens.viewerFile, '# rotated: the new token goes here\n', 0o600);
    await expect(startDaemon(sandbox.configPath)).rejects.toThrow(/exited 3 before listening[\s\S]*daemon\.tokens: \S+viewer\.token holds no token/);
  });

  it('the daemon does not start with a TLS private key readable by others, nor an empty one (exit 3, E_SECRET_UNAVAILABLE naming it); 0600 starts; the certificate may be 0644', async () => {
    const tokens = await writeTokens(sandbox);
    const dir = path.join(sandbox.dir, 'tls');
    await mkdir(dir);
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    await execa('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    await chmod(cert, 0o644); // public: not a secret file
    const pem = await readFile(key, 'utf8');
    await sandbox.writeConfig({ daemon: daemonSection(tokens, { tls: { cert, key } }), environments: {} });
    /** The daemon's start-up failure (its exit code and output), or a test failure if it listened. */
    const refusedStart = async (): Promise<string> => {
      let daemon;
      try {
        daemon = await startDaemon(sandbox.configPath);
      } catch (error) {
        return (error as Error).message;
      }
      await daemon.stop();
      throw new Error('the daemon started');
    };

    await secretFile(key, pem, 0o644);
    const readable = await refusedStart();
    expect(readable).toMatch(/^daemon exited 3[ :]/);
    expect(readable).toContain(`error [E_SECRET_UNAVAILABLE]: daemon.tls.key: secret file ${key} is accessible by group or others (mode 0644); a secret must be private to its owner: chmod 600 ${key}`);
    await secretFile(key, '\n', 0o600);
    const empty = await refusedStart();
    expect(empty).toMatch(/^daemon exited 3[ :]/);
    expect(empty).toContain(`error [E_SECRET_UNAVAILABLE]: daemon.tls.key: secret file ${key} is empty`);

    await secretFile(key, pem, 0o600);
    const daemon = await startDaemon(sandbox.configPath);
    try {
      const health = await execa('curl', ['-s', '--cacert', cert, `https://127.0.0.1:${daemon.port}/healthz`]);
      expect(JSON.parse(health.stdout)).toMatchObject({ status: 'ok' });
    } finally {
      await daemon.stop();
    }
  });
});

interface Hit {
  pid: number;
  program: string;
  where: 'environ' | 'cmdline';
  secret: string;
}

/**
 * Reads /proc/PID/environ and /proc/PID/cmdline of every process, every few ms, and records
 * where any secret shows up. The secrets are made for this test, so no other process on the
 * host (other test runs included) can hold them by chance. Also records the names of the
 * agent's descendants, to show the sweep saw its children at all.
 */
function startSampler(secrets: Record<string, string | Buffer>, agent?: number) {
  const hits: Hit[] = [];
  const descendants = new Map<number, string>();
  // An agent already running (a daemon) is named before the first sweep, which runs at once.
  let agentPid: number | undefined = agent;
  let agentCmdline: Buffer | undefined;
  let agentEnvironHeldSecrets = false;
  let sweeps = 0;
  let running = true;
  const needles = Object.entries(secrets).map(([name, value]) => [name, Buffer.from(value)] as const);
  const read = (file: string) => {
    try {
      return readFileSync(file);
    } catch {
      return undefined; // gone meanwhile, or a kernel thread
    }
  };
  const sweep = () => {
    const parents = new Map<number, number>();
    const programs = new Map<number, string>();
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      const stat = read(`/proc/${pid}/stat`)?.toString();
      const environ = read(`/proc/${pid}/environ`);
      const cmdline = read(`/proc/${pid}/cmdline`);
      if (stat === undefined) continue;
      // The program's name: node's comm is its thread's ("MainThread"), so the script's.
      const argv = cmdline?.toString().split('\0') ?? [];
      const program = path.basename(argv[0] === process.execPath ? (argv[1] ?? '') : (argv[0] ?? ''));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      parents.set(pid, ppid);
      programs.set(pid, program);
      if (pid === agentPid) agentCmdline ??= cmdline;
      // Between fork and exec a child is still a copy of the agent (same memory, same
      // environment, same command line): that is the agent, not a child that inherited anything.
      const agent = pid === agentPid || (ppid === agentPid && cmdline !== undefined && agentCmdline?.equals(cmdline) === true);
      for (const [name, needle] of needles) {
        if (cmdline?.includes(needle)) hits.push({ pid, program, where: 'cmdline', secret: name });
        if (environ?.includes(needle)) {
          // The agent's own environment holds them by the operator's choice ({ env: VAR }).
          if (agent) agentEnvironHeldSecrets = true;
          else hits.push({ pid, program, where: 'environ', secret: name });
        }
      }
    }
    for (const [pid, ppid] of parents) {
      for (let up = ppid, depth = 0; up > 1 && depth < 20; up = parents.get(up) ?? 0, depth++) {
        if (up === agentPid) {
          const program = programs.get(pid);
          if (program) descendants.set(pid, program);
          break;
        }
      }
    }
    sweeps++;
  };
  const loop = (async () => {
    while (running) {
      sweep();
      await sleep(2);
    }
  })();
  return {
    hits,
    descendants,
    sweeps: () => sweeps,
    agentEnvironHeldSecrets: () => agentEnvironHeldSecrets,
    setAgent(pid: number | undefined) {
      agentPid = pid;
    },
    async stop() {
      running = false;
      await loop;
    },
  };
}

describe('no process the agent starts sees a secret, during a backup and a restore', () => {
  const s3 = s3TestServer();
  const mysqlServer = mariadbServer();
  const radosgwAdmin = (...args: string[]) => execa('radosgw-admin', ['-c', path.join(s3.dir, 'ceph.conf'), ...args]);
  let sandbox: Sandbox;
  let root: Connection;
  let redis: TestRedis;
  let cgroup: TestCgroup;
  let db: string;
  let passwordFile: string;
  let config: Record<string, unknown>;
  const mysqlUser = `sec_${randomBytes(4).toString('hex')}`;
  /** The manifest MAC key of `keys:`: its bytes, and its hex as the key file holds it. */
  const macKey = randomBytes(32);
  const secrets = {
    s3AccessKey: '',
    s3SecretKey: '',
    mysqlPassword: `my-${randomBytes(12).toString('hex')}`,
    redisPassword: `rd-${randomBytes(12).toString('hex')}`,
    macKeyHex: macKey.toString('hex'),
    macKey,
  };
  const env = () => ({ SECRETS_TEST_S3_ACCESS: secrets.s3AccessKey, SECRETS_TEST_S3_SECRET: secrets.s3SecretKey, SECRETS_TEST_REDIS: secrets.redisPassword });
  const args = () => ['--config', sandbox.configPath];

  beforeAll(async () => {
    sandbox = await createSandbox();
    // A key pair of our own for the test user: generated by RGW, so it is on no command line.
    const user = JSON.parse((await radosgwAdmin('key', 'create', '--uid=storage-agent-test', '--key-type=s3', '--gen-access-key', '--gen-secret')).stdout) as {
      keys: { access_key: string; secret_key: string }[];
    };
    const mine = user.keys.find((k) => k.access_key !== s3.accessKeyId)!;
    secrets.s3AccessKey = mine.access_key;
    secrets.s3SecretKey = mine.secret_key;
    const bucket = await createTestBucket();

    root = await connect(mysqlServer, { root: true });
    db = await createDatabase(root, 'secrets');
    await runSql(root, `CREATE TABLE \`${db}\`.t (n INT PRIMARY KEY); INSERT INTO \`${db}\`.t SELECT seq FROM \`${db}\`.seq_1_to_200000`);
    for (const host of ['127.0.0.1', 'localhost']) {
      await root.query(`CREATE USER ?@? IDENTIFIED BY ?`, [mysqlUser, host, secrets.mysqlPassword]);
      await root.query(`GRANT ALL PRIVILEGES ON *.* TO ?@?`, [mysqlUser, host]);
    }
    passwordFile = await secretFile(path.join(sandbox.dir, 'mysql-password'), `${secrets.mysqlPassword}\n`, 0o600);

    // The password is set after the start, so that redis-server's own command line does not hold it.
    redis = await startRedis();
    const client = redis.client();
    await client.set('k', 'v');
    await client.config('SET', 'requirepass', secrets.redisPassword);

    const uploads = path.join(sandbox.dir, 'uploads');
    await mkdir(uploads);
    await writeFile(path.join(uploads, 'a'), randomBytes(1 << 20));
    cgroup = await createCgroup('v2'); // a freeze: the freeze guard is one of the children
    const keyFile = await secretFile(path.join(sandbox.dir, 'manifest.key'), `${secrets.macKeyHex}\n`, 0o600);
    config = {
      keys: [{ id: 'secrets-test', file: keyFile, sign: true }],
      defaultStore: 'rgw',
      // The test RGW with this test's own key pair, from the agent's environment.
      stores: { rgw: s3StoreConfig(bucket, { accessKeyId: { env: 'SECRETS_TEST_S3_ACCESS' }, secretAccessKey: { env: 'SECRETS_TEST_S3_SECRET' } }) },
      environments: {
        app: {
          freeze: { cgroups: [cgroup.path] },
          services: {
            uploads: { kind: 'files', path: uploads },
            db: { kind: 'mysql', host: mysqlServer.host, port: mysqlServer.port, user: mysqlUser, password: { file: passwordFile }, databases: [db] },
            cache: { kind: 'redis', host: '127.0.0.1', port: redis.port, password: { env: 'SECRETS_TEST_REDIS' } },
          },
        },
      },
    };
    await sandbox.writeConfig(config);
  });

  afterAll(async () => {
    await cgroup?.remove();
    await redis?.stop();
    if (root) {
      for (const host of ['127.0.0.1', 'localhost']) await root.query('DROP USER IF EXISTS ?@?', [mysqlUser, host]).catch(() => {});
      await root.query(`DROP DATABASE IF EXISTS \`${db}\``).catch(() => {});
      await root.end();
    }
    if (secrets.s3AccessKey) await radosgwAdmin('key', 'rm', '--uid=storage-agent-test', '--key-type=s3', `--access-key=${secrets.s3AccessKey}`).catch(() => {});
    await sandbox?.cleanup();
  });

  /**
   * Runs the CLI with the secrets in its environment while the sampler sweeps /proc; with
   * `daemon`, runs it with --remote instead (no secret in its environment: the daemon, which
   * holds them, is the agent) and looks for `more` secrets too.
   */
  async function sampled(
    command: string[],
    daemon?: { pid: number; url: string; tokenFile: string; more: Record<string, string | Buffer> },
  ): Promise<{ result: { exitCode?: number; stdout: unknown; stderr: unknown }; sampler: ReturnType<typeof startSampler> }> {
    const sampler = startSampler({ ...secrets, ...daemon?.more }, daemon?.pid);
    if (daemon) {
      const result = await cli(['--json', '--remote', daemon.url, '--token-file', daemon.tokenFile, ...command]);
      await sampler.stop();
      return { result, sampler };
    }
    const child = startCli(['--json', ...args(), ...command], { env: env() });
    sampler.setAgent(child.pid);
    const result = await child;
    await sampler.stop();
    return { result, sampler };
  }

  /** The sweeps worked (they saw the secrets where they are, and the agent's children) and found them nowhere else. */
  function expectNoLeak(backup: ReturnType<typeof startSampler>, restore: ReturnType<typeof startSampler>): void {
    for (const sampler of [backup, restore]) {
      expect(sampler.agentEnvironHeldSecrets()).toBe(true);
      expect(sampler.sweeps()).toBeGreaterThan(10);
      expect(sampler.hits).toEqual([]);
    }
    const children = (sampler: ReturnType<typeof startSampler>) => new Set(sampler.descendants.values());
    expect([...children(backup)]).toEqual(expect.arrayContaining(['guard.ts', 'mysqldump']));
    expect([...children(restore)]).toEqual(expect.arrayContaining(['guard.ts', 'mysql', 'zstd']));
  }

  it('backup, then restore over it (with its safety backup): the secrets are in the agent’s environment only', async () => {
    const backup = await sampled(['backup', 'create', 'app']);
    expect(backup.result.exitCode, String(backup.result.stderr)).toBe(0);
    const { id, mac } = JSON.parse(String(backup.result.stdout)) as Manifest;
    expect(mac?.keyId).toBe('secrets-test'); // signed with the key file, whose hex is among the secrets
    await runSql(root, `DELETE FROM \`${db}\`.t`);
    const restore = await sampled(['backup', 'restore', 'app', id, '--yes']);
    expect(restore.result.exitCode, String(restore.result.stderr)).toBe(0);
    // Rows enough that mysqldump, mysql and zstd run long enough for the sweep to see them.
    expect(await rows(root, `SELECT COUNT(*) AS n FROM \`${db}\`.t`)).toEqual([{ n: 200000 }]);

    expectNoLeak(backup.sampler, restore.sampler);
  });

  it('a daemon runs the backup and the restore (--remote): no process sees a secret, its tokens or its default manifest key either', async () => {
    const tokens = await writeTokens(sandbox);
    // No keys: the daemon signs with the default key it makes in the state dir at its start.
    const { keys: _keys, ...withoutKeys } = config;
    await sandbox.writeConfig({ ...withoutKeys, daemon: daemonSection(tokens) });
    const daemon = await startDaemon(sandbox.configPath, { env: env() });
    try {
      const defaultKeyHex = (await readFile(path.join(sandbox.stateDir, 'keys', 'default.key'), 'utf8')).trim();
      expect(defaultKeyHex).toMatch(/^[0-9a-f]{64}$/);
      const remote = {
        pid: daemon.child.pid!,
        url: daemon.url,
        tokenFile: tokens.adminFile,
        more: { adminToken: tokens.admin, viewerToken: tokens.viewer, defaultKeyHex, defaultKey: Buffer.from(defaultKeyHex, 'hex') },
      };
      const backup = await sampled(['backup', 'create', 'app'], remote);
      expect(backup.result.exitCode, String(backup.result.stderr)).toBe(0);
      const manifest = JSON.parse(String(backup.result.stdout)) as Manifest;
      expect(manifest.mac?.keyId).toMatch(/^default-/);
      await runSql(root, `DELETE FROM \`${db}\`.t`);
      const restore = await sampled(['backup', 'restore', 'app', manifest.id, '--yes'], remote);
      expect(restore.result.exitCode, String(restore.result.stderr)).toBe(0);
      expect(await rows(root, `SELECT COUNT(*) AS n FROM \`${db}\`.t`)).toEqual([{ n: 200000 }]);

      // The jobs ran in the daemon: its children are what the sweep saw.
      expectNoLeak(backup.sampler, restore.sampler);
    } finally {
      await daemon.stop();
      await sandbox.writeConfig(config);
    }
  });

  it('a mysql password file readable by others fails the backup (exit 3) naming the file', async () => {
    await chmod(passwordFile, 0o644);
    try {
      const result = await cli(['--json', ...args(), 'backup', 'create', 'app'], { env: env() });
      expect(result.exitCode).toBe(3);
      expect(JSON.parse(result.stdout)).toMatchObject({ error: { code: 'E_SECRET_UNAVAILABLE' } });
      expect(result.stderr).toContain(`services.db.password: secret file ${passwordFile} is accessible by group or others (mode 0644)`);
    } finally {
      await chmod(passwordFile, 0o600);
    }
  });
});
