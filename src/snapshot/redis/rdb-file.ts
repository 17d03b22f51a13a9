import type { FileHandle } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { execa } from 'execa';
import { childEnv } from '../../child-env.ts';
import { AgentError, throwIfCancelled } from '../../errors.ts';

/** An RDB file starts with "REDIS" and four ASCII digits: the format version. */
export async function readRdbVersion(handle: FileHandle): Promise<number | undefined> {
  const header = Buffer.alloc(9);
  const { bytesRead } = await handle.read(header, 0, 9, 0);
  if (bytesRead < 9 || header.toString('latin1', 0, 5) !== 'REDIS') return undefined;
  const digits = header.toString('latin1', 5, 9);
  return /^\d{4}$/.test(digits) ? Number(digits) : undefined;
}

/**
 * The newest RDB format a Redis version loads (rdb.h RDB_VERSION per release); undefined when
 * the version is newer than this table, in which case the target itself is the judge.
 */
export function maxRdbVersion(redisVersion: string): number | undefined {
  const [major = 0, minor = 0] = redisVersion.split('.').map(Number);
  const table: [number, number, number][] = [
    [7, 4, 12],
    [7, 2, 11],
    [7, 0, 10],
    [5, 0, 9],
    [4, 0, 8],
    [3, 2, 7],
    [2, 6, 6],
  ];
  if (major > 7 || (major === 7 && minor > 4)) return undefined;
  for (const [maj, min, version] of table) if (major > maj || (major === maj && minor >= min)) return version;
  return 6;
}

export interface CheckedRdb {
  bytes: number;
  version: number;
}

/**
 * Checks a received RDB before any target sees it: the header, the target's support for its
 * format version, then `redis-check-rdb` (redis-tools), which reads every object and the
 * file's CRC64 trailer. Fails with E_ARCHIVE_CORRUPT / E_RESTORE_FAILED naming the problem.
 */
export async function checkRdb(file: string, targetVersion: string | undefined, signal: AbortSignal): Promise<CheckedRdb> {
  const handle = await open(file, 'r');
  let bytes: number;
  let version: number | undefined;
  try {
    bytes = (await handle.stat()).size;
    version = await readRdbVersion(handle);
  } finally {
    await handle.close();
  }
  if (version === undefined) throw new AgentError('E_ARCHIVE_CORRUPT', `the backup is not an RDB file (no "REDIS<version>" header in its ${bytes} bytes)`);
  const max = targetVersion === undefined ? undefined : maxRdbVersion(targetVersion);
  if (max !== undefined && version > max) {
    throw new AgentError(
      'E_RESTORE_FAILED',
      `the backup is an RDB of format version ${version}, which the target's Redis ${targetVersion} cannot load (it reads up to version ${max}); restore into a Redis at least as new as the one backed up`,
    );
  }
  throwIfCancelled(signal);
  const check = await execa('redis-check-rdb', [file], { reject: false, all: true, stdin: 'ignore', cancelSignal: signal, env: childEnv(), extendEnv: false });
  throwIfCancelled(signal);
  if (check.failed) {
    const code = (check as { code?: string }).code;
    if (code === 'ENOENT') {
      throw new AgentError('E_RESTORE_FAILED', 'redis-check-rdb was not found: install it (Debian: apt-get install redis-tools) so a backup is verified before it replaces data');
    }
    const lines = String(check.all ?? '')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => /error|unexpected|can't|invalid|wrong|corrupt|additional info/i.test(l));
    throw new AgentError('E_ARCHIVE_CORRUPT', `redis-check-rdb rejected the backup's RDB: ${lines.slice(0, 4).join('; ') || `exit code ${check.exitCode}`}`, {
      details: { rdbVersion: version, bytes },
    });
  }
  return { bytes, version };
}
