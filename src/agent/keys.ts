import { createHash, randomBytes } from 'node:crypto';
import { link, lstat, mkdir, open, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { AgentError, stateDirWriteError } from '../errors.ts';
import { readSecretFile } from '../secret-file.ts';
import type { KeyRing, ManifestKey } from '../snapshot/manifest-mac.ts';
import type { Config } from './config.ts';

/** Shorter keys are refused: 32 bytes is HMAC-SHA256's own block of strength. */
const MIN_KEY_BYTES = 32;

/** The key ring of each config, read once (a daemon's SIGHUP brings a new config, read again). */
const rings = new WeakMap<Config, Promise<KeyRing>>();

/**
 * The manifest MAC keys of a config (issue #10): the files under `keys:`, or with none
 * configured the node's own `<stateDir>/keys/default.key`, created at first start. Every agent
 * start loads them (recoverAtStart), so a bad key file fails the first command, not a restore
 * hours later.
 */
export function loadKeyRing(config: Config, logger?: Logger): Promise<KeyRing> {
  let ring = rings.get(config);
  if (!ring) {
    ring = readRing(config, logger);
    ring.catch(() => rings.delete(config)); // a fixed file is read by the next call
    rings.set(config, ring);
  }
  return ring;
}

async function readRing(config: Config, logger: Logger | undefined): Promise<KeyRing> {
  if (!config.keys) {
    const key = await defaultKey(config.stateDir, logger);
    return { signing: key, verifying: new Map([[key.id, key.secret]]) };
  }
  const verifying = new Map<string, Buffer>();
  let signing: ManifestKey | undefined;
  for (const [i, { id, file, sign }] of config.keys.entries()) {
    const secret = await readKeyFile(file, `keys[${i}] (${id})`);
    verifying.set(id, secret);
    if (sign) signing = { id, secret };
  }
  // The config's schema allows exactly one signing key.
  return { signing: signing!, verifying };
}

/**
 * A key file holds 32 or more random bytes as hex or base64 (whitespace around it ignored). It
 * is a secret like any other (secret-file.ts: private to its owner, or refused).
 */
async function readKeyFile(file: string, what: string): Promise<Buffer> {
  const text = (await readSecretFile(file, what)).trim();
  const secret = /^(?:[0-9a-fA-F]{2})+$/.test(text)
    ? Buffer.from(text, 'hex')
    : /^[A-Za-z0-9+/]+={0,2}$/.test(text) && text.length % 4 === 0
      ? Buffer.from(text, 'base64')
      : undefined;
  if (!secret || secret.length < MIN_KEY_BYTES) {
    throw new AgentError(
      'E_SECRET_UNAVAILABLE',
      `${what}: key file ${file} ${text ? `does not hold ${MIN_KEY_BYTES} or more bytes as hex or base64` : 'is empty'}: write a key into it, e.g. \`openssl rand -hex 32 > ${file}\``,
      { details: { file } },
    );
  }
  return secret;
}

/**
 * The node's own key when `keys:` is absent (fine for one node; a fleet configures one shared
 * key, README "Keys"). Written to a temp file and linked into place: link() never replaces an
 * existing file, so two processes starting at once end up with the same one key, and a key
 * once made is never overwritten. Its id is derived from its content, so the default keys of
 * two nodes never share an id (a manifest of the other node is then refused as signed by an
 * unknown key, never checked against the wrong one).
 */
async function defaultKey(stateDir: string, logger: Logger | undefined): Promise<ManifestKey> {
  const file = path.join(stateDir, 'keys', 'default.key');
  if (!(await lstat(file).catch(() => undefined))) await createKeyFile(stateDir, file, logger);
  const secret = await readKeyFile(file, 'the default manifest key');
  return { id: defaultKeyId(secret), secret };
}

async function createKeyFile(stateDir: string, file: string, logger: Logger | undefined): Promise<void> {
  const temp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    const handle = await open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(`${randomBytes(MIN_KEY_BYTES).toString('hex')}\n`);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await link(temp, file).then(
      () => logger?.info({ file }, 'created this node\'s manifest key (no keys: configured); the nodes of a fleet need one shared key: README "Keys"'),
      (error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST') throw error;
      },
    );
  } catch (error) {
    throw stateDirWriteError(error, stateDir, file);
  } finally {
    await rm(temp, { force: true });
  }
}

/** `default-` and 16 hex digits of a hash of the key: says nothing about the key itself. */
export function defaultKeyId(secret: Buffer): string {
  return `default-${createHash('sha256').update('storage-agent key id\n').update(secret).digest('hex').slice(0, 16)}`;
}
