#!/usr/bin/env bash
# The one test command of cmrl (CI runs it through .ci/run):  bash tools/test.sh [pytest args]
#  1. setup without the main job (tools/setup.sh --no-run; quick when already set up);
#  2. `nbdev-export` + `nbdev-clean` must leave the working tree as it was (notebooks are the source);
#  3. `nbdev-test --n-workers 2` (fast set: `#| slow` and `#| notest` cells skipped);
#  4. nbs/sidebar.yml up to date (tools/sidebar.py);
#  5. the docs site: tools/build_docs.py executes every notebook (slow cells too) and renders _docs/;
#     README.md up to date with the executed nbs/index.ipynb (tools/readme.py);
#  6. `pytest tests/` last (it includes the headless-Chromium checks of the site), so its summary is
#     the last line printed. Extra arguments go to pytest, e.g. `bash tools/test.sh --runslow`.
# Steps 2-5 keep going after a failure so one run reports everything; the command exits non-zero
# if any step failed. Setup failing stops at once.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
exec </dev/null  # nothing may wait for input (CI has no stdin)
T0=$SECONDS
FAILED=()
step() { echo "=== [test $((SECONDS - T0)) s] $*" >&2; }
fail() { FAILED+=("$*"); echo "=== [test] FAILED: $*" >&2; }
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg

step "setup (tools/setup.sh --no-run)"
bash tools/setup.sh --no-run || { echo "=== [test] FAILED: setup" >&2; exit 1; }
PY=.venv/bin/python

step "nbdev-export + nbdev-clean leave no diff"
snapshot() {  # status of every changed/untracked file, with a hash of its content
  git status --porcelain=v1 --untracked-files=all
  git ls-files -z --modified --others --exclude-standard | xargs -0 -r sha256sum 2>/dev/null || true
}
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  before="$(snapshot)"
  copy="$(mktemp -d)"; cp -a nbs cmrl "$copy"/
  if .venv/bin/nbdev-export && .venv/bin/nbdev-clean; then
    after="$(snapshot)"
    if [ "$before" != "$after" ]; then
      echo "nbdev-export/nbdev-clean changed these files (run both, check the result, commit it):" >&2
      diff <(echo "$before") <(echo "$after") | grep '^>' | sed 's/^> /  /' >&2
      { diff -ru -x __pycache__ "$copy/nbs" nbs; diff -ru -x __pycache__ "$copy/cmrl" cmrl; } | head -300 >&2
      fail "nbdev-export + nbdev-clean left a diff"
    fi
  else fail "nbdev-export/nbdev-clean"; fi
  rm -rf "$copy"
else
  echo "not a git checkout: skipping the export/clean diff check" >&2
fi

step "nbdev-test --n-workers 2"
.venv/bin/nbdev-test --n-workers 2 || fail "nbdev-test"

step "nbs/sidebar.yml up to date"
$PY tools/sidebar.py --check || fail "nbs/sidebar.yml is stale"
$PY tools/cells.py --check || fail "exported notebook cells over the size goal (python tools/cells.py lists them)"

step "docs site (tools/build_docs.py)"
$PY tools/build_docs.py --workers 2 || fail "docs build"
$PY tools/readme.py --check || fail "README.md is stale (or nbs/index.ipynb fails)"

step "pytest tests/"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "=== [test] failed so far: $(printf '%s; ' "${FAILED[@]}")pytest runs anyway, then the command exits 1" >&2
fi
echo "=== [test] $((SECONDS - T0)) s before pytest; its summary is the last line" >&2
$PY -m pytest tests/ -q -ra -p no:cacheprovider --durations=10 --continue-on-collection-errors "$@"
rc=$?  # 5 (no tests collected) fails too
[ $rc = 0 ] && [ ${#FAILED[@]} -gt 0 ] && rc=1
exit $rc
