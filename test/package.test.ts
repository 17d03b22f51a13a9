import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pkg from '../package.json' with { type: 'json' };
import { parseConfig } from '../src/agent/config.ts';
import type { Manifest } from '../src/snapshot/manifest.ts';
import { createCgroup, type TestCgroup } from './support/cgroup.ts';
import { createSandbox, filesEnv, type Sandbox } from './support/cli.ts';
import { buildFixtureTree, describeTree, hardLinkGroups, MiB } from './support/tree.ts';

const REPO = path.resolve(import.meta.dirname, '..');
/** No Node of the checkout on it: the installed agent must bring its own. */
const SYSTEM_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** The system's Node (Debian 12's is 18) when it is older than the agent needs, as `npm install -g` would use it. */
const OLD_NODE = await (async () => {
  if (!existsSync('/usr/bin/node')) return undefined;
  const version = (await execa('/usr/bin/node', ['-p', 'process.versions.node'])).stdout;
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major < 22 || (major === 22 && minor < 15) ? version : undefined;
})();

/**
 * The Debian package (issue #12, docs/packaging.md): scripts/package.sh builds it; its fields
 * and contents are read back, it is extracted into a scratch root, and the agent installed there
 * — on the package's Node, not the checkout's — reports its version, backs up (frozen: the freeze
 * guard starts from the package too) and restores; its unit passes systemd-analyze verify. As
 * root, dpkg installs, reinstalls, removes and purges it in a scratch root of its own.
 */
describe('the Debian package', () => {
  let out: string;
  let deb: string;
  let root: string;
  let cache: string;
  /** systemd/storage-agent.service as the package was built from it. */
  let sourceUnit: string[];

  /** The agent as installed under `root`, with a clean environment. */
  const installed = (args: readonly string[], launcher = path.join(root, 'usr/bin/storage-agent')) =>
    execa(launcher, args, { reject: false, stdin: 'ignore', env: { PATH: SYSTEM_PATH, NODE_COMPILE_CACHE: cache }, extendEnv: false });

  beforeAll(async () => {
    out = await mkdtemp(path.join(tmpdir(), 'sa-package-'));
    sourceUnit = (await readFile(path.join(REPO, 'systemd/storage-agent.service'), 'utf8')).split('\n');
    // Uncompressed: xz is most of the build's time, and what is packed is the same.
    await execa('bash', [path.join(REPO, 'scripts/package.sh'), out], { stdin: 'ignore', env: { DEB_COMPRESSION: 'none' } });
    deb = path.join(out, `storage-agent_${pkg.version}_amd64.deb`);
    root = path.join(out, 'root');
    cache = path.join(out, 'compile-cache');
    await execa('dpkg-deb', ['-x', deb, root]);
  }, 300_000);
  afterAll(() => rm(out, { recursive: true, force: true }));

  it('declares what it is and what it runs', async () => {
    const fields = (await execa('dpkg-deb', ['--field', deb, 'Package', 'Version', 'Architecture', 'Depends', 'Recommends'])).stdout;
    expect(fields).toContain('Package: storage-agent\n');
    expect(fields).toContain(`Version: ${pkg.version}\n`);
    expect(fields).toContain('Architecture: amd64\n');
    expect(fields).toMatch(/^Depends: .*\bzstd\b/m); // decompression (restore, get)
    expect(fields).toMatch(/^Recommends: .*\bmariadb-client\b.*\bredis-tools\b/m); // mysql, mysqldump; redis-check-rdb
    expect((await execa('dpkg-deb', ['--info', deb, 'conffiles'])).stdout.trim()).toBe('/etc/storage-agent/config.yaml');
    const control = path.join(out, 'control');
    await execa('dpkg-deb', ['--control', deb, control]);
    for (const script of ['postinst', 'prerm', 'postrm']) await execa('sh', ['-n', path.join(control, script)]);
  });

  it('ships what runs, owned by root: no sources, tests, bench or build tools', async () => {
    const entries = new Map(
      (await execa('dpkg-deb', ['--contents', deb])).stdout.split('\n').map((line) => {
        const [mode = '', owner = '', , , , name = ''] = line.split(/\s+/);
        return [name.replace(/ -> .*/, ''), { mode, owner }] as const;
      }),
    );
    for (const [name, mode] of Object.entries({
      './usr/bin/storage-agent': '-rwxr-xr-x',
      './usr/lib/storage-agent/node': '-rwxr-xr-x',
      './usr/lib/storage-agent/package.json': '-rw-r--r--',
      './usr/lib/storage-agent/dist/agent/bin.js': '-rw-r--r--',
      './usr/lib/storage-agent/dist/snapshot/files/pack-worker.js': '-rw-r--r--',
      './lib/systemd/system/storage-agent.service': '-rw-r--r--',
      './etc/storage-agent/': 'drwx------',
      './etc/storage-agent/config.yaml': '-rw-------',
      './usr/share/man/man1/storage-agent.1.gz': '-rw-r--r--',
      './usr/share/doc/storage-agent/README.md': '-rw-r--r--',
      './usr/share/doc/storage-agent/copyright': '-rw-r--r--',
    })) {
      expect(entries.get(name)?.mode, name).toBe(mode);
    }
    expect([...entries.values()].filter((entry) => entry.owner !== 'root/root')).toEqual([]);
    const names = [...entries.keys()];
    expect(names.filter((name) => /^\.\/usr\/lib\/storage-agent\/(src|test|bench|scripts|packaging)\//.test(name))).toEqual([]);
    expect(names.filter((name) => name.startsWith('./usr/lib/storage-agent/dist/') && !/\.js$|\/$/.test(name))).toEqual([]);
    // Development dependencies stay out (the runtime is the one binary above), but @types/node:
    // mysql2 depends on it.
    const devOnly = Object.keys(pkg.devDependencies).filter((dep) => dep !== '@types/node');
    expect(devOnly.filter((dep) => entries.has(`./usr/lib/storage-agent/node_modules/${dep}/`))).toEqual([]);
    expect(names.filter((name) => name.includes('.cache/'))).toEqual([]);
  });

  it('runs on its own Node: --version, --help and the man page', async () => {
    const version = await installed(['--version']);
    expect(version.stderr).toBe('');
    expect(version.stdout).toBe(pkg.version);
    expect((await execa(path.join(root, 'usr/lib/storage-agent/node'), ['--version'])).stdout).toMatch(/^v24\./);
    expect((await installed(['backup', '--help'])).stdout).toMatch(/^Usage: storage-agent backup/);
    const man = (await execa('gzip', ['-dc', path.join(root, 'usr/share/man/man1/storage-agent.1.gz')])).stdout;
    expect(man).toMatch(/^\.TH STORAGE-AGENT 1 "\d{4}-\d\d-\d\d" "storage-agent [\d.]+"/);
    expect(man).toContain('.SS storage\\-agent backup create\n');
  });

  it('the example config is valid as shipped', async () => {
    const text = await readFile(path.join(root, 'etc/storage-agent/config.yaml'), 'utf8');
    expect(parseConfig(text, '/etc/storage-agent/config.yaml')).toMatchObject({ stateDir: '/var/lib/storage-agent', defaultStore: 'default' });
  });

  it.skipIf(!OLD_NODE)(`turns an old Node away with a clear message (system Node: ${OLD_NODE ?? 'none older than 22.15'})`, async () => {
    // What an `npm install -g` on that Node would run (the package's "bin").
    const result = await execa('/usr/bin/node', [path.join(root, 'usr/lib/storage-agent/dist/agent/bin.js'), '--version'], { reject: false, stdin: 'ignore' });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toMatch(new RegExp(`^storage-agent needs Node\\.js 22\\.15 or later \\(this is ${OLD_NODE!.replaceAll('.', '\\.')}\\): `));
  });

  describe('a backup and a restore with the installed agent', () => {
    let sandbox: Sandbox;
    let cgroup: TestCgroup;
    let source: string;

    beforeAll(async () => {
      sandbox = await createSandbox();
      source = path.join(sandbox.dir, 'source');
      await mkdir(source);
      await buildFixtureTree(source);
      await writeFile(path.join(source, 'large-random.bin'), randomBytes(7 * MiB)); // several pack chunks and zstd frames
      cgroup = await createCgroup('v2');
      await sandbox.writeConfig({
        environments: {
          site: { freeze: { cgroups: [cgroup.path] }, ...filesEnv({ uploads: source }) },
          copy: filesEnv({ uploads: path.join(sandbox.dir, 'copy') }),
        },
      });
    });
    afterAll(async () => {
      await cgroup?.remove();
      await sandbox?.cleanup();
    });

    it('backs up consistently and restores the same bytes, entries and links', async () => {
      const backup = await installed(['--config', sandbox.configPath, '--json', 'backup', 'create', 'site']);
      expect(backup.exitCode, backup.stderr).toBe(0);
      const manifest = JSON.parse(backup.stdout) as Manifest;
      expect(manifest).toMatchObject({ env: 'site', mode: 'consistent' });
      expect(manifest.pauseMs).toBeGreaterThanOrEqual(0);

      const restore = await installed(['--config', sandbox.configPath, 'backup', 'restore', 'site', manifest.id, '--target', 'copy', '--yes']);
      expect(restore.exitCode, restore.stderr).toBe(0);
      const copy = path.join(sandbox.dir, 'copy');
      // A restore clears setuid/setgid bits of files (keepSetuid: false, the default).
      const expected = Object.fromEntries([...describeTree(source)].map(([rel, entry]) => [rel, entry.type === 'file' ? { ...entry, mode: entry.mode & ~0o6000 } : entry]));
      expect(Object.fromEntries(describeTree(copy))).toEqual(expected);
      expect(hardLinkGroups(copy)).toEqual(hardLinkGroups(source));
    });
  });

  it('has the unit of the checkout, with the paths of the package, which systemd-analyze verify passes', async () => {
    const unit = await readFile(path.join(root, 'lib/systemd/system/storage-agent.service'), 'utf8');
    expect(unit.split('\n').filter((line, i) => line !== sourceUnit[i])).toEqual([
      expect.stringMatching(/^Documentation=.*file:\/usr\/share\/doc\/storage-agent\//),
      expect.stringMatching(/^ExecStart=\/usr\/bin\/storage-agent /),
      expect.stringMatching(/^ExecStopPost=-\/usr\/bin\/storage-agent thaw /),
    ]);
    // verify checks that ExecStart's binary exists: here the extracted one (--root would look
    // for systemd's own units and /bin/kill in the scratch root too).
    const dir = path.join(out, 'verify');
    await mkdir(dir);
    await writeFile(path.join(dir, 'storage-agent.service'), unit.replace(/^(ExecStart=|ExecStopPost=-)\/usr\/bin\//gm, `$1${root}/usr/bin/`));
    const verify = await execa('systemd-analyze', ['verify', path.join(dir, 'storage-agent.service')], { reject: false, stdin: 'ignore' });
    expect(verify.stderr).toBe('');
    expect(verify.exitCode).toBe(0);
  });

  it('installs on this machine as apt sees it: every dependency there or installable', async () => {
    const simulated = await execa('apt-get', ['install', '--simulate', deb], { reject: false, stdin: 'ignore' });
    expect(simulated.exitCode, simulated.stderr).toBe(0);
    expect(simulated.stdout).toMatch(/^Conf storage-agent /m);
  });

  /**
   * dpkg itself, into a scratch root with its own database: the real one, /etc and systemd are
   * not touched (other tests run units of their own). The maintainer scripts run chrootless,
   * with DPKG_ROOT, under which they keep every path; the package's dependencies are not in the
   * empty database, hence --force-depends.
   */
  it.skipIf(process.getuid?.() !== 0)('dpkg installs it, keeps an edited conffile, removes it cleanly and purges the config', async () => {
    const scratch = path.join(out, 'dpkg-root');
    const admindir = path.join(scratch, 'var/lib/dpkg');
    await mkdir(path.join(admindir, 'updates'), { recursive: true });
    await writeFile(path.join(admindir, 'status'), '');
    const dpkg = (...args: string[]) => execa('dpkg', [`--admindir=${admindir}`, `--instdir=${scratch}`, '--force-script-chrootless', '--force-depends', ...args], { stdin: 'ignore' });
    const config = path.join(scratch, 'etc/storage-agent/config.yaml');

    await dpkg('--install', deb);
    expect((await installed(['--version'], path.join(scratch, 'usr/bin/storage-agent'))).stdout).toBe(pkg.version);
    expect((await execa('dpkg', [`--admindir=${admindir}`, `--instdir=${scratch}`, '--verify', 'storage-agent'])).stdout).toBe('');
    await writeFile(config, `${await readFile(config, 'utf8')}# edited on this node\n`);
    await dpkg('--install', deb);
    expect(await readFile(config, 'utf8')).toMatch(/# edited on this node\n$/);

    // What the agent and the unit make at run time: the state survives even a purge, the cache does not.
    await mkdir(path.join(scratch, 'var/lib/storage-agent/keys'), { recursive: true });
    await mkdir(path.join(scratch, 'var/cache/storage-agent'), { recursive: true });
    const left = async () => (await execa('find', [scratch, '-path', admindir, '-prune', '-o', '-mindepth', '1', '-print'])).stdout.split('\n').map((p) => path.relative(scratch, p)).sort();
    await dpkg('--remove', 'storage-agent');
    expect(await left()).toEqual(['etc', 'etc/storage-agent', 'etc/storage-agent/config.yaml', 'var', 'var/cache', 'var/cache/storage-agent', 'var/lib', 'var/lib/storage-agent', 'var/lib/storage-agent/keys']);
    const purge = await dpkg('--purge', 'storage-agent');
    expect(purge.stderr).toContain('kept /var/lib/storage-agent');
    expect(await left()).toEqual(['var', 'var/cache', 'var/lib', 'var/lib/storage-agent', 'var/lib/storage-agent/keys']);
  });
});
