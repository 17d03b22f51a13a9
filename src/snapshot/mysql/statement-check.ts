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
export interface Token {
  type: TokenType;
  /** word: upper-cased; ident: unquoted; string: raw; var: as written. */
  value: string;
  start: number;
  end: number;
  /**
   * Inside an executable comment the server may take for a comment: `/*M!` (MySQL skips it), or
   * a version a supported server may not reach (above 5.7, or not five digits).
   */
  cond?: true;
}

export interface LexMode {
  noBackslashEscapes: boolean;
  ansiQuotes: boolean;
}

/** mysqldump's first line on MariaDB: a client command (`\-`) that turns the sandbox on. */
export const SANDBOX_LINE = '/*M!999999\\- enable the sandbox mode */';
/** That line, and its first form (`/*!`: MariaDB 10.5.25, 10.6.18, 10.11.8, 11.0.6, 11.1.5, 11.2.4, 11.4.2, May 2024). */
export const SANDBOX_LINES = [SANDBOX_LINE, '/*!999999\\- enable the sandbox mode */'] as const;
/** Executable comments up to this version run on every server a restore may load into. */
const ALWAYS_RUN_VERSION = 50700;

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
  // MariaDB ≥ 10.6.16 mysqldump: `SET @OLD_NOTE_VERBOSITY=@@NOTE_VERBOSITY, NOTE_VERBOSITY=0`, and back.
  'note_verbosity',
]);
/** sql_mode values that turn ANSI_QUOTES on (MariaDB's combination modes included). */
const ANSI_QUOTES_MODES = ['ANSI_QUOTES', 'ANSI', 'DB2', 'MAXDB', 'MSSQL', 'ORACLE', 'POSTGRESQL'];
/** sql_modes whose grammar this check does not follow: MSSQL quotes names in [ ], ORACLE has its own stored-program syntax. */
const FOREIGN_GRAMMAR_MODES = ['MSSQL', 'ORACLE'];
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
  SET: new Set(['PASSWORD', 'GLOBAL', 'ROLE', 'DEFAULT', 'STATEMENT', 'NAMES', 'CHARSET', 'CHARACTER']),
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
 * the server's makes it a comment there: checking it anyway is only stricter; tokens the
 * server may skip are marked `cond`, since whether they run decides where a stored program's
 * statements start). Plain comments are dropped. A backslash outside a string is refused: only
 * client commands start with one.
 */
export function tokenize(text: string, mode: LexMode): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  let versioned = false;
  let cond = false;
  const push = (token: Token) => tokens.push(cond ? { ...token, cond: true } : token);
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f' || c === '\v') {
      i++;
    } else if (c === '#' || (c === '-' && text[i + 1] === '-' && (i + 2 >= n || text.charCodeAt(i + 2) <= 0x20))) {
      const nl = text.indexOf('\n', i);
      i = nl < 0 ? n : nl + 1;
    } else if (c === '/' && text[i + 1] === '*') {
      const exec = /^\/\*(M?)!(\d*)/.exec(text.slice(i, i + 12));
      if (exec) {
        if (versioned) throw unsafe('it nests executable comments', text);
        versioned = true;
        const version = exec[2]!;
        cond = exec[1] === 'M' || (version !== '' && (version.length !== 5 || Number(version) > ALWAYS_RUN_VERSION));
        i += exec[0].length;
      } else {
        const close = text.indexOf('*/', i + 2);
        i = close < 0 ? n : close + 2;
      }
    } else if (c === '*' && text[i + 1] === '/' && versioned) {
      versioned = false;
      cond = false;
      i += 2;
    } else if (c === "'" || (c === '"' && !mode.ansiQuotes)) {
      const end = stringEnd(text, i, c, !mode.noBackslashEscapes);
      push({ type: 'string', value: text.slice(i, end), start: i, end });
      i = end;
    } else if (c === '`' || c === '"') {
      const end = identEnd(text, i, c);
      push({ type: 'ident', value: text.slice(i + 1, end - 1).replaceAll(c + c, c), start: i, end });
      i = end;
    } else if (c === '@') {
      let end = i + 1;
      if (text[end] === '@') end++;
      const q = text[end];
      if (q === '`' || q === "'" || q === '"') end = q === '`' ? identEnd(text, end, q) : stringEnd(text, end, q, !mode.noBackslashEscapes);
      else while (end < n && /[A-Za-z0-9_$.]/.test(text[end]!)) end++;
      push({ type: 'var', value: text.slice(i, end), start: i, end });
      i = end;
    } else if (/[0-9]/.test(c) || (c === '.' && /[0-9]/.test(text[i + 1] ?? '') && !isName(tokens.at(-1)))) {
      // A name may start with a digit (`9db`): what is more than a number is a word, and a dot
      // after a name is always a qualifier's (`db.1t` is db, then 1t).
      const number = NUMBER.exec(text.slice(i, i + 400))?.[0];
      let end = i + (number?.length ?? 0);
      if (number === undefined) while (end < n && /[0-9A-Za-z_$\x80-\xff]/.test(text[end]!)) end++;
      push({ type: number === undefined ? 'word' : 'number', value: text.slice(i, end).toUpperCase(), start: i, end });
      i = end;
    } else if (/[A-Za-z_$\x80-\xff]/.test(c)) {
      let end = i + 1;
      while (end < n && /[A-Za-z0-9_$\x80-\xff]/.test(text[end]!)) end++;
      push({ type: 'word', value: text.slice(i, end).toUpperCase(), start: i, end });
      i = end;
    } else if (c === '\\') {
      throw unsafe('it has a client command (a backslash outside a string)', text);
    } else if (c.charCodeAt(0) < 0x20) {
      // Control bytes mean nothing in SQL; a NUL may end the query early for the server.
      throw unsafe(`it has the control byte 0x${c.charCodeAt(0).toString(16)} outside a string`, text);
    } else {
      push({ type: 'punct', value: c, start: i, end: i + 1 });
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
    return { noBackslashEscapes: modes.includes('NO_BACKSLASH_ESCAPES'), ansiQuotes: ANSI_QUOTES_MODES.some((m) => modes.includes(m)) };
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
    // at once): only a routine, trigger or event body holds statements, and each of them must
    // be one a stored program may hold (it runs as the restoring account, later, whoever calls it).
    const body = bodyStart(tokens, statement);
    if (body === undefined) this.noSecondStatement(statement);
    else {
      if (tokens.some((t) => t.cond)) throw unsafe('a stored program holds an executable comment some servers skip (/*M!…*/, or a version above 5.7): where its statements start would depend on the server', statement);
      new BodyCheck(tokens, statement).run(body);
    }
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
            if (name === 'sql_mode') this.#sqlMode = checkSqlMode(setting, value, statement);
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
  const at = kindAt(tokens);
  return at === undefined ? undefined : tokens[at]!.value;
}

/** Where createdKind's word is. */
function kindAt(tokens: Token[]): number | undefined {
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
    else return k;
  }
}

/**
 * A sql_mode value: mode names only (the server takes a number as a bit mask: `4` is
 * ANSI_QUOTES), none whose grammar the check does not follow.
 */
function checkSqlMode(setting: string, value: Token, statement: string): string {
  if (value.type === 'number' || !/^[A-Za-z_,]*$/.test(setting)) throw unsafe('it sets sql_mode to something other than mode names', statement);
  const foreign = setting.toUpperCase().split(',').find((m) => FOREIGN_GRAMMAR_MODES.includes(m));
  if (foreign !== undefined) throw unsafe(`it sets sql_mode ${foreign}, whose grammar a restore does not check`, statement);
  return setting;
}

/*
 * Stored programs (issue #10). A restored routine, trigger or event runs as the restoring
 * account (its DEFINER is CURRENT_USER), which also backs up and so holds global RELOAD,
 * PROCESS, BINLOG MONITOR and SELECT: a body of `RESET MASTER` would delete every binary log
 * for any caller allowed to EXECUTE it, an event would do it by itself. So a body is walked
 * statement by statement, the way the server splits it (BEGIN … END, IF/CASE/LOOP/WHILE/REPEAT/
 * FOR, handlers), and every statement in it must be one of what a stored program holds to work
 * on its own database's data: an allow-list, not a list of what is dangerous.
 */

/** Statements a body may hold as they are. */
const BODY_STATEMENTS = new Set([
  'SELECT',
  'WITH',
  'INSERT',
  'REPLACE',
  'UPDATE',
  'DELETE',
  'CALL',
  'SET',
  'DO',
  'RETURN',
  'LEAVE',
  'ITERATE',
  'OPEN',
  'FETCH',
  'CLOSE',
  'SIGNAL',
  'RESIGNAL',
  'COMMIT',
  'ROLLBACK',
  'SAVEPOINT',
  'TRUNCATE',
]);
/** Words that end a statement list: never a statement's first word. */
const BODY_CLOSERS = new Set(['END', 'ELSE', 'ELSEIF', 'WHEN', 'UNTIL']);
/** What an END names: `END IF`, `END LOOP` … */
const LOOP_WORDS = new Set(['IF', 'CASE', 'LOOP', 'WHILE', 'REPEAT', 'FOR']);

/** Statements a body may hold with these words next: DDL on tables, transactions, diagnostics. */
function bodyStatementAllowed(tokens: Token[], k: number): boolean {
  const word = (at: number) => (tokens[at]?.type === 'word' ? tokens[at]!.value : undefined);
  const first = word(k);
  if (first === undefined) return tokens[k]?.type === 'punct' && tokens[k]!.value === '('; // (SELECT …) UNION …
  if (BODY_STATEMENTS.has(first)) return true;
  let next = k + 1;
  const skip = (...words: string[]) => {
    while (words.includes(word(next) ?? '')) next++;
  };
  switch (first) {
    case 'START':
      return word(next) === 'TRANSACTION';
    case 'RELEASE':
      return word(next) === 'SAVEPOINT';
    case 'GET':
      skip('CURRENT', 'STACKED');
      return word(next) === 'DIAGNOSTICS';
    case 'CREATE':
      if (word(next) === 'OR' && word(next + 1) === 'REPLACE') next += 2;
      skip('TEMPORARY', 'UNIQUE', 'FULLTEXT', 'SPATIAL');
      return word(next) === 'TABLE' || word(next) === 'INDEX';
    case 'DROP':
      skip('TEMPORARY');
      return word(next) === 'TABLE' || word(next) === 'INDEX';
    case 'ALTER':
      skip('ONLINE', 'IGNORE');
      return word(next) === 'TABLE';
    case 'ANALYZE':
    case 'OPTIMIZE':
      skip('NO_WRITE_TO_BINLOG', 'LOCAL');
      return word(next) === 'TABLE';
    default:
      return false;
  }
}

/**
 * Where the body of a CREATE PROCEDURE/FUNCTION/TRIGGER/EVENT (or ALTER EVENT … DO) starts;
 * undefined for a statement without one. The header is read strictly: what we skip as header
 * must be header for the server too, or a statement could hide in it.
 */
function bodyStart(tokens: Token[], statement: string): number | undefined {
  const first = tokens[0]!.value;
  const at = first === 'ALTER' ? 1 : first === 'CREATE' ? kindAt(tokens) : undefined;
  const kind = at === undefined ? undefined : tokens[at]?.value;
  if (at === undefined || kind === undefined || !BODY_KINDS.has(kind) || tokens[at]!.type !== 'word') return undefined;
  const fail = (why: string): never => {
    throw unsafe(`its ${kind.toLowerCase()} header ${why}`, statement);
  };
  const word = (k: number) => (tokens[k]?.type === 'word' ? tokens[k]!.value : undefined);
  const expect = (k: number, ...words: string[]) => {
    if (!words.includes(word(k) ?? '')) fail(`has no ${words.join('/')} where one belongs`);
    return k + 1;
  };
  const name = (k: number) => {
    if (!isName(tokens[k])) fail('names no object');
    return tokens[k + 1]?.value === '.' && tokens[k + 1]!.type === 'punct' && isName(tokens[k + 2]) ? k + 3 : k + 1;
  };
  const header = (end: number) => {
    if (tokens.slice(0, end).some((t) => t.type === 'punct' && t.value === ';')) fail('holds a ";"');
    return end;
  };
  if (kind === 'EVENT') {
    // The schedule is expressions; DO is reserved, so its first DO starts the body.
    const k = tokens.findIndex((t, i) => i > at && t.type === 'word' && t.value === 'DO');
    if (k < 0) return first === 'ALTER' ? undefined : fail('has no DO');
    return header(k + 1);
  }
  if (first === 'ALTER') return undefined; // ALTER PROCEDURE/FUNCTION change characteristics only
  let k = at + 1;
  if (word(k) === 'IF' && word(k + 1) === 'NOT' && word(k + 2) === 'EXISTS') k += 3;
  k = name(k);
  if (kind === 'TRIGGER') {
    k = expect(k, 'BEFORE', 'AFTER');
    k = expect(k, 'INSERT', 'UPDATE', 'DELETE');
    k = name(expect(k, 'ON'));
    k = expect(expect(expect(k, 'FOR'), 'EACH'), 'ROW');
    if (word(k) === 'FOLLOWS' || word(k) === 'PRECEDES') k = name(k + 1);
    return header(k);
  }
  // PROCEDURE / FUNCTION: (parameters) [RETURNS type] characteristics.
  if (tokens[k]?.value !== '(' || tokens[k]!.type !== 'punct') fail('has no parameter list');
  k = closingParen(tokens, k, statement) + 1;
  if (kind === 'FUNCTION') k = skipType(tokens, expect(k, 'RETURNS'), fail);
  for (;;) {
    const w = word(k);
    if (w === 'COMMENT' && tokens[k + 1]?.type === 'string') k += 2;
    else if (w === 'DETERMINISTIC') k++;
    else if ((w === 'LANGUAGE' || w === 'CONTAINS' || w === 'NO') && word(k + 1) === 'SQL') k += 2;
    else if (w === 'NOT' && word(k + 1) === 'DETERMINISTIC') k += 2;
    else if ((w === 'READS' || w === 'MODIFIES') && word(k + 1) === 'SQL' && word(k + 2) === 'DATA') k += 3;
    else if (w === 'SQL' && word(k + 1) === 'SECURITY' && (word(k + 2) === 'DEFINER' || word(k + 2) === 'INVOKER')) k += 3;
    else return header(k);
  }
}

/** A function's return type, as SHOW CREATE FUNCTION writes it: `decimal(30,10)`, `varchar(20) CHARSET utf8mb4 COLLATE …`. */
function skipType(tokens: Token[], k: number, fail: (why: string) => never): number {
  const word = (at: number) => (tokens[at]?.type === 'word' ? tokens[at]!.value : undefined);
  if (word(k) === undefined) fail('has no return type');
  k++;
  if (['PRECISION', 'VARYING', 'CHAR', 'CHARACTER', 'VARCHAR', 'VARBINARY'].includes(word(k) ?? '')) k++;
  if (tokens[k]?.type === 'punct' && tokens[k]!.value === '(') {
    const close = closingParen(tokens, k, '');
    if (tokens.slice(k + 1, close).some((t) => !(t.type === 'number' || t.type === 'string' || (t.type === 'punct' && t.value === ',')))) fail('has a return type with more than a length');
    k = close + 1;
  }
  for (;;) {
    const w = word(k);
    if (w === 'UNSIGNED' || w === 'SIGNED' || w === 'ZEROFILL' || w === 'BINARY' || w === 'ASCII' || w === 'UNICODE' || w === 'BYTE') k++;
    else if ((w === 'CHARSET' || w === 'COLLATE') && (isName(tokens[k + 1]) || tokens[k + 1]?.type === 'string')) k += 2;
    else if ((w === 'CHARACTER' || w === 'CHAR') && word(k + 1) === 'SET' && (isName(tokens[k + 2]) || tokens[k + 2]?.type === 'string')) k += 3;
    else return k;
  }
}

/** The `)` closing the `(` at k. */
function closingParen(tokens: Token[], k: number, statement: string): number {
  let depth = 0;
  for (let i = k; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t.type !== 'punct') continue;
    if (t.value === '(') depth++;
    else if (t.value === ')' && --depth === 0) return i;
    else if (t.value === ';') break;
  }
  throw unsafe('its parentheses do not close', statement);
}

/** Walks a stored program's body (see above): refuses any statement outside the allow-list. */
class BodyCheck {
  readonly #tokens: Token[];
  readonly #statement: string;

  constructor(tokens: Token[], statement: string) {
    this.#tokens = tokens;
    this.#statement = statement;
  }

  /** The body from k: one statement, ending the text. */
  run(k: number): void {
    k = this.#one(k);
    if (k !== this.#tokens.length) this.#fail('its body goes on after its statement (a second statement after a ";")');
  }

  #fail(why: string): never {
    throw unsafe(why, this.#statement);
  }

  #word(k: number): string | undefined {
    const t = this.#tokens[k];
    return t?.type === 'word' ? t.value : undefined;
  }

  #punct(k: number, value: string): boolean {
    const t = this.#tokens[k];
    return t?.type === 'punct' && t.value === value;
  }

  /** One statement from k; returns where it ends (its `;`, the text's end, or after END …). */
  #one(k: number): number {
    const t = this.#tokens[k];
    if (t === undefined) this.#fail('a stored program has a statement missing');
    let labelled = false;
    if (isName(t) && this.#punct(k + 1, ':') && !this.#punct(k + 2, '=')) {
      k += 2;
      labelled = true;
    }
    const word = this.#word(k);
    switch (word) {
      case 'BEGIN':
        k++;
        if (this.#word(k) === 'NOT' && this.#word(k + 1) === 'ATOMIC') k += 2;
        return this.#label(this.#list(k, ['END']) + 1);
      case 'LOOP':
        return this.#label(this.#end(this.#list(k + 1, ['END']), 'LOOP'));
      case 'WHILE':
      case 'FOR':
        return this.#label(this.#end(this.#list(this.#until(k + 1, 'DO') + 1, ['END']), word));
      case 'REPEAT':
        return this.#label(this.#end(this.#until(this.#list(k + 1, ['UNTIL']) + 1, 'END'), 'REPEAT'));
    }
    if (labelled) this.#fail('a label is on something other than a block or a loop');
    switch (word) {
      case 'IF': {
        k = this.#until(k + 1, 'THEN');
        for (;;) {
          k = this.#list(k + 1, ['ELSEIF', 'ELSE', 'END']);
          if (this.#word(k) === 'ELSEIF') k = this.#until(k + 1, 'THEN');
          else break;
        }
        if (this.#word(k) === 'ELSE') k = this.#list(k + 1, ['END']);
        return this.#end(k, 'IF');
      }
      case 'CASE':
        k++;
        if (this.#word(k) !== 'WHEN') k = this.#until(k, 'WHEN');
        while (this.#word(k) === 'WHEN') k = this.#list(this.#until(k + 1, 'THEN') + 1, ['WHEN', 'ELSE', 'END']);
        if (this.#word(k) === 'ELSE') k = this.#list(k + 1, ['END']);
        return this.#end(k, 'CASE');
      case 'DECLARE':
        return this.#declare(k + 1);
    }
    if (!bodyStatementAllowed(this.#tokens, k)) {
      const what = this.#statement.slice(this.#tokens[k]!.start, (this.#tokens[k + 1] ?? this.#tokens[k]!).end);
      this.#fail(`a stored program holds "${what} …", not a statement a restored stored program may run (it would run as the restoring account)`);
    }
    return this.#simple(k);
  }

  /** Statements, each ending with `;`, up to one of `closers`: returns the closer's index. */
  #list(k: number, closers: string[]): number {
    for (;;) {
      const word = this.#word(k);
      if (word !== undefined && closers.includes(word)) return k;
      if (word !== undefined && BODY_CLOSERS.has(word)) this.#fail(`a stored program has ${word} where it closes nothing`);
      if (k >= this.#tokens.length) this.#fail('a stored program has a block that does not end');
      k = this.#one(k);
      if (!this.#punct(k, ';')) this.#fail('a stored program has a statement in a block not ended by ";"');
      k++;
    }
  }

  /** A simple statement: it ends at the next `;` (none is inside one) or with the text. */
  #simple(k: number): number {
    while (k < this.#tokens.length && !this.#punct(k, ';')) k++;
    return k;
  }

  /** Skips an expression up to `word` (outside parentheses and CASE … END): returns its index. */
  #until(k: number, word: string): number {
    let depth = 0;
    let cases = 0;
    for (; k < this.#tokens.length; k++) {
      const t = this.#tokens[k]!;
      if (t.type === 'punct') {
        if (t.value === '(') depth++;
        else if (t.value === ')') depth--;
        else if (t.value === ';') break;
        if (depth < 0) break;
      } else if (t.type === 'word') {
        if (t.value === 'CASE') cases++;
        else if (t.value === 'END' && cases > 0) cases--;
        else if (t.value === word && depth === 0 && cases === 0) return k;
      }
    }
    return this.#fail(`a stored program has a condition without its ${word}`);
  }

  /** END <kind> at k: returns the index after it. */
  #end(k: number, kind: string): number {
    if (this.#word(k) !== 'END' || this.#word(k + 1) !== kind) this.#fail(`a stored program has a ${kind} without its END ${kind}`);
    return k + 2;
  }

  /** An optional label after END of a block or loop (never a word that opens or closes one). */
  #label(k: number): number {
    const t = this.#tokens[k];
    return isName(t) && !(t.type === 'word' && (BODY_CLOSERS.has(t.value) || LOOP_WORDS.has(t.value))) ? k + 1 : k;
  }

  /** DECLARE …: variables, conditions, cursors over a query, handlers (whose statement is checked). */
  #declare(k: number): number {
    const first = this.#word(k);
    if ((first === 'CONTINUE' || first === 'EXIT' || first === 'UNDO') && this.#word(k + 1) === 'HANDLER') {
      if (this.#word(k + 2) !== 'FOR') this.#fail('a stored program has a handler without FOR');
      k += 3;
      for (;;) {
        const t = this.#tokens[k];
        if (this.#word(k) === 'SQLSTATE') {
          k += this.#word(k + 1) === 'VALUE' ? 2 : 1;
          if (this.#tokens[k]?.type !== 'string') this.#fail('a stored program has a handler for an SQLSTATE without its value');
          k++;
        } else if (this.#word(k) === 'NOT' && this.#word(k + 1) === 'FOUND') k += 2;
        else if (t?.type === 'number' || isName(t)) k++;
        else this.#fail('a stored program has a handler for no condition');
        if (!this.#punct(k, ',')) break;
        k++;
      }
      return this.#one(k);
    }
    if (isName(this.#tokens[k]) && this.#word(k + 1) === 'CURSOR') {
      k += 2;
      if (this.#punct(k, '(')) k = closingParen(this.#tokens, k, this.#statement) + 1;
      if (this.#word(k) !== 'FOR' || !(this.#word(k + 1) === 'SELECT' || this.#word(k + 1) === 'WITH' || this.#punct(k + 1, '('))) {
        this.#fail('a stored program declares a cursor that is not over a SELECT');
      }
    }
    return this.#simple(k);
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
