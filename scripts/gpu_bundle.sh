#!/usr/bin/env bash
# Packs the GPU tests and benchmarks of a release build, with the shared libraries they load
# (glibc excepted), into one folder, so they run on a GPU host that has a CUDA driver but none
# of the build's packages. The host needs glibc >= this machine's (Debian 12: 2.36).
#
#   scripts/gpu_bundle.sh [DIR]          (default .gpu; build/release must be built)
#   # on the GPU host, from the repository root:
#   DIR/run.sh OUT_DIR                   (tests, then benchmarks; results and a log in OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build/release}
DIR=${1:-.gpu}
BINS=(tests/codec/codec_gpu_test tests/kernels/kernels_gpu_test tests/storage/storage_gpu_test
      tests/transport/transport_gpu_test tests/cachesvc/cachesvc_gpu_test
      bench/kernels/kernels_bench bench/codec/codec_bench bench/codec/tier_load)
# Executables the tests start, kept at their build-tree paths under svc/ (KVSTASH_TEST_BINARY_DIR).
SVC=(cachesvc/cachesvc)
rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/svc/cachesvc"
copy_libs() {
  # Every resolved library but the C library itself, which must come from the host.
  ldd "$1" | awk '/=> \//{print $3}' |
    grep -vE '/(libc|libm|libdl|libpthread|librt)\.so|ld-linux' |
    xargs -r -I{} cp -Ln {} "$DIR/lib/"
}
for b in "${BINS[@]}"; do
  [ -x "$BUILD/$b" ] || { echo "missing $BUILD/$b: build the release preset first" >&2; exit 1; }
  cp "$BUILD/$b" "$DIR/bin/"
  copy_libs "$BUILD/$b"
done
for b in "${SVC[@]}"; do
  [ -x "$BUILD/$b" ] || { echo "missing $BUILD/$b: build the release preset first" >&2; exit 1; }
  cp "$BUILD/$b" "$DIR/svc/$b"
  copy_libs "$BUILD/$b"
done
strip "$DIR"/bin/* "$DIR"/svc/cachesvc/cachesvc
cat >"$DIR/run.sh" <<'EOF'
#!/usr/bin/env bash
# GPU tests, then the GPU benchmarks (docs/benchmarks-kernels.md, docs/benchmarks-codec.md).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: run.sh OUT_DIR}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$HERE/lib
export KVSTASH_TEST_BINARY_DIR=$HERE/svc
B=$HERE/bin
rc=0
"$B/codec_gpu_test" --gtest_output=json:"$OUT/codec_gpu_test.json" || rc=1
"$B/kernels_gpu_test" --gtest_output=json:"$OUT/kernels_gpu_test.json" || rc=1
# The GPU pool tier (docs/storage.md "GPU pool tier"): device round trips and a store over it.
"$B/storage_gpu_test" --gtest_output=json:"$OUT/storage_gpu_test.json" || rc=1
# GPU-to-GPU reads through UcxTransport. It skips unless the UCX it loaded supports CUDA memory:
# bundle a build made with scripts/build_ucx_cuda.sh (BUILD=build/ucx-cuda, targets
# transport_gpu_test ...) on a host where UCX's CUDA modules (libucx-cu13's lib/ucx) load.
"$B/transport_gpu_test" --gtest_output=json:"$OUT/transport_gpu_test.json" || rc=1
# Two cachesvc processes with GPU pools: a handoff lands in the decode node's pool over UCX
# (reads into its CUDA memory, from the prefill node's arena, which promotes from its own pool;
# default transports and UCX_TLS=tcp,cuda_copy staging), and
# objects demoted into a pool reach a peer. The landing cases skip, saying why, unless the UCX
# supports CUDA memory (a build from scripts/build_ucx_cuda.sh, as for transport_gpu_test).
"$B/cachesvc_gpu_test" --gtest_output=json:"$OUT/cachesvc_gpu_test.json" || rc=1
"$B/kernels_bench" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$OUT/kernels_bench_gpu.json" || rc=1
"$B/codec_bench" --benchmark_out="$OUT/codec_bench_gpu.json" || rc=1
exit $rc
EOF
chmod +x "$DIR/run.sh"
du -sh "$DIR"
