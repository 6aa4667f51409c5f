#!/usr/bin/env bash
# Installs everything RoadSeg needs on Debian 12. Idempotent: seconds when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-pip: `make install-plugin` (and the plugin's installer) run QGIS's Python's pip to install
# RoadSeg's packages into the QGIS profile; Debian's python3 has no pip and disables ensurepip
APT_PKGS=(qgis python3-qgis qgis-providers python3-venv python3-pip xvfb xauth)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${APT_PKGS[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv (system site packages, for QGIS's Python bindings)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r requirements.txt
  echo "$want" > "$stamp"
fi
# `roadseg ...` and `roadseg-train ...` on the venv's PATH. A .venv that is a symlink is shared with
# the checkout it lives in (a git worktree's), whose commands it keeps.
if [ -L .venv ]; then
  echo "setup: .venv is a link to $(readlink -f .venv); its roadseg commands belong to that checkout"
else
  bash scripts/install_commands.sh .venv
fi
echo "setup: ok"
