// Range coding of all streams of a chunk, and decoding with dequantisation.
//
// Work items are (sub-chunk, row) pairs. Inside an item the C streams of the row are coded in
// lockstep, token by token: independent dependency chains per channel keep the core busy, and
// symbols and outputs are read and written contiguously in the [token][channel] layout.
#include <atomic>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "chunk.h"
#include "decode_simd.h"
#include "encode_simd.h"
#include "fast_bits.h"
#include "kvstash/common/half.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::codec::internal {
namespace cg = kernels::cachegen;

namespace {

void StoreRow(const float* x, size_t n, DType dtype, std::vector<uint16_t>& tmp, uint8_t* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, x, n * 4);
    return;
  }
  tmp.resize(n);
  if (dtype == DType::kF16) {
    F32ToF16(x, tmp.data(), n);
  } else {
    F32ToBF16(x, tmp.data(), n);
  }
  std::memcpy(dst, tmp.data(), n * 2);
}

}  // namespace

Status EncodeStreams(const ChunkShape& shape, const ChunkParams& p, const QuantizedChunk& q,
                     std::span<const uint16_t> cdf, ThreadPool* pool, EncodedStreams* out) {
  const uint32_t rows = shape.rows();
  const uint32_t T = shape.tokens;
  const size_t C = shape.channels();
  const uint32_t S = p.subchunk_tokens;
  const size_t items = size_t{p.Subchunks(T)} * rows;
  out->lengths.assign(items * C, 0);
  std::vector<std::vector<uint8_t>> item_bytes(items);
  std::atomic<bool> overflow{false};

  ParallelFor(pool, items, 1, [&](size_t begin, size_t end) {
    ItemEncoder encoder;
    std::vector<uint8_t> scratch;
    for (size_t item = begin; item < end; ++item) {
      const uint32_t sub = static_cast<uint32_t>(item / rows);
      const uint32_t row = static_cast<uint32_t>(item % rows);
      const uint32_t t0 = sub * S;
      const uint32_t t1 = std::min(T, t0 + S);
      const uint64_t cap = cg::MaxStreamBytes(t1 - t0);
      const uint64_t slot = cap + FastWriter::kSlack;
      scratch.resize(C * slot);
      encoder.Reset(cdf.subspan(size_t{row} * C * p.lp, C * p.lp), p.lp, C, scratch.data(), slot,
                    cap);
      const uint8_t* row_sym = q.sym.data() + size_t{row} * T * C;
      for (uint32_t t = t0; t < t1; ++t) {
        if (!p.IsAnchor(t)) encoder.Step(row_sym + size_t{t} * C);
      }
      uint32_t* lengths = out->lengths.data() + item * C;
      if (!encoder.Finish(lengths)) overflow.store(true);
      size_t total = 0;
      for (size_t c = 0; c < C; ++c) total += lengths[c];
      std::vector<uint8_t>& bytes = item_bytes[item];
      bytes.resize(total);
      size_t pos = 0;
      for (size_t c = 0; c < C; ++c) {
        std::memcpy(bytes.data() + pos, scratch.data() + c * slot, lengths[c]);
        pos += lengths[c];
      }
    }
  });
  if (overflow.load()) return absl::InternalError("CacheGen stream exceeded its bound");

  std::vector<size_t> offsets(items + 1, 0);
  for (size_t i = 0; i < items; ++i) offsets[i + 1] = offsets[i] + item_bytes[i].size();
  out->payload.resize(offsets[items]);
  ParallelFor(pool, items, 8, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      if (!item_bytes[i].empty()) {
        std::memcpy(out->payload.data() + offsets[i], item_bytes[i].data(), item_bytes[i].size());
      }
    }
  });
  return OkStatus();
}

Status DecodeStreams(const ChunkShape& shape, const ChunkParams& p, const DecodeInputs& in,
                     ThreadPool* pool, std::span<uint8_t> out) {
  const uint32_t rows = shape.rows();
  const uint32_t T = shape.tokens;
  const size_t C = shape.channels();
  const uint32_t S = p.subchunk_tokens;
  const size_t esize = DTypeSize(shape.dtype);
  const size_t items = size_t{p.Subchunks(T)} * rows;
  const uint32_t A = p.AnchorsPerRow(T);
  const uint32_t G = p.group_tokens;
  if (out.size() != shape.raw_bytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("output is ", out.size(), " bytes, chunk needs ", shape.raw_bytes()));
  }
  // Start of each item's streams in the payload.
  std::vector<uint64_t> item_offset(items + 1, 0);
  for (size_t i = 0; i < items; ++i) {
    uint64_t sum = 0;
    for (size_t c = 0; c < C; ++c) sum += in.lengths[i * C + c];
    item_offset[i + 1] = item_offset[i] + sum;
  }
  if (item_offset[items] != in.payload.size()) {
    return absl::InvalidArgumentError("stream lengths do not add up to the payload");
  }
  std::atomic<bool> bad_symbol{false};
  constexpr int kAnchorCq = kAnchorBins / 2 - 1;

  ParallelFor(pool, items, 1, [&](size_t begin, size_t end) {
    ItemDecoder decoder;
    std::vector<uint8_t> slots;
    std::vector<float> x(C), anchor(C);
    std::vector<uint16_t> tmp;
    for (size_t item = begin; item < end; ++item) {
      const uint32_t sub = static_cast<uint32_t>(item / rows);
      const uint32_t row = static_cast<uint32_t>(item % rows);
      const uint32_t t0 = sub * S;
      const uint32_t t1 = std::min(T, t0 + S);
      const int cq = cg::QuantCq(p.row_bins[row]);
      // Each stream goes into a zero-padded slot, so reads need no bounds checks (fast_bits.h).
      const uint64_t slot = cg::MaxStreamBytes(t1 - t0) + 16;
      slots.resize(C * slot);
      uint64_t pos = item_offset[item];
      for (size_t c = 0; c < C; ++c) {
        const uint64_t len = std::min<uint64_t>(in.lengths[item * C + c], slot - 16);
        uint8_t* dst = slots.data() + c * slot;
        std::memcpy(dst, in.payload.data() + pos, len);
        std::memset(dst + len, 0, slot - len);
        pos += in.lengths[item * C + c];
      }
      decoder.Reset(in.cdf.subspan(size_t{row} * C * p.lp, C * p.lp), p.lp, C, slots.data(), slot);
      const float* row_scales = in.scales.data() + size_t{row} * T;
      uint8_t* row_out = out.data() + shape.RowOffset(row) * esize;
      bool bad = false;
      for (uint32_t t = t0; t < t1; ++t) {
        if (p.mode == CacheGenMode::kDelta && (t == t0 || p.IsAnchor(t))) {
          const uint32_t a = t / G;
          const uint8_t* as = in.anchors.data() + (size_t{row} * A + a) * C;
          const float am = row_scales[size_t{a} * G];
          for (size_t c = 0; c < C; ++c) anchor[c] = cg::DequantizeValue(as[c], kAnchorCq, am);
        }
        if (p.IsAnchor(t)) {
          StoreRow(anchor.data(), C, shape.dtype, tmp, row_out + size_t{t} * C * esize);
          continue;
        }
        decoder.Step(cq, row_scales[t], x.data(), &bad);
        if (p.mode == CacheGenMode::kDelta) {
          for (size_t c = 0; c < C; ++c) x[c] = cg::AddRn(anchor[c], x[c]);
        }
        StoreRow(x.data(), C, shape.dtype, tmp, row_out + size_t{t} * C * esize);
      }
      if (bad) bad_symbol.store(true);
    }
  });
  if (bad_symbol.load()) {
    return absl::InvalidArgumentError(
        "a CacheGen stream decodes to a symbol outside its row's bins");
  }
  return OkStatus();
}

Status Reconstruct(const ChunkShape& shape, const ChunkParams& p, const QuantizedChunk& q,
                   ThreadPool* pool, std::span<uint8_t> out) {
  if (out.size() != shape.raw_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("reconstruction buffer is ", out.size(),
                                                   " bytes, chunk needs ", shape.raw_bytes()));
  }
  const uint32_t rows = shape.rows();
  const uint32_t T = shape.tokens;
  const size_t C = shape.channels();
  const size_t esize = DTypeSize(shape.dtype);
  const uint32_t A = p.AnchorsPerRow(T);
  const uint32_t G = p.group_tokens;
  constexpr int kAnchorCq = kAnchorBins / 2 - 1;
  // The decoder's arithmetic (DecodeStreams) applied to the encoder's own symbols and scales.
  ParallelFor(pool, rows, 1, [&](size_t begin, size_t end) {
    std::vector<float> x(C), anchor(C);
    std::vector<uint16_t> tmp;
    for (size_t r = begin; r < end; ++r) {
      const uint32_t row = static_cast<uint32_t>(r);
      const int cq = cg::QuantCq(p.row_bins[row]);
      const float* row_scales = q.scales.data() + size_t{row} * T;
      const uint8_t* row_sym = q.sym.data() + size_t{row} * T * C;
      uint8_t* row_out = out.data() + shape.RowOffset(row) * esize;
      for (uint32_t t = 0; t < T; ++t) {
        if (p.IsAnchor(t)) {
          const uint8_t* as = q.anchors.data() + (size_t{row} * A + t / G) * C;
          for (size_t c = 0; c < C; ++c) {
            anchor[c] = cg::DequantizeValue(as[c], kAnchorCq, row_scales[t]);
          }
          StoreRow(anchor.data(), C, shape.dtype, tmp, row_out + size_t{t} * C * esize);
          continue;
        }
        for (size_t c = 0; c < C; ++c) {
          x[c] = cg::DequantizeValue(row_sym[size_t{t} * C + c], cq, row_scales[t]);
          if (p.mode == CacheGenMode::kDelta) x[c] = cg::AddRn(anchor[c], x[c]);
        }
        StoreRow(x.data(), C, shape.dtype, tmp, row_out + size_t{t} * C * esize);
      }
    }
  });
  return OkStatus();
}

}  // namespace kvstash::codec::internal
