import { Transform, type TransformCallback } from 'node:stream';
import { AgentError } from '../../errors.ts';
import { quoteIdent } from './connection.ts';
import { DUMP_TRAILER, parseDumpHeader } from './dump-format.ts';
import { DeferredKeys } from './deferred-keys.ts';
import { droppedStatement } from './dropped-statements.ts';
import type { Schema } from './swap.ts';
import { SANDBOX_LINES, StatementPolicy, ValueScanner, unsafe } from './statement-check.ts';

/*
 * Lexer states. The lexer mirrors how the `mysql` client splits its input into statements:
 * quotes, backquotes, comments, executable comments (/*! … *\/ and /*M! … *\/ are code), the
 * DELIMITER command, and backslash escapes (off under sql_mode NO_BACKSLASH_ESCAPES).
 */
const TOP = 0;
const SQUOTE = 1;
const DQUOTE = 2;
const BACKTICK = 3;
const BLOCK_COMMENT = 4;
const LINE_COMMENT = 5;
const DELIMITER_LINE = 6;

const NL = 0x0a;
const BACKSLASH = 0x5c;
const QUOTE = 0x27;
const DOUBLE_QUOTE = 0x22;
const BACKQUOTE = 0x60;
const SLASH = 0x2f;
const STAR = 0x2a;
const DASH = 0x2d;
const HASH = 0x23;
const BANG = 0x21;
const M = 0x4d;

/** Bytes kept back at a chunk's end so every lookahead (delimiter, comment openers) is whole. */
const HOLD = 32;
/** A statement is classified once this much of it is seen (its first words). */
const CLASSIFY_BYTES = 64;
/** Statements we hold whole (all but INSERT's rows) never come near this in a mysqldump. */
const MAX_STATEMENT_BYTES = 64 * 1024 * 1024;
const MAX_HEADER_BYTES = 64 * 1024;
const MAX_DELIMITER = 16;

const NAME = '(`(?:[^`]|``)+`|[A-Za-z0-9_$]+)';
const CREATE_DATABASE = new RegExp(`^CREATE\\s+(?:DATABASE|SCHEMA)\\s+(?:(?:/\\*!\\d*\\s*IF\\s+NOT\\s+EXISTS\\s*\\*/|IF\\s+NOT\\s+EXISTS)\\s*)?${NAME}([\\s\\S]*)$`, 'i');
const ALTER_DATABASE = new RegExp(`^ALTER\\s+(?:DATABASE|SCHEMA)\\s+${NAME}([\\s\\S]*)$`, 'i');
const USE = new RegExp(`^USE\\s+${NAME}\\s*$`, 'i');
const DATABASE_STATEMENT = /^(?:CREATE|ALTER|DROP|RENAME)\s+(?:OR\s+REPLACE\s+)?(?:DATABASE|SCHEMA)\b/i;
/** ALTER DATABASE without a name applies to the current (staging) database. */
const ALTER_OPTION_WORDS = new Set(['CHARACTER', 'CHARSET', 'COLLATE', 'DEFAULT', 'COMMENT', 'UPGRADE', 'READ']);

export interface RewriteOptions {
  /** Called once with the header's databases: source name → staging name (throw to refuse). */
  resolve(databases: readonly string[]): ReadonlyMap<string, string>;
  /** Every database on the server: a statement naming one that is not the dump's is refused. */
  existing: readonly string[];
}

/**
 * Turns a storage-agent dump into one that loads into staging databases: `CREATE DATABASE`,
 * `ALTER DATABASE` and `USE` naming a dumped database are rewritten to its staging database
 * (CREATE loses IF NOT EXISTS, so an existing database is never loaded into); any other
 * statement that would create, drop or rename a database, or a database the header does not
 * list, fails the stream. Every other statement is held whole and checked (statement-check.ts:
 * only what mysqldump writes, names mapped to staging, DEFINER=CURRENT_USER) before a byte of
 * it is passed on; INSERT's head is checked likewise and its rows, which may be huge, are
 * checked as they stream (values only). A refused statement fails the stream with
 * E_UNSAFE_ARCHIVE_ENTRY before mysql receives it. Memory stays bounded by the largest DDL
 * statement. It also fails a dump that does not end with mysqldump's "-- Dump completed" line
 * (a truncated dump). Oracle mysqldump's SQL_LOG_BIN and GTID_PURGED statements, and Percona's
 * MyRocks bulk-load ones, are dropped (dropped-statements.ts); `gtidPurged` tells the driver to warn.
 */
export class StagingRewriter extends Transform {
  readonly #resolve: RewriteOptions['resolve'];
  readonly #existing: readonly string[];
  #map: ReadonlyMap<string, string> | undefined;
  #policy: StatementPolicy | undefined;
  readonly #created = new Set<string>();
  #gtidPurged: string | undefined;
  /** The staging database the dump's last USE chose. */
  #database: string | undefined;
  readonly #deferredKeys = new DeferredKeys();
  #header: Buffer[] | undefined = [];
  #headerBytes = 0;
  #carry: Buffer | undefined;
  #tail = Buffer.alloc(0);

  #state = TOP;
  #versioned = false;
  #escaped = false;
  #noBackslashEscapes = false;
  #ansiQuotes = false;
  #delimiter = Buffer.from(';');
  #atStatementStart = true;
  /** Bytes that may change the lexer's state at TOP: the rest is skipped without a look. */
  readonly #interesting = interestingBytes(';');

  /** Held bytes of the current statement (undefined: passing through). */
  #held: Buffer[] | undefined;
  #heldBytes = 0;
  /** The held statement was inspected and must be held to its end. */
  #inspect = false;
  /** Holding an INSERT up to its VALUES; then streaming its rows through the scanner. */
  #insertHead = false;
  #values: ValueScanner | undefined;

  constructor(options: RewriteOptions) {
    super({ highWaterMark: 1 << 20 });
    this.#resolve = options.resolve;
    this.#existing = options.existing;
  }

  /** The GTID set of the dump's `SET @@GLOBAL.GTID_PURGED`, which was dropped; undefined when it had none. */
  get gtidPurged(): string | undefined {
    return this.#gtidPurged;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.#keepTail(chunk);
      const rest = this.#header ? this.#takeHeader(chunk) : chunk;
      if (rest && rest.length > 0) this.#feed(rest, false);
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      if (this.#header) throw notADump('it has no header line');
      this.#feed(Buffer.alloc(0), true);
      if (this.#held) this.#endStatement();
      const keys = this.#deferredKeys.take(); // a last table with no rows section
      if (keys) this.push(Buffer.from(`\n${keys}${this.#delimiter.toString('latin1')}\n`, 'latin1'));
      const last = this.#tail.toString('latin1').trimEnd().split('\n').at(-1) ?? '';
      if (!last.startsWith(DUMP_TRAILER)) {
        throw new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump is truncated: it does not end with mysqldump's "${DUMP_TRAILER}" line`);
      }
      const missing = [...this.#map!.keys()].filter((db) => !this.#created.has(db));
      if (missing.length) throw new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump has no CREATE DATABASE for ${missing.join(', ')}`);
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  #keepTail(chunk: Buffer): void {
    const joined = chunk.length >= 256 ? chunk.subarray(chunk.length - 256) : Buffer.concat([this.#tail, chunk]);
    this.#tail = Buffer.from(joined.subarray(Math.max(0, joined.length - 256)));
  }

  /** Collects the first line, resolves the databases; returns what follows it. */
  #takeHeader(chunk: Buffer): Buffer | undefined {
    const nl = chunk.indexOf(NL);
    if (nl < 0) {
      this.#header!.push(chunk);
      this.#headerBytes += chunk.length;
      if (this.#headerBytes > MAX_HEADER_BYTES) throw notADump('its first line is not a storage-agent header');
      return undefined;
    }
    const line = Buffer.concat([...this.#header!, chunk.subarray(0, nl + 1)]);
    this.#header = undefined;
    const header = parseDumpHeader(line.toString('utf8').trimEnd());
    if (!header) throw notADump('its first line is not a storage-agent header');
    if (header.format !== 1) throw notADump(`its format ${header.format} is newer than this agent understands`);
    this.#map = this.#resolve(header.databases);
    this.#policy = new StatementPolicy({ staging: this.#map, existing: this.#existing });
    this.push(line);
    // The session starts from a known sql_mode: the server's default could hold
    // NO_BACKSLASH_ESCAPES or ANSI_QUOTES, which change where a string ends.
    this.push(Buffer.from("SET SESSION sql_mode = '';\n"));
    return chunk.subarray(nl + 1);
  }

  #feed(chunk: Buffer, final: boolean): void {
    const data = this.#carry ? Buffer.concat([this.#carry, chunk]) : chunk;
    this.#carry = undefined;
    const limit = final ? data.length : data.length - HOLD;
    if (limit <= 0) {
      this.#carry = Buffer.from(data);
      return;
    }
    let from = 0; // first byte not yet emitted or held
    let i = 0;
    while (i < limit) {
      let c = data[i]!;
      switch (this.#state) {
        case SQUOTE:
        case DQUOTE: {
          // Scan the string in a tight loop: most of a dump's bytes are inside one.
          if (this.#escaped) {
            this.#escaped = false;
            i++;
          }
          const quote = this.#state === SQUOTE ? QUOTE : DOUBLE_QUOTE;
          // Under ANSI_QUOTES "…" is a name: no escapes in it.
          const escapes = !this.#noBackslashEscapes && !(quote === DOUBLE_QUOTE && this.#ansiQuotes);
          while (i < limit) {
            const b = data[i]!;
            if (b === quote) {
              this.#state = TOP;
              i++;
              break;
            }
            if (b === BACKSLASH && escapes) {
              if (i + 1 >= limit) {
                this.#escaped = true;
                i++;
                break;
              }
              i += 2;
              continue;
            }
            i++;
          }
          continue;
        }
        case BACKTICK:
          if (c === BACKQUOTE) this.#state = TOP;
          i++;
          continue;
        case BLOCK_COMMENT:
          if (c === STAR && data[i + 1] === SLASH) {
            this.#state = TOP;
            i += 2;
          } else i++;
          continue;
        case LINE_COMMENT: {
          const nl = data.indexOf(NL, i);
          if (nl < 0 || nl >= limit) {
            i = limit;
          } else {
            this.#state = TOP;
            i = nl + 1;
          }
          continue;
        }
        case DELIMITER_LINE:
          i++;
          if (c === NL) {
            this.#hold(data, from, i);
            from = i;
            this.#setDelimiter();
          }
          continue;
      }
      // Inside a statement that passes through: skip what cannot open or close anything.
      if (!this.#atStatementStart && !this.#insertHead && this.#values === undefined && (this.#held === undefined || this.#inspect)) {
        const interesting = this.#interesting;
        while (i < limit && interesting[data[i]!] === 0) i++;
        if (i >= limit) break;
        c = data[i]!;
      }
      // TOP: code, between or inside statements.
      if (this.#atStatementStart) {
        if (c === 0x20 || c === 0x09 || c === NL || c === 0x0d) {
          i++;
          continue;
        }
        const skip = this.#commentStart(data, i);
        if (skip > 0) {
          i += skip;
          continue;
        }
        this.#emit(data, from, i);
        from = i;
        this.#held = [];
        this.#heldBytes = 0;
        this.#inspect = false;
        if (isDelimiterCommand(data, i)) {
          this.#state = DELIMITER_LINE;
          continue;
        }
        // A statement begins: held until its first word tells whether to inspect it whole.
        this.#atStatementStart = false;
      }
      if (this.#held && !this.#inspect && (this.#heldBytes + (i - from) >= CLASSIFY_BYTES || isOpener(c) || !isWordChar(c))) {
        this.#hold(data, from, i);
        from = i;
        const kind = this.#classify();
        if (kind !== undefined) this.#inspect = true;
        if (kind === 'insert') this.#insertHead = true;
      }
      if (this.#insertHead && (c | 0x20) === 0x76 && isValuesAt(data, i, i > 0 ? data[i - 1] : this.#lastHeldByte())) {
        i += VALUES.length;
        this.#hold(data, from, i);
        from = i;
        this.#startRows();
        continue;
      }
      const rows = this.#values;
      if (rows && !(c === this.#delimiter[0] && this.#matchesDelimiter(data, i))) {
        if (c === QUOTE) {
          rows.end();
          this.#state = SQUOTE;
        } else if (c === DASH && data[i + 1] === DASH) {
          throw unsafe('it has a comment inside INSERT rows', 'INSERT … VALUES … --');
        } else {
          rows.byte(c);
          // Hex literals (every BLOB, --hex-blob) are most of what is not a string: skip them in a tight loop.
          i = rows.hexRun(data, i + 1, limit);
          continue;
        }
        i++;
        continue;
      }
      if (c === this.#delimiter[0] && this.#matchesDelimiter(data, i)) {
        i += this.#delimiter.length;
        if (this.#held) {
          this.#hold(data, from, i);
          from = i;
          this.#endStatement();
        }
        this.#values?.end();
        this.#values = undefined;
        this.#versioned = false;
        this.#atStatementStart = true;
        continue;
      }
      if (c === QUOTE) this.#state = SQUOTE;
      else if (c === DOUBLE_QUOTE) this.#state = DQUOTE;
      else if (c === BACKQUOTE) this.#state = BACKTICK;
      else if (c === STAR && this.#versioned && data[i + 1] === SLASH) {
        this.#versioned = false;
        i += 2;
        continue;
      } else {
        const skip = this.#commentStart(data, i);
        if (skip > 0) {
          i += skip;
          continue;
        }
      }
      i++;
    }
    // A token that straddles `limit` (a delimiter, */, an escape) was consumed whole: go on from its end.
    const end = Math.min(Math.max(i, limit), data.length);
    if (this.#held) this.#hold(data, from, end);
    else this.#emit(data, from, end);
    if (end < data.length) this.#carry = Buffer.from(data.subarray(end));
  }

  /**
   * At a comment opener: enters the comment (or, for /*! and /*M!, the executable-comment code)
   * and returns how many bytes to skip; 0 when `data[i]` opens no comment. At a statement's
   * start an executable comment is the statement itself: 0.
   */
  #commentStart(data: Buffer, i: number): number {
    const c = data[i];
    if (c === HASH) {
      this.#state = LINE_COMMENT;
      return 1;
    }
    if (c === DASH && data[i + 1] === DASH && isSpaceOrControl(data[i + 2])) {
      this.#state = LINE_COMMENT;
      return 2;
    }
    if (c === SLASH && data[i + 1] === STAR) {
      if (data[i + 2] === BANG || (data[i + 2] === M && data[i + 3] === BANG)) {
        if (this.#atStatementStart) return 0;
        this.#versioned = true;
      } else {
        this.#state = BLOCK_COMMENT;
      }
      return 2;
    }
    return 0;
  }

  #matchesDelimiter(data: Buffer, i: number): boolean {
    const d = this.#delimiter;
    for (let k = 1; k < d.length; k++) if (data[i + k] !== d[k]) return false;
    return true;
  }

  #emit(data: Buffer, from: number, to: number): void {
    if (to > from) this.push(data.subarray(from, to));
  }

  #hold(data: Buffer, from: number, to: number): void {
    if (to <= from) return;
    this.#held!.push(Buffer.from(data.subarray(from, to)));
    this.#heldBytes += to - from;
    if (this.#heldBytes > MAX_STATEMENT_BYTES) {
      throw new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump has a statement over ${MAX_STATEMENT_BYTES} bytes that is not INSERT rows; refusing it`);
    }
  }

  #release(): void {
    for (const part of this.#held!) this.push(part);
    this.#held = undefined;
    this.#heldBytes = 0;
    this.#inspect = false;
  }

  #lastHeldByte(): number | undefined {
    const last = this.#held?.at(-1);
    return last?.[last.length - 1];
  }

  /** INSERT's head is whole (it ends with VALUES): checked and passed on; its rows stream. */
  #startRows(): void {
    const head = Buffer.concat(this.#held!).toString('latin1');
    this.#held = undefined;
    this.#heldBytes = 0;
    this.#inspect = false;
    this.#insertHead = false;
    this.push(Buffer.from(this.#policy!.checkInsertHead(head), 'latin1'));
    this.#values = new ValueScanner();
  }

  /**
   * Decides from the held start of a statement how it is held: 'insert' (its head, then its
   * rows stream), 'whole' (every other statement), undefined (its first word is not complete yet).
   */
  #classify(): 'insert' | 'whole' | undefined {
    const text = Buffer.concat(this.#held!).toString('latin1');
    const head = stripVersion(text);
    const word = /^([A-Za-z]+)(?=[^A-Za-z])/.exec(head)?.[1];
    if (word !== undefined) return word.toUpperCase() === 'INSERT' && head === text ? 'insert' : 'whole';
    if (text.length < CLASSIFY_BYTES && (/^[A-Za-z]*$/.test(head) || /^\/\*?M?!?\d*$/.test(text))) return undefined;
    return 'whole';
  }

  #endStatement(): void {
    const text = Buffer.concat(this.#held!).toString('latin1');
    this.#held = undefined;
    this.#heldBytes = 0;
    this.#inspect = false;
    this.push(Buffer.from(this.#rewrite(text), 'latin1'));
  }

  #setDelimiter(): void {
    const line = Buffer.concat(this.#held!).toString('latin1');
    this.#release();
    const value = /^delimiter[ \t]+(\S+)/i.exec(line)?.[1];
    if (!value || value.length > MAX_DELIMITER || value.includes('\\')) {
      throw new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump has an unsupported DELIMITER command: ${line.trim().slice(0, 80)}`);
    }
    this.#delimiter = Buffer.from(value, 'latin1');
    this.#interesting.set(interestingBytes(value));
    this.#state = TOP;
    this.#atStatementStart = true;
  }

  /** One whole statement (with its delimiter), as latin1 so that bytes map 1:1 to chars. */
  #rewrite(text: string): string {
    const delimiter = this.#delimiter.toString('latin1');
    const ends = text.endsWith(delimiter);
    const whole = ends ? text.slice(0, -delimiter.length) : text;
    const suffix = ends ? delimiter : '';
    // mysqldump's first line is the MariaDB client's sandbox command, with no delimiter of its own.
    const prefix = SANDBOX_LINES.find((line) => whole.startsWith(line)) ?? '';
    const statement = whole.slice(prefix.length);
    // Oracle and Percona mysqldump's binary log, GTID and bulk-load statements: dropped whole, delimiter and all.
    const dropped = droppedStatement(statement);
    if (dropped) {
      if (dropped.kind === 'gtid_purged') this.#gtidPurged = dropped.gtids;
      return prefix;
    }
    const rewritten = this.#rewriteStatement(statement);
    // Plain secondary keys are added once the table's rows are in (deferred-keys.ts).
    const ending = (extra: string | undefined) => (extra ? `\n${extra}${delimiter}\n` : '');
    const kind = stripVersion(rewritten.trimStart());
    if (/^CREATE\s+TABLE\s/i.test(kind) && kind === rewritten.trimStart()) {
      const { before, statement: create } = this.#deferredKeys.create(rewritten, this.#database);
      return `${prefix}${ending(before)}${create}${suffix}`;
    }
    if (/^UNLOCK\s+TABLES\s*$/i.test(kind)) return `${prefix}${rewritten}${suffix}${ending(this.#deferredKeys.take())}`;
    // A table without a rows section: its keys before the next object, and before its
    // database's section ends (`backup get` cuts the dump by section, at CREATE DATABASE).
    if (/^(?:CREATE|DROP|USE|ALTER\s+DATABASE)\b/i.test(kind)) return `${prefix}${ending(this.#deferredKeys.take())}${rewritten}${suffix}`;
    return `${prefix}${rewritten}${suffix}`;
  }

  #rewriteStatement(statement: string): string {
    const trimmed = statement.trimStart();
    const head = stripVersion(trimmed);
    const word = /^([A-Za-z]+)/.exec(head)?.[1]?.toUpperCase();
    if (word === 'USE') {
      const match = USE.exec(trimmed);
      if (!match) throw refuse(statement);
      this.#database = this.#staging(match[1]!, statement);
      return `USE ${quoteIdent(this.#database)}`;
    }
    if (!DATABASE_STATEMENT.test(head)) {
      const checked = this.#policy!.check(statement);
      const mode = this.#policy!.mode;
      this.#noBackslashEscapes = mode.noBackslashEscapes;
      this.#ansiQuotes = mode.ansiQuotes;
      return checked;
    }
    if (head !== trimmed) throw refuse(statement); // a database statement inside /*! … */
    this.#policy!.noSecondStatement(statement);
    const create = CREATE_DATABASE.exec(trimmed);
    if (create) {
      const source = unquote(create[1]!);
      const staging = this.#staging(create[1]!, statement);
      this.#created.add(source);
      return `CREATE DATABASE ${quoteIdent(staging)}${create[2]}`;
    }
    const alter = ALTER_DATABASE.exec(trimmed);
    if (alter) {
      if (!alter[1]!.startsWith('`') && ALTER_OPTION_WORDS.has(alter[1]!.toUpperCase())) return statement;
      return `ALTER DATABASE ${quoteIdent(this.#staging(alter[1]!, statement))}${alter[2]}`;
    }
    throw refuse(statement);
  }

  #staging(name: string, statement: string): string {
    const source = unquote(name);
    const staging = this.#map!.get(source);
    if (staging === undefined) {
      throw new AgentError(
        'E_UNSAFE_ARCHIVE_ENTRY',
        `the MySQL dump names database ${source}, which its header does not list (statement: ${statement.trim().slice(0, 120)}); refusing to load it`,
      );
    }
    return staging;
  }

}

/**
 * The staged objects' definitions, to be recreated in the targets: where the dump qualified a
 * name with one of its databases the rewriter wrote its staging name (so the load touched only
 * staging); routine, trigger and event bodies keep that text, so it becomes the target's.
 */
export function retarget(schema: Schema, plans: readonly { staging: string; target: string }[]): Schema {
  const fix = <T extends { create: string }>(objects: readonly T[]): T[] =>
    objects.map((o) => ({ ...o, create: plans.reduce((text, p) => text.replaceAll(quoteIdent(p.staging), quoteIdent(p.target)), o.create) }));
  return { ...schema, triggers: fix(schema.triggers), views: fix(schema.views), routines: fix(schema.routines), events: fix(schema.events) };
}

function stripVersion(text: string): string {
  return text.replace(/^\/\*M?!\d*\s*/, '');
}

function unquote(name: string): string {
  return name.startsWith('`') ? name.slice(1, -1).replaceAll('``', '`') : name;
}

function interestingBytes(delimiter: string): Uint8Array {
  const table = new Uint8Array(256);
  for (const c of [QUOTE, DOUBLE_QUOTE, BACKQUOTE, SLASH, STAR, DASH, HASH, delimiter.charCodeAt(0)]) table[c] = 1;
  return table;
}

/** Bytes that open a quote or comment: the statement's first word is complete before them. */
function isOpener(c: number): boolean {
  return c === QUOTE || c === DOUBLE_QUOTE || c === BACKQUOTE || c === SLASH || c === DASH || c === HASH;
}

function isSpaceOrControl(c: number | undefined): boolean {
  return c === undefined || c <= 0x20;
}

const VALUES = 'values';

/** `VALUES` as a word at `i` (the byte before it given: it may be in the previous chunk). */
function isValuesAt(data: Buffer, i: number, before: number | undefined): boolean {
  if (before !== undefined && isWordChar(before)) return false;
  for (let k = 0; k < VALUES.length; k++) if ((data[i + k]! | 0x20) !== VALUES.charCodeAt(k)) return false;
  const after = data[i + VALUES.length];
  return after === undefined || !isWordChar(after);
}

function isWordChar(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x7a) || c === 0x5f || c === 0x24 || c >= 0x80;
}

function isDelimiterCommand(data: Buffer, i: number): boolean {
  const word = 'delimiter';
  for (let k = 0; k < word.length; k++) {
    const c = data[i + k];
    if (c === undefined || (c | 0x20) !== word.charCodeAt(k)) return false;
  }
  const after = data[i + word.length];
  return after === 0x20 || after === 0x09;
}

function notADump(why: string): AgentError {
  return new AgentError('E_ARCHIVE_CORRUPT', `not a storage-agent MySQL dump: ${why}`);
}

function refuse(statement: string): AgentError {
  return new AgentError('E_UNSAFE_ARCHIVE_ENTRY', `the MySQL dump has a statement that would change a database outside staging: ${statement.trim().slice(0, 120)}; refusing to load it`);
}
