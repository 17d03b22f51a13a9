#!/usr/bin/env -S node --max-semi-space-size=8
// The installed entry point: package.json "bin" (npm install -g) and, through the Debian
// package's launcher, /usr/bin/storage-agent, which runs the package's own Node with the flags
// of the line above (scripts/package.sh copies them from there). --max-semi-space-size=8: see
// main.ts, whose other flags only serve its type stripping and would make an old Node refuse to
// start before the check below could say why. A checkout runs main.ts directly.
//
// Plain JavaScript syntax only and nothing imported before the check: this file must parse and
// run on the Node it turns away (Debian 12's is 18). The agent's modules all load after it,
// through the dynamic import; 22.15 is the first Node with zstd in node:zlib.
const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 15)) {
  process.stderr.write(
    `storage-agent needs Node.js 22.15 or later (this is ${process.versions.node}): install Node.js 24, ` +
      'or the storage-agent Debian package, which brings its own (README "Install on a node")\n',
  );
  process.exit(1);
}
await import('./main.ts');
