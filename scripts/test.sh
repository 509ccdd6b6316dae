#!/usr/bin/env bash
# Run the whole test suite (unit, real-broker, fault and browser tests). Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m "not fault" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$rc"
