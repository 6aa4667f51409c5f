#!/usr/bin/env bash
# The console commands `roadseg` and `roadseg-train` (pyproject.toml's [project.scripts]) in a venv:
# this checkout installed in editable mode, without dependencies (requirements.txt brings them), so
# the commands run this checkout's code from any folder. Idempotent: a stamp in the venv records
# the checkout and pyproject.toml it was made from; nothing runs when both are unchanged.
# Usage: scripts/install_commands.sh [VENV]   (default .venv; make setup calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
stamp="$venv/.roadseg-commands"
want="$(pwd -P) $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$venv/bin/roadseg" ] || [ ! -x "$venv/bin/roadseg-train" ]; then
  echo "setup: installing the roadseg and roadseg-train commands into $venv"
  # no build isolation: setuptools is already there, and nothing is downloaded
  "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation --editable .
  echo "$want" > "$stamp"
fi
