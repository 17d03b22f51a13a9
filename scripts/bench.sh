#!/usr/bin/env bash
# The benchmark: `npm run bench` (or scripts/bench.sh [bench/run.ts options]).
# The repository benchmark (issue #13: ours vs restic vs tar | zstd, docs/benchmarks-repository.md):
# `scripts/bench.sh repository [bench/repository.ts options]` (`npm run bench -- repository`).
# MySQL dumps in the repository (issue #13: the second dump after 1 % of rows updated, deltas):
# `scripts/bench.sh mysql-dedup [bench/mysql-dedup.ts options]` (no RGW; its own MariaDB).
# Point-in-time restore (issue #14 §1: the stream's RPO, the replay against mariadb-binlog | mysql,
# docs/benchmarks-databases.md): `scripts/bench.sh pitr [--only rpo,replay]` (no RGW; its own MariaDB).
#
# Backs generated trees up with the agent's real CLI to the fs store and to a Ceph RGW, next
# to `tar | zstd`, `tar | zstd | rclone rcat` and `zstd -dc | tar -x` on the same data, and
# prints MB/s, CPU seconds and peak RSS of each (docs/benchmarks.md explains the output).
#
# Environment:
#   BENCH_DIR    trees (generated once, ~4 GiB for 1g,3g) and scratch space
#                (default /var/tmp/storage-agent-bench; needs ~6 GiB free beyond the trees)
#   BENCH_SIZES  trees to run, comma-separated (default 1g,3g)
#   BENCH_RUNS   measured runs per command after one warm-up (default 3; RGW: at most 3)
#   BENCH_STAT   best (default: the fastest run counts) or median
#   BENCH_RGW=0  skip the RGW section (no Ceph started)
#   BENCH_AGENT_REF  a git revision: benchmark its src/ instead of the working tree's
#   BENCH_REPOSITORY=1  also run the repository benchmark after bench/run.ts (same RGW)
#
# `repository` mode: BENCH_RUNS defaults to 1 and the RGW is off unless BENCH_RGW=1; see
# bench/repository.ts for its variables (BENCH_REPO_DAYS, BENCH_REPO_SIZE, BENCH_WARMUP, ...).
#
# Options are passed to bench/run.ts, e.g. `--only tar,fs` (sections: tar, stages, fs,
# restore, rgw; restore needs fs, which it runs too).
#
# The benchmark runs its own RGW (RGW_DIR=/tmp/storage-agent-bench-rgw, port 7490), apart
# from the test suite's (7480, and 7500 for its second worker), and stops it on exit, failure or Ctrl-C.
set -euo pipefail

cd "$(dirname "$0")/.."

export RGW_DIR=/tmp/storage-agent-bench-rgw
export RGW_PORT=7490
export BENCH_DIR="${BENCH_DIR:-/var/tmp/storage-agent-bench}"

mode=default
if [[ "${1:-}" == repository ]]; then
  mode=repository
  shift
  export BENCH_RUNS="${BENCH_RUNS:-1}"
  BENCH_RGW="${BENCH_RGW:-0}"
elif [[ "${1:-}" == mysql-dedup ]]; then
  mode=mysql-dedup
  shift
  BENCH_RGW=0
elif [[ "${1:-}" == pitr ]]; then
  mode=pitr
  shift
  BENCH_RGW=0
fi

log() { printf 'bench.sh: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- tools

missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v rclone >/dev/null || missing+=(rclone)
command -v restic >/dev/null || missing+=(restic)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]} > 0)); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x node_modules/.bin/node || ! -d node_modules/@aws-sdk/client-s3 ]]; then
  log "node_modules missing: running npm ci"
  npm ci --no-audit --no-fund
fi
NODE="$PWD/node_modules/.bin/node"

mkdir -p "$BENCH_DIR"

# ---------------------------------------------------------------- RGW

rgw_started=
stop_rgw() {
  if [[ -n "$rgw_started" ]]; then
    log "stopping the bench RGW"
    bash scripts/rgw.sh stop || log "rgw.sh stop failed"
    rgw_started=
  fi
}
trap stop_rgw EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rgw_args=()
if [[ "${BENCH_RGW:-1}" != 0 ]]; then
  rgw_started=1
  # A fresh cluster each time: RGW frees deleted objects' space only hours later (lazy GC).
  log "starting the bench RGW on port $RGW_PORT ($RGW_DIR)"
  bash scripts/rgw.sh stop
  bash scripts/rgw.sh start >/dev/null
  rgw_args=(--rgw-env "$RGW_DIR/env")
fi

# ---------------------------------------------------------------- run

# The agent's code is copied at the start and the copy runs, so that edits to the working
# tree during the run (~15 min) cannot mix versions or break it halfway. BENCH_AGENT_REF=REV
# benchmarks the src/ of a commit instead (the benchmark's own files stay the current ones).
snapshot="$BENCH_DIR/agent"
rm -rf "$snapshot"
mkdir -p "$snapshot"
if [[ -n "${BENCH_AGENT_REF:-}" ]]; then
  git archive "$BENCH_AGENT_REF" src package.json | tar -xf - -C "$snapshot"
  version="$(git rev-parse --short "$BENCH_AGENT_REF")"
else
  cp -a src package.json "$snapshot/"
  version="working tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
fi
cp -a bench "$snapshot/"
ln -s "$PWD/node_modules" "$snapshot/node_modules"
if ! "$NODE" "$snapshot/src/agent/main.ts" --version >/dev/null; then
  log "the agent ($version) does not start (see above): nothing to benchmark"
  exit 1
fi
log "benchmarking the agent of $version (copied to $snapshot)"
export BENCH_AGENT_VERSION="$version"

started=$SECONDS
# No `exec`: the EXIT trap must still stop the RGW.
if [[ "$mode" == repository ]]; then
  "$NODE" "$snapshot/bench/repository.ts" "${rgw_args[@]}" "$@"
elif [[ "$mode" == mysql-dedup ]]; then
  "$NODE" "$snapshot/bench/mysql-dedup.ts" "$@"
elif [[ "$mode" == pitr ]]; then
  "$NODE" "$snapshot/bench/pitr.ts" "$@"
else
  "$NODE" "$snapshot/bench/run.ts" "${rgw_args[@]}" "$@"
  if [[ "${BENCH_REPOSITORY:-0}" == 1 ]]; then
    log "the repository benchmark (bench/repository.ts)"
    BENCH_RUNS=1 "$NODE" "$snapshot/bench/repository.ts" "${rgw_args[@]}"
  fi
fi
log "done in $((SECONDS - started)) s"
