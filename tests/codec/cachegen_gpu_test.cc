// CPU and GPU bitstreams are identical, both ways. Needs a CUDA device; skips cleanly without.
#include "kvstash/codec/cachegen_gpu.h"

#include <gtest/gtest.h>

#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/profile.h"
#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"
#include "testing/status_matchers.h"

#if defined(KVSTASH_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

using testing::MakeLayout;

TEST(CacheGenGpuTest, UnavailableWithoutDevice) {
  if (GpuCodecAvailable()) GTEST_SKIP() << "a CUDA device is present";
  KvLayout layout = MakeLayout(1, 1, 4, 4);
  auto kv = SyntheticKv(layout);
  EXPECT_THAT(EncodeCacheGenGpu(layout, kv.data(), false, {}),
              StatusIs(absl::StatusCode::kUnimplemented));
  auto container = EncodeCacheGen(layout, kv, {});
  ASSERT_OK(container);
  std::vector<uint8_t> out(layout.RawBytes());
  EXPECT_THAT(DecodeCacheGenGpu(*container, out.data(), false),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST(CacheGenGpuTest, EncodeMatchesCpuBitForBit) {
  if (!GpuCodecAvailable()) GTEST_SKIP() << "no CUDA device";
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    for (uint32_t tokens : {1u, 255u, 256u, 700u}) {
      for (int level = 1; level <= 3; ++level) {
        SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " T=" << tokens << " L" << level);
        KvLayout layout = MakeLayout(4, 3, 64, tokens, dtype);
        auto kv = SyntheticKv(layout);
        EncodeOptions options;
        options.level = level;
        auto cpu = EncodeCacheGen(layout, kv, options);
        auto gpu = EncodeCacheGenGpu(layout, kv.data(), false, options);
        ASSERT_OK(cpu);
        ASSERT_OK(gpu);
        ASSERT_EQ(*cpu, *gpu);

        std::vector<uint8_t> from_gpu(layout.RawBytes());
        ASSERT_OK(DecodeCacheGenGpu(*cpu, from_gpu.data(), false));
        auto from_cpu = DecodeCacheGen(*cpu);
        ASSERT_OK(from_cpu);
        EXPECT_EQ(from_gpu, *from_cpu);
      }
    }
  }
}

TEST(CacheGenGpuTest, ProfileAndOddShapesMatchCpu) {
  if (!GpuCodecAvailable()) GTEST_SKIP() << "no CUDA device";
  KvLayout layout = MakeLayout(3, 5, 24, 300);  // channels 120: block size not a power of two
  auto builder =
      CdfProfileBuilder::Create(ProfileShape::Of(layout), {{CacheGenMode::kReference, 2, {}}});
  ASSERT_OK(builder);
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    SyntheticKvOptions so;
    so.seed = seed;
    ASSERT_OK(builder->Add(layout, SyntheticKv(layout, so)));
  }
  auto profile = builder->Build();
  ASSERT_OK(profile);
  ProfileSet set;
  set.Add(*profile);
  auto kv = SyntheticKv(layout);
  for (uint32_t sub : {1u, 100u, 256u}) {
    EncodeOptions options;
    options.subchunk_tokens = sub;
    options.profile = &*profile;
    auto cpu = EncodeCacheGen(layout, kv, options);
    auto gpu = EncodeCacheGenGpu(layout, kv.data(), false, options);
    ASSERT_OK(cpu);
    ASSERT_OK(gpu);
    EXPECT_EQ(*cpu, *gpu);
    DecodeOptions d;
    d.profiles = &set;
    std::vector<uint8_t> out(layout.RawBytes());
    ASSERT_OK(DecodeCacheGenGpu(*gpu, out.data(), false, d));
    auto ref = DecodeCacheGen(*cpu, d);
    ASSERT_OK(ref);
    EXPECT_EQ(out, *ref);
  }
}

TEST(CacheGenGpuTest, DevicePointersAndRejections) {
  if (!GpuCodecAvailable()) GTEST_SKIP() << "no CUDA device";
#if defined(KVSTASH_HAVE_CUDA)
  KvLayout layout = MakeLayout(2, 2, 32, 128);
  auto kv = SyntheticKv(layout);
  void* dev_in = nullptr;
  void* dev_out = nullptr;
  ASSERT_EQ(cudaMalloc(&dev_in, kv.size()), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dev_out, kv.size()), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(dev_in, kv.data(), kv.size(), cudaMemcpyHostToDevice), cudaSuccess);
  auto gpu = EncodeCacheGenGpu(layout, dev_in, true, {});
  auto cpu = EncodeCacheGen(layout, kv, {});
  ASSERT_OK(gpu);
  ASSERT_OK(cpu);
  EXPECT_EQ(*gpu, *cpu);
  ASSERT_OK(DecodeCacheGenGpu(*gpu, dev_out, true));
  std::vector<uint8_t> out(kv.size());
  ASSERT_EQ(cudaMemcpy(out.data(), dev_out, out.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(out, *DecodeCacheGen(*cpu));
  cudaFree(dev_in);
  cudaFree(dev_out);

  // NaN input is rejected on the GPU as on the CPU; delta mode is CPU-only.
  testing::SetValue(kv, DType::kF16, 17, std::numeric_limits<float>::quiet_NaN());
  EXPECT_THAT(EncodeCacheGenGpu(layout, kv.data(), false, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EncodeOptions delta;
  delta.mode = CacheGenMode::kDelta;
  EXPECT_THAT(EncodeCacheGenGpu(layout, kv.data(), false, delta),
              StatusIs(absl::StatusCode::kUnimplemented));
#endif
}

}  // namespace
}  // namespace kvstash::codec
