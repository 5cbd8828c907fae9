import { invalidArgument } from './errors.js';

/** Names of connections and agent groups: what the CLI, the API and the agents' config all accept. */
export const NAME_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;
export const NAME_RULE = 'must be 1-63 lower-case letters, digits, _ or -, starting with a letter or digit';

/** A table reference as users type it: `table`, `schema.table`, or quoted parts ("My.Table"). */
export interface QualifiedName { schema?: string; name: string }

/** Parses one table reference; quoted parts keep case and may contain dots. */
export function parseTableRef(input: string): QualifiedName {
  const parts: string[] = [];
  let i = 0;
  const s = input.trim();
  while (i < s.length) {
    if (s[i] === '"') {
      let j = i + 1, buf = '';
      for (;;) {
        if (j >= s.length) throw invalidArgument(`table name ${JSON.stringify(input)}: unterminated quote`);
        if (s[j] === '"') {
          if (s[j + 1] === '"') { buf += '"'; j += 2; continue; }
          break;
        }
        buf += s[j++];
      }
      parts.push(buf);
      i = j + 1;
    } else {
      let j = i;
      while (j < s.length && s[j] !== '.') j++;
      parts.push(s.slice(i, j));
      i = j;
    }
    if (i < s.length) {
      if (s[i] !== '.') throw invalidArgument(`table name ${JSON.stringify(input)}: expected "." after a quoted part`);
      i++;
      if (i === s.length) throw invalidArgument(`table name ${JSON.stringify(input)}: ends with "."`);
    }
  }
  if (parts.length === 0 || parts.length > 2 || parts.some((p) => p.length === 0 || p.length > 63)) {
    throw invalidArgument(`table name ${JSON.stringify(input)}: expected table or schema.table (each 1-63 characters)`);
  }
  return parts.length === 2 ? { schema: parts[0], name: parts[1]! } : { name: parts[0]! };
}

/** Display form: quotes a part only when it needs quoting. */
export function displayName(schema: string, name: string): string {
  const q = (p: string) => (/^[a-z_][a-z0-9_$]*$/.test(p) ? p : '"' + p.replace(/"/g, '""') + '"');
  return `${q(schema)}.${q(name)}`;
}
