#!/usr/bin/env bash
# Run the whole test suite (unit, real-broker, fault and browser tests). Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m "not fault" -x`. Test files run in parallel on
# EDGEFLEET_TEST_WORKERS workers (default 3; most tests wait on brokers and timers, not CPU);
# EDGEFLEET_TEST_WORKERS=0 runs them in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
workers=${EDGEFLEET_TEST_WORKERS:-3}
if [ "$workers" -gt 0 ]; then
    .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
else
    .venv/bin/python -m pytest -q "$@"
fi
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$rc"
