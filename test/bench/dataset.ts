import { pgBin, run, type PgCluster } from '../harness/index.js';

/**
 * The bench's e-commerce database, generated inside PostgreSQL with generate_series: deterministic
 * (every value is a function of the row number, "random" bytes are md5 chains), so two runs at one
 * scale load the same rows. Six FK-linked tables (customers → addresses → orders → order_items /
 * payments, products → order_items), a jsonb/bytea-heavy table (product_media, ~2 KB of
 * incompressible bytes per row), a table without a primary key (events) and 40 rows of 4 MB of
 * incompressible bytes each (attachments, the same at every scale: 8 MB COPY text rows).
 *
 * Rows per table at scale 1 (4.7 M in all, ~0.9 GB with indexes); `--scale` multiplies every count.
 */
export const BASE_ROWS = {
  customers: 200_000,
  addresses: 300_000,
  products: 50_000,
  product_media: 100_000,
  orders: 1_000_000,
  order_items: 2_200_000,
  payments: 500_000,
  events: 350_000,
  attachments: 40,
} as const;

/** Tables whose row count does not follow --scale: 40 rows of 4 MB each at every scale (the agents' memory under huge rows). */
const FIXED: Partial<Record<BenchTable, true>> = { attachments: true };

export type BenchTable = keyof typeof BASE_ROWS;

/** Tables in FK order (parents first): the order the psql pipe and the naive copy load them in. */
export const FK_ORDER: BenchTable[] = ['customers', 'products', 'addresses', 'product_media', 'orders', 'order_items', 'payments', 'events', 'attachments'];

/** FK levels: tables of one level do not reference each other (the psql pipe runs 2 at a time inside a level). */
export const FK_LEVELS: BenchTable[][] = [['customers', 'products', 'events', 'attachments'], ['addresses', 'product_media'], ['orders'], ['order_items', 'payments']];

/** Primary-key columns per table (events has none). */
export const KEYS: Record<BenchTable, string[]> = {
  customers: ['id'],
  addresses: ['id'],
  products: ['id'],
  product_media: ['id'],
  orders: ['id'],
  order_items: ['order_id', 'line_no'],
  payments: ['id'],
  events: [],
  attachments: ['id'],
};

export function rowCounts(scale: number): Record<BenchTable, number> {
  const out = {} as Record<BenchTable, number>;
  for (const [t, n] of Object.entries(BASE_ROWS)) out[t as BenchTable] = FIXED[t as BenchTable] ? n : Math.max(10, Math.round(n * scale));
  return out;
}

/** DDL: tables with their primary keys, unique and secondary indexes and FKs. */
export const SCHEMA_SQL = `
CREATE TABLE customers (
  id bigint PRIMARY KEY, email text NOT NULL UNIQUE, full_name text NOT NULL, country char(2) NOT NULL,
  created_at timestamptz NOT NULL, loyalty_points int NOT NULL DEFAULT 0, marketing_opt_in boolean NOT NULL);
CREATE TABLE addresses (
  id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id), line1 text NOT NULL, city text NOT NULL,
  postcode text NOT NULL, country char(2) NOT NULL, is_default boolean NOT NULL);
CREATE INDEX addresses_customer_idx ON addresses (customer_id);
CREATE TABLE products (
  id bigint PRIMARY KEY, sku text NOT NULL UNIQUE, name text NOT NULL, description text NOT NULL,
  price numeric(10,2) NOT NULL, category text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE product_media (
  id bigint PRIMARY KEY, product_id bigint NOT NULL REFERENCES products(id), kind text NOT NULL,
  meta jsonb NOT NULL, thumbnail bytea NOT NULL);
CREATE INDEX product_media_product_idx ON product_media (product_id);
CREATE TABLE orders (
  id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
  shipping_address_id bigint NOT NULL REFERENCES addresses(id), status text NOT NULL,
  ordered_at timestamptz NOT NULL, total numeric(12,2) NOT NULL, notes text);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_ordered_at_idx ON orders (ordered_at);
CREATE TABLE order_items (
  order_id bigint NOT NULL REFERENCES orders(id), line_no int NOT NULL, product_id bigint NOT NULL REFERENCES products(id),
  quantity int NOT NULL, unit_price numeric(10,2) NOT NULL, PRIMARY KEY (order_id, line_no));
CREATE INDEX order_items_product_idx ON order_items (product_id);
CREATE TABLE payments (
  id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders(id), amount numeric(12,2) NOT NULL,
  method text NOT NULL, paid_at timestamptz NOT NULL, reference uuid NOT NULL);
CREATE INDEX payments_order_idx ON payments (order_id);
CREATE TABLE events (
  occurred_at timestamptz NOT NULL, kind text NOT NULL, customer_id bigint, payload text NOT NULL);
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
CREATE TABLE attachments (id int PRIMARY KEY, name text NOT NULL, data bytea NOT NULL);
`;

/**
 * INSERT … SELECT statements filling the tables for `scale`. Times have microseconds (a copy that
 * rounds them through JS Date is caught by the content hash); numerics have cents.
 */
export function dataSql(scale: number): string {
  const n = rowCounts(scale);
  return `
SET synchronous_commit = off;
INSERT INTO customers
SELECT g, 'customer' || g || '@example.com', 'Customer ' || md5(g::text), (ARRAY['DE','FR','US','GB','JP','BR','IN','ES'])[1 + g % 8],
       timestamptz '2020-01-01 00:00:00+00' + g * interval '7 minutes 13.123457 seconds', (g * 37) % 5000, g % 3 = 0
FROM generate_series(1, ${n.customers}::int8) g;
INSERT INTO addresses
SELECT g, 1 + (g * 7919) % ${n.customers}, g || ' ' || substr(md5('street' || g), 1, 12) || ' Street',
       'City ' || (g % 997), lpad((g % 99991)::text, 5, '0'), (ARRAY['DE','FR','US','GB','JP','BR','IN','ES'])[1 + g % 8], g % 2 = 0
FROM generate_series(1, ${n.addresses}::int8) g;
INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 8, '0'), 'Product ' || substr(md5(g::text), 1, 10),
       repeat(md5('desc' || g) || ' ', (1 + g % 6)::int), round(((g * 7) % 100000) / 100.0 + 0.99, 2),
       (ARRAY['books','garden','toys','tools','food','music'])[1 + g % 6],
       timestamptz '2019-06-01 00:00:00+00' + g * interval '1 hour 3.5 seconds'
FROM generate_series(1, ${n.products}::int8) g;
INSERT INTO product_media
SELECT g, 1 + (g * 104729) % ${n.products}, (ARRAY['image','video','manual'])[1 + g % 3],
       jsonb_build_object('width', 100 + g % 1900, 'height', 100 + g % 1000, 'alt', 'media ' || g,
         'tags', jsonb_build_array('t' || g % 10, 't' || g % 17, md5(g::text)),
         'exif', jsonb_build_object('iso', 100 * (1 + g % 32), 'lens', substr(md5('lens' || g), 1, 16), 'gps', jsonb_build_array(g % 90, g % 180))),
       (SELECT decode(string_agg(md5(g::text || ':' || i), '' ORDER BY i), 'hex') FROM generate_series(1, 128) i)
FROM generate_series(1, ${n.product_media}::int8) g;
INSERT INTO orders
SELECT g, c, 1 + (c * 3 + g % 2) % ${n.addresses}, (ARRAY['new','paid','shipped','delivered','returned'])[1 + g % 5],
       timestamptz '2021-01-01 00:00:00+00' + g * interval '31.654321 seconds', round(((g * 131) % 1000000) / 100.0, 2),
       CASE WHEN g % 4 = 0 THEN 'note ' || substr(md5(g::text), 1, 20) END
FROM generate_series(1, ${n.orders}::int8) g, LATERAL (SELECT 1 + (g * 6007) % ${n.customers} AS c) x;
INSERT INTO order_items
SELECT o, (g - 1) - ((o - 1) * ${n.order_items}::int8 + ${n.orders} - 1) / ${n.orders} + 1, 1 + (o * 31 + g * 17) % ${n.products},
       1 + g % 5, round(((o * 13 + g) % 20000) / 100.0 + 0.5, 2)
FROM generate_series(1, ${n.order_items}::int8) g, LATERAL (SELECT 1 + ((g - 1) * ${n.orders}) / ${n.order_items} AS o) x;
INSERT INTO payments
SELECT g, 1 + (g * 2) % ${n.orders}, round(((g * 97) % 500000) / 100.0, 2), (ARRAY['card','paypal','invoice','voucher'])[1 + g % 4],
       timestamptz '2021-01-02 00:00:00+00' + g * interval '59.100001 seconds',
       (md5('pay' || g))::uuid
FROM generate_series(1, ${n.payments}::int8) g;
INSERT INTO events
SELECT timestamptz '2022-01-01 00:00:00+00' + (g / 3) * interval '1.000001 seconds', (ARRAY['view','cart','search','login'])[1 + g % 4],
       CASE WHEN g % 5 = 0 THEN NULL ELSE 1 + g % ${n.customers} END, 'session=' || md5(g::text) || ';page=' || g % 100
FROM generate_series(1, ${n.events}::int8) g;
INSERT INTO attachments
SELECT a, 'attachment ' || a || '.bin', (SELECT decode(string_agg(md5(a || ':' || i), '' ORDER BY i), 'hex') FROM generate_series(1, 262144) i)
FROM generate_series(1, ${n.attachments}) a;
ANALYZE;
`;
}

/** Creates `db` on `cluster` and fills it; returns the row counts actually loaded. */
export async function generate(cluster: PgCluster, db: string, scale: number): Promise<Record<BenchTable, number>> {
  await cluster.createDatabase(db);
  await cluster.exec(db, SCHEMA_SQL);
  // Not cluster.exec(): its psql gets 2 minutes, and scale 1 takes longer than that.
  await run(pgBin('psql'), ['-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', '-d', db, '-v', 'ON_ERROR_STOP=1', '-q', '-X', '-f', '-'], {
    input: dataSql(scale), timeoutMs: 3 * 3600_000, env: { PGOPTIONS: '-c client_min_messages=warning' },
  });
  const sql = cluster.sql(db);
  const out = {} as Record<BenchTable, number>;
  for (const t of FK_ORDER) {
    const [r] = await sql.unsafe<{ n: number }[]>(`SELECT count(*)::int AS n FROM ${t}`);
    out[t] = r!.n;
  }
  return out;
}
