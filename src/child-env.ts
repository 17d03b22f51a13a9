/**
 * The whole environment of every process the agent starts (zstd, redis-check-rdb, mysql,
 * mysqldump, fsfreeze, cp, btrfs, systemd-notify, the freeze guard). The agent's own
 * environment may hold secrets by the operator's choice (`{ env: VAR }` for S3 keys and
 * passwords), and a child's environment is readable in /proc/PID/environ for as long as it runs
 * and inherited by whatever it starts — so nothing is passed on but PATH, `LC_ALL=C` (messages
 * the agent parses, such as "Operation not supported", stay in English) and what the one child
 * needs (`extra`: NOTIFY_SOCKET for systemd-notify, the compile cache for the guard).
 *
 * Use with `extendEnv: false` (execa) or as `env` (node:child_process, which does not merge).
 * Worker threads are not children: they share this process's memory and /proc entry.
 */
export function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C', ...extra };
}
