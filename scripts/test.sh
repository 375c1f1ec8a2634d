#!/usr/bin/env bash
# The project's checks: lint and format, then the fast tests, then the slow end-to-end tests (the whole tiny
# pipeline). The slow tests are one long single-threaded run, so they start at once in the background on one
# core while the fast tests use the others; the fast results are reported first (a failure there stops the
# slow run and fails at once), then the slow ones. Extra arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
CPUS=$("$PYTHON" -c "import os; print(os.cpu_count() or 1)")
# Every test runs torch on one thread; the fast tests get the cores the slow run leaves (at most 4 workers).
FAST_WORKERS=${PYTEST_WORKERS:-$(( CPUS > 5 ? 4 : (CPUS > 1 ? CPUS - 1 : 1) ))}
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .

SLOW_LOG=$(mktemp -t zero-chatgpt-slow-tests.XXXXXX)
"$PYTHON" -m pytest -q -m slow --durations=10 "$@" tests >"$SLOW_LOG" 2>&1 &
SLOW_PID=$!
trap 'kill "$SLOW_PID" 2>/dev/null || true; rm -f "$SLOW_LOG"' EXIT

echo "== fast tests ($FAST_WORKERS workers; the slow tests run meanwhile)"
"$PYTHON" -m pytest -q -m "not slow" -n "$FAST_WORKERS" --dist loadfile --durations=15 "$@" tests
echo "== slow tests"
status=0
wait "$SLOW_PID" || status=$?
cat "$SLOW_LOG"
exit "$status"
