#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian 12 machine: back up a sample directory to the
# embedded fs store, list the backups, restore into another environment, and check that the
# restored tree is identical (contents, modes, owners, mtimes, symlinks, hard links).
# Everything lives in a temp dir (DEMO_DIR to choose it); nothing else on the machine changes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/bootstrap.sh
apt_install tar zstd findutils diffutils
ensure_node_modules

demo="${DEMO_DIR:-$(mktemp -d /tmp/storage-agent-demo.XXXXXX)}"
mkdir -p "$demo/site/uploads/2026/11" "$demo/site/uploads/styles" "$demo/restored"
log "sample tree and config in $demo"

# A small site: text and binary files, a nested tree, a symlink, a hard link, modes and mtimes,
# a non-ASCII name, and a generated directory the config excludes.
( cd "$demo/site/uploads"
  printf 'hello from the demo\n' > readme.txt
  head -c 5000000 /dev/urandom > 2026/11/photo.jpg
  seq 1 200000 > 2026/11/report.csv
  printf 'é\n' > 'café menu.txt'
  ln -s readme.txt latest
  ln 2026/11/report.csv report-hardlink.csv
  chmod 0600 'café menu.txt'
  touch -d '2020-01-02 03:04:05' readme.txt
  printf 'generated\n' > styles/app.css )

cat > "$demo/config.yaml" <<YAML
stateDir: $demo/state
environments:
  site:
    services:
      uploads: { kind: files, path: $demo/site/uploads, exclude: [styles/] }
  site-copy:
    services:
      uploads: { kind: files, path: $demo/restored/uploads }
YAML

agent() { "$NODE" src/agent/main.ts --config "$demo/config.yaml" "$@"; }

log "backup create site"
agent backup create site
log "backup list site"
agent backup list site
id="$(agent --json backup list site | "$NODE" -e 'process.stdout.write(JSON.parse(require("fs").readFileSync(0, "utf8"))[0].id)')"
log "backup verify site $id"
agent backup verify site "$id"
log "backup restore site $id --target site-copy"
agent backup restore site "$id" --target site-copy --yes

# Identical: same listing of type, mode, owner, mtime (whole seconds, as tar keeps them), size,
# link target and link count, and the same bytes.
describe() {
  (cd "$1" && find . -mindepth 1 -path ./styles -prune -o -printf '%p %y %m %U:%G %T@ %s %l %n\n' | sed -E 's/ ([0-9]+)\.[0-9]+ / \1 /' | sort)
}
if diff <(describe "$demo/site/uploads") <(describe "$demo/restored/uploads") &&
  diff -r --no-dereference --exclude=styles "$demo/site/uploads" "$demo/restored/uploads"; then
  log "OK: the restored tree is identical to the source (styles/ excluded by config)"
else
  log "FAILED: the restored tree differs"
  exit 1
fi
[[ -n "${DEMO_DIR:-}" ]] || rm -rf "$demo"
