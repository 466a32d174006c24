#!/usr/bin/env bash
# The one setup command of cmrl:  bash tools/setup.sh [--no-run]
#
# On Debian 12 (as root, or with sudo):
#  1. installs the system packages the project needs, only those missing:
#     tuxpaint-stamps-default (real data), chromium + chromium-driver (docs page tests), espeak-ng (speech),
#     libjs-katex (formulas in the offline docs site), libcairo2 (cairosvg rasterises SVG stamps);
#  2. builds the virtual environment in a cache outside the checkout, keyed by a hash of the
#     dependency pins in pyproject.toml: ${CMRL_CACHE:-~/.cache/cmrl}/venv-<hash>, linked as .venv;
#     installs the pinned dependencies and this checkout (editable, with the dev extras);
#  3. runs the main job: `.venv/bin/cmrl` with no arguments (skip with --no-run).
# Running it again is quick: packages present and a complete venv (stamp file) are left alone.
# Environment: PYTHON (interpreter for the venv, default python3), CMRL_CACHE (cache folder).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN=1
for a in "$@"; do
  case "$a" in
    --no-run) RUN=0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $a (use --no-run or --help)" >&2; exit 2 ;;
  esac
done
log() { echo "[setup] $*" >&2; }
T0=$SECONDS

# ---------------------------------------------------------------- 1. system packages
APT_PKGS=(tuxpaint-stamps-default chromium chromium-driver espeak-ng libjs-katex libcairo2)
PY="${PYTHON:-python3}"
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else log "need root to run: $*"; return 1; fi
}
apt_install() {  # apt_install PKG...: install the given packages (no recommends)
  log "apt-get install $*"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if command -v dpkg-query >/dev/null; then
  missing=()
  for p in "${APT_PKGS[@]}"; do installed "$p" || missing+=("$p"); done
  command -v "$PY" >/dev/null || { PY=python3; missing+=(python3 python3-venv); }
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; else log "system packages present"; fi
else
  log "not a Debian system: install ${APT_PKGS[*]} yourself"
fi

# ---------------------------------------------------------------- 2. virtual environment
KEY="$("$PY" - <<'EOF'
import hashlib, platform, sys
try:
    import tomllib
    p = tomllib.load(open('pyproject.toml', 'rb'))
    pins = [p['build-system'].get('requires', []), p['project'].get('requires-python', ''),
            p['project'].get('dependencies', []), p['project'].get('optional-dependencies', {})]
except ImportError:  # Python < 3.11: hash the whole file
    pins = open('pyproject.toml').read()
pins = repr((pins, sys.version_info[:2], platform.machine()))
print(hashlib.sha256(pins.encode()).hexdigest()[:12])
EOF
)"
CACHE="${CMRL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cmrl}"
VENV="$CACHE/venv-$KEY"
DEPS_STAMP="$VENV/.cmrl-deps-installed"
PROJ_STAMP="$VENV/.cmrl-project"
PROJ_ID="$ROOT $(sha256sum pyproject.toml | cut -c1-16)"
mkdir -p "$CACHE"
exec 9>"$CACHE/venv-$KEY.lock"
flock 9  # one installer at a time per venv

if [ -f "$DEPS_STAMP" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  log "venv $VENV is complete"
else
  [ -d "$VENV" ] && { log "removing incomplete $VENV"; rm -rf "$VENV"; }
  log "creating $VENV with $("$PY" --version 2>&1) (the first install takes a few minutes)"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then  # Debian's python3 needs python3-venv for ensurepip
    rm -rf "$VENV"
    command -v apt-get >/dev/null && apt_install python3-venv
    "$PY" -m venv "$VENV"
  fi
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  "$VENV/bin/python" -m pip install -q "setuptools>=77" wheel
  "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[dev]"
  "$VENV/bin/python" -c 'import torch, torchvision, torchaudio, fastai, nbdev, cmrl' \
    || { log "the installed packages do not import together"; exit 1; }
  echo "$KEY" >"$DEPS_STAMP"
  echo "$PROJ_ID" >"$PROJ_STAMP"
fi
# the venv is shared by checkouts with the same pins: point its editable install at this one
if [ "$(cat "$PROJ_STAMP" 2>/dev/null)" != "$PROJ_ID" ]; then
  log "installing this checkout ($ROOT) into the venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$PROJ_ID" >"$PROJ_STAMP"
fi
flock -u 9

if [ -L .venv ] || [ ! -e .venv ]; then
  [ "$(readlink .venv 2>/dev/null)" = "$VENV" ] || ln -sfn "$VENV" .venv
else
  log ".venv exists and is not a link: move it away so .venv can point at $VENV"; exit 1
fi
log "ready in $((SECONDS - T0)) s: .venv -> $VENV"

# ---------------------------------------------------------------- 3. main job
if [ "$RUN" = 1 ]; then
  log "running the main job: .venv/bin/cmrl"
  exec .venv/bin/cmrl
fi
