#!/usr/bin/env bash
# Installs the Debian 12 packages KVStash needs. Idempotent: only missing packages are
# installed, and `apt-get update` runs at most once per invocation (and only when something
# is missing). Needs root (or sudo) on a Debian 12 machine.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git ca-certificates curl
  clang clang-format clang-tidy libclang-rt-14-dev
  # RPC and serialization
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  # transports and storage
  libucx-dev librocksdb-dev liburing-dev libisal-dev
  # sha256 of model files (reference engine), certificate checks (cachesvc TLS); the openssl
  # command makes the security tests' throw-away certificates (scripts/make_test_certs.sh)
  libssl-dev openssl
  # compression and hashing
  libzstd-dev liblz4-dev libxxhash-dev
  # config, CLI, logging, HTTP
  libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libcpp-httplib-dev
  # tests and benchmarks
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  libhiredis-dev redis-server fio etcd-server etcd-client
  # python for reference checks and plots
  python3 python3-venv python3-pip python3-numpy python3-matplotlib gnuplot-nox
  # the kvstash Python package's native extension (python/)
  python3-dev pybind11-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "[deps] all ${#PACKAGES[@]} Debian packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "[deps] need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "[deps] installing ${#missing[@]} missing packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian starts redis-server and etcd as services on install; tests start their own instances.
for svc in redis-server etcd; do
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true; fi
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
echo "[deps] done"
