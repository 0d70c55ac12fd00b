#include "convert.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kvstash/common/half.h"

namespace kvstash::kernels::internal {

void ToF32(const void* src, DType src_dtype, float* dst, size_t n) {
  switch (src_dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16:
      F16ToF32(static_cast<const uint16_t*>(src), dst, n);
      return;
    case DType::kBF16:
      BF16ToF32(static_cast<const uint16_t*>(src), dst, n);
      return;
  }
}

void FromF32(const float* src, void* dst, DType dst_dtype, size_t n) {
  switch (dst_dtype) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16:
      F32ToF16(src, static_cast<uint16_t*>(dst), n);
      return;
    case DType::kBF16:
      F32ToBF16(src, static_cast<uint16_t*>(dst), n);
      return;
  }
}

void ConvertElements(const void* src, DType src_dtype, void* dst, DType dst_dtype, size_t n) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, n * DTypeSize(src_dtype));
    return;
  }
  if (src_dtype == DType::kF32) return FromF32(static_cast<const float*>(src), dst, dst_dtype, n);
  if (dst_dtype == DType::kF32) return ToF32(src, src_dtype, static_cast<float*>(dst), n);
  // f16 <-> bf16: through f32 (exact widening, then one rounding), in cache-sized pieces.
  constexpr size_t kPiece = 512;
  float buffer[kPiece];
  const auto* in = static_cast<const uint16_t*>(src);
  auto* out = static_cast<uint16_t*>(dst);
  for (size_t done = 0; done < n; done += kPiece) {
    size_t m = std::min(kPiece, n - done);
    ToF32(in + done, src_dtype, buffer, m);
    FromF32(buffer, out + done, dst_dtype, m);
  }
}

}  // namespace kvstash::kernels::internal
