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
    /**
     * Point-in-time restore (docs/pitr.md): the daemon streams the server's binary log into the
     * environment's store; a restore can then go to any second from the oldest base backup kept
     * for the window to the newest event stored.
     */
    pitr: z
      .object({
        /** How far back a restore can go: binlog and the base backups it needs are kept this long. */
        window: duration.refine((ms) => ms >= 3_600_000, 'must be at least 1h'),
        /** The growing binlog file's new bytes are stored at least this often: the RPO. */
        flushEvery: duration.refine((ms) => ms >= 1_000, 'must be at least 1s').default(5_000),
        /** The streamer's server id as a replica (--connection-server-id): distinct from every real replica's. */
        serverId: z.number().int().min(1).max(4_294_967_295).default(4_193_000_001),
      })
      .strict()
      .optional(),
  })
  .strict();
export type MysqlServiceConfig = z.infer<typeof mysqlServiceSchema>;
