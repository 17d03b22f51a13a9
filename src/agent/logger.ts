import { pino, type DestinationStream, type Logger } from 'pino';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * pino JSON, one line per job phase. Secrets should never reach a log line in the first place;
 * redaction is the second guard for fields that could carry one.
 */
export function createLogger(level: string, destination: DestinationStream | number = 1): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: ['*.password', '*.secretAccessKey', '*.accessKeyId', '*.token', '*.authorization', 'password', 'token', 'secretAccessKey', 'authorization'],
        censor: '[redacted]',
      },
    },
    typeof destination === 'number' ? pino.destination({ fd: destination, sync: true }) : destination,
  );
}
