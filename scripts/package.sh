#!/usr/bin/env bash
# Builds the Debian package OUTDIR/storage-agent_<version>_amd64.deb (`npm run package`; OUTDIR
# defaults to build/): the agent compiled to JavaScript, its production dependencies and the
# Node 24 runtime of the npm `node` package in /usr/lib/storage-agent, the launcher
# /usr/bin/storage-agent, the systemd unit, an example config as a conffile, a man page made
# from --help, and the docs. Decisions and layout: docs/packaging.md.
#
#   bash scripts/package.sh [OUTDIR]        DEB_MAINTAINER="Name <mail>" sets the Maintainer field
#
# Needs what scripts/test.sh installs (npm; dpkg-deb is part of dpkg); the npm registry is the
# only network it uses. Writes nothing in the checkout but OUTDIR (and node_modules/ when missing).
set -euo pipefail
out="$(realpath -m "${1:-$(dirname "$0")/../build}")"
cd "$(dirname "$0")/.."
source scripts/lib/bootstrap.sh
ensure_node_modules

version="$("$NODE" -p 'require("./package.json").version')"
deb="$out/storage-agent_${version}_amd64.deb"
mkdir -p "$out"
stage="$(mktemp -d "$out/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
lib="$root/usr/lib/storage-agent"
doc="$root/usr/share/doc/storage-agent"
# The staged agent's own runs (the smoke test, the man page) keep V8's code cache out of the package.
export NODE_COMPILE_CACHE="$stage/compile-cache"

log "compiling to $lib/dist"
tsc -p tsconfig.build.json --outDir "$lib/dist"

log "installing the production dependencies"
cp package.json package-lock.json "$lib/"
(cd "$lib" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund --loglevel=error) >/dev/null
# node_modules/.package-lock.json records what was installed; the lock file itself has no use here.
rm "$lib/package-lock.json"

# The runtime: the binary the npm `node` devDependency installed (no Node on the target is used).
install -m 0755 node_modules/node/bin/node "$lib/node"
node_version="$("$lib/node" --version)"
log "runtime: Node.js $node_version"

# One source for the flags: the installed entry's shebang (src/agent/bin.ts).
shebang="$(head -n 1 src/agent/bin.ts)"
node_flags="${shebang#'#!/usr/bin/env -S node '}"
[[ "$node_flags" != "$shebang" && "$node_flags" =~ ^--[a-z0-9=-]+( --[a-z0-9=-]+)*$ ]] || {
  log "src/agent/bin.ts: expected a first line '#!/usr/bin/env -S node --flag…', not: $shebang"
  exit 1
}
install -d "$root/usr/bin"
sed "s|@NODE_FLAGS@|$node_flags|" packaging/storage-agent.sh >"$root/usr/bin/storage-agent"
chmod 0755 "$root/usr/bin/storage-agent"

installed_version="$("$root/usr/bin/storage-agent" --version)"
[[ "$installed_version" == "$version" ]] || { log "the staged agent says version '$installed_version', package.json $version"; exit 1; }

# The unit as systemd/storage-agent.service has it, with the package's paths: those two lines only.
unit="$root/lib/systemd/system/storage-agent.service"
install -d "$(dirname "$unit")"
sed -e 's|^\(Exec[A-Za-z]*=.*\)/usr/local/bin/storage-agent|\1/usr/bin/storage-agent|' \
  -e 's|^\(Documentation=.*\)file:/usr/local/share/doc/storage-agent/|\1file:/usr/share/doc/storage-agent/|' \
  systemd/storage-agent.service >"$unit"
grep -q '^ExecStart=/usr/bin/storage-agent ' "$unit" || { log "systemd/storage-agent.service: no ExecStart=/usr/local/bin/storage-agent … to point at /usr/bin"; exit 1; }

# The example config: private (it names secret files), and a conffile (DEBIAN/conffiles).
install -d -m 0700 "$root/etc/storage-agent"
install -m 0600 packaging/config.example.yaml "$root/etc/storage-agent/config.yaml"

install -d "$doc"
cp README.md docs/*.md docs/alerts.yaml "$doc/"
sed "s|@NODE_VERSION@|$node_version|g" packaging/debian/copyright >"$doc/copyright"

# roff_escape: text as roff prints it: backslashes and minus signs literal, no line read as a request.
roff_escape() { sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e 's/^[.'"'"']/\\\&&/'; }
# help_pages [COMMAND…]: a section with the --help of the command, then of each of its
# subcommands, depth first (commander lists them under "Commands:", two spaces in).
help_pages() {
  local text sub
  text="$("$root/usr/bin/storage-agent" "$@" --help)"
  printf '.SS %s\n.nf\n%s\n.fi\n' "$(roff_escape <<<"storage-agent${*:+ $*}")" "$(roff_escape <<<"$text")"
  for sub in $(awk '/^Commands:/ { listed = 1; next } listed && /^  [a-z]/ { print $1 } /^$/ { listed = 0 }' <<<"$text"); do
    [[ "$sub" == help ]] || help_pages "$@" "$sub"
  done
}
log "writing the man page"
install -d "$root/usr/share/man/man1"
{
  printf '.TH STORAGE-AGENT 1 "%s" "storage-agent %s" "User Commands"\n' "$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%d)" "$version"
  printf '.SH NAME\nstorage-agent \\- back up and restore the services of hosting environments to object storage\n'
  printf '.SH SYNOPSIS\n.B storage-agent\n[\\fIoptions\\fR] \\fIcommand\\fR ...\n'
  printf '.SH DESCRIPTION\nThe commands and options below are the output of \\fB\\-\\-help\\fR.\n'
  printf 'How the agent works, its configuration, exit codes and the daemon: /usr/share/doc/storage-agent/README.md.\n'
  printf '.SH COMMANDS\n'
  help_pages
  printf '.SH FILES\n.TP\n/etc/storage-agent/config.yaml\nthe configuration\n.TP\n/var/lib/storage-agent\nthe state directory (stateDir)\n'
  printf '.TP\n/lib/systemd/system/storage-agent.service\nthe daemon'"'"'s unit\n'
  printf '.SH SEE ALSO\n/usr/share/doc/storage-agent/README.md, /usr/share/doc/storage-agent/protocol.md\n'
} | gzip -9n >"$root/usr/share/man/man1/storage-agent.1.gz"

# Modes as Debian wants them, whatever the umask and npm left: then the private config again.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -exec chmod u+rw,go+r,go-w {} +
chmod 0700 "$root/etc/storage-agent"
chmod 0600 "$root/etc/storage-agent/config.yaml"

install -d "$root/DEBIAN"
sed -e "s|@VERSION@|$version|" \
  -e "s|@MAINTAINER@|${DEB_MAINTAINER:-storage-agent maintainers <root@localhost>}|" \
  -e "s|@INSTALLED_SIZE@|$(du -sk --apparent-size "$root" | cut -f1)|" \
  packaging/debian/control >"$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"

log "building $deb"
# xz: the smallest (docs/packaging.md). DEB_COMPRESSION=gzip|none builds faster (the tests: a third of the time).
dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --build "$root" "$deb" >/dev/null
log "built $deb ($(du -h "$deb" | cut -f1))"
