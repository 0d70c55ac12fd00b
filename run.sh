#!/usr/bin/env bash
# KVStash entry point. Every command installs what is missing first (idempotent), then builds.
#
#   ./run.sh demo     build, start cachesvc on the embedded single-node default, run the demo
#   ./run.sh test     format and header checks, builds with warnings as errors, clang-tidy on
#                     the lines the change touched, every test through ctest, the transport's
#                     tests against UCX 1.22; then again under ASan+UBSan (DEVELOPERS.md "CI
#                     gates")
#   ./run.sh bench    build, run the benchmarks, write bench/results/*.json
#   ./run.sh build [preset]   configure + build only (presets: release, asan, debug, tsa)
#   ./run.sh fuzz [seconds]   build libFuzzer targets with clang and run each for N seconds
#   ./run.sh format           clang-format in place
#   ./run.sh tidy [--all]     clang-tidy gate (scripts/check_tidy.sh) on the sources changed
#                             since the base, or on all of them; `lint` = `tidy --all`
#
# Environment: KVSTASH_CACHE (models, venv; default ~/.cache/kvstash), KVSTASH_JOBS (build jobs),
# KVSTASH_WERROR=ON (build: warnings are errors; test always sets it),
# KVSTASH_SKIP_ASAN=1 (test: skip the sanitizer pass), CTEST_ARGS (extra ctest arguments),
# KVSTASH_SKIP_VLLM=1 (test, bench: no vLLM venv; the vLLM tests then skip themselves),
# KVSTASH_SKIP_SGLANG=1 (test: no SGLang venv; the SGLang backend tests then report skipped),
# KVSTASH_SHARED_DATA (the shared fixtures: tiny models, text corpora; default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
export KVSTASH_CACHE="${KVSTASH_CACHE:-$HOME/.cache/kvstash}"
KVSTASH_SHARED_DATA="${KVSTASH_SHARED_DATA:-$ROOT/../shared/data}"
export KVSTASH_SHARED_DATA
JOBS="${KVSTASH_JOBS:-$(nproc)}"
export CCACHE_DIR="${CCACHE_DIR:-$KVSTASH_CACHE/ccache}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
# Paths relative to the checkout, so that clones and worktrees elsewhere share cached objects.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}"
# ccache otherwise hashes the build directory of every -g compile (the asan preset, debug), so
# a clone elsewhere would recompile them all. The cost: an object cached by another clone keeps
# that clone's build directory in its debug info (DW_AT_comp_dir), so ASan stack traces and
# debuggers may print paths under that clone (file names and lines are right).
# CCACHE_HASHDIR=1 in the environment keeps ccache's default.
if [ -z "${CCACHE_HASHDIR:-}" ]; then
  export CCACHE_NOHASHDIR=1
fi

log() { printf '\033[1m[run.sh]\033[0m %s\n' "$*"; }

# The tests, demos and benchmarks read the shared fixtures; without them dozens of tests would
# fail one by one, so say what is missing up front.
check_fixtures() {
  local f
  for f in models/stories260K.bin models/tok512.bin text/botchan.txt text/tinystories_sample.txt; do
    if [ ! -f "$KVSTASH_SHARED_DATA/$f" ]; then
      log "missing fixture $KVSTASH_SHARED_DATA/$f"
      log "the shared data directory (tiny models, text corpora) sits beside the checkout as"
      log "../shared/data; point KVSTASH_SHARED_DATA at it if it is elsewhere"
      exit 1
    fi
  done
}

setup() {
  check_fixtures
  ./scripts/install_deps.sh
  ./scripts/install_etcd_protos.sh
  ./scripts/fetch_models.sh
  ./scripts/setup_python.sh
}

# vLLM for CPU in its own venv plus the test model converted for it (tests/vllm, bench_vllm.sh).
setup_vllm() {
  if [ "${KVSTASH_SKIP_VLLM:-0}" = 1 ]; then
    log "vLLM setup skipped (KVSTASH_SKIP_VLLM=1)"
    return
  fi
  ./scripts/setup_vllm.sh
  "$KVSTASH_CACHE/venv-vllm/bin/python" ./scripts/convert_smollm2_hf.py
}

# SGLang's storage and host-pool classes in their own venv (tests/python/test_sglang_backend.py).
setup_sglang() {
  if [ "${KVSTASH_SKIP_SGLANG:-0}" = 1 ]; then
    log "SGLang setup skipped (KVSTASH_SKIP_SGLANG=1)"
    return
  fi
  ./scripts/setup_sglang.sh
}

# KVSTASH_WERROR=ON (`./run.sh test` sets it): C++ warnings are errors (-Werror). ccache leaves
# -Werror out of its hash here (CCACHE_IGNOREOPTIONS), so these builds share cached objects with
# everyday ones; a cache hit replays the compiler's warnings without failing, so the build also
# fails on any compiler warning line in its output (kept in build/<preset>/build_output.txt).
# Outside run.sh, -DKVSTASH_WERROR=ON alone is safe: -Werror is then part of the hash.
build() {
  local preset="${1:-release}"
  local werror="${KVSTASH_WERROR:-OFF}"
  log "configure + build ($preset, $JOBS jobs, warnings as errors: $werror)"
  cmake --preset "$preset" -DKVSTASH_MODEL_CACHE="$KVSTASH_CACHE" \
    -DKVSTASH_SHARED_DATA="$KVSTASH_SHARED_DATA" -DKVSTASH_WERROR="$werror" >/dev/null
  if [ "$werror" != ON ]; then
    cmake --build --preset "$preset" -j "$JOBS"
    return
  fi
  local out="build/$preset/build_output.txt"
  CCACHE_IGNOREOPTIONS="${CCACHE_IGNOREOPTIONS:+$CCACHE_IGNOREOPTIONS }-Werror" \
    cmake --build --preset "$preset" -j "$JOBS" 2>&1 | tee "$out"
  if grep -qE ': warning: .*\[-W' "$out"; then
    log "compiler warnings in the $preset build (warnings are errors here):"
    grep -E ': warning: .*\[-W' "$out" | sort -u >&2
    exit 1
  fi
}

run_ctest() {
  local preset="$1"; shift
  log "ctest ($preset)"
  # shellcheck disable=SC2086
  ctest --preset "$preset" -j "$JOBS" "$@" ${CTEST_ARGS:-}
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  demo)
    setup
    build release
    exec ./scripts/demo.sh "$@"
    ;;
  test)
    # Gates that need no build come first: a misformatted source fails in seconds.
    log "format check"
    ./scripts/check_format.sh
    ./scripts/check_headers.sh
    ./scripts/check_status_asserts.sh
    # Compiler warnings fail every build below.
    export KVSTASH_WERROR=ON
    setup
    setup_vllm
    setup_sglang
    # Lock rules: clang -Wthread-safety over storage and cachesvc (compile only, errors fail).
    build tsa
    build release
    # clang-tidy on the sources changed since the base (HEAD~1 in CI's fresh clone); fails on
    # any finding in them (and in the headers the change touched), prints those in other
    # headers as warnings (scripts/check_tidy.sh).
    # Needs the release build's compile database and generated headers.
    log "clang-tidy (changed sources)"
    ./scripts/check_tidy.sh build/release
    run_ctest release
    # The release build links Debian's UCX 1.13; production nodes run UCX >= 1.14 (Fetch reads,
    # docs/deploy.md "Which UCX"), so the tests labelled ucx (the transport's, the peer staging
    # test's reader kills) run again against 1.22 (libucx-cu13, build/ucx-cuda). Offline
    # without the cached wheel: one line, skipped.
    log "tests labelled ucx against UCX 1.22 (libucx-cu13)"
    ./scripts/test_ucx_cuda.sh
    if [ "${KVSTASH_SKIP_ASAN:-0}" != 1 ]; then
      build asan
      # Model-sized tests are exercised in the release pass; the sanitizer pass covers the rest.
      run_ctest asan -LE heavy
    fi
    log "all tests passed"
    ;;
  bench)
    setup
    setup_vllm
    build release
    exec ./scripts/bench.sh "$@"
    ;;
  build)
    ./scripts/install_deps.sh
    ./scripts/install_etcd_protos.sh
    build "${1:-release}"
    ;;
  fuzz)
    ./scripts/install_deps.sh
    exec ./scripts/fuzz.sh "$@"
    ;;
  format)
    git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format -i
    ;;
  tidy)
    build release
    exec ./scripts/check_tidy.sh "$@" build/release
    ;;
  lint)
    build release
    exec ./scripts/check_tidy.sh --all build/release
    ;;
  help | -h | --help)
    sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "unknown command: $cmd (try ./run.sh help)" >&2
    exit 2
    ;;
esac
