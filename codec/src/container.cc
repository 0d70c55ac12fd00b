// CacheGen container: writer and hardened parser (format in container.h and docs/codec.md §3).
#include "kvstash/codec/container.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "chunk.h"
#include "kvstash/codec/coder.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/half.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::codec {
namespace cg = kernels::cachegen;

namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'C', 'G'};
constexpr size_t kBodyCrcOffset = 64;
constexpr size_t kHeaderCrcOffset = 68;

Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed CacheGen container: ", what));
}

bool ValidDType(uint8_t d) { return d >= 1 && d <= 3; }

// Scale bits are finite and not negative (the encoder writes max |x| or +0).
bool ValidScale(const uint8_t* p, DType dtype) {
  switch (dtype) {
    case DType::kF16: {
      const uint16_t v = DecodeFixed16(p);
      return (v & 0x8000u) == 0 && (v & 0x7C00u) != 0x7C00u;
    }
    case DType::kBF16: {
      const uint16_t v = DecodeFixed16(p);
      return (v & 0x8000u) == 0 && (v & 0x7F80u) != 0x7F80u;
    }
    case DType::kF32: {
      const uint32_t v = DecodeFixed32(p);
      return (v & 0x80000000u) == 0 && (v & 0x7F800000u) != 0x7F800000u;
    }
  }
  return false;
}

// Section sizes from the header fields. Every product fits in 64 bits given the field limits.
SizeBreakdown Sections(const ContainerInfo& info, uint64_t payload) {
  SizeBreakdown s;
  const uint64_t rows = info.rows();
  const uint64_t C = info.channels();
  s.header = kContainerHeaderBytes;
  s.bins = rows;
  s.cdf = info.cdf_source == CdfSource::kInline ? rows * C * info.lp * 2 : 0;
  s.scales = rows * info.num_tokens * DTypeSize(info.scale_dtype);
  s.anchors = rows * info.anchors_per_row() * C;
  s.lengths = uint64_t{info.subchunks()} * rows * C * info.length_width;
  s.payload = payload;
  return s;
}

}  // namespace

std::string CacheGenModeName(CacheGenMode mode) {
  return mode == CacheGenMode::kDelta ? "delta" : "reference";
}

uint32_t ContainerInfo::StreamSymbols(uint32_t sub) const {
  const uint32_t t0 = sub * subchunk_tokens;
  const uint32_t t1 = std::min(num_tokens, t0 + subchunk_tokens);
  uint32_t n = t1 - t0;
  if (mode == CacheGenMode::kDelta) {
    const uint32_t G = delta_group_tokens;
    n -= (t1 + G - 1) / G - (t0 + G - 1) / G;  // anchors in [t0, t1)
  }
  return n;
}

uint32_t ContainerView::StreamLength(uint64_t stream) const {
  const uint8_t* p = lengths.data() + stream * info.length_width;
  return info.length_width == 2 ? DecodeFixed16(p) : DecodeFixed32(p);
}

float ContainerView::Scale(uint64_t row_token) const {
  const uint8_t* p = scales.data() + row_token * DTypeSize(info.scale_dtype);
  switch (info.scale_dtype) {
    case DType::kF16:
      return F16ToF32(DecodeFixed16(p));
    case DType::kBF16:
      return BF16ToF32(DecodeFixed16(p));
    case DType::kF32: {
      return FloatFromBits(DecodeFixed32(p));
    }
  }
  return 0.0f;
}

uint16_t ContainerView::Cdf(uint64_t entry) const { return DecodeFixed16(cdf.data() + 2 * entry); }

Result<ContainerView> ParseContainer(std::span<const uint8_t> bytes) {
  if (bytes.size() < kContainerHeaderBytes) {
    return Bad(
        absl::StrCat("needs at least ", kContainerHeaderBytes, " bytes, got ", bytes.size()));
  }
  const uint8_t* h = bytes.data();
  if (std::memcmp(h, kMagic, 4) != 0) return Bad("bad magic (not KVCG)");
  const uint16_t version = DecodeFixed16(h + 4);
  if (version != kContainerVersion) return Bad(absl::StrCat("unsupported version ", version));
  if (DecodeFixed16(h + 6) != kContainerHeaderBytes) return Bad("bad header length");
  if (DecodeFixed32(h + kHeaderCrcOffset) != Crc32c(h, kHeaderCrcOffset)) {
    return absl::DataLossError("CacheGen container header checksum mismatch");
  }

  ContainerView v;
  ContainerInfo& info = v.info;
  if (h[8] > 1) return Bad("unknown mode");
  info.mode = static_cast<CacheGenMode>(h[8]);
  info.level = h[9];
  if (info.level > 3) return Bad("level above 3");
  if (!ValidDType(h[10]) || !ValidDType(h[11])) return Bad("unknown dtype");
  info.dtype = static_cast<DType>(h[10]);
  info.scale_dtype = static_cast<DType>(h[11]);
  if (h[12] > 1) return Bad("unknown CDF source");
  info.cdf_source = static_cast<CdfSource>(h[12]);
  info.length_width = h[13];
  if (info.length_width != 2 && info.length_width != 4) return Bad("length width not 2 or 4");
  info.lp = h[14];
  if (info.lp < cg::kMinBins + 1 || info.lp > cg::kMaxLp) return Bad("lp out of range");
  if (h[15] != 0) return Bad("reserved byte not zero");
  info.num_layers = DecodeFixed32(h + 16);
  info.num_heads = DecodeFixed32(h + 20);
  info.head_dim = DecodeFixed32(h + 24);
  info.num_tokens = DecodeFixed32(h + 28);
  info.subchunk_tokens = DecodeFixed32(h + 32);
  info.delta_group_tokens = DecodeFixed32(h + 36);
  info.profile_id.lo = DecodeFixed64(h + 40);
  info.profile_id.hi = DecodeFixed64(h + 48);
  const uint64_t payload_bytes = DecodeFixed64(h + 56);

  if (info.num_layers == 0 || info.num_layers > kMaxLayers) return Bad("num_layers out of range");
  if (info.num_heads == 0 || info.num_heads > kMaxKvHeads) return Bad("num_heads out of range");
  if (info.head_dim == 0 || info.head_dim > kMaxHeadDim) return Bad("head_dim out of range");
  if (info.num_tokens == 0 || info.num_tokens > kMaxTokensPerObject) {
    return Bad("num_tokens out of range");
  }
  if (info.subchunk_tokens == 0 || info.subchunk_tokens > 65535) {
    return Bad("subchunk_tokens out of range");
  }
  if (info.mode == CacheGenMode::kReference) {
    if (info.delta_group_tokens != 0) return Bad("group size set in reference mode");
    if (info.scale_dtype != info.dtype) return Bad("reference scales must be in the KV dtype");
  } else {
    if (info.delta_group_tokens < 2 || info.delta_group_tokens > 65535) {
      return Bad("delta group size out of range");
    }
    if (info.scale_dtype != DType::kF32) return Bad("delta scales must be f32");
  }
  if ((info.cdf_source == CdfSource::kInline) != info.profile_id.IsZero()) {
    return Bad("profile id must be set exactly for profile containers");
  }
  if (info.RawBytes() > kMaxObjectBytes) return Bad("decoded size above 16 GiB");
  if (payload_bytes > bytes.size()) return Bad("payload larger than the container");

  info.sizes = Sections(info, payload_bytes);
  if (info.sizes.total() != bytes.size()) {
    return Bad(absl::StrCat("sections add up to ", info.sizes.total(), " bytes, container has ",
                            bytes.size()));
  }
  if (DecodeFixed32(h + kBodyCrcOffset) !=
      Crc32c(h + kContainerHeaderBytes, bytes.size() - kContainerHeaderBytes)) {
    return absl::DataLossError("CacheGen container checksum mismatch");
  }

  size_t off = kContainerHeaderBytes;
  auto take = [&](uint64_t n) {
    std::span<const uint8_t> s = bytes.subspan(off, n);
    off += n;
    return s;
  };
  v.bins = take(info.sizes.bins);
  v.cdf = take(info.sizes.cdf);
  v.scales = take(info.sizes.scales);
  v.anchors = take(info.sizes.anchors);
  v.lengths = take(info.sizes.lengths);
  v.payload = take(info.sizes.payload);

  int max_bins = 0;
  for (uint8_t b : v.bins) {
    if (b < cg::kMinBins || b > cg::kMaxBins || b % 2 != 0) return Bad("bad bins");
    max_bins = std::max<int>(max_bins, b);
  }
  if (info.lp != max_bins + 1) return Bad("lp is not max bins + 1");

  const uint64_t C = info.channels();
  const uint64_t cdfs = info.cdf_source == CdfSource::kInline ? uint64_t{info.rows()} * C : 0;
  for (uint64_t i = 0; i < cdfs; ++i) {
    // Same rule as ValidateCdf: starts at 0, strictly increasing, ends at 65535.
    const uint8_t* p = v.cdf.data() + i * info.lp * 2;
    uint16_t prev = DecodeFixed16(p);
    bool ok = prev == 0;
    for (int j = 1; j < info.lp; ++j) {
      const uint16_t cur = DecodeFixed16(p + 2 * j);
      ok &= cur > prev;
      prev = cur;
    }
    if (!ok || prev != 65535) return Bad(absl::StrCat("invalid CDF for stream column ", i));
  }
  const size_t scale_size = DTypeSize(info.scale_dtype);
  for (size_t i = 0; i < v.scales.size(); i += scale_size) {
    if (!ValidScale(v.scales.data() + i, info.scale_dtype))
      return Bad("negative or non-finite scale");
  }
  for (uint8_t a : v.anchors) {
    if (a > kAnchorBins - 2) return Bad("anchor symbol above 254");
  }
  const uint64_t per_sub = uint64_t{info.rows()} * C;
  uint64_t sum = 0;
  for (uint32_t sub = 0; sub < info.subchunks(); ++sub) {
    const uint64_t max_len = MaxStreamBytes(info.StreamSymbols(sub));
    for (uint64_t i = 0; i < per_sub; ++i) {
      const uint32_t len = v.StreamLength(sub * per_sub + i);
      if (len == 0 || len > max_len) return Bad("stream length out of range");
      sum += len;
      if (sum > payload_bytes) return Bad("stream lengths exceed the payload");
    }
  }
  if (sum != payload_bytes) return Bad("stream lengths do not add up to the payload");
  return v;
}

void RefreshContainerChecksums(std::span<uint8_t> bytes) {
  if (bytes.size() < kContainerHeaderBytes) return;
  uint8_t* h = bytes.data();
  EncodeFixed32(h + kBodyCrcOffset,
                Crc32c(h + kContainerHeaderBytes, bytes.size() - kContainerHeaderBytes));
  EncodeFixed32(h + kHeaderCrcOffset, Crc32c(h, kHeaderCrcOffset));
}

namespace internal {

Result<std::vector<uint8_t>> BuildContainer(ContainerParts parts) {
  ContainerInfo& info = parts.info;
  uint32_t max_len = 0;
  for (uint32_t len : parts.lengths) max_len = std::max(max_len, len);
  info.length_width = max_len <= 0xFFFF ? 2 : 4;
  info.sizes = Sections(info, parts.payload.size());
  const SizeBreakdown& s = info.sizes;
  if (parts.bins.size() != s.bins || parts.cdf.size() * 2 != s.cdf ||
      parts.scales.size() * DTypeSize(info.scale_dtype) != s.scales ||
      parts.anchors.size() != s.anchors || parts.lengths.size() * info.length_width != s.lengths) {
    return absl::InternalError("CacheGen container parts do not match the header");
  }
  std::vector<uint8_t> out(s.total(), 0);
  uint8_t* h = out.data();
  std::memcpy(h, kMagic, 4);
  EncodeFixed16(h + 4, kContainerVersion);
  EncodeFixed16(h + 6, kContainerHeaderBytes);
  h[8] = static_cast<uint8_t>(info.mode);
  h[9] = info.level;
  h[10] = static_cast<uint8_t>(info.dtype);
  h[11] = static_cast<uint8_t>(info.scale_dtype);
  h[12] = static_cast<uint8_t>(info.cdf_source);
  h[13] = info.length_width;
  h[14] = info.lp;
  EncodeFixed32(h + 16, info.num_layers);
  EncodeFixed32(h + 20, info.num_heads);
  EncodeFixed32(h + 24, info.head_dim);
  EncodeFixed32(h + 28, info.num_tokens);
  EncodeFixed32(h + 32, info.subchunk_tokens);
  EncodeFixed32(h + 36, info.delta_group_tokens);
  EncodeFixed64(h + 40, info.profile_id.lo);
  EncodeFixed64(h + 48, info.profile_id.hi);
  EncodeFixed64(h + 56, parts.payload.size());

  uint8_t* p = h + kContainerHeaderBytes;
  std::memcpy(p, parts.bins.data(), parts.bins.size());
  p += parts.bins.size();
  for (uint16_t c : parts.cdf) {
    EncodeFixed16(p, c);
    p += 2;
  }
  for (float f : parts.scales) {
    switch (info.scale_dtype) {
      case DType::kF16:
        EncodeFixed16(p, F32ToF16(f));
        p += 2;
        break;
      case DType::kBF16:
        EncodeFixed16(p, F32ToBF16(f));
        p += 2;
        break;
      case DType::kF32: {
        EncodeFixed32(p, FloatToBits(f));
        p += 4;
        break;
      }
    }
  }
  if (!parts.anchors.empty()) std::memcpy(p, parts.anchors.data(), parts.anchors.size());
  p += parts.anchors.size();
  for (uint32_t len : parts.lengths) {
    if (info.length_width == 2) {
      EncodeFixed16(p, static_cast<uint16_t>(len));
    } else {
      EncodeFixed32(p, len);
    }
    p += info.length_width;
  }
  if (!parts.payload.empty()) std::memcpy(p, parts.payload.data(), parts.payload.size());
  EncodeFixed32(h + kBodyCrcOffset,
                Crc32c(h + kContainerHeaderBytes, out.size() - kContainerHeaderBytes));
  EncodeFixed32(h + kHeaderCrcOffset, Crc32c(h, kHeaderCrcOffset));
  return out;
}

}  // namespace internal
}  // namespace kvstash::codec
