// The seed's predecessor, as the bench's baseline: read each table in 1000-row keyset pages and write
// every page with one INSERT … ON CONFLICT DO UPDATE in its own transaction, one table after the other
// (FK order). A table without a primary key is read through a cursor and written with plain INSERTs.
// Values travel as text (`col::text`, cast back to the column type on insert) so nothing is rounded
// on the way: parameters are declared text (`$1::text::timestamptz`), else postgres.js would run
// them through its own serializers (a Date drops microseconds, a bool turns 'true' into 'f').
// Runs as its own process, so its memory is measurable:
//   node naive-upsert.mjs '<json: {source, target, tables: [{name, key: [...]}]}>'
// Prints one JSON line: {"rows": n}.
import postgres from 'postgres';

const PAGE = 1000;
const { source, target, tables } = JSON.parse(process.argv[2]);
const src = postgres(source, { max: 1, onnotice: () => {} });
const dst = postgres(target, { max: 1, onnotice: () => {} });
const q = (name) => '"' + name.replace(/"/g, '""') + '"';

async function columnsOf(table) {
  return src`SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
             FROM pg_attribute a WHERE a.attrelid = ${'public.' + q(table)}::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum`;
}

function insertSql(table, cols, key, nRows) {
  const rows = [];
  for (let r = 0; r < nRows; r++) {
    rows.push('(' + cols.map((c, i) => `$${r * cols.length + i + 1}::text::${c.type}`).join(', ') + ')');
  }
  let text = `INSERT INTO public.${q(table)} (${cols.map((c) => q(c.name)).join(', ')}) VALUES ${rows.join(', ')}`;
  if (key.length) {
    const rest = cols.filter((c) => !key.includes(c.name));
    text += ` ON CONFLICT (${key.map(q).join(', ')}) DO ` +
      (rest.length ? `UPDATE SET ${rest.map((c) => `${q(c.name)} = EXCLUDED.${q(c.name)}`).join(', ')}` : 'NOTHING');
  }
  return text;
}

async function writePage(table, cols, key, page) {
  const params = [];
  for (const row of page) for (const c of cols) params.push(row[c.name]);
  await dst.begin((tx) => tx.unsafe(insertSql(table, cols, key, page.length), params));
}

let total = 0;
for (const { name, key } of tables) {
  const cols = await columnsOf(name);
  const select = cols.map((c) => `t.${q(c.name)}::text AS ${q(c.name)}`).join(', ');
  if (key.length === 0) {
    const cursor = src.unsafe(`SELECT ${select} FROM public.${q(name)} t`).cursor(PAGE);
    for await (const page of cursor) {
      await writePage(name, cols, key, page);
      total += page.length;
    }
    continue;
  }
  // Qualified: the text-cast output columns carry the same names, and ORDER BY would pick those.
  const keyCols = key.map((k) => 't.' + q(k)).join(', ');
  const keyTypes = key.map((k) => cols.find((c) => c.name === k).type);
  let last = null;
  for (;;) {
    const where = last ? `WHERE (${keyCols}) > (${key.map((_, i) => `$${i + 1}::text::${keyTypes[i]}`).join(', ')})` : '';
    const page = await src.unsafe(`SELECT ${select} FROM public.${q(name)} t ${where} ORDER BY ${keyCols} LIMIT ${PAGE}`, last ?? []);
    if (page.length === 0) break;
    await writePage(name, cols, key, page);
    total += page.length;
    const tail = page[page.length - 1];
    last = key.map((k) => tail[k]);
    if (page.length < PAGE) break;
  }
}
await src.end();
await dst.end();
process.stdout.write(JSON.stringify({ rows: total }) + '\n');
