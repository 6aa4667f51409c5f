#!/usr/bin/env bash
# The GPU check, in one call of the device tool (docs/GPU.md): installs the carried wheels,
# checks every import before spending time, runs the CUDA tests and the engine benchmark, and
# writes what it saw to OUTDIR (at most 8 files: what the device tool brings back).
#
#   scripts/gpu_check.sh [--cpu-rehearsal] [--size N] OUTDIR
#
# On the GPU machine: python3 (the image's, with torch) gets the wheels of wheels/carry.tar.xz
# (scripts/gpu_wheels.sh, run beforehand where PyPI is reachable), then
#   1. install   pip install --no-index from the carried wheels only            install.log
#   2. imports   every module the steps need, in one process; stops on any      install.log
#                missing, naming them; on the GPU, torch must see CUDA
#   3. pytest    tests/core/test_cuda.py                                        pytest-cuda.log
#   4. bench     python -m bench --device cuda --size N --json (N = 32768:      bench.log, bench.json,
#                1 Gpx, as the issue asks), each phase's time logged as it ends  nvidia-smi-dmon.txt
# and nvidia-smi before and after (nvidia-smi.txt), pip freeze (pip-freeze.txt), and the
# table of steps with their exit codes and seconds (summary.txt, also printed last).
# Each step runs under `timeout`, within one budget for the whole script, so that a slow step
# cannot eat the device time (15 minutes a session, the machine's start included).
#
# --cpu-rehearsal (or GPU_CHECK_REHEARSAL=1), here: the same steps with --device cpu, a small
# size and the CUDA tests skipped as on any CPU, in a FRESH CPython 3.12 venv holding only a
# stand-in for the GPU image's packages (`scripts/gpu_wheels.sh --rehearsal-base`, pruned to the
# image's names) and then the carried wheels, installed with `--no-index` and dependencies
# resolved: it proves the carried set complete, and the steps sound, before any device time.
#
# Environment: GPU_CHECK_SIZE (bench raster side, default 32768; 1024 in rehearsal),
# GPU_CHECK_BUDGET_S (the whole script, default 480 s; 1800 in rehearsal), GPU_CHECK_T_INSTALL,
# GPU_CHECK_T_IMPORTS, GPU_CHECK_T_PYTEST, GPU_CHECK_T_BENCH (each step's cap: 120, 90, 150, 420 s),
# PY (default python3), GPU_CHECK_PLAIN_BENCH=1 (plain `python -m bench`, no phase log).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS

REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
SIZE=${GPU_CHECK_SIZE:-}
OUTDIR=
while [ $# -gt 0 ]; do
  case $1 in
    --cpu-rehearsal) REHEARSAL=1 ;;
    --size) SIZE=$2; shift ;;
    --size=*) SIZE=${1#--size=} ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) OUTDIR=$1 ;;
  esac
  shift
done
if [ -z "$OUTDIR" ]; then echo "usage: scripts/gpu_check.sh [--cpu-rehearsal] [--size N] OUTDIR" >&2; exit 2; fi
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
WHEELS=$ROOT/wheels
CACHE=${ROADSEG_GPU_CACHE:-$HOME/.cache/roadseg-gpu}
if [ "$REHEARSAL" = 1 ]; then
  DEVICE=cpu; SIZE=${SIZE:-1024}; BUDGET=${GPU_CHECK_BUDGET_S:-1800}
else
  DEVICE=cuda; SIZE=${SIZE:-32768}; BUDGET=${GPU_CHECK_BUDGET_S:-480}
fi
T_INSTALL=${GPU_CHECK_T_INSTALL:-120}; T_IMPORTS=${GPU_CHECK_T_IMPORTS:-90}
T_PYTEST=${GPU_CHECK_T_PYTEST:-150}; T_BENCH=${GPU_CHECK_T_BENCH:-420}
DEADLINE=$((START + BUDGET))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/roadseg-gpu-check.XXXXXX")
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg QT_QPA_PLATFORM=offscreen PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
# pip reads no configuration (no index, find-links or constraints of the host) and reaches no index.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_NO_INDEX PIP_REQUIRE_VIRTUALENV 2>/dev/null || true

SUMMARY=$OUTDIR/summary.txt
INSTALL_LOG=$OUTDIR/install.log
: > "$SUMMARY"; : > "$INSTALL_LOG"
say() { echo "gpu_check: $*"; }
note() { echo "$*" >> "$SUMMARY"; }
STEPS=()
FAILED=0
record() {  # NAME RC SECONDS [what]
  local status=ok
  [ "$2" = 124 ] || [ "$2" = 137 ] && status="TIMED OUT"
  [ "$2" != 0 ] && [ "$status" = ok ] && status=FAILED
  [ "$2" = skip ] && status="not run (no time left)"
  STEPS+=("$(printf '%-9s %-24s %6ss  %s' "$1" "$status" "$3" "${4:-}")")
  [ "$status" = ok ] || FAILED=1
}
cap() {  # a step's timeout: its own cap, within what is left of the budget
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
# run_step NAME CAP LOG CMD...: CMD under timeout (its whole process group), output to LOG and here.
run_step() {
  local name=$1 limit log=$3 t0=$SECONDS rc
  limit=$(cap "$2"); shift 3
  if [ "$limit" -lt 15 ]; then record "$name" skip 0; say "$name: skipped, the budget is spent"; return 99; fi
  say "$name: up to ${limit}s: $*"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  record "$name" "$rc" $((SECONDS - t0)) "$(basename "$log")"
  say "$name: exit $rc after $((SECONDS - t0))s"
  return "$rc"
}
finish() {
  local rc=$1
  [ -n "${DMON_PID:-}" ] && kill "$DMON_PID" 2>/dev/null
  {
    echo
    echo "== steps (budget ${BUDGET}s, used $((SECONDS - START))s)"
    printf '%s\n' "${STEPS[@]}"
    if [ -s "$OUTDIR/bench.json" ]; then echo; echo "== bench.json"; cat "$OUTDIR/bench.json"; fi
    echo
    [ "$rc" = 0 ] && echo "RESULT: all steps passed" || echo "RESULT: FAILED (exit $rc): see the logs named above"
  } >> "$SUMMARY"
  echo; echo "======== $SUMMARY"; cat "$SUMMARY"
  rm -rf "$WORK"
  exit "$rc"
}

# 0. The machine, before anything runs.
note "RoadSeg GPU check ($([ "$REHEARSAL" = 1 ] && echo "CPU REHEARSAL" || echo GPU)): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
note "device=$DEVICE size=$SIZE ($((SIZE * SIZE / 1000000)) Mpx) budget=${BUDGET}s caps: install=$T_INSTALL imports=$T_IMPORTS pytest=$T_PYTEST bench=$T_BENCH"
note "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory"
note "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no git here"), $(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l) changed files"
if command -v nvidia-smi >/dev/null; then
  { echo "== before: nvidia-smi"; nvidia-smi; echo "== before: nvidia-smi -q (clocks, memory, performance, power)"
    nvidia-smi -q -d CLOCK,MEMORY,PERFORMANCE,POWER,TEMPERATURE; } > "$OUTDIR/nvidia-smi.txt" 2>&1
  note "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | head -1)"
else
  echo "nvidia-smi: not on this machine" > "$OUTDIR/nvidia-smi.txt"
  note "gpu: no nvidia-smi"
fi
if [ ! -f "$WHEELS/carry.tar.xz" ]; then
  say "wheels/carry.tar.xz missing: run scripts/gpu_wheels.sh here and name \"wheels\" in the run's carry" | tee -a "$SUMMARY"
  record wheels 2 0; finish 2
fi

# 1. Install. Rehearsal: a fresh 3.12 venv with the image's stand-in first.
install_carried() {
  set -e
  local py=$1 extracted=$WORK/wheels
  mkdir -p "$extracted"
  "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$WHEELS/carry.tar.xz" "$extracted"
  echo "carried: $(ls "$extracted" | wc -l) wheels, $(du -sh "$extracted" | cut -f1) unpacked"
  local pip=("$py" -m pip install --no-index --find-links "$extracted" --no-cache-dir --no-compile --progress-bar off)
  if "${pip[@]}" -r "$WHEELS/requirements.txt"; then
    if grep -qv '^#' "$WHEELS/no-deps.txt"; then "${pip[@]}" --no-deps -r "$WHEELS/no-deps.txt"; fi
    echo "install: dependencies resolved from the carried wheels and what was there"
  elif [ "$REHEARSAL" = 1 ]; then
    echo "install: FAILED: the carried wheels and the image's packages do not resolve (see above)"; return 1
  else  # an image package at a version the carried ones refuse: install them as they are, let imports judge
    echo "install: the resolver failed (above); installing every carried wheel without dependencies"
    local image wheels=() w n
    image=" $(tr '\n' ' ' < "$WHEELS/image-packages.txt")"
    for w in "$extracted"/*.whl; do
      n=$(basename "$w" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
      [[ $image == *" $n "* ]] || wheels+=("$w")
    done
    if ! "${pip[@]}" --no-deps "${wheels[@]}"; then
      echo "install: into $WORK/site instead (PYTHONPATH)"
      "${pip[@]}" --no-deps --target "$WORK/site" "${wheels[@]}"
      echo "$WORK/site" > "$WORK/pythonpath"
    fi
  fi
  "$py" -m pip check || echo "(pip check: geopandas's pyogrio is left out on purpose; anything else matters)"
}
make_rehearsal_venv() {
  set -e
  local py312=${PY312:-} c
  if [ -z "$py312" ]; then
    for c in python3.12 "$( (pyenv root || echo "$HOME/.pyenv") 2>/dev/null)"/versions/3.12*/bin/python3.12; do
      if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py312=$c; break; fi
    done
  fi
  [ -n "$py312" ] || { echo "no CPython 3.12 (set PY312)"; return 1; }
  [ -d "$CACHE/standin" ] || { echo "no stand-in: run scripts/gpu_wheels.sh --rehearsal-base"; return 1; }
  echo "fresh venv $WORK/venv from $py312 ($("$py312" --version))"
  "$py312" -m venv "$WORK/venv"
  # shellcheck disable=SC2046  # one specifier a line
  "$WORK/venv/bin/python" -m pip install --no-index --find-links "$CACHE/standin" --quiet --no-compile \
    $(cat "$WHEELS/standin.txt")
  # No richer than the image: whatever the stand-in brought that the image's list lacks goes.
  local extra
  extra=$("$WORK/venv/bin/python" -m pip list --format=freeze | cut -d= -f1 | tr 'A-Z_.' 'a-z--' \
          | grep -vxF -f "$WHEELS/image-packages.txt" || true)
  echo "stand-in for the image: $("$WORK/venv/bin/python" -m pip list --format=freeze | wc -l) packages;" \
       "removed as absent from the image's list: ${extra:-none}"
  [ -z "$extra" ] || "$WORK/venv/bin/python" -m pip uninstall --yes --quiet $extra
}

if [ "$REHEARSAL" = 1 ]; then
  run_step standin 900 "$INSTALL_LOG" bash -c "$(declare -f make_rehearsal_venv); WORK='$WORK' CACHE='$CACHE' WHEELS='$WHEELS' make_rehearsal_venv" \
    || finish 1
  PY=$WORK/venv/bin/python
  DEADLINE=$((SECONDS + BUDGET))  # the stand-in's install is the rehearsal's own cost: the budget starts now
else
  PY=${PY:-python3}
fi
note "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1)"
run_step install "$T_INSTALL" "$INSTALL_LOG" bash -c "$(declare -f install_carried); WORK='$WORK' WHEELS='$WHEELS' REHEARSAL='$REHEARSAL' install_carried '$PY'" \
  || finish 1
if [ -f "$WORK/pythonpath" ]; then PYTHONPATH=$(cat "$WORK/pythonpath"):$PYTHONPATH; export PYTHONPATH; fi
"$PY" -m pip freeze > "$OUTDIR/pip-freeze.txt" 2>&1

# 2. Imports: everything the steps touch (pyogrio is not carried: see scripts/gpu_wheels.sh).
IMPORTS="torch numpy scipy skimage networkx sknw numba llvmlite rasterio affine pyproj shapely geopandas
pandas onnx onnxruntime onnxscript imageio matplotlib tqdm dask distributed bokeh psutil PIL yaml
pytest pytest_timeout
roadseg_plugin.core.engine roadseg_plugin.core.backends roadseg_plugin.core.vectorise
roadseg_plugin.core.skeleton_pieces roadseg_plugin.core.region.cluster training.train
bench.measure bench.synthetic tests.core.test_cuda tests.training.test_train_run"
cat > "$WORK/imports.py" <<'PY'
import importlib, sys, traceback
names, need_cuda = sys.argv[1].split(), sys.argv[2] == "cuda"
missing, versions = [], []
for name in names:
    try:
        mod = importlib.import_module(name)
        if "." not in name and getattr(mod, "__version__", None):
            versions.append(f"{name} {mod.__version__}")
    except Exception as exc:  # the name, and which module is missing if that is why
        gone = getattr(exc, "name", None)
        missing.append(f"{name} ({type(exc).__name__}: {exc})" + (f" [missing: {gone}]" if gone and gone != name else ""))
        traceback.print_exc(limit=-2)
print("versions:", ", ".join(versions))
if not missing:
    import rasterio, onnxruntime, torch
    print("gdal", rasterio.__gdal_version__, "| onnxruntime providers", onnxruntime.get_available_providers())
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          "| cuda available:", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"device: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.0f} GiB")
    elif need_cuda:
        missing.append("torch.cuda (torch sees no CUDA device)")
if missing:
    print(f"imports: MISSING {len(missing)} of {len(names)}:\n  " + "\n  ".join(missing))
    sys.exit(3)
print(f"imports: all {len(names)} ok")
PY
if ! run_step imports "$T_IMPORTS" "$INSTALL_LOG" "$PY" "$WORK/imports.py" "$IMPORTS" "$DEVICE"; then
  sed -n '/^imports: MISSING/,$p' "$INSTALL_LOG" | grep -v '^gpu_check' >> "$SUMMARY"
  finish 3
fi
grep -E '^(versions:|gdal |torch |device:)' "$INSTALL_LOG" | tail -4 | sed 's/^/  /' >> "$SUMMARY"

# 3. The CUDA tests (on the CPU all skip: the rehearsal proves they collect).
run_step pytest "$T_PYTEST" "$OUTDIR/pytest-cuda.log" \
  "$PY" -m pytest tests/core/test_cuda.py -v -rA --timeout="$T_PYTEST" -p no:cacheprovider
tail -1 "$OUTDIR/pytest-cuda.log" | sed 's/^/  pytest: /' >> "$SUMMARY"

# 4. The benchmark; nvidia-smi dmon samples the GPU (power, utilisation, clocks, memory) each second.
if command -v nvidia-smi >/dev/null; then
  nvidia-smi dmon -s pucm -d 1 -o T > "$OUTDIR/nvidia-smi-dmon.txt" 2>&1 &
  DMON_PID=$!
fi
cat > "$WORK/bench_phases.py" <<'PY'
# `python -m bench` itself, with the time of each phase logged as it ends: a bench cut short by its
# timeout still says how far it got and what each part cost.
import sys, time, functools
import bench.measure as measure, bench.synthetic as synthetic
from bench.__main__ import main
T0 = time.perf_counter()
def timed(mod, name):
    fn = getattr(mod, name)
    @functools.wraps(fn)
    def wrapper(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        shown = out if isinstance(out, (int, float, dict)) else (out[0] if isinstance(out, tuple) else type(out).__name__)
        print(f"[phase] {name}: {time.perf_counter() - t:.1f}s (at {time.perf_counter() - T0:.0f}s) -> {shown}", file=sys.stderr, flush=True)
        return out
    setattr(mod, name, wrapper)
for n in ("read_speed", "backend_speeds", "model_speed", "end_to_end", "vectorise_seconds", "peak_rss_mb"):
    timed(measure, n)
for n in ("write_synthetic_raster", "write_standin_checkpoint"):
    timed(synthetic, n)
sys.exit(main(sys.argv[1:]))
PY
BENCH_ARGS=(--device "$DEVICE" --size "$SIZE" --json "$OUTDIR/bench.json")
if [ "${GPU_CHECK_PLAIN_BENCH:-0}" = 1 ]; then
  run_step bench "$T_BENCH" "$OUTDIR/bench.log" "$PY" -m bench "${BENCH_ARGS[@]}"
else
  run_step bench "$T_BENCH" "$OUTDIR/bench.log" "$PY" "$WORK/bench_phases.py" "${BENCH_ARGS[@]}"
fi
if [ -n "${DMON_PID:-}" ]; then kill "$DMON_PID" 2>/dev/null; wait "$DMON_PID" 2>/dev/null; DMON_PID=; fi
if command -v nvidia-smi >/dev/null; then
  { echo; echo "== after: nvidia-smi"; nvidia-smi; } >> "$OUTDIR/nvidia-smi.txt" 2>&1
  # the dmon samples taken while the bench ran: busiest and mean SM utilisation, peak power and memory
  awk '/^#/ && !hdr { sub(/^# */, ""); for (i = 1; i <= NF; i++) col[$i] = i; hdr = 1; next }
       /^#/ || !hdr { next }
       { n++; sm += $col["sm"]; if ($col["sm"] > smx) smx = $col["sm"]; if ($col["pwr"] > pw) pw = $col["pwr"]
         if ($col["fb"] > fb) fb = $col["fb"]; if ($col["pclk"] > clk) clk = $col["pclk"] }
       END { if (n) printf "  dmon: %d samples, SM busy mean %.0f%% max %d%%, power max %d W, SM clock max %d MHz, framebuffer max %d MB\n", n, sm / n, smx, pw, clk, fb }' \
    "$OUTDIR/nvidia-smi-dmon.txt" >> "$SUMMARY" 2>/dev/null
fi
finish "$FAILED"
