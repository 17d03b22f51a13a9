#!/usr/bin/env bash
# A throw-away single-node Ceph RGW (S3 server) for the integration tests.
#
# Usage: scripts/rgw.sh install|start|stop|status|stop-gateway|start-gateway
#
#   install        apt-get the Ceph packages if any is missing (quiet otherwise)
#   start          start 1 mon + 1 osd + radosgw, block until a signed S3
#                  request works, then write and print $RGW_DIR/env
#                  (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION)
#   stop           kill every daemon of this cluster by PID, remove $RGW_DIR
#   stop-gateway   SIGKILL radosgw only (simulates S3 going away)
#   start-gateway  start radosgw again, block until S3 answers
#   status         exit 0 if all daemons run and S3 answers a signed request
#
# Environment: RGW_DIR (state dir, default /tmp/storage-agent-rgw),
#              RGW_PORT (S3 port, default 7480),
#              RGW_MON_PORT (monitor port, default RGW_PORT+1).
#
# Why a real Ceph and not a mock: the agent's retry/multipart code has to be
# proven against the server it will meet in production, quirks included.
# Everything lives in RGW_DIR and is addressed by PID, so several clusters
# (different RGW_DIR/RGW_PORT) can run side by side and /etc/ceph is never
# touched.
set -euo pipefail
# shellcheck source=lib/bootstrap.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bootstrap.sh"

readonly RGW_DIR="${RGW_DIR:-/tmp/storage-agent-rgw}"
readonly RGW_PORT="${RGW_PORT:-7480}"
readonly RGW_MON_PORT="${RGW_MON_PORT:-$((RGW_PORT + 1))}"
readonly CONF="$RGW_DIR/ceph.conf"
readonly MARKER="$RGW_DIR/.storage-agent-rgw"
readonly LOG_DIR="$RGW_DIR/log"
readonly ENV_FILE="$RGW_DIR/env"
# Fixed test credentials: tests and benchmarks read them from $RGW_DIR/env.
readonly S3_ACCESS_KEY="STORAGEAGENTTEST0001"
readonly S3_SECRET_KEY="storage-agent-test-secret-0000000000000000"
readonly S3_REGION="us-east-1"
readonly S3_ENDPOINT="http://127.0.0.1:$RGW_PORT"
readonly TIMEOUT_S=60
readonly PACKAGES=(ceph-mon ceph-osd radosgw ceph-common)
# Pre-created so radosgw does not create them one by one at start-up (and
# at the first write), each creation costing a paxos round trip.
readonly RGW_POOLS=(.rgw.root default.rgw.control default.rgw.meta
  default.rgw.log default.rgw.buckets.index default.rgw.buckets.data
  default.rgw.buckets.non-ec)

log() { printf 'rgw.sh: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# ---------------------------------------------------------------- install

install_packages() {
  apt_install "${PACKAGES[@]}"
}

# ---------------------------------------------------------------- processes

pid_file() { printf '%s/%s.pid' "$RGW_DIR" "$1"; }

# True while process $1 exists and is not a zombie. Our daemons are
# re-parented to PID 1, which here may reap them late; kill -0 alone would
# wait for the reaping, not for the exit.
pid_running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # the state letter follows "(comm) "
  [[ "${stat:0:1}" != [ZX] ]]
}

# Prints the PID of daemon $1 (mon|osd|rgw) if it is alive. The executable is
# checked too, so a recycled PID of an unrelated process is never reported.
daemon_pid() {
  local file pid exe
  file="$(pid_file "$1")"
  [[ -r "$file" ]] || return 1
  pid="$(<"$file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  case "$1:${exe##*/}" in
    mon:ceph-mon | osd:ceph-osd | rgw:radosgw) printf '%s\n' "$pid" ;;
    *) return 1 ;;
  esac
}

# Runs "$@" in the background as daemon $1, detached from the caller: its own
# session (Ctrl-C in the caller's terminal does not reach it), stdio on a log
# file (a caller capturing our stdout does not wait for the daemon), and fd 9
# (our lock) closed so a later rgw.sh does not block on it.
spawn() {
  local name="$1"
  shift
  setsid "$@" </dev/null >>"$LOG_DIR/$name.out" 2>&1 9>&- &
  # setsid execs in place (we are not a process-group leader), so $! is the
  # daemon itself.
  printf '%s\n' "$!" >"$(pid_file "$name")"
}

# Sends signal $1 to the daemons named after it; waits up to 5 s for them to
# go, then SIGKILLs what is left. Only PIDs from our pid files are touched.
kill_daemons() {
  local sig="$1" name pid pids=() i
  shift
  for name in "$@"; do
    if pid="$(daemon_pid "$name")"; then
      kill "-$sig" "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for ((i = 0; i < 50 && ${#pids[@]} > 0; i++)); do
    local alive=()
    for pid in "${pids[@]}"; do
      pid_running "$pid" && alive+=("$pid")
    done
    pids=("${alive[@]+"${alive[@]}"}")
    ((${#pids[@]} == 0)) || sleep 0.1
  done
  for pid in "${pids[@]+"${pids[@]}"}"; do
    log "pid $pid ignored SIG$sig, killing it"
    kill -KILL "$pid" 2>/dev/null || true
  done
  for name in "$@"; do rm -f "$(pid_file "$name")"; done
}

# One at a time, top down: on SIGTERM radosgw still talks to the OSD (drops
# its watches) and the OSD tells the mon it is going down; either waits ~5 s
# when the daemon below is already gone.
stop_daemons() {
  kill_daemons TERM rgw
  kill_daemons TERM osd
  kill_daemons TERM mon
}

# ---------------------------------------------------------------- state dir

# Refuses to rm -rf a directory that this script did not create.
wipe_state_dir() {
  [[ "$RGW_DIR" == /?* && "$RGW_DIR" != *..* ]] || die "RGW_DIR must be an absolute path: $RGW_DIR"
  if [[ -d "$RGW_DIR" && -n "$(ls -A "$RGW_DIR")" && ! -e "$MARKER" ]]; then
    die "$RGW_DIR is not empty and was not made by rgw.sh; not wiping it"
  fi
  rm -rf "$RGW_DIR"
}

# FSID is set by create_cluster.
write_conf() {
  mkdir -p "$RGW_DIR"/{mon,osd,rgw,run} "$LOG_DIR"
  touch "$MARKER"
  cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$RGW_MON_PORT
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
# A test cluster on loopback: no cephx, no keyrings to manage.
auth cluster required = none
auth service required = none
auth client required = none
# Without this radosgw loops on "get_initial_auth_request returned -13".
ms mon client mode = secure crc
run dir = $RGW_DIR/run
# Clients (ceph, radosgw-admin) stay quiet; daemons get log files below.
log to stderr = false
err to stderr = true
# auth none needs no keyring: don't go looking in /etc/ceph for one.
keyring = /dev/null
# One OSD: pools of size 1, replicas chosen across OSDs, not hosts.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# Each mon command waits for a paxos round; the default 1 s makes start-up
# (pool creation, OSD boot) several times slower.
paxos propose interval = 0.05
# A shared /tmp may be fuller than a real mon disk; don't refuse to start.
mon data avail crit = 1
mon data avail warn = 2

[mon]
mon data = $RGW_DIR/mon
log file = $LOG_DIR/\$name.log
mon cluster log file = $LOG_DIR/cluster.log

[osd]
osd data = $RGW_DIR/osd
osd objectstore = bluestore
# Bluestore on a sparse file: data goes to disk, not RAM (benchmarks write
# GiBs), and the file only takes the space actually written.
bluestore block create = true
bluestore block size = $((20 * 1024 * 1024 * 1024))
bluestore fsck on mount = false
# The idle aio thread polls with this timeout and every device close (the
# OSD opens/closes the block file ~10 times at boot) waits for it: 250 ms by
# default, i.e. seconds of start-up.
bdev aio poll ms = 20
# Keep the OSD small: a fixed 256 MiB cache instead of autotuning towards
# osd_memory_target (4 GiB).
bluestore cache autotune = false
bluestore cache size = $((256 * 1024 * 1024))
log file = $LOG_DIR/\$name.log

[client.rgw]
# tcp_nodelay: without it every small GET or LIST answer waits ~40 ms for the
# client's delayed ACK (Nagle's algorithm; 46 -> 4 ms per 1 KB GET here), and
# test/repository.test.ts took 31 s instead of 13.
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw data = $RGW_DIR/rgw
# Lifecycle workers run during rgw_lifecycle_work_time (00:00-06:00 UTC) and
# then hold up a SIGTERM for seconds; tests never wait a day for LC anyway
# (PutBucketLifecycle itself still works).
rgw enable lc threads = false
log file = $LOG_DIR/\$name.log
EOF
}

# ---------------------------------------------------------------- ceph CLI

# Seconds left before the start-up deadline (at least 1).
remaining() {
  local left=$((DEADLINE - SECONDS))
  ((left > 0)) && echo "$left" || echo 1
}

ceph_cmd() { timeout "$(remaining)" ceph -c "$CONF" --connect-timeout "$(remaining)" "$@"; }

# ---------------------------------------------------------------- daemons

start_mon() {
  monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$RGW_MON_PORT]" \
    "$RGW_DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$RGW_DIR/monmap" >>"$LOG_DIR/mkfs.out" 2>&1
  spawn mon ceph-mon -c "$CONF" -i a -f
}

# Creates the rgw pools in one ceph CLI run (its interactive mode reads
# commands from stdin), as each CLI start costs ~0.2 s of Python.
create_pools() {
  local pool
  for pool in "${RGW_POOLS[@]}"; do
    printf 'osd pool create %s 8 8\n' "$pool"
    printf 'osd pool application enable %s rgw\n' "$pool"
  done | ceph_cmd >>"$LOG_DIR/pools.out" 2>&1
}

# Registers OSD 0 and formats its store in the background (~2 s), so that
# the caller can create pools meanwhile; finish_osd waits for it.
prepare_osd() {
  local uuid id
  uuid="$(cat /proc/sys/kernel/random/uuid)"
  id="$(ceph_cmd osd new "$uuid")"
  [[ "$id" == 0 ]] || fail "unexpected OSD id '$id'"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" >>"$LOG_DIR/mkfs.out" 2>&1 &
  OSD_MKFS_PID=$!
}

finish_osd() {
  wait "$OSD_MKFS_PID" || fail "ceph-osd --mkfs failed"
  spawn osd ceph-osd -c "$CONF" -i 0 -f
}

# A client started before the OSD is up only learns of it on its objecter's
# 5 s tick; waiting here first saves those seconds on radosgw-admin.
wait_for_osd_up() {
  until ceph_cmd osd stat -f json 2>/dev/null | grep -q '"num_up_osds":1'; do
    daemon_pid osd >/dev/null || fail "ceph-osd exited"
    ((SECONDS < DEADLINE)) || fail "the OSD did not come up within ${TIMEOUT_S}s"
    sleep 0.2
  done
}

# Also initialises the default realm/zone; blocks until the OSD serves I/O.
create_user() {
  timeout "$(remaining)" radosgw-admin -c "$CONF" user create --uid=storage-agent-test \
    --display-name="storage-agent tests" \
    --access-key="$S3_ACCESS_KEY" --secret="$S3_SECRET_KEY" >>"$LOG_DIR/user.out" 2>&1
}

start_rgw() {
  spawn rgw radosgw -c "$CONF" -n client.rgw -f
}

restart_rgw() {
  evict_dead_gateway
  start_rgw
}

# A SIGKILLed radosgw leaves its watches on the control objects; until the
# OSD times them out (30 s) every metadata write of the next radosgw (bucket
# create, ...) blocks on a notify to the dead one. Blocklisting the dead
# client's address makes the OSD drop its watches at once. Only call this
# while no radosgw of ours runs: every watcher left is then a dead one.
evict_dead_gateway() {
  local i addrs=()
  mapfile -t addrs < <(for ((i = 0; i < 8; i++)); do
    timeout 10 rados -c "$CONF" -p default.rgw.control listwatchers "notify.$i" 2>/dev/null || true
  done | sed -n 's/^watcher=\([^ ]*\) .*/\1/p' | sort -u)
  ((${#addrs[@]} > 0)) || return 0
  printf 'osd blocklist add %s\n' "${addrs[@]}" | ceph_cmd >>"$LOG_DIR/blocklist.out" 2>&1
}

# ---------------------------------------------------------------- health

# SHA-256 of an empty body. RGW rejects a SigV4 request without the
# x-amz-content-sha256 header (SignatureDoesNotMatch) and curl 7.88 does not
# add it by itself, but signs it when given.
readonly EMPTY_SHA256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# A signed ListBuckets (SigV4 by curl) answering 200: proves the frontend,
# the auth path and RADOS are all working.
s3_answers() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 3 \
    --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H "x-amz-content-sha256: $EMPTY_SHA256" "$S3_ENDPOINT/" 2>/dev/null)" || return 1
  [[ "$code" == 200 ]]
}

healthy() {
  daemon_pid mon >/dev/null && daemon_pid osd >/dev/null &&
    daemon_pid rgw >/dev/null && s3_answers
}

wait_for_s3() {
  until s3_answers; do
    daemon_pid rgw >/dev/null || fail "radosgw exited"
    ((SECONDS < DEADLINE)) || fail "S3 did not answer within ${TIMEOUT_S}s"
    sleep 0.2
  done
}

# Prints the end of every log so a failed start can be diagnosed from CI
# output alone, then exits non-zero.
fail() {
  local f
  # Inside $(...) the ERR trap fires too; leave the report to the caller.
  ((BASH_SUBSHELL == 0)) || exit 1
  trap - ERR
  log "$*"
  sleep 0.5 # a daemon that just died may still be flushing its log
  for f in "$LOG_DIR"/*; do
    [[ -s "$f" ]] || continue
    printf '\n==> %s <==\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
  if [[ -n "${STOP_ON_FAIL:-}" ]]; then
    stop_daemons
    log "stopped the half-started cluster; its logs are in $LOG_DIR"
  fi
  exit 1
}

print_env() {
  cat <<EOF | tee "$ENV_FILE"
S3_ENDPOINT=$S3_ENDPOINT
S3_ACCESS_KEY=$S3_ACCESS_KEY
S3_SECRET_KEY=$S3_SECRET_KEY
S3_REGION=$S3_REGION
EOF
}

# ---------------------------------------------------------------- commands

# Serialises concurrent invocations (e.g. parallel test workers) on one dir.
# The lock file sits beside RGW_DIR since the dir itself gets wiped.
take_lock() {
  exec 9>"$RGW_DIR.lock"
  flock 9
}

# A cluster is already there: at most the gateway is missing.
resume_cluster() {
  daemon_pid rgw >/dev/null || restart_rgw
  wait_for_s3
}

create_cluster() {
  # From here a failure also stops what was started (logs are kept).
  STOP_ON_FAIL=1
  stop_daemons
  wipe_state_dir
  FSID="$(cat /proc/sys/kernel/random/uuid)"
  write_conf
  start_mon
  prepare_osd
  create_pools
  finish_osd
  wait_for_osd_up
  create_user
  start_rgw
  wait_for_s3
  STOP_ON_FAIL=
  log "S3 up at $S3_ENDPOINT after $((SECONDS - DEADLINE + TIMEOUT_S))s"
}

cmd_start() {
  install_packages
  take_lock
  DEADLINE=$((SECONDS + TIMEOUT_S))
  if daemon_pid mon >/dev/null && daemon_pid osd >/dev/null && [[ -s "$ENV_FILE" ]]; then
    resume_cluster
  else
    create_cluster
  fi
  print_env
}

cmd_stop() {
  take_lock
  stop_daemons
  wipe_state_dir
}

cmd_stop_gateway() {
  take_lock
  # SIGKILL, not TERM: an outage, with no goodbye to clients.
  kill_daemons KILL rgw
}

cmd_start_gateway() {
  take_lock
  DEADLINE=$((SECONDS + TIMEOUT_S))
  if ! daemon_pid mon >/dev/null || ! daemon_pid osd >/dev/null; then
    die "no running cluster in $RGW_DIR; use 'start'"
  fi
  daemon_pid rgw >/dev/null || restart_rgw
  wait_for_s3
}

cmd_status() {
  healthy
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
    stop-gateway) cmd_stop_gateway ;;
    start-gateway)
      trap_errors
      cmd_start_gateway
      ;;
    *)
      # The usage is the header comment, from "Usage:" to the env variables.
      sed -n '/^# Usage:/,/RGW_MON_PORT (/s/^# \{0,1\}//p' "$0" >&2
      exit 2
      ;;
  esac
}

main "$@"
