import { Transform, type TransformCallback } from 'node:stream';
import { execa } from 'execa';
import { AgentError, cancelled } from '../../errors.ts';
import { childEnv } from '../../child-env.ts';
import type { BinlogReplayPlan } from '../driver.ts';
import { parseGtid, type Gtid } from '../binlog/gather.ts';
import { clientArgs, quoteIdent, type DefaultsFile } from './connection.ts';
import { loadDump } from './load.ts';
import { StatementPolicy, tokenize, type Token } from './statement-check.ts';

/** The last transaction a replay applied, as the job reports it. */
export interface AppliedPoint {
  gtid: string | null;
  /** The event's time (the binlog's, whole seconds), ISO. */
  time: string | null;
  file: string;
  /** end_log_pos of its last event. */
  position: number;
}

export interface ReplayFacts {
  statements: number;
  /** Statements of other databases, or of no database, passed over (the binlog is the whole server's). */
  skipped: number;
  last: AppliedPoint | null;
}

/** What mariadb-binlog prints for its own events: event types a BINLOG statement may carry. */
const FORMAT_DESCRIPTION = 15;
const TABLE_MAP = 19;
/** Row events: v1 and v2 write/update/delete, MariaDB's compressed ones, and partial updates. */
const ROW_EVENTS = new Set([23, 24, 25, 30, 31, 32, 166, 167, 168, 169, 170, 171]);
const EVENT_HEADER = 19;

/**
 * Replays a gathered binlog on the staged databases: `mariadb-binlog` decodes the files from the
 * base backup's position to the stop, with each source database renamed to its staging one in the
 * events (`--rewrite-db`, which covers ROW events and the default database), and the filter
 * below passes on only what may run there, into `mysql` (load.ts).
 */
export async function replayBinlog(defaults: DefaultsFile, plan: BinlogReplayPlan, rewrites: ReadonlyMap<string, string>, existing: readonly string[], signal: AbortSignal): Promise<ReplayFacts> {
  const { stop } = plan;
  // --stop-position is a position in the last file named: none after the stop's.
  const files = stop.kind === 'position' ? plan.files.slice(0, plan.files.findIndex((f) => basename(f) === stop.point.file) + 1) : plan.files;
  if (files.length === 0) throw new AgentError('E_INTERNAL', 'the binlog gathered for the replay does not hold the stop position');
  const args = [
    `--start-position=${plan.start.position}`,
    stopOption(stop),
    ...[...rewrites].map(([source, staging]) => `--rewrite-db=${source}->${staging}`),
    '--',
    ...files,
  ];
  // --stop-datetime is read in the process's time zone: UTC, as the job's times are.
  const decoder = execa('mariadb-binlog', [...args], { buffer: false, stderr: 'pipe', env: childEnv({ TZ: 'UTC' }), extendEnv: false, cancelSignal: signal, forceKillAfterDelay: 2_000 });
  // Settled at once: when the filter refuses, execa fails the child with that refusal while the
  // load is still winding down, and a rejection nobody awaited yet would end the process.
  const decoded = decoder.then(
    () => undefined,
    (error: unknown) => ({ error }),
  );
  let decoderMessages = '';
  decoder.stderr.on('data', (chunk: Buffer) => {
    if (decoderMessages.length < 2_000) decoderMessages += chunk.toString('utf8');
  });
  const filter = new ReplayFilter({ staging: rewrites, existing, firstFile: basename(files[0]!) });
  try {
    await loadDump(defaults, decoder.stdout, filter, signal);
  } catch (error) {
    decoder.kill('SIGKILL');
    await decoded;
    // The filter's refusal is the story, however the pipeline's streams passed it on.
    throw filter.failure ?? error;
  }
  const failed = await decoded;
  if (failed) {
    if (signal.aborted) throw cancelled(signal);
    const e = failed.error as { code?: string; exitCode?: number };
    if (e.code === 'ENOENT') throw new AgentError('E_RESTORE_FAILED', 'mariadb-binlog is not installed (install mariadb-client)', { cause: failed.error });
    throw new AgentError('E_RESTORE_FAILED', `mariadb-binlog could not decode the stored binlog (exit code ${e.exitCode}): ${decoderMessages.trim().slice(0, 500)}`, { cause: failed.error });
  }
  // A stream record may name a transaction whose commit its segment does not hold (records
  // written before segments named committed transactions only): the replay is then short of
  // the point asked for, and the staged databases are dropped rather than restored.
  if (stop.kind === 'gtid' && !filter.holdsCommitOf(stop.gtid)) {
    const asked = `${stop.gtid.domain}-${stop.gtid.server}-${stop.gtid.seq}`;
    throw new AgentError(
      'E_PITR_OUT_OF_WINDOW',
      `the stored binlog ends before transaction ${asked} committed (the last applied: ${filter.facts.last?.gtid ?? 'none'}): nothing was restored; restore to an earlier transaction, or retry once the binlog stream has stored past it ('backup window')`,
    );
  }
  return filter.facts;
}

/** mariadb-binlog's stop: before the first event of the next second; at a byte of the last file; after a GTID's transaction (10.8+). */
function stopOption(stop: BinlogReplayPlan['stop']): string {
  if (stop.kind === 'time') return `--stop-datetime=${mysqlDatetime(stop.ms)}`;
  if (stop.kind === 'gtid') return `--stop-position=${stop.gtid.domain}-${stop.gtid.server}-${stop.gtid.seq}`;
  return `--stop-position=${stop.point.position}`;
}

function basename(file: string): string {
  return file.slice(file.lastIndexOf('/') + 1);
}

/** `YYYY-MM-DD HH:MM:SS` in UTC. */
function mysqlDatetime(ms: number): string {
  return new Date(ms).toISOString().slice(0, 19).replace('T', ' ');
}

interface FilterOptions {
  /** Source database → staging database (what --rewrite-db renamed). */
  staging: ReadonlyMap<string, string>;
  existing: readonly string[];
  firstFile: string;
}

/**
 * The decoded binlog, line by line, statement by statement: only what a replay onto the staging
 * databases needs passes, in the shapes mariadb-binlog writes. The records were authenticated
 * (gather.ts); this is the same least privilege as a dump's load (issue #10), since a node that
 * holds the key could still write a binlog that reaches outside its databases.
 *
 * - `BINLOG '…'` (row events): decoded here; every table map must name a staging database, or
 *   (all of them naming others) the statement is passed over; mixed, refused.
 * - `use`: a staging database is kept; another is passed over, with every unqualified statement
 *   under it.
 * - session SETs, transaction control: passed; the GTID ones (gtid_seq_no, server_id,
 *   gtid_domain_id) and SET TIMESTAMP dropped, so the replayed transactions are new ones of
 *   this server, with its GTIDs and times, rather than copies of old ones.
 * - any other statement naming a dumped database (qualified, or as the default database): the dump's
 *   statement policy (statement-check.ts) checks it and maps its names to staging; one naming no
 *   dumped database is passed over.
 */
export class ReplayFilter extends Transform {
  readonly #policy: StatementPolicy;
  readonly #sources: Set<string>;
  readonly #stagingNames: Set<string>;
  readonly #stagingBySource: Map<string, string>;
  #pending = '';
  #statement: string[] = [];
  #delimiter = ';';
  /** The default database the session would have, and whether it is a staging one. */
  #defaultOurs = false;
  #file: string;
  #eventGtid: string | null = null;
  #eventTime: string | null = null;
  #eventEnd = 0;
  /** The current event group is a DDL statement (its GTID event says `ddl`): applied once it ran, with no COMMIT. */
  #eventIsDdl = false;
  /** The transaction decoded so far and not committed yet (by COMMIT, or a DDL by its Query event), and whether it is a DDL. */
  #open: { gtid: Gtid; ddl: boolean } | null = null;
  /** Per domain, the highest seq of a transaction whose commit the binlog held, replayed or passed over. */
  readonly #committedSeq = new Map<number, number>();
  readonly facts: ReplayFacts = { statements: 0, skipped: 0, last: null };
  /** Why the filter refused the stream, once it has. */
  failure: AgentError | undefined;

  constructor(options: FilterOptions) {
    super();
    this.#policy = new StatementPolicy({ staging: options.staging, existing: [...options.existing, ...options.staging.values()] });
    this.#sources = new Set([...options.staging.keys()].map((s) => s.toLowerCase()));
    this.#stagingNames = new Set([...options.staging.values()].map((s) => s.toLowerCase()));
    this.#stagingBySource = new Map([...options.staging].map(([source, staging]) => [source.toLowerCase(), staging]));
    this.#file = options.firstFile;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      // latin1: bytes map 1:1 to chars, as the statement policy reads them.
      const text = this.#pending + chunk.toString('latin1');
      const lines = text.split('\n');
      this.#pending = lines.pop()!;
      for (const line of lines) this.#line(line);
      callback();
    } catch (error) {
      this.#fail(error, callback);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      if (this.#pending) this.#line(this.#pending);
      if (this.#statement.length) throw refused('the decoded binlog ends inside a statement', this.#statement.join('\n'));
      callback();
    } catch (error) {
      this.#fail(error, callback);
    }
  }

  #fail(error: unknown, callback: TransformCallback): void {
    if (error instanceof AgentError) this.failure ??= error;
    callback(error as Error);
  }

  #line(line: string): void {
    if (this.#statement.length === 0) {
      if (line.startsWith('#')) return this.#comment(line);
      if (line.trim() === '') return;
      const delimiter = /^DELIMITER (\S+)$/.exec(line);
      if (delimiter) {
        this.#delimiter = delimiter[1]!;
        return this.#emit(`${line}\n`);
      }
    }
    if (!line.endsWith(this.#delimiter)) {
      this.#statement.push(line);
      return;
    }
    this.#statement.push(line.slice(0, line.length - this.#delimiter.length));
    const statement = this.#statement.join('\n');
    this.#statement = [];
    const passed = this.#check(statement);
    if (passed === undefined) return;
    this.facts.statements++;
    this.#emit(`${passed}${this.#delimiter}\n`);
    if (/^COMMIT$/i.test(passed.trim()) || this.#eventIsDdl) this.#applied();
    // Transaction control always passes: the commit of a transaction of any database is seen here
    // (not a ROLLBACK: mariadb-binlog writes its own at the start of each file).
    if (/^COMMIT$/i.test(passed.trim())) this.#committed();
  }

  /**
   * Whether the decoded binlog held the commit of `gtid`'s transaction (or of a later one of its
   * domain). mariadb-binlog stops after the stop transaction when it has it, but ends quietly
   * (a warning, exit 0) when the files end before it, or inside it: a replay to a GTID is short
   * unless this holds.
   */
  holdsCommitOf(gtid: Gtid): boolean {
    return (this.#committedSeq.get(gtid.domain) ?? -1) >= gtid.seq;
  }

  #committed(): void {
    if (!this.#open) return;
    const { domain, seq } = this.#open.gtid;
    this.#committedSeq.set(domain, Math.max(seq, this.#committedSeq.get(domain) ?? -1));
    this.#open = null;
  }

  /** `#<time> server id N  end_log_pos P … GTID D-S-N [ddl|trans]`, `Rotate to FILE`: where we are. */
  #comment(line: string): void {
    const header = /^#(\d{6} [ \d]\d:\d\d:\d\d) server id \d+\s+end_log_pos (\d+)/.exec(line);
    if (!header) return;
    this.#eventEnd = Number(header[2]);
    const gtid = /\tGTID (\d+-\d+-\d+)( ddl| trans)?/.exec(line);
    if (gtid) {
      this.#eventGtid = gtid[1]!;
      this.#eventIsDdl = gtid[2] === ' ddl';
      this.#open = { gtid: parseGtid(gtid[1]!)!, ddl: this.#eventIsDdl };
      const [date, time] = header[1]!.split(' ').filter(Boolean);
      this.#eventTime = `20${date!.slice(0, 2)}-${date!.slice(2, 4)}-${date!.slice(4, 6)}T${time!.padStart(8, '0')}Z`;
    }
    // A DDL's transaction is its Query event, which mariadb-binlog prints whole or not at all.
    else if (this.#open?.ddl && /\tQuery\t/.test(line)) this.#committed();
    const rotate = /\tRotate to (\S+)\s+pos:/.exec(line);
    if (rotate) this.#file = rotate[1]!;
  }

  #applied(): void {
    this.facts.last = { gtid: this.#eventGtid, time: this.#eventTime, file: this.#file, position: this.#eventEnd };
    this.#eventIsDdl = false;
  }

  #emit(text: string): void {
    this.push(Buffer.from(text, 'latin1'));
  }

  /** The statement as it is to run, or undefined to pass it over. */
  #check(statement: string): string | undefined {
    const text = statement.trim();
    if (/^BINLOG '\n?[A-Za-z0-9+/=\n]*'$/.test(text)) return this.#rowEvents(text, statement);
    if (/^BINLOG\b/i.test(text)) throw refused('a BINLOG statement of another shape than mariadb-binlog writes (fragments are not replayed)', statement);
    if (/^(START TRANSACTION|BEGIN|COMMIT|ROLLBACK)( \/\* added by mysqlbinlog \*\/)?$/i.test(text)) return statement;
    // The GTIDs of the source: the replay's transactions take this server's own.
    if (/^\/\*M?!\d* SET @@session\.(gtid_seq_no|server_id|gtid_domain_id)=\d+\*\/$/i.test(text)) return undefined;
    // And their time: logged at the source's, the replay's events would put old times after new
    // ones in this server's binlog, and a later point-in-time restore reads the binlog by time.
    // ROW events carry their values, so no row changes with it.
    if (/^SET TIMESTAMP=\d+(\.\d+)?$/i.test(text)) return undefined;
    // mariadb-binlog's closing lines put back the GTID settings dropped above: nothing to put back.
    if (/^\/\*!\d* SET @@SESSION\.(SERVER_ID|GTID_DOMAIN_ID)=@@GLOBAL\.(SERVER_ID|GTID_DOMAIN_ID) \*\/$/i.test(text)) return undefined;
    const clientCharset = /^\/\*!\\C ([A-Za-z0-9_]+) \*\/$/.exec(text); // the client's character set command
    if (clientCharset) return checkCharset(clientCharset[1]!, statement);
    const use = /^use `((?:[^`]|``)+)`$/.exec(text);
    if (use) {
      this.#defaultOurs = this.#stagingNames.has(use[1]!.replace(/``/g, '`').toLowerCase());
      // Passing over a `use` of another database would leave ours the default: every
      // unqualified statement after it is passed over too, until the next `use`.
      return this.#defaultOurs ? statement : undefined;
    }
    const setting = sessionSet(text);
    if (setting === 'session') return checkLexing(text, statement);
    if (setting === 'other') throw refused('it sets something other than a session variable', statement);
    // A statement of its own (DDL, or DML written as a statement): ours only when it names a dumped database.
    let tokens: Token[];
    try {
      tokens = tokenize(text, this.#policy.mode);
    } catch (error) {
      throw refused(`it does not parse as one statement (${(error as Error).message.slice(0, 120)})`, statement);
    }
    // A restore of these databases (its staging load and its RENAME) since the base: what came
    // before it cannot be replayed over what it brought in.
    if (namesSource(tokens, this.#sources) && /__sa_(stage|old)_[0-9a-f]{6}/.test(text)) {
      throw new AgentError(
        'E_PITR_OUT_OF_WINDOW',
        `the binlog after this base backup holds a restore of these databases (at ${this.#eventTime ?? 'an unknown time'}): a point after a restore is restorable only from the base backup taken right after it ('backup window' shows the gap); choose a point before the restore, or after that base`,
      );
    }
    if (!this.#defaultOurs && !namesSource(tokens, this.#sources)) {
      this.facts.skipped++;
      return undefined;
    }
    // What applications and online schema tools (gh-ost, pt-online-schema-change) do that a dump never holds.
    if (tokens[0]?.value === 'TRUNCATE' || (tokens[0]?.value === 'RENAME' && tokens[1]?.value === 'TABLE')) return this.#tableNames(tokens, text, statement);
    try {
      return this.#policy.check(statement);
    } catch (error) {
      throw refused(`the statement policy of restores refuses it: ${(error as Error).message.slice(0, 300)}`, statement);
    }
  }

  /**
   * TRUNCATE [TABLE] t, RENAME TABLE a TO b[, …]: nothing but table names, each mapped to
   * staging when qualified with a dumped database, refused when qualified with another, and
   * unqualified only under a staging database's `use`.
   */
  #tableNames(tokens: Token[], text: string, statement: string): string {
    const isName = (t: Token | undefined): t is Token => t !== undefined && (t.type === 'word' || t.type === 'ident');
    const rename = tokens[0]!.value === 'RENAME';
    const shape = () => refused('it is not a TRUNCATE or RENAME TABLE of tables only', statement);
    const edits: { start: number; end: number; text: string }[] = [];
    for (let k = rename || tokens[1]?.value === 'TABLE' ? 2 : 1; ; k++) {
      const first = tokens[k];
      if (!isName(first)) throw shape();
      const table = tokens[k + 2];
      if (tokens[k + 1]?.value === '.' && isName(table)) {
        // Words are upper-cased by the lexer: the name as written is the text's.
        const staging = this.#stagingBySource.get((first.type === 'ident' ? first.value : text.slice(first.start, first.end)).toLowerCase());
        if (staging === undefined) throw refused('it names a table of another database', statement);
        edits.push({ start: first.start, end: table.end, text: `${quoteIdent(staging)}.${quoteIdent(table.type === 'ident' ? table.value : text.slice(table.start, table.end))}` });
        k += 3;
      } else {
        if (!this.#defaultOurs) throw refused('it names a table without its database outside a staging database', statement);
        k += 1;
      }
      if (k >= tokens.length) break;
      if (!rename || (tokens[k]!.value !== 'TO' && tokens[k]!.value !== ',')) throw shape();
    }
    return edits.reduceRight((out, edit) => out.slice(0, edit.start) + edit.text + out.slice(edit.end), text);
  }

  /** A BINLOG statement's events: a format description, or table maps and row events of staging tables only. */
  #rowEvents(text: string, statement: string): string | undefined {
    const bytes = Buffer.from(text.slice('BINLOG \''.length, -1).replace(/\n/g, ''), 'base64');
    let ours = 0;
    let others = 0;
    for (let at = 0; at < bytes.length; ) {
      if (bytes.length - at < EVENT_HEADER) throw refused('a BINLOG statement with a truncated event', statement);
      const type = bytes[at + 4]!;
      const size = bytes.readUInt32LE(at + 9);
      if (size < EVENT_HEADER || at + size > bytes.length) throw refused('a BINLOG statement with an event of a wrong size', statement);
      if (type === TABLE_MAP) {
        // Post-header: table id (6) and flags (2); then the database name, length-prefixed and NUL-terminated.
        const nameAt = at + EVENT_HEADER + 8;
        const length = bytes[nameAt];
        if (length === undefined || nameAt + 1 + length > at + size) throw refused('a BINLOG statement with a malformed table map', statement);
        const database = bytes.toString('utf8', nameAt + 1, nameAt + 1 + length).toLowerCase();
        if (this.#stagingNames.has(database)) ours++;
        else others++;
      } else if (type !== FORMAT_DESCRIPTION && !ROW_EVENTS.has(type)) {
        throw refused(`a BINLOG statement holding an event of type ${type}, which is not a row event`, statement);
      }
      at += size;
    }
    if (ours && others) throw refused('a BINLOG statement whose rows are in staging and in other databases at once', statement);
    if (others) {
      this.facts.skipped++;
      return undefined;
    }
    return statement;
  }
}

/** 'session' for a SET of session variables, user variables or the statement's own values (TIMESTAMP, INSERT_ID); 'other' for any other SET; undefined for no SET. */
function sessionSet(text: string): 'session' | 'other' | undefined {
  const body = /^(?:\/\*M?!\d* )?SET (.*?)(?:\*\/)?$/is.exec(text)?.[1];
  if (body === undefined) return undefined;
  const assignments = body.split(',').map((a) => a.trim().split('=')[0]!.trim());
  const ok = assignments.every(
    (name) =>
      /^@@session\.[a-z_]+$/i.test(name) ||
      /^@[A-Za-z0-9_]+$/.test(name) ||
      /^(TIMESTAMP|INSERT_ID|LAST_INSERT_ID|COMPLETION_TYPE)$/i.test(name),
  );
  return ok && !/@@global|\bGLOBAL\b|\bPASSWORD\b|\bROLE\b/i.test(body) ? 'session' : 'other';
}

/** sql_mode bits (MariaDB's numbering, as the binlog writes them) under which quotes and backslashes read otherwise than the check reads them. */
const FOREIGN_LEXING_MODES = [
  ['ANSI_QUOTES', 1 << 2],
  ['ORACLE', 1 << 9],
  ['MSSQL', 1 << 10],
  ['NO_BACKSLASH_ESCAPES', 1 << 20],
] as const;
/** Character sets in which every byte below 0x80 is that ASCII character (statement-check.ts reads so). */
const SAFE_CHARSETS = new Set(['utf8mb4', 'utf8mb3', 'utf8', 'latin1', 'ascii', 'binary']);

/**
 * A session SET the filter passes: its sql_mode and character set must leave quotes and
 * backslashes read as the statement check reads them, or a name could hide in what the check
 * takes for a string.
 */
function checkLexing(text: string, statement: string): string {
  const mode = /@@session\.sql_mode=(\d+)/i.exec(text);
  if (mode) {
    const value = BigInt(mode[1]!);
    const foreign = FOREIGN_LEXING_MODES.filter(([, bit]) => (value & BigInt(bit)) !== 0n).map(([name]) => name);
    if (foreign.length) throw refused(`a session with sql_mode ${foreign.join(',')}, which the restore's check does not read`, statement);
  }
  const charset = /@@session\.character_set_client=([A-Za-z0-9_]+)/i.exec(text);
  return charset ? checkCharset(charset[1]!, statement) : statement;
}

function checkCharset(charset: string, statement: string): string {
  if (!SAFE_CHARSETS.has(charset.toLowerCase())) throw refused(`a session in character set ${charset}, in which a quote or backslash byte may be part of a character`, statement);
  return statement;
}

/** Whether any qualified name (`db.x`) in the tokens names a dumped database. */
function namesSource(tokens: Token[], sources: ReadonlySet<string>): boolean {
  return tokens.some((t, i) => (t.type === 'word' || t.type === 'ident') && tokens[i + 1]?.value === '.' && sources.has(t.value.toLowerCase()));
}

function refused(why: string, statement: string): AgentError {
  return new AgentError(
    'E_UNSAFE_ARCHIVE_ENTRY',
    `the stored binlog has a statement a point-in-time restore does not run: ${why} (statement: ${statement.trim().slice(0, 160)}); nothing was changed outside the restore's staging databases`,
  );
}
