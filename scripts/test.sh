#!/usr/bin/env bash
# `make test-fast`: the tests not marked slow. `make test`: those, then the slow ones, in two pytest
# runs, so one run of every test gives both wall times (CI prints them). Extra arguments go to pytest.
#
#   scripts/test.sh fast|all [PYTEST ARGS...]
#
# The last lines say how long each part took and how long the whole suite took; the exit status
# is the first failing part's (the slow part still runs after a failure in the fast one).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: scripts/test.sh fast|all [pytest args]}
shift
PY=${PY:-.venv/bin/python}
export QT_QPA_PLATFORM=offscreen
# torch's OpenMP threads sleep instead of spinning between operations (tests/conftest.py says why)
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

status=0
times=()
part() {  # part NAME MARKER [ARGS]: one pytest run, timed
  local name=$1 marker=$2 start=$SECONDS rc
  shift 2
  "$PY" -m pytest -q --durations=10 -m "$marker" "$@"
  rc=$?
  if [ "$rc" -eq 5 ]; then rc=0; fi  # none of the selected tests is in this part
  times+=("$name $((SECONDS - start)) s")
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

start=$SECONDS
part "fast (make test-fast):" "not slow" "$@"
if [ "$what" = all ]; then
  part "slow:" "slow" "$@"
fi
echo
for t in "${times[@]}"; do echo "tests $t"; done
[ "$what" = all ] && echo "tests all (make test): $((SECONDS - start)) s"
[ "$status" -eq 0 ] && echo "tests: passed" || echo "tests: FAILED (exit $status)"
exit "$status"
