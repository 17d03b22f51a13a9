import path from 'node:path';
import { z } from 'zod';
import { parseDuration } from './units.ts';

/**
 * The config's field types that more than one layer's schema uses: the agent's config
 * (agent/config.ts) composes the schemas of the services' own settings, which each driver
 * defines beside itself (snapshot/mysql/service-config.ts, snapshot/redis/service-config.ts).
 */

/**
 * A duration always carries its unit: a bare number would be seconds to some readers and
 * milliseconds to others (`shutdownGrace: 60000` read as seconds is 16.7 h).
 */
export const duration = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const ms = typeof value === 'string' ? parseDuration(value) : undefined;
  if (ms === undefined) {
    const message =
      typeof value === 'number'
        ? `must be a duration with its unit, such as "${value}s" or "${value}ms": a bare number is ambiguous`
        : 'must be a duration such as "30s", "5m" or "1h"';
    ctx.addIssue({ code: 'custom', message });
    return z.NEVER;
  }
  return ms;
});

/** Secrets never sit in the config itself: they are read from a file or the environment. */
export const secret = z.union([
  z.object({ file: z.string().min(1) }).strict(),
  z.object({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name') }).strict(),
]);
export type SecretRef = z.infer<typeof secret>;

export const absolutePath = z.string().refine((p) => path.isAbsolute(p), 'must be an absolute path');

/** How to reach a server: TCP host/port, or a unix socket (which wins when both are given). */
export const serverAddress = {
  host: z.string().min(1).default('127.0.0.1'),
  port: z.number().int().min(1).max(65535),
  socket: absolutePath.optional(),
};
