#!/usr/bin/env bash
# Run the test suite; creates .venv on a fresh machine. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
export MPLBACKEND=Agg
exec "$PY" -m pytest -q "$@"
