import { Transform, type TransformCallback } from 'node:stream';
import { AgentError } from '../../errors.ts';
import { quoteIdent } from './connection.ts';
import { DUMP_TRAILER, parseDumpHeader } from './dump-format.ts';

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
/** Statements we hold whole (DDL, SET, USE) never come near this in a mysqldump. */
const MAX_STATEMENT_BYTES = 64 * 1024 * 1024;
const MAX_HEADER_BYTES = 64 * 1024;
const MAX_DELIMITER = 16;

/** Statements whose first word may make them name a database: held whole and inspected. */
const INSPECTED = new Set(['USE', 'CREATE', 'ALTER', 'DROP', 'RENAME', 'SET']);
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
}

/**
 * Turns a storage-agent dump into one that loads into staging databases: `CREATE DATABASE`,
 * `ALTER DATABASE` and `USE` naming a dumped database are rewritten to its staging database
 * (CREATE loses IF NOT EXISTS, so an existing database is never loaded into); any other
 * statement that would create, drop or rename a database, or a database the header does not
 * list, fails the stream. Everything else passes unchanged, without being held: memory stays
 * bounded by the largest DDL statement. It also fails a dump that does not end with mysqldump's
 * "-- Dump completed" line (a truncated dump).
 */
export class StagingRewriter extends Transform {
  readonly #resolve: RewriteOptions['resolve'];
  #map: ReadonlyMap<string, string> | undefined;
  readonly #created = new Set<string>();
  #header: Buffer[] | undefined = [];
  #headerBytes = 0;
  #carry: Buffer | undefined;
  #tail = Buffer.alloc(0);

  #state = TOP;
  #versioned = false;
  #escaped = false;
  #noBackslashEscapes = false;
  #delimiter = Buffer.from(';');
  #atStatementStart = true;
  /** Bytes that may change the lexer's state at TOP: the rest is skipped without a look. */
  readonly #interesting = interestingBytes(';');

  /** Held bytes of the current statement (undefined: passing through). */
  #held: Buffer[] | undefined;
  #heldBytes = 0;
  /** The held statement was inspected and must be held to its end. */
  #inspect = false;

  constructor(options: RewriteOptions) {
    super({ highWaterMark: 1 << 20 });
    this.#resolve = options.resolve;
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
    this.push(line);
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
          const escapes = !this.#noBackslashEscapes;
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
      if (!this.#atStatementStart && (this.#held === undefined || this.#inspect)) {
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
      if (this.#held && !this.#inspect && (this.#heldBytes + (i - from) >= CLASSIFY_BYTES || isOpener(c))) {
        this.#hold(data, from, i);
        from = i;
        const inspect = this.#classify();
        if (inspect === false) this.#release();
        else if (inspect) this.#inspect = true;
      }
      if (c === this.#delimiter[0] && this.#matchesDelimiter(data, i)) {
        i += this.#delimiter.length;
        if (this.#held) {
          this.#hold(data, from, i);
          from = i;
          this.#endStatement();
        }
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
      throw new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump has a statement over ${MAX_STATEMENT_BYTES} bytes that names a database; refusing it`);
    }
  }

  #release(): void {
    for (const part of this.#held!) this.push(part);
    this.#held = undefined;
    this.#heldBytes = 0;
    this.#inspect = false;
  }

  /**
   * Decides from the held start of a statement whether it is held whole: true (inspect it),
   * false (pass it through), undefined (its first word is not complete yet).
   */
  #classify(): boolean | undefined {
    const text = Buffer.concat(this.#held!).toString('latin1');
    const head = stripVersion(text);
    const word = /^([A-Za-z]+)(?=[^A-Za-z])/.exec(head)?.[1];
    if (word !== undefined) return INSPECTED.has(word.toUpperCase());
    if (text.length < CLASSIFY_BYTES && (/^[A-Za-z]*$/.test(head) || /^\/\*?M?!?\d*$/.test(text))) return undefined;
    return false;
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
    const statement = ends ? text.slice(0, -delimiter.length) : text;
    const suffix = ends ? delimiter : '';
    const head = stripVersion(statement);
    const word = /^([A-Za-z]+)/.exec(head)?.[1]?.toUpperCase();
    if (word === 'SET') {
      this.#trackSqlMode(head);
      return text;
    }
    if (word === 'USE') {
      const match = USE.exec(statement);
      if (!match) throw refuse(statement);
      return `USE ${quoteIdent(this.#staging(match[1]!, statement))}${suffix}`;
    }
    if (!DATABASE_STATEMENT.test(head)) return text;
    if (head !== statement) throw refuse(statement); // a database statement inside /*! … */
    const create = CREATE_DATABASE.exec(statement);
    if (create) {
      const source = unquote(create[1]!);
      const staging = this.#staging(create[1]!, statement);
      this.#created.add(source);
      return `CREATE DATABASE ${quoteIdent(staging)}${create[2]}${suffix}`;
    }
    const alter = ALTER_DATABASE.exec(statement);
    if (alter) {
      if (!alter[1]!.startsWith('`') && ALTER_OPTION_WORDS.has(alter[1]!.toUpperCase())) return text;
      return `ALTER DATABASE ${quoteIdent(this.#staging(alter[1]!, statement))}${alter[2]}${suffix}`;
    }
    throw refuse(statement);
  }

  #staging(name: string, statement: string): string {
    const source = unquote(name);
    const staging = this.#map!.get(source);
    if (staging === undefined) {
      throw new AgentError(
        'E_ARCHIVE_CORRUPT',
        `the MySQL dump names database ${source}, which its header does not list (statement: ${statement.trim().slice(0, 120)}); refusing to load it`,
      );
    }
    return staging;
  }

  /** The mysql client stops treating backslash as an escape under NO_BACKSLASH_ESCAPES: so do we. */
  #trackSqlMode(statement: string): void {
    const pattern = /\bsql_mode\s*=\s*(?:'([^']*)'|@)/gi;
    let match: RegExpExecArray | null;
    while ((match = pattern.exec(statement)) !== null) {
      this.#noBackslashEscapes = (match[1] ?? '').toUpperCase().split(',').includes('NO_BACKSLASH_ESCAPES');
    }
  }
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
  return new AgentError('E_ARCHIVE_CORRUPT', `the MySQL dump has a statement that would change a database outside staging: ${statement.trim().slice(0, 120)}; refusing to load it`);
}
