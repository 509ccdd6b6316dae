#!/usr/bin/env bash
# Start the local demo of the whole system: development PKI, Mosquitto with mTLS and the
# fleet ACL, the backend with its dashboard, a real agent on this machine and simulated
# devices. Ctrl-C stops everything. Extra arguments go to `edgefleet demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGEFLEET_DEMO_ONLY=1 bash scripts/setup.sh
exec .venv/bin/edgefleet demo "$@"
