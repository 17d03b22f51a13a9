#!/usr/bin/env bash
# Redis for the integration tests.
#
# Usage: scripts/redis.sh install
#
#   install   apt-get redis-server and redis-tools (redis-check-rdb) if either is missing,
#             without starting Debian's redis-server service (quiet when nothing is missing)
#
# The tests start their own private redis-server processes (test/support/redis.ts: a temp
# directory, a free port on 127.0.0.1, addressed by PID), so the system service is never
# used: Debian's postinst would start it through invoke-rc.d, which a policy-rc.d that exits
# 101 forbids. One that is already there (containers ship one) is left as it is; ours is
# removed afterwards. Nothing here relies on systemd.
set -euo pipefail

readonly PACKAGES=(redis-server redis-tools)
readonly POLICY=/usr/sbin/policy-rc.d

log() { printf 'redis.sh: %s\n' "$*" >&2; }

install_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    # dpkg -s succeeds for half-removed packages too; check the status word.
    if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
      missing+=("$pkg")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  local own_policy=0
  if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\n# storage-agent scripts/redis.sh: no service starts during this install\nexit 101\n' >"$POLICY"
    chmod 0755 "$POLICY"
    own_policy=1
    trap 'rm -f "$POLICY"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ((own_policy)) && rm -f "$POLICY"
  trap - EXIT
  command -v redis-server >/dev/null && command -v redis-check-rdb >/dev/null || {
    log "redis-server or redis-check-rdb is still missing after the install"
    exit 1
  }
}

main() {
  case "${1:-}" in
    install) install_packages ;;
    *)
      sed -n '/^# Usage:/,/without starting/s/^# \{0,1\}//p' "$0" >&2
      exit 2
      ;;
  esac
}

main "$@"
