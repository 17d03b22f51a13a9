import { AgentError } from '../errors.ts';

/**
 * Names that become object keys and paths are checked against strict patterns first, so a
 * name can never smuggle a `/`, `..` or control character into a key or a path.
 */
const NAME = /^[a-z0-9](?:[a-z0-9_-]{0,62})$/;
/** Backup ids: see backup-id.ts (time-sortable, URL-safe). */
const BACKUP_ID = /^[0-9]{8}T[0-9]{6}(?:[0-9]{3})?Z-[a-z0-9]{6,12}$/;

export type NameKind = 'environment' | 'element' | 'node' | 'backup id';

export function checkName(kind: Exclude<NameKind, 'backup id'>, value: unknown): string {
  if (typeof value === 'string' && NAME.test(value)) return value;
  throw new AgentError(
    'E_INVALID_NAME',
    `invalid ${kind} name ${JSON.stringify(value)}: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit`,
    { details: { kind, value } },
  );
}

export function checkBackupId(value: unknown): string {
  if (typeof value === 'string' && BACKUP_ID.test(value)) return value;
  throw new AgentError(
    'E_INVALID_NAME',
    `invalid backup id ${JSON.stringify(value)}: ids look like 20261122T034600123Z-k3j9x2ab (see 'backup list')`,
    { details: { kind: 'backup id', value } },
  );
}

export const namePattern = NAME;
export const backupIdPattern = BACKUP_ID;
