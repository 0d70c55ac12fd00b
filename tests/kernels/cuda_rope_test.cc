// CUDA RoPE against the CPU RoPE. Skips without a device.
//
// Tolerance: both sides compute the same f32 operations from cos/sin rounded from double; only
// the device's double pow/sincos may differ in the last bit, which after rounding to f32 can move
// a cos or sin by one f32 ulp. For inputs in [-1, 1] that bounds the f32 difference by
// 2 * 2^-24 * sqrt(2) ~ 1.7e-7 (asserted: 4e-7) and, for f16/bf16, by one unit in the last place
// of the stored value. The test also reports how many elements matched bit for bit.
#include "kvstash/kernels/cuda_rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_util.h"
#include "kvstash/kernels/rope.h"
#include "rope_reference.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::kernels {
namespace {

using testing::DeviceBuffer;
using testing::Load;
using testing::Store;

constexpr uint32_t kTokens = 256;
constexpr uint32_t kHeads = 8;
constexpr uint32_t kHeadDim = 128;

// Distance in units in the last place between two finite values of the same 16-bit format.
int64_t UlpDistance16(uint16_t a, uint16_t b) {
  auto ordered = [](uint16_t x) -> int64_t { return x & 0x8000 ? -(x & 0x7FFF) : x; };
  return std::llabs(ordered(a) - ordered(b));
}

using Param = std::tuple<RopeConvention, DType, uint32_t /*rotary_dim*/>;

class CudaRopeTest : public ::testing::TestWithParam<Param> {};

TEST_P(CudaRopeTest, MatchesCpu) {
  KVSTASH_SKIP_WITHOUT_CUDA_DEVICE();
  const auto& [convention, dtype, rotary_dim] = GetParam();
  RopeParams params{convention, 500000.0f, rotary_dim};
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  std::vector<double> values(size_t{kTokens} * kHeads * kHeadDim);
  for (double& x : values) x = uniform(rng);
  const std::vector<std::byte> input = Store(values, dtype);
  std::uniform_int_distribution<int64_t> delta_dist(-70000, 70000);
  std::vector<int64_t> deltas(kTokens);
  for (int64_t& d : deltas) d = delta_dist(rng);
  deltas[3] = 0;

  for (bool per_token : {false, true}) {
    SCOPED_TRACE(per_token ? "RotateKeys" : "ShiftKeys");
    std::vector<std::byte> cpu = input;
    DeviceBuffer k(input.size());
    k.Upload(input.data(), input.size());
    DeviceBuffer device_deltas(deltas.size() * sizeof(int64_t));
    device_deltas.Upload(deltas.data(), deltas.size() * sizeof(int64_t));
    if (per_token) {
      ASSERT_OK(RotateKeys(cpu.data(), dtype, kTokens, kHeads, kHeadDim, params, deltas));
      ASSERT_TRUE(CudaRotateKeys(k.get(), dtype, kTokens, kHeads, kHeadDim, params,
                                 reinterpret_cast<const int64_t*>(device_deltas.get()), nullptr)
                      .ok());
    } else {
      ASSERT_OK(ShiftKeys(cpu.data(), dtype, kTokens, kHeads, kHeadDim, params, 4099));
      ASSERT_OK(CudaShiftKeys(k.get(), dtype, kTokens, kHeads, kHeadDim, params, 4099, nullptr));
    }
    ASSERT_OK(CudaStreamSynchronize(nullptr));
    const std::vector<std::byte> gpu = k.Download(input.size());
    size_t identical = 0;
    const size_t elem = DTypeSize(dtype);
    const size_t n = values.size();
    for (size_t i = 0; i < n; ++i) {
      if (std::memcmp(gpu.data() + i * elem, cpu.data() + i * elem, elem) == 0) {
        ++identical;
        continue;
      }
      if (dtype == DType::kF32) {
        ASSERT_LE(std::abs(Load(gpu, dtype, i) - Load(cpu, dtype, i)), 4e-7) << i;
      } else {
        uint16_t a, b;
        std::memcpy(&a, gpu.data() + i * elem, 2);
        std::memcpy(&b, cpu.data() + i * elem, 2);
        ASSERT_LE(UlpDistance16(a, b), 1) << i;
      }
    }
    std::cout << "[ measured ] " << DTypeName(dtype) << " " << identical << "/" << n
              << " elements bit-identical to the CPU\n";
  }
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::string(RopeConventionName(std::get<0>(info.param))) + "_" +
         std::string(DTypeName(std::get<1>(info.param))) + "_rot" +
         std::to_string(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    Conventions, CudaRopeTest,
    ::testing::Combine(::testing::Values(RopeConvention::kNeox, RopeConvention::kGptj),
                       ::testing::Values(DType::kF32, DType::kF16, DType::kBF16),
                       ::testing::Values(0u, 64u)),
    ParamName);

TEST(CudaRopeErrorTest, ValidationMatchesCpu) {
  KVSTASH_SKIP_WITHOUT_CUDA_DEVICE();
  DeviceBuffer k(2 * 16 * 4);
  RopeParams params{RopeConvention::kNone, 10000.0f, 0};
  EXPECT_THAT(CudaShiftKeys(k.get(), DType::kF32, 2, 1, 16, params, 1, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
  params.convention = RopeConvention::kNeox;
  params.rotary_dim = 17;
  EXPECT_THAT(CudaShiftKeys(k.get(), DType::kF32, 2, 1, 16, params, 1, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
  params.rotary_dim = 0;
  EXPECT_THAT(CudaRotateKeys(k.get(), DType::kF32, 2, 1, 16, params, nullptr, nullptr),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvstash::kernels
