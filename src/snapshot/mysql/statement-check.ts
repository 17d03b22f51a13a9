import { AgentError } from '../../errors.ts';
import { quoteIdent } from './connection.ts';

/*
 * Least privilege at load (issue #10): a restored dump may only do what mysqldump writes for
 * the dumped databases, and only to their staging copies. Even an authenticated dump is
 * checked, statement by statement as it streams, since a compromised node can write a valid
 * one. Statements are checked as latin1 text (bytes map 1:1 to chars); the session character
 * set is kept to ones where quote and backslash bytes are never part of a multibyte character,
 * so what we take for a string is what the server takes for one.
 */

type TokenType = 'word' | 'ident' | 'string' | 'number' | 'var' | 'punct';
interface Token {
  type: TokenType;
  /** word: upper-cased; ident: unquoted; string: raw; var: as written. */
  value: string;
  start: number;
  end: number;
}

export interface LexMode {
  noBackslashEscapes: boolean;
  ansiQuotes: boolean;
}

/** mysqldump's first line on MariaDB: a client command (`\-`) that turns the sandbox on. */
export const SANDBOX_LINE = '/*M!999999\\- enable the sandbox mode */';

/** Character sets in which every byte below 0x80 is that ASCII character. */
const SAFE_CHARSETS = new Set(['utf8mb4', 'utf8mb3', 'utf8', 'latin1', 'ascii', 'binary']);
const SESSION_VARIABLES = new Set([
  'character_set_client',
  'character_set_results',
  'collation_connection',
  'time_zone',
  'sql_mode',
  'unique_checks',
  'foreign_key_checks',
  'sql_notes',
]);
const OBJECT_KINDS = new Set(['TABLE', 'VIEW', 'TRIGGER', 'PROCEDURE', 'FUNCTION', 'EVENT']);
/** What holds statements of its own (BEGIN … END and the like). */
const BODY_KINDS = new Set(['TRIGGER', 'PROCEDURE', 'FUNCTION', 'EVENT']);
/** Words that never occur in what mysqldump writes, in bodies neither: administration, files, dynamic SQL. */
const BANNED_WORDS = new Set([
  'GRANT',
  'REVOKE',
  'FLUSH',
  'SHUTDOWN',
  'KILL',
  'INSTALL',
  'UNINSTALL',
  'BINLOG',
  'PURGE',
  'PREPARE',
  'OUTFILE',
  'DUMPFILE',
  'INFILE',
  'LOAD_FILE',
  // CREATE FUNCTION … SONAME loads a shared library into the server.
  'SONAME',
  'DIRECTORY',
  'CONNECTION',
  'FEDERATED',
  'SPIDER',
  // A body may hold statements: none may change how the rest is read (nor USE, below).
  'SQL_MODE',
  'CHARACTER_SET_CLIENT',
]);
/** A banned second word after these first ones (CREATE USER, SET PASSWORD, EXECUTE IMMEDIATE …). */
const BANNED_PAIRS: Record<string, Set<string>> = {
  CREATE: new Set(['USER', 'ROLE', 'SERVER', 'DATABASE', 'SCHEMA', 'TABLESPACE']),
  DROP: new Set(['USER', 'ROLE', 'SERVER', 'DATABASE', 'SCHEMA', 'TABLESPACE']),
  ALTER: new Set(['USER', 'SERVER', 'DATABASE', 'SCHEMA', 'TABLESPACE']),
  RENAME: new Set(['USER', 'TABLE']),
  SET: new Set(['PASSWORD', 'GLOBAL', 'ROLE', 'STATEMENT', 'NAMES', 'CHARSET', 'CHARACTER']),
  EXECUTE: new Set(['IMMEDIATE']),
  LOAD: new Set(['DATA', 'XML', 'INDEX']),
  CHANGE: new Set(['MASTER', 'REPLICATION']),
  START: new Set(['SLAVE', 'REPLICA']),
  STOP: new Set(['SLAVE', 'REPLICA']),
};
/** Storage engines that reach other servers or tables (ENGINE=CONNECT, FEDERATED, SPIDER, MERGE). */
const REMOTE_ENGINES = new Set(['CONNECT', 'FEDERATED', 'FEDERATEDX', 'SPIDER', 'MERGE', 'MRG_MYISAM']);

/**
 * Splits one statement into tokens. The content of executable comments (`/*!50003 … *\/`,
 * `/*M! … *\/`) is code: the server runs it, so it is checked like the rest (a version above
 * the server's makes it a comment there: checking it anyway is only stricter). Plain comments
 * are dropped. A backslash outside a string is refused: only client commands start with one.
 */
function tokenize(text: string, mode: LexMode): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  let versioned = false;
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f' || c === '\v') {
      i++;
    } else if (c === '#' || (c === '-' && text[i + 1] === '-' && (i + 2 >= n || text.charCodeAt(i + 2) <= 0x20))) {
      const nl = text.indexOf('\n', i);
      i = nl < 0 ? n : nl + 1;
    } else if (c === '/' && text[i + 1] === '*') {
      const exec = /^\/\*M?!\d*/.exec(text.slice(i, i + 12));
      if (exec) {
        if (versioned) throw unsafe('it nests executable comments', text);
        versioned = true;
        i += exec[0].length;
      } else {
        const close = text.indexOf('*/', i + 2);
        i = close < 0 ? n : close + 2;
      }
    } else if (c === '*' && text[i + 1] === '/' && versioned) {
      versioned = false;
      i += 2;
    } else if (c === "'" || (c === '"' && !mode.ansiQuotes)) {
      const end = stringEnd(text, i, c, !mode.noBackslashEscapes);
      tokens.push({ type: 'string', value: text.slice(i, end), start: i, end });
      i = end;
    } else if (c === '`' || c === '"') {
      const end = identEnd(text, i, c);
      tokens.push({ type: 'ident', value: text.slice(i + 1, end - 1).replaceAll(c + c, c), start: i, end });
      i = end;
    } else if (c === '@') {
      let end = i + 1;
      if (text[end] === '@') end++;
      const q = text[end];
      if (q === '`' || q === "'" || q === '"') end = q === '`' ? identEnd(text, end, q) : stringEnd(text, end, q, !mode.noBackslashEscapes);
      else while (end < n && /[A-Za-z0-9_$.]/.test(text[end]!)) end++;
      tokens.push({ type: 'var', value: text.slice(i, end), start: i, end });
      i = end;
    } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(text[i + 1] ?? '') && !isName(tokens.at(-1)))) {
      // A name may start with a digit (`9db`): what is more than a number is a word, and a dot
      // after a name is always a qualifier's (`db.1t` is db, then 1t).
      const number = NUMBER.exec(text.slice(i, i + 400))?.[0];
      let end = i + (number?.length ?? 0);
      if (number === undefined) while (end < n && /[0-9A-Za-z_$\x80-\xff]/.test(text[end]!)) end++;
      tokens.push({ type: number === undefined ? 'word' : 'number', value: text.slice(i, end).toUpperCase(), start: i, end });
      i = end;
    } else if (/[A-Za-z_$\x80-\xff]/.test(c)) {
      let end = i + 1;
      while (end < n && /[A-Za-z0-9_$\x80-\xff]/.test(text[end]!)) end++;
      tokens.push({ type: 'word', value: text.slice(i, end).toUpperCase(), start: i, end });
      i = end;
    } else if (c === '\\') {
      throw unsafe('it has a client command (a backslash outside a string)', text);
    } else if (c.charCodeAt(0) < 0x20) {
      // Control bytes mean nothing in SQL; a NUL may end the query early for the server.
      throw unsafe(`it has the control byte 0x${c.charCodeAt(0).toString(16)} outside a string`, text);
    } else {
      tokens.push({ type: 'punct', value: c, start: i, end: i + 1 });
      i++;
    }
  }
  return tokens;
}

/** A numeric literal not followed by a name character (then it is a name, `1e5x`). */
const NUMBER = /^(?:0x[0-9a-f]+|\d+\.\d*(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?|\d+e[+-]?\d+|\d+)(?![0-9a-z_$\x80-\xff])/i;

function stringEnd(text: string, i: number, quote: string, escapes: boolean): number {
  let k = i + 1;
  while (k < text.length) {
    const c = text[k]!;
    if (c === '\\' && escapes) k += 2;
    else if (c === quote) {
      if (text[k + 1] === quote) k += 2;
      else return k + 1;
    } else k++;
  }
  return text.length;
}

function identEnd(text: string, i: number, quote: string): number {
  let k = i + 1;
  while (k < text.length) {
    if (text[k] === quote) {
      if (text[k + 1] === quote) k += 2;
      else return k + 1;
    } else k++;
  }
  return text.length;
}

function isName(t: Token | undefined): t is Token {
  return t !== undefined && (t.type === 'word' || t.type === 'ident');
}

export interface PolicyOptions {
  /** Source database → staging database: the only databases a statement may name. */
  staging: ReadonlyMap<string, string>;
  /** Every database on the server (as the restoring account sees them). */
  existing: readonly string[];
}

/**
 * Checks and rewrites whole statements (the rewriter hands over everything but INSERT's rows):
 * only the kinds mysqldump writes pass; a qualified name whose database is a dumped one is
 * mapped to its staging database, one naming any other database on the server (or a system
 * schema) fails; DEFINER clauses become DEFINER=CURRENT_USER. Also follows the session's
 * sql_mode and character set, which decide how the server reads quotes and backslashes.
 */
export class StatementPolicy {
  readonly #staging = new Map<string, string>();
  readonly #foreign = new Set<string>(['mysql', 'information_schema', 'performance_schema', 'sys']);
  /** What we know each session setting to be, and what user variables saved of them. */
  #sqlMode = '';
  #charset = 'utf8mb4';
  readonly #saved = new Map<string, string>();

  constructor(options: PolicyOptions) {
    for (const [source, staging] of options.staging) this.#staging.set(source.toLowerCase(), staging);
    for (const db of options.existing) {
      const key = Buffer.from(db, 'utf8').toString('latin1').toLowerCase();
      if (!this.#staging.has(key)) this.#foreign.add(key);
    }
  }

  get mode(): LexMode {
    const modes = this.#sqlMode.toUpperCase().split(',');
    return { noBackslashEscapes: modes.includes('NO_BACKSLASH_ESCAPES'), ansiQuotes: modes.includes('ANSI_QUOTES') || modes.includes('ANSI') };
  }

  /** One statement without its delimiter: returns it as it is to be run, or throws E_UNSAFE_ARCHIVE_ENTRY. */
  check(statement: string): string {
    const tokens = tokenize(statement, this.mode);
    if (tokens.length === 0) return statement;
    const first = tokens[0]!;
    if (first.type !== 'word') throw unsafe('it is not a statement mysqldump writes', statement);
    switch (first.value) {
      case 'SET':
        this.#set(tokens, statement);
        return statement;
      case 'LOCK':
      case 'UNLOCK':
        if (tokens[1]?.value !== 'TABLES') throw unsafe('it is not a statement mysqldump writes', statement);
        break;
      case 'DROP':
      case 'ALTER':
        if (!OBJECT_KINDS.has(tokens[1]?.value ?? '') || tokens[1]!.type !== 'word') throw unsafe(`${first.value} ${tokens[1]?.value ?? ''} is not one mysqldump writes`, statement);
        break;
      case 'CREATE':
        if (!OBJECT_KINDS.has(createdKind(tokens) ?? '')) throw unsafe('it creates something mysqldump does not write', statement);
        break;
      case 'INSERT':
        throw unsafe('it is an INSERT without VALUES', statement);
      default:
        throw unsafe(`${first.value} is not a statement mysqldump writes`, statement);
    }
    // Under another DELIMITER a `;` ends a statement for the server (the client sends several
    // at once): only a routine, trigger or event body holds statements.
    if (!BODY_KINDS.has(createdKind(tokens) ?? '')) this.noSecondStatement(statement);
    return this.#names(tokens, statement);
  }

  /** Refuses a `;` outside strings and comments: a second statement the kind check never saw. */
  noSecondStatement(text: string): void {
    if (tokenize(text, this.mode).some((t) => t.value === ';' && t.type === 'punct')) throw unsafe('it holds a second statement after a ";"', text);
  }

  /** INSERT's head, up to and with VALUES: `INSERT [IGNORE] INTO name [(columns)] VALUES`, the table mapped. */
  checkInsertHead(head: string): string {
    const tokens = tokenize(head, this.mode);
    let k = 1;
    if (tokens[k]?.value === 'IGNORE') k++;
    if (tokens[0]?.value !== 'INSERT' || tokens[k]?.value !== 'INTO' || !isName(tokens[k + 1])) throw unsafe('it is not an INSERT mysqldump writes', head);
    k += 2;
    if (tokens[k]?.value === '.' && isName(tokens[k + 1])) k += 2;
    if (tokens[k]?.value === '(') {
      k++;
      while (isName(tokens[k]) && (tokens[k + 1]?.value === ',' || tokens[k + 1]?.value === ')')) k += 2;
      if (tokens[k - 1]?.value !== ')') throw unsafe('its column list is not one of names', head);
    }
    if (tokens[k]?.value !== 'VALUES' || k !== tokens.length - 1 || tokens.some((t) => t.type === 'var' || t.type === 'string')) {
      throw unsafe('it is not an INSERT … VALUES mysqldump writes', head);
    }
    return this.#names(tokens, head);
  }

  /** Qualified names, banned words and DEFINER over the whole statement; returns it rewritten. */
  #names(tokens: Token[], statement: string): string {
    const edits: { start: number; end: number; text: string }[] = [];
    for (let k = 0; k < tokens.length; k++) {
      const t = tokens[k]!;
      if (t.type === 'word') {
        if (BANNED_WORDS.has(t.value) || BANNED_PAIRS[t.value]?.has(tokens[k + 1]?.type === 'word' ? tokens[k + 1]!.value : '')) {
          throw unsafe(`it uses ${t.value}${BANNED_PAIRS[t.value] ? ` ${tokens[k + 1]!.value}` : ''}, which no dump of a database needs`, statement);
        }
        // USE in a body would switch the database unqualified names resolve to (USE INDEX is a hint).
        if (t.value === 'USE' && !['INDEX', 'KEY'].includes(tokens[k + 1]?.value ?? '')) throw unsafe('it switches databases with USE', statement);
        const engine = tokens[k + 1]?.value === '=' ? tokens[k + 2] : tokens[k + 1];
        if (t.value === 'ENGINE' && engine?.type === 'word' && REMOTE_ENGINES.has(engine.value)) throw unsafe(`it uses ENGINE=${engine.value}, which reaches beyond the table`, statement);
        if (t.value === 'DEFINER' && tokens[k + 1]?.value === '=') {
          const end = definerEnd(tokens, k + 2);
          if (end === undefined) throw unsafe('its DEFINER is not an account', statement);
          edits.push({ start: tokens[k + 2]!.start, end: tokens[end]!.end, text: 'CURRENT_USER' });
          k = end;
          continue;
        }
      }
      if (t.type === 'var' && /^@@(?:global\.|(?:session\.|local\.)?(?:sql_mode|character_set_client)$)/i.test(t.value)) {
        throw unsafe('it touches a global variable, or the sql_mode or character set outside a SET of its own', statement);
      }
      // The first part of a qualified name (`db`.`t`, db.t.c, db.*): a database or a table/alias.
      const part = tokens[k + 2];
      if (isName(t) && tokens[k + 1]?.value === '.' && tokens[k - 1]?.value !== '.' && part && (part.type !== 'punct' || part.value === '*')) {
        const key = t.value.toLowerCase();
        const name = t.type === 'ident' ? key : statement.slice(t.start, t.end).toLowerCase();
        const staging = this.#staging.get(name);
        if (staging !== undefined) edits.push({ start: t.start, end: t.end, text: quoteIdent(staging) });
        else if (this.#foreign.has(name)) {
          throw unsafe(`it names database ${name}, which is not one of the dump's (a table or alias named like a database is refused too)`, statement);
        }
      }
    }
    let out = statement;
    for (const edit of edits.reverse()) out = out.slice(0, edit.start) + edit.text + out.slice(edit.end);
    return out;
  }

  /** SET: session settings mysqldump writes, and user variables saving them. */
  #set(tokens: Token[], statement: string): void {
    let k = 1;
    if (tokens[k]?.value === 'SESSION' || tokens[k]?.value === 'LOCAL') k++;
    while (k < tokens.length) {
      const target = tokens[k]!;
      if (target.type === 'word' && target.value === 'NAMES') {
        const value = tokens[k + 1];
        if (!value || !SAFE_CHARSETS.has(literal(value).toLowerCase())) throw unsafe('it sets a character set whose multibyte characters can hide quotes', statement);
        this.#charset = literal(value).toLowerCase();
        k += 2;
        if (tokens[k]?.value === 'COLLATE') k += 2;
      } else {
        const value = tokens[k + 2];
        if (tokens[k + 1]?.value !== '=' || !value || value.type === 'punct') throw unsafe('it is not a SET mysqldump writes', statement);
        k += 3;
        if (target.type === 'var' && !target.value.startsWith('@@')) {
          // `SET @saved = @@sql_mode` or `@saved = 'literal'`: what restoring it later means.
          const from = value.type === 'var' && value.value.startsWith('@@') ? value.value.slice(2).replace(/^session\./i, '').toLowerCase() : undefined;
          const saved = from === 'sql_mode' ? this.#sqlMode : from === 'character_set_client' ? this.#charset : from === undefined ? literal(value) : undefined;
          if (saved === undefined) this.#saved.delete(target.value.toLowerCase());
          else this.#saved.set(target.value.toLowerCase(), saved);
        } else {
          const name = (target.type === 'var' ? target.value.slice(2).replace(/^session\./i, '') : target.value).toLowerCase();
          if (!SESSION_VARIABLES.has(name)) throw unsafe(`it sets ${name}, which mysqldump does not`, statement);
          const setting = value.type === 'var' ? this.#saved.get(value.value.toLowerCase()) : value.type === 'word' && value.value === 'DEFAULT' ? undefined : literal(value);
          if (name === 'sql_mode' || name === 'character_set_client') {
            if (setting === undefined) throw unsafe(`it sets ${name} to a value not known before the server runs it`, statement);
            if (name === 'sql_mode') this.#sqlMode = setting;
            else if (!SAFE_CHARSETS.has(setting.toLowerCase())) throw unsafe('it sets a character set whose multibyte characters can hide quotes', statement);
            else this.#charset = setting.toLowerCase();
          }
        }
      }
      if (k < tokens.length) {
        if (tokens[k]?.value !== ',') throw unsafe('it is not a SET mysqldump writes', statement);
        k++;
      }
    }
  }
}

/** CREATE [OR REPLACE] [ALGORITHM=…] [DEFINER=…] [SQL SECURITY …] [AGGREGATE] <kind>. */
function createdKind(tokens: Token[]): string | undefined {
  let k = 1;
  if (tokens[k]?.value === 'OR' && tokens[k + 1]?.value === 'REPLACE') k += 2;
  for (;;) {
    const t = tokens[k];
    if (t?.type !== 'word') return undefined;
    if (t.value === 'ALGORITHM' && tokens[k + 1]?.value === '=') k += 3;
    else if (t.value === 'DEFINER' && tokens[k + 1]?.value === '=') {
      const end = definerEnd(tokens, k + 2);
      if (end === undefined) return undefined;
      k = end + 1;
    } else if (t.value === 'SQL' && tokens[k + 1]?.value === 'SECURITY') k += 3;
    else if (t.value === 'AGGREGATE') k++;
    else return t.value;
  }
}

/** The last token of an account (`user`@`host`, 'u'@'h', u@h, CURRENT_USER[()]) starting at k. */
function definerEnd(tokens: Token[], k: number): number | undefined {
  const user = tokens[k];
  if (!user) return undefined;
  if (user.type === 'word' && user.value === 'CURRENT_USER') return tokens[k + 1]?.value === '(' && tokens[k + 2]?.value === ')' ? k + 2 : k;
  if (user.type !== 'ident' && user.type !== 'string' && user.type !== 'word') return undefined;
  return tokens[k + 1]?.type === 'var' && !tokens[k + 1]!.value.startsWith('@@') && tokens[k + 1]!.start === user.end ? k + 1 : k;
}

function literal(token: Token): string {
  if (token.type === 'string') return token.value.slice(1, -1);
  return token.value;
}

/**
 * INSERT's rows, streamed (a row may be a GiB): only what mysqldump writes between VALUES and
 * the delimiter — numbers, hex literals, strings, NULL, _binary, commas, parentheses, signs.
 * No name, so no function, subquery or column: nothing that could reach another table.
 * Strings are the lexer's (they never get here); this sees every byte outside them.
 */
export class ValueScanner {
  /** 0: between tokens; 1: number; 2: after a leading 0; 3: hex; 4: word. */
  #run = 0;
  #dot = false;
  #exp = false;
  #word = '';

  byte(c: number): void {
    const run = this.#run;
    if (run === 3 && isHex(c)) return;
    if (run === 2 && (c === 0x78 || c === 0x58)) {
      this.#run = 3;
      return;
    }
    if (run === 1 || run === 2) {
      // A leading 0 continues like any digit.
      if (c >= 0x30 && c <= 0x39) {
        this.#run = 1;
        return;
      }
      if (c === 0x2e && !this.#dot && !this.#exp) {
        this.#dot = true;
        this.#run = 1;
        return;
      }
      if ((c | 0x20) === 0x65 && !this.#exp) {
        this.#exp = true;
        this.#run = 1;
        return;
      }
    }
    if (run === 4 && (isWordByte(c) || (c >= 0x30 && c <= 0x39))) {
      if (this.#word.length > 8) throw unsafeRow();
      this.#word += String.fromCharCode(c);
      return;
    }
    this.end();
    if (c >= 0x30 && c <= 0x39) {
      this.#run = c === 0x30 ? 2 : 1;
    } else if (c === 0x2e) {
      this.#run = 1;
      this.#dot = true;
    } else if (isWordByte(c)) {
      this.#run = 4;
      this.#word = String.fromCharCode(c);
    } else if (!(c === 0x2c || c === 0x28 || c === 0x29 || c === 0x2b || c === 0x2d || c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09)) {
      throw unsafeRow();
    }
  }

  /** Inside a hex literal: the index of the first byte from `i` on that is no hex digit. */
  hexRun(data: Buffer, i: number, limit: number): number {
    if (this.#run !== 3) return i;
    while (i < limit && isHex(data[i]!)) i++;
    return i;
  }

  /** A run ends (a quote, the delimiter): a word must be NULL or _binary; `1e-5` continues after the sign. */
  end(): void {
    if (this.#run === 4 && !/^(?:NULL|_binary)$/i.test(this.#word)) throw unsafeRow();
    this.#run = 0;
    this.#dot = false;
    this.#exp = false;
    this.#word = '';
  }
}

function isHex(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66);
}

function isWordByte(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f || c === 0x24 || c >= 0x80;
}

function unsafeRow(): AgentError {
  return new AgentError(
    'E_UNSAFE_ARCHIVE_ENTRY',
    'the MySQL dump has an INSERT whose rows hold more than values (a name, function or subquery, which mysqldump never writes); refusing to load it',
  );
}

export function unsafe(why: string, statement: string): AgentError {
  return new AgentError(
    'E_UNSAFE_ARCHIVE_ENTRY',
    `the MySQL dump has a statement a restore does not run: ${why} (statement: ${statement.trim().slice(0, 160)}); refusing to load it — nothing was changed outside the restore's staging databases`,
  );
}
