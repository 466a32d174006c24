#!/usr/bin/env bash
# The one test command of cmrl (CI runs it through .ci/run):  bash tools/test.sh
#  1. setup without the main job (tools/setup.sh --no-run; quick when already set up);
#  2. `nbdev-export` + `nbdev-clean` must leave the working tree as it was (notebooks are the source);
#  3. `nbdev-test --n-workers 2` (fast set: `#| slow` and `#| notest` cells skipped);
#  4. generated files up to date: nbs/sidebar.yml (tools/sidebar.py), README.md (tools/readme.py);
#  5. the docs site: tools/build_docs.py executes every notebook and renders _docs/;
#  6. `pytest tests/` last (it includes the headless-Chromium checks of the site), so its summary is
#     the last line printed. Extra arguments go to pytest, e.g. `bash tools/test.sh --runslow`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec </dev/null  # nothing may wait for input (CI has no stdin)
T0=$SECONDS
STEP=""
step() { STEP="$*"; echo "=== [test $((SECONDS - T0)) s] $*" >&2; }
trap 'rc=$?; [ $rc = 0 ] || echo "=== [test] FAILED at: $STEP (exit $rc, after $((SECONDS - T0)) s)" >&2' EXIT
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg

step "setup (tools/setup.sh --no-run)"
bash tools/setup.sh --no-run
PY=.venv/bin/python

step "nbdev-export + nbdev-clean leave no diff"
snapshot() {  # status of every changed/untracked file, with a hash of its content
  git status --porcelain=v1 --untracked-files=all
  git ls-files -z --modified --others --exclude-standard | xargs -0 -r sha256sum 2>/dev/null || true
}
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  before="$(snapshot)"
  copy="$(mktemp -d)"; cp -a nbs cmrl "$copy"/
  .venv/bin/nbdev-export
  .venv/bin/nbdev-clean
  after="$(snapshot)"
  if [ "$before" != "$after" ]; then
    echo "nbdev-export/nbdev-clean changed the working tree; run them, check the result and commit it. Changes:" >&2
    diff <(echo "$before") <(echo "$after") | grep '^>' | sed 's/^> /  /' >&2 || true
    { diff -ru -x __pycache__ "$copy/nbs" nbs; diff -ru -x __pycache__ "$copy/cmrl" cmrl; } | head -300 >&2 || true
    rm -rf "$copy"
    exit 1
  fi
  rm -rf "$copy"
else
  echo "not a git checkout: skipping the export/clean diff check" >&2
fi

step "nbdev-test --n-workers 2"
.venv/bin/nbdev-test --n-workers 2

step "generated files up to date"
$PY tools/sidebar.py --check

step "docs site (tools/build_docs.py)"
$PY tools/build_docs.py --workers 2
$PY tools/readme.py --check  # README.md from the executed nbs/index.ipynb

step "pytest tests/"
echo "=== [test] $((SECONDS - T0)) s so far; pytest comes last, its summary is the last line" >&2
trap - EXIT
exec $PY -m pytest tests/ -q -ra -p no:cacheprovider --durations=10 "$@"  # exit 5 (no tests collected) fails too
