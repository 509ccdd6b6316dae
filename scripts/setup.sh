#!/usr/bin/env bash
# Prepare this checkout on a new Debian machine: system packages the tests and the demo use
# (mosquitto, chromium) and a virtualenv in .venv with edgefleet and its dev tools, pinned by
# constraints.txt. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || want+=(mosquitto)
if [ "${EDGEFLEET_DEMO_ONLY:-0}" != 1 ] && [ ! -x /usr/bin/chromium ]; then want+=(chromium); fi
# libfaketime: the fault suite jumps a device's clock (tests only; the demo does not need it)
if [ "${EDGEFLEET_DEMO_ONLY:-0}" != 1 ] && ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
    want+=(faketime)
fi
# PostgreSQL: the shared store of several backends (tests start their own cluster)
if [ "${EDGEFLEET_DEMO_ONLY:-0}" != 1 ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    want+=(postgresql)
fi
# Prometheus: the per-device exposition is tested against a real one (tests only)
if [ "${EDGEFLEET_DEMO_ONLY:-0}" != 1 ] && ! command -v prometheus >/dev/null 2>&1; then
    want+=(prometheus)
fi
# collectd 5.12 and its mqtt plugin's library (only suggested by the package):
# bench/bench_vs_collectd.py runs the agent next to it (benchmarks only)
if [ "${EDGEFLEET_DEMO_ONLY:-0}" != 1 ] && [ ! -x /usr/sbin/collectd ]; then
    want+=(collectd-core)
fi
if [ "${EDGEFLEET_DEMO_ONLY:-0}" != 1 ] && ! ls /usr/lib/*/libmosquitto.so.1 >/dev/null 2>&1; then
    want+=(libmosquitto1)
fi
if [ ${#want[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing ${want[*]}; run: sudo apt-get update && sudo apt-get install -y ${want[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${want[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
fi
# Mosquitto's package starts a system broker on port 1883; the project starts its own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    systemctl stop mosquitto || true
fi
# ... and PostgreSQL's a system cluster on 5432, Prometheus's a server on 9090 (and its
# node exporter on 9100), collectd's a daemon; the tests and benchmarks start their own.
for unit in postgresql prometheus prometheus-node-exporter collectd; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$unit" 2>/dev/null; then
        systemctl stop "$unit" || true
    fi
done

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.edgefleet-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'
    touch "$stamp"
fi
