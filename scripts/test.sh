#!/usr/bin/env bash
# `npm test`: make sure dependencies and the build are in place, type-check the tests, then run vitest (args pass through).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
npx tsc -p test
exec npx vitest run "$@"
