// Helpers for the kernels tests: owned paged memory, random contents, and the naive element-by-
// element reference copies the kernels are checked against.
#ifndef KVSTASH_TESTS_KERNELS_KV_TEST_UTIL_H_
#define KVSTASH_TESTS_KERNELS_KV_TEST_UTIL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kvstash/common/half.h"
#include "kvstash/common/layout.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::kernels::testing {

// Random bit patterns of `dtype` covering every finite value, infinities, subnormals and zeros,
// but no NaN (the bulk F16C conversions keep NaN payloads the scalar functions drop; that is a
// property of common/half.h, not of these kernels).
inline void FillRandom(std::byte* data, DType dtype, size_t elements, std::mt19937_64& rng) {
  if (dtype == DType::kF32) {
    for (size_t i = 0; i < elements; ++i) {
      uint32_t bits = static_cast<uint32_t>(rng());
      // Mostly values near f16's range so the f32 -> f16 rounding paths get exercised.
      if (rng() % 4 != 0) bits = (bits & 0x807FFFFFu) | ((100 + bits % 50) << 23);
      if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x7FFFFFu) != 0) bits &= 0xFF800000u;
      std::memcpy(data + 4 * i, &bits, 4);
    }
    return;
  }
  const uint16_t exp_mask = dtype == DType::kF16 ? 0x7C00 : 0x7F80;
  const uint16_t mant_mask = dtype == DType::kF16 ? 0x03FF : 0x007F;
  for (size_t i = 0; i < elements; ++i) {
    uint16_t bits = static_cast<uint16_t>(rng());
    if ((bits & exp_mask) == exp_mask && (bits & mant_mask) != 0) bits &= ~mant_mask;
    std::memcpy(data + 2 * i, &bits, 2);
  }
}

// Per-layer K and V pools owned by the test, with a PagedKvView onto them.
struct PagedMemory {
  explicit PagedMemory(const PagedKvShape& shape) {
    view.shape = shape;
    for (uint32_t l = 0; l < shape.num_layers; ++l) {
      k.emplace_back(shape.PoolBytes());
      v.emplace_back(shape.PoolBytes());
    }
    for (uint32_t l = 0; l < shape.num_layers; ++l) {
      view.k_pools.push_back(k[l].data());
      view.v_pools.push_back(v[l].data());
    }
  }
  void Randomize(std::mt19937_64& rng) {
    const size_t elements = view.shape.PoolBytes() / DTypeSize(view.shape.dtype);
    for (auto* pools : {&k, &v}) {
      for (auto& pool : *pools) FillRandom(pool.data(), view.shape.dtype, elements, rng);
    }
  }
  bool operator==(const PagedMemory& other) const { return k == other.k && v == other.v; }

  std::vector<std::vector<std::byte>> k;
  std::vector<std::vector<std::byte>> v;
  PagedKvView view;
};

// Blocks of a sequence drawn at random from the pool without repetition (never contiguous in
// general), `count` entries.
inline std::vector<int32_t> RandomBlockTable(uint32_t num_blocks, uint32_t count,
                                             std::mt19937_64& rng) {
  std::vector<int32_t> all(num_blocks);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(count);
  return all;
}

// One element converted with the scalar common/half.h functions; equal dtypes copy the bits.
inline void ConvertOne(const std::byte* src, DType src_dtype, std::byte* dst, DType dst_dtype) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, DTypeSize(src_dtype));
    return;
  }
  float f = 0;
  uint16_t h = 0;
  switch (src_dtype) {
    case DType::kF32:
      std::memcpy(&f, src, 4);
      break;
    case DType::kF16:
      std::memcpy(&h, src, 2);
      f = F16ToF32(h);
      break;
    case DType::kBF16:
      std::memcpy(&h, src, 2);
      f = BF16ToF32(h);
      break;
  }
  switch (dst_dtype) {
    case DType::kF32:
      std::memcpy(dst, &f, 4);
      break;
    case DType::kF16:
      h = F32ToF16(f);
      std::memcpy(dst, &h, 2);
      break;
    case DType::kBF16:
      h = F32ToBF16(f);
      std::memcpy(dst, &h, 2);
      break;
  }
}

// The naive reference: every element of every layer of the chunk, one at a time.
inline void NaiveCopy(PagedMemory& paged, const std::vector<int32_t>& table, uint32_t token_begin,
                      const KvLayout& chunk, std::byte* chunk_bytes, bool gather) {
  const PagedKvShape& s = paged.view.shape;
  const size_t pe = DTypeSize(s.dtype);
  const size_t ce = DTypeSize(chunk.dtype);
  for (uint32_t li = 0; li < chunk.num_layers; ++li) {
    const uint32_t layer = chunk.layer_begin + li;
    for (int kv = 0; kv < 2; ++kv) {
      std::byte* pool = kv == 0 ? paged.k[layer].data() : paged.v[layer].data();
      for (uint32_t t = 0; t < chunk.num_tokens; ++t) {
        const uint32_t pos = token_begin + t;
        const size_t block = static_cast<size_t>(table[pos / s.block_size]);
        const size_t slot = pos % s.block_size;
        for (uint32_t h = chunk.head_begin; h < chunk.head_end; ++h) {
          for (uint32_t d = 0; d < chunk.head_dim; ++d) {
            const size_t p = ((block * s.block_size + slot) * s.num_kv_heads + h) * s.head_dim + d;
            const size_t c = (((size_t{li} * 2 + kv) * chunk.num_tokens + t) * chunk.heads() +
                              (h - chunk.head_begin)) *
                                 chunk.head_dim +
                             d;
            if (gather) {
              ConvertOne(pool + p * pe, s.dtype, chunk_bytes + c * ce, chunk.dtype);
            } else {
              ConvertOne(chunk_bytes + c * ce, chunk.dtype, pool + p * pe, s.dtype);
            }
          }
        }
      }
    }
  }
}

}  // namespace kvstash::kernels::testing

#endif  // KVSTASH_TESTS_KERNELS_KV_TEST_UTIL_H_
