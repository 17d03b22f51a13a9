import { quoteIdent } from './connection.ts';

/**
 * Secondary indexes built after their table's rows instead of row by row (issue #14 §2): a
 * restore's CREATE TABLE loses its plain `KEY`s, and once the rows are in (at the table's
 * UNLOCK TABLES, or before the next CREATE TABLE, or at the end of the dump) one ALTER TABLE
 * adds them back, which InnoDB builds by sorting. A table of 1 M rows with two secondary keys
 * loaded in 9.5–11.4 s instead of 15.2–16.2 s (MariaDB 10.11, `mysql < dump`); MariaDB 11's
 * mysqldump does the same with --innodb-optimize-keys.
 *
 * Only what is sure to come back the same: InnoDB tables without foreign keys (an FK needs
 * an index on its columns at once, and InnoDB would make its own), plain KEY/INDEX only —
 * PRIMARY and UNIQUE (which decide the rows' fate while loading), FULLTEXT and SPATIAL stay.
 * Anything this parser is unsure of (a backslash, a quote it cannot follow) is left as it is.
 * The server lists plain keys after unique ones, in creation order, so SHOW CREATE TABLE of
 * the restored table is the source's.
 */
export class DeferredKeys {
  /** The ALTER TABLE that adds back the keys of the last table created, until its rows are in. */
  #pending: string | undefined;

  /**
   * A checked CREATE TABLE of `database`: the statement to run (its plain keys removed when
   * they can be added after the rows), and what to run before it (a previous table's keys).
   */
  create(statement: string, database: string | undefined): { before: string | undefined; statement: string } {
    const before = this.take();
    const split = database === undefined ? undefined : splitPlainKeys(statement);
    if (!split) return { before, statement };
    this.#pending = `ALTER TABLE ${quoteIdent(database!)}.${split.table} ${split.keys.map((key) => `ADD ${key}`).join(', ')}`;
    return { before, statement: split.create };
  }

  /** The ALTER TABLE of the table whose rows are in, if any (to run now, with the dump's delimiter). */
  take(): string | undefined {
    const pending = this.#pending;
    this.#pending = undefined;
    return pending;
  }
}

const CREATE_TABLE = /^(CREATE\s+TABLE\s+(`(?:[^`]|``)+`))\s*\(/i;
const PLAIN_KEY = /^(?:KEY|INDEX)\s/i;
const FOREIGN_KEY = /^(?:CONSTRAINT\b|FOREIGN\s+KEY\b)/i;

/** The statement without its plain keys, the keys' definitions and the table's quoted name; undefined when nothing is deferred. */
export function splitPlainKeys(statement: string): { create: string; keys: string[]; table: string } | undefined {
  if (statement.includes('\\')) return undefined;
  const head = CREATE_TABLE.exec(statement);
  if (!head) return undefined;
  const open = head[0].length - 1;
  const parts = topLevelParts(statement, open);
  if (!parts) return undefined;
  const { definitions, close } = parts;
  if (!/\bENGINE\s*=\s*InnoDB\b/i.test(statement.slice(close))) return undefined;
  if (definitions.some((d) => FOREIGN_KEY.test(d.trim()))) return undefined;
  const keys = definitions.filter((d) => PLAIN_KEY.test(d.trim()));
  if (keys.length === 0) return undefined;
  const kept = definitions.filter((d) => !PLAIN_KEY.test(d.trim()));
  // The last kept definition takes the newline that preceded ")" in the source.
  const trailing = /\s*$/.exec(definitions.at(-1)!)![0];
  const body = kept.map((d, i) => (i === kept.length - 1 ? d.trimEnd() + trailing : d)).join(',');
  return { create: `${statement.slice(0, open + 1)}${body}${statement.slice(close)}`, keys: keys.map((k) => k.trim()), table: head[2]! };
}

/** The comma-separated definitions between the parenthesis at `open` and its match, and where that is; undefined if the text is not followed to it. */
function topLevelParts(text: string, open: number): { definitions: string[]; close: number } | undefined {
  const definitions: string[] = [];
  let depth = 0;
  let start = open + 1;
  for (let i = open; i < text.length; i++) {
    const c = text[i]!;
    if (c === '`' || c === "'" || c === '"') {
      const end = text.indexOf(c, i + 1); // doubled quotes ('it''s') are two strings back to back: the same split
      if (end < 0) return undefined;
      i = end;
    } else if (c === '/' && text[i + 1] === '*') {
      const end = text.indexOf('*/', i + 2);
      if (end < 0) return undefined;
      i = end + 1;
    } else if (c === '(') depth++;
    else if (c === ')') {
      depth--;
      if (depth === 0) {
        definitions.push(text.slice(start, i));
        return { definitions, close: i };
      }
    } else if (c === ',' && depth === 1) {
      definitions.push(text.slice(start, i));
      start = i + 1;
    } else if ((c === '-' && text[i + 1] === '-') || c === '#') return undefined; // a line comment: not what mysqldump writes here
  }
  return undefined;
}
