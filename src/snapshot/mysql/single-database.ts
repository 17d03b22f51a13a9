import { randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { AgentError } from '../../errors.ts';
import type { ElementRecord } from '../manifest.ts';
import { quoteIdent } from './connection.ts';
import { StagingRewriter } from './rewrite.ts';

/*
 * `backup get` of a mysql element writes a dump that loads into the database the user names
 * (`zstd -dc db.sql.zst | mysql scratch`), not into the production databases the stored dump
 * recreates by name (issue #10). The statement scanner is the restore's (StagingRewriter): it
 * maps every dumped database to a marker name of its own, `sa_get_<random>_<index>`, wherever
 * it names one (CREATE/ALTER DATABASE, USE, and qualified names where it rewrites them), so its
 * output names the dumped databases only through markers. The markers are chosen after the dump
 * was written, so its contents cannot forge one, and a plain byte search finds them all: this
 * filter then drops CREATE DATABASE … USE, drops the other databases' sections, and takes the
 * marker out of what is left, without a second SQL lexer.
 */

export interface DatabaseChoice {
  /** The one database of a multi-database element to write, ready to load into any database. */
  database?: string;
  /** Keep the dump as taken: it recreates and loads its databases under their own names. */
  allDatabases?: boolean;
}

/**
 * What `get` writes of the element: the name of the one database its file is cut to, or
 * undefined for the stored archive as it is (a files or redis element, or --all-databases).
 * E_USAGE for an element of several databases without either option, or a database it lacks.
 */
export function chooseDatabase(element: ElementRecord, choice: DatabaseChoice): string | undefined {
  if (element.kind !== 'mysql') {
    if (choice.database !== undefined || choice.allDatabases) {
      throw new AgentError('E_USAGE', `--database and --all-databases are for mysql elements; ${element.name} is a ${element.kind} element`, { details: { element: element.name } });
    }
    return undefined;
  }
  if (choice.database !== undefined && choice.allDatabases) throw new AgentError('E_USAGE', '--database and --all-databases exclude each other: give one');
  if (choice.allDatabases) return undefined;
  const databases = dumpedDatabases(element);
  const listed = databases.join(', ');
  if (choice.database !== undefined) {
    if (databases.includes(choice.database)) return choice.database;
    throw new AgentError('E_USAGE', `--database ${choice.database}: element ${element.name} holds ${listed}`, { details: { element: element.name, databases } });
  }
  if (databases.length === 1) return databases[0];
  throw new AgentError(
    'E_USAGE',
    `element ${element.name} holds databases ${listed}: give --database NAME for a dump of one that loads into the database you load it into, or --all-databases for the dump as taken, which recreates ${listed} under these names`,
    { details: { element: element.name, databases } },
  );
}

/** The databases of a mysql element, as its capture recorded them (fact `databases`). */
function dumpedDatabases(element: ElementRecord): string[] {
  const fact = element.facts.databases;
  const databases = typeof fact === 'string' ? fact.split(',').filter(Boolean) : [];
  if (databases.length === 0) throw new AgentError('E_MANIFEST_INVALID', `element ${element.name}: its manifest does not record its databases`);
  return databases;
}

/**
 * The stages that turn the element's raw dump into one of `database` alone with no
 * CREATE DATABASE or USE: the restore's rewriter (with its checks), then the marker filter.
 * `about` names the source in the first line (`database shop of element db of backup …`).
 */
export function singleDatabaseStages(database: string, about: string): [Transform, Transform] {
  const filter = new SingleDatabaseFilter(database, `sa_get_${randomBytes(12).toString('hex')}_`, about);
  // `existing` is the restore's list of the target server's other databases, whose names a
  // statement may not use; there is no server here (system schemas are refused all the same).
  return [new StagingRewriter({ resolve: (databases) => filter.resolve(databases), existing: [] }), filter];
}

const NL = 0x0a;
const BACKQUOTE = 0x60;
const DOT = 0x2e;
const SEMICOLON = 0x3b;
/** How the rewriter writes the statements that name a database: these words, then the name. */
const CREATE = Buffer.from('CREATE DATABASE ');
const ALTER = Buffer.from('ALTER DATABASE ');
const USE = Buffer.from('USE ');
const MAX_INDEX_DIGITS = 4;
/**
 * mysqldump's closing lines (session variables set back, "-- Dump completed") follow the last
 * database's section; cut to another database they would be dropped with it, so the last bytes
 * dropped are kept in case they hold them. They are under 1 KiB.
 */
const POSTAMBLE = Buffer.from('\n/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;');
const POSTAMBLE_WINDOW = 8 * 1024;

class SingleDatabaseFilter extends Transform {
  readonly #database: string;
  readonly #marker: Buffer;
  readonly #about: string;
  /** The markers' window: a keyword and a marker split across chunks are held back whole. */
  readonly #hold: number;
  #names: readonly string[] = [];
  #chosen = -1;
  /** The section being read: -1 before the first USE (mysqldump's preamble, kept). */
  #current = -1;
  #seen = false;
  /** Inside CREATE DATABASE `m<i>` … USE `m<i>`; (of database i): dropped. */
  #skipping: number | undefined;
  #header = true;
  #carry = Buffer.alloc(0);
  /** The last bytes dropped since the last marker (the postamble, if they end the dump). */
  #dropped = Buffer.alloc(0);

  constructor(database: string, marker: string, about: string) {
    super({ highWaterMark: 1 << 20 });
    this.#database = database;
    this.#marker = Buffer.from(`\`${marker}`);
    this.#about = about;
    this.#hold = CREATE.length + this.#marker.length;
  }

  /** The rewriter's resolve(): every dumped database to its marker. */
  resolve(databases: readonly string[]): ReadonlyMap<string, string> {
    this.#chosen = databases.indexOf(this.#database);
    if (this.#chosen < 0) throw new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump holds ${databases.join(', ')}, not ${this.#database} as its manifest says`);
    this.#names = databases;
    const marker = this.#marker.toString('latin1').slice(1);
    return new Map(databases.map((name, index) => [name, `${marker}${index}`]));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      let data = this.#carry.length > 0 ? Buffer.concat([this.#carry, chunk]) : chunk;
      this.#carry = Buffer.alloc(0);
      if (this.#header) {
        // Our header line says which databases the dump recreates: this file recreates none.
        const nl = data.indexOf(NL);
        if (nl < 0) {
          this.#carry = Buffer.from(data);
          return callback();
        }
        this.#header = false;
        this.push(
          `-- storage-agent: database ${this.#database} of ${this.#about}, without CREATE DATABASE or USE: it loads into the database the client uses (zstd -dc FILE | mysql NAME)\n`,
        );
        data = data.subarray(nl + 1);
      }
      this.#scan(data, false);
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.#scan(this.#carry, true);
      if (this.#skipping !== undefined) throw corrupt(`its CREATE DATABASE ${this.#names[this.#skipping]} is not followed by USE`);
      if (!this.#seen) throw corrupt(`it has no USE ${this.#database}`);
      if (!this.#keeping()) {
        const at = this.#dropped.lastIndexOf(POSTAMBLE);
        if (at >= 0) this.push(this.#dropped.subarray(at + 1));
      }
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  #keeping(): boolean {
    return this.#skipping === undefined && (this.#current === -1 || this.#current === this.#chosen);
  }

  #scan(data: Buffer, final: boolean): void {
    let pos = 0;
    for (;;) {
      const at = data.indexOf(this.#marker, pos);
      if (at < 0) break;
      const keyword = [CREATE, ALTER, USE].find((k) => at - k.length >= pos && data.subarray(at - k.length, at).equals(k));
      const start = at - (keyword?.length ?? 0);
      const digitsAt = at + this.#marker.length;
      const close = data.indexOf(BACKQUOTE, digitsAt);
      if (close < 0 || close + 1 >= data.length) {
        // The marker's end, and the byte after it, are in the next chunk.
        if (final || data.length - digitsAt > MAX_INDEX_DIGITS + 1) throw badMarker();
        this.#out(data, pos, start);
        this.#carry = Buffer.from(data.subarray(start));
        return;
      }
      const digits = data.toString('latin1', digitsAt, close);
      const index = Number(digits);
      if (!/^\d{1,4}$/.test(digits) || index >= this.#names.length) throw badMarker();
      this.#out(data, pos, start);
      pos = close + 1;
      this.#dropped = Buffer.alloc(0);
      if (keyword === CREATE) {
        if (this.#skipping !== undefined) throw corrupt(`its CREATE DATABASE ${this.#names[this.#skipping]} is not followed by USE`);
        this.#skipping = index;
      } else if (keyword === USE) {
        if (this.#skipping !== undefined && this.#skipping !== index) throw corrupt(`its CREATE DATABASE ${this.#names[this.#skipping]} is followed by USE ${this.#names[index]}`);
        this.#skipping = undefined;
        this.#current = index;
        if (index === this.#chosen) this.#seen = true;
        if (data[pos] === SEMICOLON) pos++;
      } else if (!this.#keeping()) {
        // Part of another database's section: dropped with the rest of it.
      } else if (keyword === ALTER) {
        // mysqldump's ALTER DATABASE around routines sets the collation they were created
        // under: here it is the loading database's.
        if (index !== this.#chosen) throw corrupt(`it alters database ${this.#names[index]} inside the section of ${this.#database}`);
        this.push('ALTER DATABASE');
      } else if (index === this.#chosen && data[pos] === DOT) {
        // `shop`.`t` is `t` of the database the dump is loaded into.
        pos++;
      } else {
        this.push(quoteIdent(this.#names[index]!));
      }
    }
    const safe = final ? data.length : Math.max(pos, data.length - this.#hold);
    this.#out(data, pos, safe);
    if (safe < data.length) this.#carry = Buffer.from(data.subarray(safe));
  }

  #out(data: Buffer, from: number, to: number): void {
    if (to <= from || this.#skipping !== undefined) return;
    const part = data.subarray(from, to);
    if (this.#keeping()) {
      this.push(part);
      return;
    }
    const window = part.length >= POSTAMBLE_WINDOW ? part : Buffer.concat([this.#dropped, part]);
    this.#dropped = Buffer.from(window.subarray(Math.max(0, window.length - POSTAMBLE_WINDOW)));
  }
}

function corrupt(why: string): AgentError {
  return new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump cannot be cut to one database: ${why}`);
}

/** The rewriter wrote a marker in a form this filter does not know: a bug, not bad data. */
function badMarker(): AgentError {
  return new AgentError('E_INTERNAL', 'the MySQL dump rewriter wrote a database marker this filter cannot read');
}
