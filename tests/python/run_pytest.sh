#!/usr/bin/env bash
# Runs one pytest file for ctest (kvstash_add_pytest): run_pytest.sh <python> <test file>.
# A missing interpreter is a failure with a clear message, except where the venv was skipped on
# purpose (KVSTASH_SKIP_SGLANG=1 for the sglang venv, KVSTASH_SKIP_VLLM=1 for the vLLM venv): then
# exit 77, which ctest reports as a skip.
set -euo pipefail
PY="$1"
FILE="$2"
if [ ! -x "$PY" ]; then
  case "$PY" in
    */venv-sglang/*)
      if [ "${KVSTASH_SKIP_SGLANG:-0}" = 1 ]; then
        echo "SKIPPED: KVSTASH_SKIP_SGLANG=1, the sglang venv ($PY) was not set up"
        exit 77
      fi
      echo "missing $PY: run scripts/setup_sglang.sh (or set KVSTASH_SKIP_SGLANG=1 to skip)" >&2
      ;;
    */venv-vllm/*)
      if [ "${KVSTASH_SKIP_VLLM:-0}" = 1 ]; then
        echo "SKIPPED: KVSTASH_SKIP_VLLM=1, the vLLM venv ($PY) was not set up"
        exit 77
      fi
      echo "missing $PY: run scripts/setup_vllm.sh (or set KVSTASH_SKIP_VLLM=1 to skip)" >&2
      ;;
    *)
      echo "missing $PY: run scripts/setup_python.sh (./run.sh test does)" >&2
      ;;
  esac
  exit 1
fi
# -p no:cacheprovider: never write .pytest_cache into the source tree.
exec "$PY" -m pytest -q -p no:cacheprovider -rs "$FILE"
