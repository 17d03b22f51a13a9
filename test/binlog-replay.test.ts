import { copyFile, mkdir, mkdtemp, rm, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Connection } from 'mysql2/promise';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAgentError } from '../src/errors.ts';
import { parseGtid } from '../src/snapshot/binlog/gather.ts';
import { replayBinlog } from '../src/snapshot/mysql/binlog-replay.ts';
import { writeDefaultsFile, type DefaultsFile } from '../src/snapshot/mysql/connection.ts';
import { connect, mariadbServer, rows, uniqueName } from './support/mysql.ts';

/**
 * A replay to a GTID against the real mariadb-binlog and MariaDB: the binlog a stream stored may
 * end inside the very transaction asked for (a record written before segments named committed
 * transactions only), and mariadb-binlog then ends quietly, short of it.
 */
describe('replayBinlog to a GTID: the real decoder and server', () => {
  const server = mariadbServer();
  let root: Connection;
  let dir: string;
  let defaults: DefaultsFile;
  const source = uniqueName('replay_src');
  const staging = `${source}__sa_stage_a1b2c3`;
  let binlogFile: string;
  let start: number;
  const gtids: string[] = [];
  /** The server's binlog file as a stream would have stored it after the three: whole, and cut before the last one's commit (its Xid event). */
  let whole: string;
  let cut: string;

  beforeAll(async () => {
    root = await connect(server, { root: true });
    dir = await mkdtemp(path.join(tmpdir(), 'sa-replay-'));
    defaults = await writeDefaultsFile({ host: server.host, port: server.port, socket: undefined, user: server.user, password: server.password }, dir);
    for (const db of [source, staging]) await root.query(`CREATE DATABASE \`${db}\`; CREATE TABLE \`${db}\`.t (id INT PRIMARY KEY) ENGINE=InnoDB`);
    const [status] = await rows<{ File: string; Position: number }>(root, 'SHOW MASTER STATUS');
    binlogFile = status!.File;
    start = status!.Position;
    for (const id of [1, 2, 3]) {
      await root.query(`INSERT INTO \`${source}\`.t VALUES (${id})`);
      gtids.push((await rows<{ gtid: string }>(root, 'SELECT @@last_gtid AS gtid'))[0]!.gtid);
    }
    const events = await rows<{ Pos: number; Event_type: string }>(root, `SHOW BINLOG EVENTS IN '${binlogFile}' FROM ${start}`);
    // Copied before any replay: a replay's own transactions go to the same binlog.
    whole = await storedBinlog('whole');
    cut = await storedBinlog('cut', events.filter((e) => e.Event_type === 'Xid').at(-1)!.Pos);
  });

  afterAll(async () => {
    for (const db of [source, staging]) await root?.query(`DROP DATABASE IF EXISTS \`${db}\``);
    root?.end();
    await rm(dir, { recursive: true, force: true });
  });

  /** A copy of the server's binlog file, cut at `length` bytes if given. */
  async function storedBinlog(name: string, length?: number): Promise<string> {
    const [{ datadir }] = (await rows<{ datadir: string }>(root, 'SELECT @@datadir AS datadir')) as [{ datadir: string }];
    const copy = path.join(dir, name, binlogFile);
    await mkdir(path.dirname(copy), { recursive: true });
    await copyFile(path.join(datadir, binlogFile), copy);
    if (length !== undefined) await truncate(copy, length);
    return copy;
  }

  async function replayTo(gtid: string, file: string) {
    await root.query(`DELETE FROM \`${staging}\`.t`);
    return replayBinlog(defaults, { files: [file], start: { file: binlogFile, position: start }, stop: { kind: 'gtid', gtid: parseGtid(gtid)! } }, new Map([[source, staging]]), [source, staging], new AbortController().signal);
  }

  it('stops after the transaction asked for, and says it applied it', async () => {
    const facts = await replayTo(gtids[1]!, whole);
    expect(facts.last?.gtid).toBe(gtids[1]);
    expect(await rows(root, `SELECT id FROM \`${staging}\`.t ORDER BY id`)).toEqual([{ id: 1 }, { id: 2 }]);
  });

  it('a binlog that ends inside that transaction (before its commit) fails the replay with E_PITR_OUT_OF_WINDOW, naming it and the last applied', async () => {
    const error = await replayTo(gtids[2]!, cut).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isAgentError(error) && error.code).toBe('E_PITR_OUT_OF_WINDOW');
    expect((error as Error).message).toContain(`before transaction ${gtids[2]} committed (the last applied: ${gtids[1]})`);
    // The same cut binlog replays to the transaction before it.
    expect((await replayTo(gtids[1]!, cut)).last?.gtid).toBe(gtids[1]);
  });

  it('a binlog that ends before the transaction fails the same way', async () => {
    const [d, s, seq] = gtids[2]!.split('-').map(Number) as [number, number, number];
    const error = await replayTo(`${d}-${s}-${seq + 5}`, whole).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isAgentError(error) && error.code).toBe('E_PITR_OUT_OF_WINDOW');
    expect(await rows(root, `SELECT id FROM \`${staging}\`.t ORDER BY id`)).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
  });
});
