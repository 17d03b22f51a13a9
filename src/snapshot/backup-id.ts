import { randomBytes } from 'node:crypto';

const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/**
 * A backup id sorts by creation time as a plain string (UTC, millisecond precision, fixed
 * width) and is unique thanks to 8 random characters (36^8 ≈ 2.8e12 per millisecond).
 * It is URL-safe and needs no escaping in an object key.
 */
export function newBackupId(now: Date = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace('.', ''); // 20261122T034600123Z
  const random = randomBytes(8);
  let suffix = '';
  for (const byte of random) suffix += ALPHABET[byte % ALPHABET.length];
  return `${stamp}-${suffix}`;
}

/** The creation time encoded in an id (ids are validated before this is called). */
export function backupIdTime(id: string): Date {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{3})Z/.exec(id);
  if (!m) return new Date(Number.NaN);
  const [, y, mo, d, h, mi, s, ms] = m;
  return new Date(`${y}-${mo}-${d}T${h}:${mi}:${s}.${ms}Z`);
}
