#!/usr/bin/env bash
# A throw-away private MariaDB server for the integration tests.
#
# Usage: scripts/mariadb.sh install|start|stop|status|kill
#
#   install   apt-get mariadb-server and mariadb-client if missing, without
#             letting the package start Debian's own server (no systemd)
#   start     initialise a datadir in $MARIADB_DIR (or reuse the one there,
#             e.g. after `kill`: InnoDB recovers), start mariadbd on
#             127.0.0.1:$MARIADB_PORT, block until the agent user can log
#             in, then write and print $MARIADB_DIR/env
#             (MYSQL_HOST, MYSQL_PORT, MYSQL_USER, MYSQL_PASSWORD,
#             MYSQL_SOCKET). Already running: just prints the env.
#   stop      TERM the server by PID (KILL after 20 s), remove $MARIADB_DIR
#   status    exit 0 if the server runs and answers
#   kill      SIGKILL the server, keep the datadir (simulates a crash;
#             `start` brings it back on the same data)
#
# Environment: MARIADB_DIR (state dir, default /tmp/storage-agent-test-mariadb),
#              MARIADB_PORT (TCP port, default 13306).
#
# Privileges of the `agent` user (what a production grant needs):
#   backup only:  SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, RELOAD
#                 (FLUSH TABLES WITH READ LOCK), PROCESS (the processlist
#                 check, and mysqldump's tablespace query), REPLICATION CLIENT
#                 (SHOW MASTER STATUS, the binlog position). Dumping routines
#                 needs SELECT on mysql.proc (MariaDB): the global SELECT
#                 covers it.
#   restore adds: CREATE, DROP, ALTER, INSERT, INDEX, CREATE VIEW,
#                 CREATE ROUTINE, ALTER ROUTINE, EXECUTE, REFERENCES, and
#                 SUPER or SET USER (MariaDB 10.5.2+: SET USER) to recreate
#                 views/routines/triggers/events whose DEFINER is another
#                 account; DELETE/UPDATE are not needed (the restore loads
#                 into fresh staging tables and swaps them in by RENAME).
#                 With binary logging on, creating triggers and stored functions
#                 also needs SUPER, or the server setting
#                 log_bin_trust_function_creators=1 (set here, as on most
#                 managed MySQL/MariaDB services).
#   point-in-time restore (pitr: on a mysql service) adds: REPLICATION SLAVE
#                 (the daemon streams the binary log as a replica would) and
#                 BINLOG REPLAY (the restore replays ROW events, BINLOG '...').
# The test user gets exactly those (global), not ALL.
set -euo pipefail
# shellcheck source=lib/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bootstrap.sh"

readonly MARIADB_DIR="${MARIADB_DIR:-/tmp/storage-agent-test-mariadb}"
readonly MARIADB_PORT="${MARIADB_PORT:-13306}"
readonly DATA_DIR="$MARIADB_DIR/data"
readonly SOCKET="$MARIADB_DIR/mysqld.sock"
readonly PID_FILE="$MARIADB_DIR/mariadbd.pid"
readonly LOG_FILE="$MARIADB_DIR/mariadbd.log"
readonly ENV_FILE="$MARIADB_DIR/env"
readonly MARKER="$MARIADB_DIR/.storage-agent-mariadb"
# Fixed test credentials: tests and benchmarks read them from $MARIADB_DIR/env.
readonly AGENT_USER="agent"
readonly AGENT_PASSWORD="storage-agent-test-db-pw-0001"
readonly TIMEOUT_S=60
readonly PACKAGES=(mariadb-server mariadb-client)
readonly GRANTS="SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, RELOAD, PROCESS, REPLICATION CLIENT,
  CREATE, DROP, ALTER, INSERT, UPDATE, DELETE, INDEX, CREATE VIEW, CREATE ROUTINE, ALTER ROUTINE, EXECUTE,
  REFERENCES, SET USER, REPLICATION SLAVE, BINLOG REPLAY"

log() { printf 'mariadb.sh: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# ---------------------------------------------------------------- install

install_packages() {
  apt_install "${PACKAGES[@]}"
}

# ---------------------------------------------------------------- process

# True while process $1 exists and is not a zombie (re-parented daemons may
# be reaped late; kill -0 alone would wait for the reaping, not the exit).
pid_running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != [ZX] ]]
}

# Prints the server's PID if it is alive; the executable is checked so a
# recycled PID of an unrelated process is never reported.
server_pid() {
  local pid exe
  [[ -r "$PID_FILE" ]] || return 1
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  case "${exe##*/}" in
    mariadbd | mysqld) pid_running "$pid" && printf '%s\n' "$pid" ;;
    *) return 1 ;;
  esac
}

# Sends signal $1, waits up to $2 tenths of a second, then SIGKILLs.
kill_server() {
  local sig="$1" tenths="$2" pid i
  pid="$(server_pid)" || {
    rm -f "$PID_FILE"
    return 0
  }
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < tenths; i++)); do
    pid_running "$pid" || break
    sleep 0.1
  done
  if pid_running "$pid"; then
    log "pid $pid ignored SIG$sig, killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_running "$pid" || break
      sleep 0.1
    done
  fi
  rm -f "$PID_FILE"
}

# ---------------------------------------------------------------- server

# Refuses to rm -rf a directory that this script did not create.
wipe_state_dir() {
  [[ "$MARIADB_DIR" == /?* && "$MARIADB_DIR" != *..* ]] || die "MARIADB_DIR must be an absolute path: $MARIADB_DIR"
  if [[ -d "$MARIADB_DIR" && -n "$(ls -A "$MARIADB_DIR")" && ! -e "$MARKER" ]]; then
    die "$MARIADB_DIR is not empty and was not made by mariadb.sh; not wiping it"
  fi
  rm -rf "$MARIADB_DIR"
}

server_options() {
  printf '%s\n' \
    --no-defaults \
    "--datadir=$DATA_DIR" \
    "--socket=$SOCKET" \
    "--pid-file=$PID_FILE" \
    "--log-error=$LOG_FILE" \
    --bind-address=127.0.0.1 \
    "--port=$MARIADB_PORT" \
    --user=root \
    --skip-name-resolve \
    --innodb-buffer-pool-size=256M \
    --innodb-log-file-size=128M \
    --innodb-flush-log-at-trx-commit=2 \
    --max-allowed-packet=256M \
    "--log-bin=$DATA_DIR/binlog" \
    --server-id=1 \
    --binlog-format=ROW \
    --log-bin-trust-function-creators=1 \
    --event-scheduler=OFF \
    --character-set-server=utf8mb4 \
    --collation-server=utf8mb4_unicode_ci \
    "--tmpdir=$MARIADB_DIR/tmp"
}

init_datadir() {
  mkdir -p "$MARIADB_DIR/tmp"
  touch "$MARKER"
  # Its temp tables in our own tmp, not the shared /tmp (two installs side by side, one per test
  # worker, once failed there). A datadir a failed install left is not one to restart on.
  if ! mariadb-install-db --no-defaults "--datadir=$DATA_DIR" --user=root \
    --auth-root-authentication-method=socket --skip-test-db "--tmpdir=$MARIADB_DIR/tmp" \
    >"$MARIADB_DIR/install-db.log" 2>&1; then
    rm -rf "$DATA_DIR"
    fail "mariadb-install-db failed"
  fi
}

spawn_server() {
  local options
  mapfile -t options < <(server_options)
  # Own session (a Ctrl-C of the caller does not reach it), stdio on the log
  # (a caller capturing our stdout does not wait for it), fd 9 (our lock)
  # closed. setsid execs in place, so $! is mariadbd itself.
  setsid mariadbd "${options[@]}" </dev/null >>"$LOG_FILE" 2>&1 9>&- &
  printf '%s\n' "$!" >"$PID_FILE.spawned"
}

# root over the socket (unix_socket auth: we are root).
root_sql() { mariadb --no-defaults "--socket=$SOCKET" -uroot --batch --skip-column-names "$@"; }

wait_for_server() {
  local pid
  pid="$(<"$PID_FILE.spawned")"
  until root_sql -e 'SELECT 1' >/dev/null 2>&1; do
    pid_running "$pid" || fail "mariadbd exited during start-up"
    ((SECONDS < DEADLINE)) || fail "mariadbd did not answer within ${TIMEOUT_S}s"
    sleep 0.1
  done
  # mariadbd writes its own pid file; ours is authoritative for `stop`.
  mv -f "$PID_FILE.spawned" "$PID_FILE"
}

create_agent_user() {
  root_sql <<EOF
CREATE USER IF NOT EXISTS '$AGENT_USER'@'127.0.0.1' IDENTIFIED BY '$AGENT_PASSWORD';
CREATE USER IF NOT EXISTS '$AGENT_USER'@'localhost' IDENTIFIED BY '$AGENT_PASSWORD';
GRANT $GRANTS ON *.* TO '$AGENT_USER'@'127.0.0.1';
GRANT $GRANTS ON *.* TO '$AGENT_USER'@'localhost';
EOF
}

agent_answers() {
  MYSQL_PWD="$AGENT_PASSWORD" mariadb --no-defaults -h127.0.0.1 "-P$MARIADB_PORT" \
    "-u$AGENT_USER" --connect-timeout=3 -e 'SELECT 1' >/dev/null 2>&1
}

# Prints the end of the server log so a failed start can be diagnosed from CI
# output alone, then exits non-zero (stopping a half-started server).
fail() {
  ((BASH_SUBSHELL == 0)) || exit 1
  trap - ERR
  log "$*"
  local f
  for f in "$MARIADB_DIR/install-db.log" "$LOG_FILE"; do
    [[ -s "$f" ]] || continue
    printf '\n==> %s <==\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
  if [[ -r "$PID_FILE.spawned" ]]; then
    local pid
    pid="$(<"$PID_FILE.spawned")"
    pid_running "$pid" && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PID_FILE.spawned"
  fi
  exit 1
}

print_env() {
  cat <<EOF | tee "$ENV_FILE"
MYSQL_HOST=127.0.0.1
MYSQL_PORT=$MARIADB_PORT
MYSQL_USER=$AGENT_USER
MYSQL_PASSWORD=$AGENT_PASSWORD
MYSQL_SOCKET=$SOCKET
EOF
}

# ---------------------------------------------------------------- commands

# Serialises concurrent invocations on one dir; the lock sits beside the dir
# since the dir itself gets wiped.
take_lock() {
  exec 9>"$MARIADB_DIR.lock"
  flock 9
}

cmd_start() {
  install_packages
  take_lock
  DEADLINE=$((SECONDS + TIMEOUT_S))
  if server_pid >/dev/null && [[ -s "$ENV_FILE" ]] && agent_answers; then
    print_env
    return 0
  fi
  kill_server TERM 200
  if [[ -e "$MARKER" && -d "$DATA_DIR/mysql" ]]; then
    log "restarting on the existing datadir $DATA_DIR"
  else
    wipe_state_dir
    mkdir -p "$MARIADB_DIR"
    init_datadir
  fi
  spawn_server
  wait_for_server
  create_agent_user
  agent_answers || fail "the agent user cannot log in over TCP"
  log "MariaDB up on 127.0.0.1:$MARIADB_PORT after $((SECONDS - DEADLINE + TIMEOUT_S))s"
  print_env
}

cmd_stop() {
  take_lock
  kill_server TERM 200
  wipe_state_dir
}

cmd_kill() {
  take_lock
  kill_server KILL 50
}

cmd_status() {
  server_pid >/dev/null && agent_answers
}

main() {
  case "${1:-}" in
    install) install_packages ;;
    start)
      trap_errors
      cmd_start
      ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    kill) cmd_kill ;;
    *)
      sed -n '/^# Usage:/,/MARIADB_PORT (/s/^# \{0,1\}//p' "$0" >&2
      exit 2
      ;;
  esac
}

main "$@"
