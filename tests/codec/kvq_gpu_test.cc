// KVQ decode on a CUDA device (codec/kvq.h DecodeKvqGpu): the same bytes as the CPU decoder.
// Label gpu; skips without a device.
#include <gtest/gtest.h>

#include "kvstash/codec/cachegen_gpu.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/codec/synthetic_kv.h"
#include "test_util.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::codec {
namespace {

using testing::MakeLayout;

TEST(KvqGpuTest, UnavailableWithoutDevice) {
  if (GpuCodecAvailable()) GTEST_SKIP() << "a CUDA device is present";
  const KvLayout layout = MakeLayout(1, 1, 16, 4);
  auto container = EncodeKvq(layout, SyntheticKv(layout), KvqOptions{});
  ASSERT_OK(container);
  std::vector<uint8_t> out(layout.RawBytes());
  EXPECT_THAT(DecodeKvqGpu(*container, out.data(), false),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST(KvqGpuTest, DecodeMatchesCpuByteForByte) {
  if (!GpuCodecAvailable()) GTEST_SKIP() << "no CUDA device";
  for (DType dtype : {DType::kF16, DType::kBF16, DType::kF32}) {
    for (uint32_t tokens : {1u, 255u, 700u}) {
      for (const KvqScale key : {KvqScale::kPerToken, KvqScale::kPerChannel}) {
        SCOPED_TRACE(::testing::Message() << DTypeName(dtype) << " T=" << tokens);
        const KvLayout layout = MakeLayout(4, 3, 64, tokens, dtype);
        KvqOptions o;
        o.level = 2;
        o.key_scale = key;
        o.key_outliers = key == KvqScale::kPerToken ? 3 : 0;
        auto container = EncodeKvq(layout, SyntheticKv(layout), o);
        ASSERT_OK(container);
        auto cpu = DecodeKvq(*container);
        ASSERT_OK(cpu);
        std::vector<uint8_t> gpu(layout.RawBytes());
        ASSERT_OK(DecodeKvqGpu(*container, gpu.data(), false));
        EXPECT_EQ(gpu, *cpu);
      }
    }
  }
}

TEST(KvqGpuTest, DamagedStreamIsInvalidArgument) {
  if (!GpuCodecAvailable()) GTEST_SKIP() << "no CUDA device";
  const KvLayout layout = MakeLayout(2, 2, 16, 64);
  auto container = EncodeKvq(layout, SyntheticKv(layout), KvqOptions{});
  ASSERT_OK(container);
  container->back() ^= 0x5A;
  RefreshKvqChecksums(*container);
  std::vector<uint8_t> out(layout.RawBytes());
  EXPECT_THAT(DecodeKvqGpu(*container, out.data(), false),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::codec
