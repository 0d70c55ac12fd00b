// GPU-to-GPU transfers through UcxTransport (label gpu): device memory registered as
// MemoryKind::kCuda on both ends, read with one-sided gets straight from one device buffer into
// another, over UCX's own transports and over TCP. Needs a CUDA device and a UCX built with CUDA
// (scripts/build_ucx_cuda.sh, -DKVSTASH_UCX_DIR); skips, saying which is missing, otherwise.
// The CUDA driver is loaded at run time, so this test builds everywhere.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kvstash/transport/ucx_transport.h"
#include "testing/status_matchers.h"

namespace kvstash::transport {
namespace {

using ::kvstash::testing::IsOk;
using namespace std::chrono_literals;

// The few driver entry points the test needs (types as in cuda.h).
struct Cuda {
  int (*init)(unsigned) = nullptr;
  int (*device_get)(int*, int) = nullptr;
  int (*primary_ctx_retain)(void**, int) = nullptr;
  int (*ctx_set_current)(void*) = nullptr;
  int (*mem_alloc)(uint64_t*, size_t) = nullptr;
  int (*mem_free)(uint64_t) = nullptr;
  int (*memcpy_htod)(uint64_t, const void*, size_t) = nullptr;
  int (*memcpy_dtoh)(void*, uint64_t, size_t) = nullptr;

  // Empty when device 0 is ready for use on this thread; why not otherwise.
  std::string Open() {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return "no CUDA driver (libcuda.so.1)";
    auto get = [&](const char* name, auto* fn) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(dlsym(lib, name));
      return *fn != nullptr;
    };
    if (!get("cuInit", &init) || !get("cuDeviceGet", &device_get) ||
        !get("cuDevicePrimaryCtxRetain", &primary_ctx_retain) ||
        !get("cuCtxSetCurrent", &ctx_set_current) || !get("cuMemAlloc_v2", &mem_alloc) ||
        !get("cuMemFree_v2", &mem_free) || !get("cuMemcpyHtoD_v2", &memcpy_htod) ||
        !get("cuMemcpyDtoH_v2", &memcpy_dtoh)) {
      return "the CUDA driver lacks an entry point";
    }
    int dev = 0;
    void* ctx = nullptr;
    if (init(0) != 0 || device_get(&dev, 0) != 0) return "no CUDA device";
    if (primary_ctx_retain(&ctx, dev) != 0 || ctx_set_current(ctx) != 0) {
      return "cannot use CUDA device 0";
    }
    return "";
  }
};

class UcxGpuTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam().empty()) {
      ::unsetenv("UCX_TLS");
    } else {
      ::setenv("UCX_TLS", GetParam().c_str(), 1);
    }
    const std::string why = cuda_.Open();
    if (!why.empty()) GTEST_SKIP() << why;
    ASSERT_OK_AND_ASSIGN(server_, UcxTransport::Create({.name = "gpu-server"}));
    ASSERT_OK_AND_ASSIGN(client_, UcxTransport::Create({.name = "gpu-client"}));
    if (!server_->SupportsCuda()) {
      GTEST_SKIP() << "this UCX has no CUDA memory support (scripts/build_ucx_cuda.sh)";
    }
  }
  void TearDown() override {
    client_.reset();
    server_.reset();
    for (uint64_t p : allocations_) cuda_.mem_free(p);
    ::unsetenv("UCX_TLS");
  }

  uint64_t Alloc(size_t bytes) {
    uint64_t p = 0;
    if (cuda_.mem_alloc(&p, bytes) != 0) return 0;
    allocations_.push_back(p);
    return p;
  }

  Cuda cuda_;
  std::unique_ptr<UcxTransport> server_, client_;
  std::vector<uint64_t> allocations_;
};

TEST_P(UcxGpuTest, ReadsFromDeviceMemoryIntoDeviceMemoryByteForByte) {
  constexpr size_t kBytes = 8 << 20;
  std::vector<uint8_t> pattern(kBytes);
  for (size_t i = 0; i < kBytes; ++i) pattern[i] = static_cast<uint8_t>(i * 37 + 11);
  const uint64_t src = Alloc(kBytes), dst = Alloc(kBytes);
  ASSERT_NE(src, 0u);
  ASSERT_NE(dst, 0u);
  ASSERT_EQ(cuda_.memcpy_htod(src, pattern.data(), kBytes), 0);
  ASSERT_OK_AND_ASSIGN(RemoteRegion region, server_->RegisterRegion(reinterpret_cast<void*>(src),
                                                                    kBytes, MemoryKind::kCuda));
  ASSERT_THAT(client_->RegisterRegion(reinterpret_cast<void*>(dst), kBytes, MemoryKind::kCuda),
              IsOk());
  ASSERT_OK_AND_ASSIGN(PeerId peer,
                       client_->Connect(server_->worker_address(), region, Clock::now() + 30s));
  auto* d = reinterpret_cast<uint8_t*>(dst);
  std::vector<ReadOp> ops = {
      {.remote_offset = 0, .local = d, .length = 1 << 20},
      {.remote_offset = 12345, .local = d + (1 << 20), .length = 4 << 20},
      {.remote_offset = kBytes - 999, .local = d + (6 << 20), .length = 999},
  };
  ASSERT_THAT(client_->Read(peer, ops, Clock::now() + 30s), IsOk());
  std::vector<uint8_t> back(kBytes);
  ASSERT_EQ(cuda_.memcpy_dtoh(back.data(), dst, kBytes), 0);
  for (const ReadOp& op : ops) {
    const size_t at = static_cast<uint8_t*>(op.local) - d;
    EXPECT_EQ(0, std::memcmp(back.data() + at, pattern.data() + op.remote_offset, op.length))
        << "range at " << op.remote_offset;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxGpuTest, ::testing::Values("", "tcp"),
                         [](const auto& info) {
                           return info.param.empty() ? std::string("default") : info.param;
                         });

}  // namespace
}  // namespace kvstash::transport
