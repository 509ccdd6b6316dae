#!/bin/sh
# The Install step of both edgefleet components (docs/greengrass.md, "Install"), shipped as an
# artifact. Never needs a package index: everything comes from the component's artifacts.
#
#   sh install.sh WORK WHEEL CONSTRAINTS UNARCHIVED EXTRA VERSION
#
# WORK        {work:path}; gets venv-<version>-<digest>/ and the symlink `venv` the Run step uses
# WHEEL       the project's wheel;  CONSTRAINTS  the runtime pins shipped with it
# UNARCHIVED  {artifacts:decompressedPath}: holds exactly one wheelhouse-<arch>/, the one of
#             the manifest the nucleus picked for this device's architecture
# EXTRA       agent | backend;  VERSION  the component version
#
# A new venv is built BESIDE the one in use and `venv` is switched to it only once it works,
# so a failed install leaves the previous venv running. Runs at every nucleus start: a no-op
# (or a switch back, after a rollback) when the venv of these artifacts exists already.
set -eu
if [ "$#" -ne 6 ]; then
    echo "edgefleet install: usage: install.sh WORK WHEEL CONSTRAINTS UNARCHIVED EXTRA VERSION" >&2
    exit 2
fi
WORK=$1 WHEEL=$2 CONSTRAINTS=$3 UNARCHIVED=$4 EXTRA=$5 VERSION=$6
DIGEST=$(cat "$WHEEL" "$CONSTRAINTS" | sha256sum | cut -c1-16)
NEW="venv-$VERSION-$DIGEST"
cd "$WORK"
OLD=$(readlink venv 2>/dev/null || true)

switch() {  # point `venv` at $NEW in one rename, so the Run step never sees a half state
    "$NEW/bin/python" -c 'import os, sys
if os.path.lexists("venv.next"):
    os.remove("venv.next")
os.symlink(sys.argv[1], "venv.next")
os.replace("venv.next", "venv")' "$NEW"
}

if [ -f "$NEW/.edgefleet-ok" ]; then
    if [ "$OLD" != "$NEW" ]; then
        switch
        echo "edgefleet: switched venv back to $NEW (was ${OLD:-none})"
    else
        echo "edgefleet: $NEW is up to date"
    fi
    exit 0
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "edgefleet: needs python3 >= 3.11 on PATH, found: $(python3 -V 2>&1)" >&2
    exit 1
fi
set -- "$UNARCHIVED"/wheelhouse-*
if [ "$#" -ne 1 ] || [ ! -d "$1" ]; then
    echo "edgefleet: expected one wheelhouse-<arch> folder in $UNARCHIVED, found: $*" >&2
    exit 1
fi
HOUSE=$1
echo "edgefleet: installing $NEW from $HOUSE (no package index; $(uname -m))"
rm -rf "$NEW"  # what an interrupted attempt left
python3 -m venv "$NEW"
if ! "$NEW/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$HOUSE" -c "$CONSTRAINTS" "$WHEEL[$EXTRA]" \
    || ! "$NEW/bin/edgefleet" --version >/dev/null; then
    rm -rf "$NEW"
    echo "edgefleet: install failed; the venv in use stays ${OLD:-none}" >&2
    exit 1
fi
touch "$NEW/.edgefleet-ok"
switch
for dir in venv-*; do  # keep the new venv and the previous one (a rollback switches back)
    if [ "$dir" != "$NEW" ] && [ "$dir" != "$OLD" ]; then rm -rf "$dir"; fi
done
echo "edgefleet: venv -> $NEW (previous: ${OLD:-none})"
