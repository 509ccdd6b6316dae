#!/usr/bin/env bash
# Build both Greengrass components from the repository root, and with --publish also publish
# them with GDK (docs/greengrass.md). GDK reads one component per gdk-config.json, in the
# current folder, so there is no top-level gdk-config.json: this script is the top level.
#
#   bash scripts/gg-build.sh                      # build, no GDK needed
#   bash scripts/gg-build.sh --publish            # build, then `gdk component publish` in each
#   bash scripts/gg-build.sh --arch host          # only this machine's architecture (quicker)
#
# Other arguments go to scripts/build_component.py (--arch, --python, --cache, --wheel).
# The first build on a machine downloads the wheelhouses (the only step that needs the package
# index); later builds use the cache and need no network.
set -euo pipefail
cd "$(dirname "$0")/.."
publish=0
args=()
for arg in "$@"; do
    if [ "$arg" = "--publish" ]; then publish=1; else args+=("$arg"); fi
done
PY=${PYTHON:-.venv/bin/python}
components=(components/com.edge.agent components/com.edge.backend)
"$PY" scripts/build_component.py "${components[@]}" ${args[@]+"${args[@]}"}
if [ "$publish" = 1 ]; then
    if ! command -v gdk >/dev/null 2>&1; then
        echo "gg-build: --publish needs GDK on PATH (docs/greengrass.md, \"Get GDK\")" >&2
        exit 1
    fi
    for folder in "${components[@]}"; do
        (cd "$folder" && gdk component publish)
    done
fi
