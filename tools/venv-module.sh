#!/usr/bin/env bash
# Make sure $PYTHON (default python3) can create a virtualenv with pip in it.
#
#   PYTHON=python3 tools/venv-module.sh
#
# Debian keeps venv's pip bootstrap (ensurepip) in a package of its own,
# python3.X-venv, which a fresh machine lacks: `python3 -m venv` then fails
# half-way, leaving a virtualenv without pip.  As root the package is
# installed when missing; otherwise we say what to install and fail.
set -euo pipefail
. "$(dirname "$0")/apt-install.sh"
PY=${PYTHON:-python3}
"$PY" -c 'import ensurepip, venv' 2>/dev/null && exit 0
pkg=$("$PY" -c 'import sys; print("python3.%d-venv" % sys.version_info[1])')
echo "$PY cannot create a virtualenv with pip in it (no ensurepip)." >&2
apt_install "$PY's venv" "$pkg"
"$PY" -c 'import ensurepip' || { echo "$PY still has no ensurepip: it is not Debian's Python" >&2; exit 1; }
