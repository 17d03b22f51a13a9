import { z } from 'zod';
import { duration, secret, serverAddress } from '../../config-fields.ts';

/** A redis service as the config gives it (environments.<env>.services.<name>): what the driver runs and reads. */
export const redisServiceSchema = z
  .object({
    kind: z.literal('redis'),
    ...serverAddress,
    port: z.number().int().min(1).max(65535).default(6379),
    password: secret.optional(),
    /** How long a BGSAVE may take before the capture fails. */
    saveTimeout: duration.default(600_000),
    /** An RDB with function libraries (code) is refused at restore unless `keep` (issue #10). */
    functions: z.enum(['refuse', 'keep']).default('refuse'),
  })
  .strict();
export type RedisServiceConfig = z.infer<typeof redisServiceSchema>;
