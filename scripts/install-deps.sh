#!/usr/bin/env bash
# Makes sure everything `npm run demo` and `npm test` need is here: PostgreSQL (>= 13) server
# binaries, nats-server, node_modules and a fresh build. Idempotent and quiet when all is in place.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "install-deps: $*" >&2; }
die() { echo "install-deps: error: $*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

apt_install() {
  is_root || die "$1 is missing and we are not root: install it (Debian: sudo apt-get install -y $2) and re-run"
  log "installing $2 with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${_APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; _APT_UPDATED=1; fi
  apt-get install -y -qq "$2" >/dev/null
}

# PostgreSQL: prefer /usr/lib/postgresql/<highest>/bin (what the test harness uses), else PATH.
pg_bin_ok() {
  local d v
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      v=$(basename "$(dirname "$d")"); v=${v%%.*}
      [ "$v" -ge 13 ] 2>/dev/null && return 0
    fi
  done
  if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
    v=$(initdb --version | sed -E 's/.* ([0-9]+)(\.[0-9]+)?.*/\1/')
    [ "$v" -ge 13 ] 2>/dev/null && return 0
  fi
  return 1
}
pg_bin_ok || apt_install "PostgreSQL (initdb, pg_ctl >= 13)" postgresql
pg_bin_ok || die "PostgreSQL >= 13 server binaries still not found after install"

nats_ok() { command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || [ -x /usr/local/bin/nats-server ]; }
nats_ok || apt_install "nats-server" nats-server
nats_ok || die "nats-server still not found after install"

# As root the harness runs initdb/pg_ctl as the postgres OS user (initdb refuses root).
if is_root && ! id -u postgres >/dev/null 2>&1; then
  die "running as root but there is no 'postgres' OS user to run PostgreSQL as (apt-get install -y postgresql creates it)"
fi

if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm install"
  npm install --no-audit --no-fund --loglevel=error
fi
# postinstall runs it too; again here in case node_modules came from elsewhere (idempotent).
node scripts/patch-deps.mjs

npm run --silent build
