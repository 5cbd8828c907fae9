// Compares every user table of two databases by content: an order-independent hash of all rows.
import postgres from 'postgres';

const [urlA, urlB] = process.argv.slice(2);
if (!urlA || !urlB) { console.error('usage: compare.mjs URL_A URL_B'); process.exit(2); }
const q = (s) => '"' + s.replace(/"/g, '""') + '"';

async function hashes(url) {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return await sql.begin(async (tx) => {
      await tx`SET LOCAL TimeZone = 'UTC'`;
      await tx`SET LOCAL extra_float_digits = 1`;
      const tables = await tx`SELECT n.nspname AS s, c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r','p') AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog','information_schema','syncflow') ORDER BY 1, 2`;
      const out = new Map();
      for (const { s, t } of tables) {
        const [r] = await tx.unsafe(`SELECT count(*)::int8::text AS n, md5(coalesce(string_agg(md5(x::text), '' ORDER BY md5(x::text)), '')) AS h FROM ${q(s)}.${q(t)} x`);
        out.set(`${s}.${t}`, r);
      }
      return out;
    });
  } finally { await sql.end(); }
}

const [a, b] = await Promise.all([hashes(urlA), hashes(urlB)]);
let equal = 0;
console.log('content comparison (hash of all rows):');
for (const [table, ha] of a) {
  const hb = b.get(table);
  const same = hb && hb.h === ha.h && hb.n === ha.n;
  if (same) equal++;
  console.log(`  ${same ? 'equal    ' : 'DIFFERENT'}  ${table.padEnd(28)} ${ha.n.padStart(8)} rows${same ? '' : ` (target: ${hb ? hb.n : 'missing'})`}`);
}
console.log(`${equal}/${a.size} tables equal`);
process.exit(equal === a.size ? 0 : 1);
