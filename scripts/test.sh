#!/usr/bin/env bash
# The project's checks, in the order that fails fastest: lint and format, the fast tests, then the slow
# end-to-end tests (the whole tiny pipeline). Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
"$PYTHON" -m pytest -q -m "not slow" "$@" tests
"$PYTHON" -m pytest -q -m slow "$@" tests
