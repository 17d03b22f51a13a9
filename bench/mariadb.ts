/**
 * A benchmark's own MariaDB, run by scripts/mariadb.sh in a directory and on a port of its own,
 * and restarted on a cached datadir so that a big database is generated only once.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isProcessAlive } from '../src/liveness.ts';
import { runChecked } from './timing.ts';

const ROOT = path.resolve(import.meta.dirname, '..');
const MARIADB_SH = [path.join(ROOT, 'scripts/mariadb.sh'), path.resolve('scripts/mariadb.sh')].find((f) => existsSync(f)) ?? path.join(ROOT, 'scripts/mariadb.sh');

export class BenchMariadb {
  readonly dir: string;
  readonly port: number;
  readonly socket: string;
  /** The agent account's password, which mariadb.sh start prints. */
  password = '';
  #started = false;

  constructor(dir: string, port: number) {
    this.dir = dir;
    this.port = port;
    this.socket = path.join(dir, 'mysqld.sock');
  }

  pid(): number | undefined {
    try {
      const pid = Number(readFileSync(path.join(this.dir, 'mariadbd.pid'), 'utf8').trim());
      return pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  start(): void {
    this.#started = true;
    this.password = /^MYSQL_PASSWORD=(.*)$/m.exec(this.#script('start'))?.[1] ?? '';
    if (!this.password) throw new Error('scripts/mariadb.sh start printed no MYSQL_PASSWORD');
  }

  /** Stops the server and removes its directory (a server left by an interrupted run too). */
  stop(): void {
    this.#script('stop');
  }

  /** At the end of a run: stops the server if this run started it, saying why it could not. */
  stopIfStarted(log: (line: string) => void): void {
    if (!this.#started) return;
    try {
      this.stop();
    } catch (error) {
      log(`mariadb.sh stop: ${(error as Error).message}`);
    }
  }

  /** Starts on a copy of `datadir` instead of initialising one (what mariadb.sh start looks for). */
  startOn(datadir: string): void {
    mkdirSync(path.join(this.dir, 'tmp'), { recursive: true });
    writeFileSync(path.join(this.dir, '.storage-agent-mariadb'), '');
    runChecked('cp', ['-a', datadir, path.join(this.dir, 'data')]);
    this.start();
  }

  /** Shuts the server down cleanly and copies its datadir to `datadir` (a cache), then starts it again. */
  async saveDatadir(datadir: string): Promise<void> {
    const pid = this.pid();
    runChecked('mariadb-admin', ['--no-defaults', `--socket=${this.socket}`, '-uroot', 'shutdown']);
    for (let i = 0; pid && isProcessAlive(pid) && i < 600; i++) await sleep(100);
    if (pid && isProcessAlive(pid)) throw new Error(`mariadbd ${pid} did not stop within 60 s of mariadb-admin shutdown`);
    mkdirSync(path.dirname(datadir), { recursive: true });
    const temporary = `${datadir}.tmp`;
    rmSync(temporary, { recursive: true, force: true });
    runChecked('cp', ['-a', path.join(this.dir, 'data'), temporary]);
    renameSync(temporary, datadir);
    this.start();
  }

  #script(command: 'start' | 'stop'): string {
    return runChecked('bash', [MARIADB_SH, command], { env: { ...process.env, MARIADB_DIR: this.dir, MARIADB_PORT: String(this.port) } });
  }
}
