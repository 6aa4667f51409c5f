#!/usr/bin/env bash
# Fills wheels/ (ignored by git) with the Python packages that the GPU machine lacks, for
# scripts/gpu_check.sh to install there with `pip install --no-index` (it reaches no registry).
# Run it HERE, where PyPI is reachable, before a device call that carries wheels/ (docs/GPU.md).
#
#   scripts/gpu_wheels.sh                    wheels/ for the GPU machine (CPython 3.12, x86-64 Linux)
#   scripts/gpu_wheels.sh --sizes            only measure: wheels/ + the working tree against 64 MiB
#   scripts/gpu_wheels.sh --rehearsal-base   also the stand-in for the GPU machine's own packages
#                                            (torch 2.11.0 and the rest, a few GB, kept in the cache,
#                                            never carried) that `gpu_check.sh --cpu-rehearsal` needs
#
# The carried set is requirements.txt plus pyproj (what the brief asks for), minus what the GPU
# machine's image already has (IMAGE_HAS below, from /work/.library/device/KINDS.md), minus the
# development tools and the packages too large to carry (SKIP below). Every wheel is rebuilt
# uncompressed with the debug sections of its shared libraries stripped (`strip --strip-debug`:
# symbols stay) and its RECORD rewritten, and all of them go into ONE solid xz archive: the
# device tool carries at most 64 MiB in all, the project's own working tree included, and
# rasterio, pyproj and shapely take 35 MB as PyPI's wheels but 22 MB so. The sizes are printed.
#
# Environment: ROADSEG_GPU_CACHE (default ~/.cache/roadseg-gpu) holds downloads and the stand-in;
# PY312 names a CPython 3.12 (default: python3.12 on PATH, else pyenv's); GPU_WHEELS_EXTRA adds
# requirement specifiers to the carried set, past SKIP (GPU_WHEELS_EXTRA=pyogrio: over the limit today).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/wheels
CACHE=${ROADSEG_GPU_CACHE:-$HOME/.cache/roadseg-gpu}
LIMIT=$((64 * 1024 * 1024))   # the device tool's limit on what travels: working tree + carried paths
MARGIN=$((4 * 1024 * 1024))    # room for the working tree to grow before the GPU session runs
REHEARSAL_BASE=0
SIZES_ONLY=0
for a in "$@"; do
  case $a in
    --rehearsal-base) REHEARSAL_BASE=1 ;;
    --sizes) SIZES_ONLY=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "gpu_wheels: unknown argument $a" >&2; exit 2 ;;
  esac
done

# Python packages in the GPU machine's image ('cuda'), as KINDS.md lists them (read 2026-11-17);
# there python3 is CPython 3.12.3 at /opt/torch/.venv/bin/python3 with torch 2.11.0+cu130 and
# numpy 2.5.2. Nothing here is carried, except FALLBACK.
IMAGE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
# In the image, but carried as well: tiny, and rasterio refuses click 8.2.x, a version the image
# might hold. pip uses the carried one only when the image's does not satisfy a requirement.
FALLBACK="click"
# Named by requirements.txt, not carried (gpu_check.sh's import check leaves them out too):
SKIP="pyogrio:33 MB as a wheel (19 MB stripped and xz-compressed): one GDAL build too many beside rasterio's; the GPU steps write no vector file (geopandas imports it only to read or write one)
pytest-qgis:needs QGIS, which the GPU machine lacks; the GPU steps need no QGIS
ruff:development tool
mypy:development tool"
# The image's packages stood in for by the CPU rehearsal, at the versions KINDS.md gives
# (torch from PyPI is its CUDA build: it runs on the CPU and brings the image's nvidia-* libraries).
STANDIN="torch==2.11.0 numpy==2.5.2 onnx==1.23.1 onnxruntime==1.30.0 onnxscript==0.7.2 onnx-ir==1.0.0
scipy scikit-image networkx matplotlib imageio tqdm numba llvmlite pandas pillow tifffile lazy-loader
pytest pytest-timeout psutil pyyaml jinja2 click cloudpickle fsspec toolz msgpack sortedcontainers
packaging attrs certifi pyparsing narwhals python-dateutil"

norm() { tr 'A-Z_.' 'a-z--' <<<"$1" | sed -E 's/-+/-/g'; }
in_list() {  # NAME LIST: whether NAME is in the whitespace-separated LIST (of names, or specifiers)
  local n; n=$(norm "$1")
  grep -qx -- "$n" <<<"$(tr ' ' '\n' <<<"$2" | sed -E '/^$/d; s/[[<>=!~; ].*//' | tr 'A-Z_.' 'a-z--')"
}

if [ -z "${PY312:-}" ]; then  # the first that runs: a pyenv shim on PATH may not
  for c in python3.12 "$( (pyenv root || echo "$HOME/.pyenv") 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$(command -v "$c"); break; fi
  done
fi
if [ -z "${PY312:-}" ] || ! "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "gpu_wheels: no CPython 3.12 found (set PY312=/path/to/python3.12): the GPU machine runs 3.12" >&2
  exit 2
fi
# The host's own pip settings (extra indexes, find-links, constraints) stay out of it.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_CONSTRAINT PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_NO_INDEX 2>/dev/null || true
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux_2_12_x86_64 manylinux2010_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)
pip_download() {  # wheels for the GPU machine: CPython 3.12, glibc x86-64 (markers are read by 3.12 itself)
  "$PY312" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 "${PLATFORMS[@]/#/--platform=}" "$@"
}

if [ "$SIZES_ONLY" = 0 ]; then
# 1. What to carry: requirements.txt (+ pyproj, + GPU_WHEELS_EXTRA), minus the image and SKIP.
reqs=()
no_deps=()
echo "gpu_wheels: requirements.txt against the GPU machine's image:"
while IFS= read -r line; do
  spec=${line%%#*}; spec=$(echo "$spec" | xargs)
  [ -z "$spec" ] && continue
  name=$(sed -E 's/[[<>=!~; ].*//' <<<"$spec")
  if in_list "$name" "$IMAGE_HAS"; then
    echo "  $spec: on the GPU machine"
  elif in_list "$name" "${GPU_WHEELS_EXTRA:-}"; then
    reqs+=("$spec"); echo "  $spec: carried (GPU_WHEELS_EXTRA)"
  elif reason=$(grep -i "^$(norm "$name"):" <<<"$SKIP"); then
    echo "  $spec: NOT carried (${reason#*:})"
  elif [ "$(norm "$name")" = geopandas ] && ! in_list pyogrio "${GPU_WHEELS_EXTRA:-}"; then
    no_deps+=("$spec"); echo "  $spec: carried, installed without its dependencies (pyogrio: see above)"
  else
    reqs+=("$spec"); echo "  $spec: carried"
  fi
done < <(cat requirements.txt; echo pyproj; tr ' ' '\n' <<<"${GPU_WHEELS_EXTRA:-}")

# 2. Download them with their dependencies; keep what the image lacks (and FALLBACK).
dl=$CACHE/download
rm -rf "$dl"; mkdir -p "$dl"
echo "gpu_wheels: downloading wheels for CPython 3.12 / manylinux x86-64 ($PY312)"
pip_download -d "$dl" "${reqs[@]}" $FALLBACK
[ ${#no_deps[@]} -eq 0 ] || pip_download --no-deps -d "$dl" "${no_deps[@]}"

stage=$CACHE/stage
rm -rf "$stage"; mkdir -p "$stage"
dropped=()
for w in "$dl"/*.whl; do
  base=$(basename "$w"); name=${base%%-*}
  if in_list "$name" "$IMAGE_HAS" && ! in_list "$name" "$FALLBACK"; then
    dropped+=("$name"); continue
  fi
  cp "$w" "$stage/"
done
echo "gpu_wheels: the image already has (not carried): ${dropped[*]:-nothing}"

# 3. Rebuild each wheel uncompressed, shared libraries' debug sections stripped, RECORD rewritten;
#    one solid xz archive of them all, plus the lists gpu_check.sh reads.
tmp_out=$CACHE/wheels.new
rm -rf "$tmp_out"; mkdir -p "$tmp_out"
python3 - "$stage" "$tmp_out" <<'PY'
import base64, hashlib, os, subprocess, sys, tempfile, zipfile
from pathlib import Path

stage, out = Path(sys.argv[1]), Path(sys.argv[2])
(out / "stored").mkdir()
manifest = []
for whl in sorted(stage.glob("*.whl")):
    with zipfile.ZipFile(whl) as zin:
        infos = zin.infolist()
        record = next(i.filename for i in infos if i.filename.endswith(".dist-info/RECORD"))
        files, saved = [], 0
        for info in infos:
            if info.is_dir() or info.filename == record or info.filename.endswith((".dist-info/RECORD.jws", ".dist-info/RECORD.p7s")):
                continue
            data = zin.read(info)
            if data[:4] == b"\x7fELF":
                with tempfile.NamedTemporaryFile(delete=False) as f:
                    f.write(data)
                try:
                    if subprocess.run(["strip", "--strip-debug", f.name], capture_output=True).returncode == 0:
                        stripped = Path(f.name).read_bytes()
                        if len(stripped) < len(data):
                            saved += len(data) - len(stripped)
                            data = stripped
                finally:
                    os.unlink(f.name)
            files.append((info, data))
    lines = []
    for info, data in files:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{info.filename},sha256={digest},{len(data)}")
    lines.append(f"{record},,")
    target = out / "stored" / whl.name
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info, data in files:
            new = zipfile.ZipInfo(info.filename, info.date_time)
            new.external_attr, new.compress_type = info.external_attr, zipfile.ZIP_STORED
            zout.writestr(new, data)
        zout.writestr(zipfile.ZipInfo(record, files[0][0].date_time), "\n".join(lines) + "\n")
    sha = hashlib.sha256(whl.read_bytes()).hexdigest()
    manifest.append(f"{whl.name}  pypi={whl.stat().st_size}  stripped={saved}  sha256(pypi)={sha}")
(out / "MANIFEST.txt").write_text("\n".join(manifest) + "\n")
PY
(cd "$tmp_out/stored" && tar -cf - --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 ./*.whl) \
  | xz -9 -T0 > "$tmp_out/carry.tar.xz"
rm -rf "$tmp_out/stored"

pins() {  # the spec's name at the version downloaded, with its extras
  local spec=$1 name extras ver='' w
  name=$(sed -E 's/[[<>=!~; ].*//' <<<"$spec")
  extras=$(grep -oE '\[[^]]*\]' <<<"$spec" || true)
  for w in "$dl"/*.whl; do
    w=$(basename "$w")
    if [ "$(norm "${w%%-*}")" = "$(norm "$name")" ]; then ver=$(cut -d- -f2 <<<"$w"); break; fi
  done
  echo "$name$extras==$ver"
}
{
  echo "# installed with dependencies from the carried wheels (scripts/gpu_wheels.sh)"
  for s in "${reqs[@]}"; do pins "$s"; done | awk '!seen[$0]++'
} > "$tmp_out/requirements.txt"
{
  echo "# installed without dependencies (geopandas: its pyogrio is not carried)"
  for s in "${no_deps[@]}"; do pins "$s"; done
} > "$tmp_out/no-deps.txt"
tr ' ' '\n' <<<"$IMAGE_HAS" | sed '/^$/d' > "$tmp_out/image-packages.txt"
tr ' ' '\n' <<<"$STANDIN" | sed '/^$/d' > "$tmp_out/standin.txt"
rm -rf "$OUT"; mv "$tmp_out" "$OUT"
fi
[ -f "$OUT/carry.tar.xz" ] || { echo "gpu_wheels: no wheels/carry.tar.xz yet: run scripts/gpu_wheels.sh" >&2; exit 1; }

# 4. The sizes: what travels is the working tree (tracked and untracked files git does not ignore)
#    plus wheels/; the device tool refuses more than 64 MiB.
sizes=$(python3 - "$ROOT" "$OUT" <<'PY'
import os, subprocess, sys
root, out = sys.argv[1], sys.argv[2]
names = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True, check=True).stdout.split(b"\0")
tree = sum(os.path.getsize(os.path.join(root, n.decode())) for n in set(names)
           if n and os.path.isfile(os.path.join(root, n.decode())))
wheels = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
print(tree, wheels)
PY
)
read -r tree wheels <<<"$sizes"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
pypi=$(awk '{ sub("pypi=", "", $2); s += $2 } END { print s }' "$OUT/MANIFEST.txt")
echo "gpu_wheels: $(wc -l < "$OUT/MANIFEST.txt") wheels carried ($(mib "$pypi") as PyPI's wheels):"
sed 's/^/  /' "$OUT/requirements.txt" "$OUT/no-deps.txt" | grep -v '^  #'
echo "gpu_wheels: wheels/ $(mib "$wheels") ($wheels bytes) + working tree $(mib "$tree") = $(mib $((tree + wheels))) of the device tool's 64 MiB"
if [ $((tree + wheels)) -gt $LIMIT ]; then
  echo "gpu_wheels: OVER the 64 MiB limit: the device tool would refuse the call" >&2; exit 1
elif [ $((tree + wheels + MARGIN)) -gt $LIMIT ]; then
  echo "gpu_wheels: warning: less than $(mib $MARGIN) to spare under the 64 MiB limit" >&2
fi

# 5. The rehearsal's stand-in for the image's packages (kept in the cache, never carried).
if [ "$REHEARSAL_BASE" = 1 ]; then
  echo "gpu_wheels: downloading the image stand-in for the CPU rehearsal into $CACHE/standin"
  mkdir -p "$CACHE/standin"
  # shellcheck disable=SC2086  # STANDIN is a list of specifiers
  "$PY312" -m pip download --quiet --only-binary=:all: -d "$CACHE/standin" $STANDIN
  echo "gpu_wheels: stand-in $(du -sh "$CACHE/standin" | cut -f1)"
fi
