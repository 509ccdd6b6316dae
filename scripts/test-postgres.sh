#!/usr/bin/env bash
# The backend suite (tests/backend) on PostgreSQL instead of SQLite: every test gets a
# database of its own in one PostgreSQL cluster the tests start (scripts/setup.sh installs
# postgresql). Extra arguments go to pytest, e.g. `bash scripts/test-postgres.sh -m "not
# slow"`. EDGEFLEET_PG_TEST_WORKERS parallel workers (default 1; 0: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
workers=${EDGEFLEET_PG_TEST_WORKERS:-1}
if [ "$workers" -gt 0 ]; then
    .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile \
        --store=postgres tests/backend "$@"
else
    .venv/bin/python -m pytest -q -p no:cacheprovider --store=postgres tests/backend "$@"
fi
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test-postgres: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$rc"
