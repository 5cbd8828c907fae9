#!/usr/bin/env bash
# `npm test`: make sure dependencies and the build are in place, then run vitest (args pass through).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
exec npx vitest run "$@"
