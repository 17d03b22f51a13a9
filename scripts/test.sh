#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine as root: installs what the tests need
# (Node 24 from the npm registry; zstd, curl, GNU tar and the Ceph RGW packages from Debian),
# type-checks, then runs vitest. The tests start and stop their own Ceph RGW (scripts/rgw.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bootstrap.sh

# prometheus: its promtool checks docs/alerts.yaml (test/alerts.test.ts); the server is never started.
apt_install zstd curl tar ca-certificates util-linux e2fsprogs xfsprogs btrfs-progs systemd prometheus
bash scripts/rgw.sh install
bash scripts/mariadb.sh install
apt_install redis-server redis-tools
ensure_node_modules

log "type-checking"
npx tsc -p tsconfig.json
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@" || status=$?
# One plain closing line for any CI that reads it.
"$NODE" -e 'const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests} skipped`);' "$report" || true
exit "$status"
