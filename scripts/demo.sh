#!/usr/bin/env bash
# `npm run demo`: a local two-region sync of the Chinook sample database.
#   1. installs what is missing (npm packages; PostgreSQL and nats-server from Debian when root)
#   2. starts two throw-away PostgreSQL clusters, "region a" and "region b"
#   3. loads Chinook into region a and its schema (no data) into region b
#   4. `syncflow local up`: NATS, the coordinator and one agent per region
#   5. `syncflow sync start --wait`: live progress, then a per-table report
#   6. compares every table by content on both sides
# Everything lives under .syncflow/demo and is stopped at the end (pass --keep to leave it running).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KEEP=0; [ "${1:-}" = "--keep" ] && KEEP=1

bash scripts/install-deps.sh
ROOT=$PWD
DEMO=$ROOT/.syncflow/demo
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PGBIN" ] || PGBIN=$(dirname "$(command -v initdb)")
CHINOOK=$ROOT/test/fixtures/datasets/chinook.sql
[ -f "$CHINOOK" ] || { echo "demo: Chinook not found at $CHINOOK" >&2; exit 1; }

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# The clusters' data directories: under $DEMO, or (as root, when the postgres OS user cannot reach
# this checkout, e.g. a clone inside a 0700 `mktemp -d`) in a directory of its own under /tmp; the
# path is kept in $DEMO/pgroot so a later run finds what an earlier one left.
PGROOT=$DEMO
stop_clusters() { for r in a b; do [ -d "$PGROOT/pg-$r" ] && as_pg "$PGBIN/pg_ctl" -D "$PGROOT/pg-$r" -m "$1" stop >/dev/null 2>&1 || true; done; }

cleanup() {
  if [ "$KEEP" = 0 ]; then
    node packages/cli/dist/main.js local down --state-dir "$DEMO/local" >/dev/null 2>&1 || true
    stop_clusters fast
  fi
}
trap cleanup EXIT

# A previous run left things behind: stop them and start clean.
node packages/cli/dist/main.js local down --state-dir "$DEMO/local" >/dev/null 2>&1 || true
[ -f "$DEMO/pgroot" ] && PGROOT=$(cat "$DEMO/pgroot")
stop_clusters immediate
[ "$PGROOT" != "$DEMO" ] && rm -rf "$PGROOT"
rm -rf "$DEMO"; mkdir -p "$DEMO"
PGROOT=$DEMO
if [ "$(id -u)" = 0 ]; then
  chown postgres "$DEMO"
  if ! runuser -u postgres -- test -w "$DEMO"; then
    PGROOT=$(mktemp -d /tmp/syncflow-demo-pg.XXXXXX)
    chown postgres "$PGROOT"
    echo "demo: the postgres OS user cannot reach $DEMO; the clusters live in $PGROOT"
  fi
fi
echo "$PGROOT" > "$DEMO/pgroot"

declare -A PORT
for r in a b; do
  PORT[$r]=$(free_port)
  as_pg "$PGBIN/initdb" -D "$PGROOT/pg-$r" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$PGROOT/pg-$r" -l "$PGROOT/pg-$r/log" -w -o "-p ${PORT[$r]} -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PGROOT/pg-$r -c wal_level=logical" start >/dev/null
  echo "region $r: PostgreSQL on 127.0.0.1:${PORT[$r]}"
done
URL_A="postgres://postgres@127.0.0.1:${PORT[a]}/chinook"
URL_B="postgres://postgres@127.0.0.1:${PORT[b]}/chinook"
PSQL="$PGBIN/psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres"

$PSQL -p "${PORT[a]}" -d postgres -c 'CREATE DATABASE chinook'
grep -v -E '^(\\c|DROP DATABASE|CREATE DATABASE)' "$CHINOOK" | $PSQL -p "${PORT[a]}" -d chinook >/dev/null
$PSQL -p "${PORT[b]}" -d postgres -c 'CREATE DATABASE chinook'
"$PGBIN/pg_dump" -h 127.0.0.1 -p "${PORT[a]}" -U postgres --schema-only --no-owner --no-privileges chinook | $PSQL -p "${PORT[b]}" -d chinook >/dev/null
echo "region a: Chinook loaded; region b: schema only"

CPORT=$(free_port)
export SYNCFLOW_COORDINATOR=127.0.0.1:$CPORT
npx --no-install syncflow local up --region a="$URL_A" --region b="$URL_B" --port "$CPORT" --state-dir "$DEMO/local"
echo
npx --no-install syncflow sync plan --from a --to b
echo
npx --no-install syncflow sync start --from a --to b --wait
echo
node scripts/compare.mjs "$URL_A" "$URL_B"
if [ "$KEEP" = 1 ]; then
  echo; echo "left running (coordinator $SYNCFLOW_COORDINATOR); stop with: npx syncflow local down --state-dir $DEMO/local"
fi
