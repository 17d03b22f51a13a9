# Sourced by the project's entry scripts: makes a fresh Debian 12 machine (as root) ready to
# run the agent. Node 24 comes from the npm registry (the `node` devDependency), so the only
# system requirement is an npm to install it with.

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

# apt_install PKG…: installs the Debian packages that are missing (quiet when none is).
# Debian's postinst scripts start packaged services (MariaDB, Redis, Ceph) through invoke-rc.d;
# the project starts its own private servers, so a policy-rc.d exiting 101 ("action
# forbidden") stops that for the install. One already there (containers ship one) is kept.
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    # dpkg -s succeeds for half-removed packages too: check the status word.
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" == installed ]] || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  local policy=/usr/sbin/policy-rc.d ours=0 status=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# storage-agent: no service starts during this install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    ours=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || status=$?
  ((ours)) && rm -f "$policy"
  return "$status"
}

# Installs npm if there is none, then the project's dependencies (Node 24 among them) when
# node_modules is missing or older than the lock file.
ensure_node_modules() {
  command -v npm >/dev/null || apt_install nodejs npm
  if [[ ! -x node_modules/.bin/node || package-lock.json -nt node_modules/.package-lock.json ]]; then
    log "installing dependencies (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
  NODE="$PWD/node_modules/.bin/node"
  export PATH="$PWD/node_modules/.bin:$PATH"
}

# trap_errors: any failing command reports where it failed through the sourcing script's own
# fail() (which prints the logs); errtrace (-E) makes functions and subshells inherit the trap.
trap_errors() {
  set -E
  trap 'fail "failed at line $LINENO: $BASH_COMMAND"' ERR
}
