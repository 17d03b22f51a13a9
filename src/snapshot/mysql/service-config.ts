import { z } from 'zod';
import { duration, secret, serverAddress } from '../../config-fields.ts';

/** A mysql service as the config gives it (environments.<env>.services.<name>): what the driver runs and reads. */
export const mysqlServiceSchema = z
  .object({
    kind: z.literal('mysql'),
    ...serverAddress,
    port: z.number().int().min(1).max(65535).default(3306),
    user: z.string().min(1),
    password: secret.optional(),
    databases: z.array(z.string().regex(/^[A-Za-z0-9_$]{1,48}$/, 'must be a database name of 1-48 characters (A-Z, a-z, 0-9, _ and $)')).min(1),
    /** FLUSH TABLES WITH READ LOCK waits at most this long for other locks (lock_wait_timeout). */
    lockWaitTimeout: duration.default(5_000),
    /** A query running longer than this makes the consistent capture fail rather than stall writers behind FTWRL. */
    longQueryThreshold: duration.default(10_000),
  })
  .strict();
export type MysqlServiceConfig = z.infer<typeof mysqlServiceSchema>;
