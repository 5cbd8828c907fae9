#!/usr/bin/env bash
# `npm run bench [-- --scale N] [--methods pgcopydb,psql,naive,load,wan,resync] [--profile]`
# Generates the bench dataset (scale 1 ≈ 4.7 M rows, ~0.9 GB), measures every method, verifies each
# end state and writes bench/results/latest.json (+ a dated copy). See bench/README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scale=1
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="${2:?--scale needs a number}"; shift 2 ;;
    --scale=*) scale="${1#--scale=}"; shift ;;
    --methods) export BENCH_METHODS="${2:?--methods needs a list}"; shift 2 ;;
    --methods=*) export BENCH_METHODS="${1#--methods=}"; shift ;;
    --profile) export BENCH_CPU_PROF=1; shift ;;
    -h|--help) sed -n 2,4p "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1 (expected --scale N, --methods LIST, --profile)" >&2; exit 2 ;;
  esac
done
if ! [[ "$scale" =~ ^[0-9]*\.?[0-9]+$ ]]; then echo "bench: --scale wants a positive number, got '$scale'" >&2; exit 2; fi
export BENCH_SCALE="$scale"

# PostgreSQL, nats-server, node_modules and a fresh build (the bench runs the built agents).
bash scripts/install-deps.sh
# pgcopydb (Debian package) for the reference figure; the bench records a failure if it is missing.
if ! command -v pgcopydb >/dev/null && [ "$(id -u)" -eq 0 ]; then
  if apt-cache policy pgcopydb 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "bench: installing pgcopydb with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 pgcopydb >/dev/null || echo "bench: could not install pgcopydb" >&2
  fi
fi
exec npx vitest run --config bench/vitest.bench.config.ts
