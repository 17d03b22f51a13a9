#!/bin/sh
# /usr/bin/storage-agent of the Debian package: runs the agent on the Node runtime the package
# carries, whatever Node the system has. It finds that runtime from its own location, so an
# extracted package (dpkg -x DEB ROOT) runs as ROOT/usr/bin/storage-agent too. The Node flags
# are those of src/agent/bin.ts's first line, put in by scripts/package.sh.
set -eu
usr="$(dirname "$(dirname "$(readlink -f "$0")")")"
# V8's code cache of the agent's modules, where the systemd unit keeps it (CacheDirectory=): it
# saves a part of every start. Where it cannot be written (another user), the agent runs without.
: "${NODE_COMPILE_CACHE:=/var/cache/storage-agent}"
export NODE_COMPILE_CACHE
exec "$usr/lib/storage-agent/node" @NODE_FLAGS@ "$usr/lib/storage-agent/dist/agent/bin.js" "$@"
