// KVQ container: header writer and hardened parser (kvq_format.h), and the public format
// functions of kvq.h.
#include "kvq_format.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kvstash/codec/levels.h"
#include "kvstash/common/crc32c.h"
#include "rans.h"

namespace kvstash::codec {
namespace kvq_internal {

namespace rans = internal::rans;

Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed KVQ container: ", what));
}

void WriteHeader(const Geometry& g, uint8_t* h) {
  const KvqInfo& i = g.info;
  std::memcpy(h, kMagic, 4);
  EncodeFixed16(h + 4, kKvqVersion);
  EncodeFixed16(h + 6, static_cast<uint16_t>(kKvqHeaderBytes));
  h[8] = static_cast<uint8_t>(i.dtype);
  h[9] = static_cast<uint8_t>(i.param_dtype);
  h[10] = i.level;
  h[11] = static_cast<uint8_t>(i.key_scale);
  h[12] = static_cast<uint8_t>(i.value_scale);
  h[13] = rans::kProbBits;
  h[14] = rans::kLanes;
  h[15] = static_cast<uint8_t>((i.rotate_keys ? kRotateKeys : 0) |
                               (i.rotate_values ? kRotateValues : 0) | (i.exact_tokens << 2));
  EncodeFixed32(h + 16, i.num_layers);
  EncodeFixed32(h + 20, i.num_heads);
  EncodeFixed32(h + 24, i.head_dim);
  EncodeFixed32(h + 28, i.num_tokens);
  EncodeFixed32(h + 32, i.subchunk_tokens);
  EncodeFixed32(h + 36, i.group_tokens);
  EncodeFixed32(h + 40, i.key_outliers);
  EncodeFixed32(h + 44, i.context_channels);
  EncodeFixed64(h + 48, i.payload);
}

Result<Parsed> Parse(std::span<const uint8_t> bytes) {
  if (bytes.size() < kKvqHeaderBytes) return Bad("shorter than the header");
  const uint8_t* h = bytes.data();
  if (std::memcmp(h, kMagic, 4) != 0) return Bad("bad magic");
  if (DecodeFixed16(h + 4) != kKvqVersion) return Bad("unsupported version");
  if (DecodeFixed16(h + 6) != kKvqHeaderBytes) return Bad("bad header size");
  if (Crc32c(h, kHeaderCrcOffset) != DecodeFixed32(h + kHeaderCrcOffset)) {
    return absl::DataLossError("KVQ container header checksum mismatch");
  }
  Parsed p;
  p.base = h;
  KvqInfo& i = p.g.info;
  if (h[8] < 1 || h[8] > 3) return Bad("bad dtype");
  i.dtype = static_cast<DType>(h[8]);
  if (h[9] != static_cast<uint8_t>(DType::kF16) && h[9] != static_cast<uint8_t>(DType::kF32)) {
    return Bad("bad parameter dtype");
  }
  i.param_dtype = static_cast<DType>(h[9]);
  i.level = h[10];
  if (i.level > kKvqMaxLevel) return Bad("bad level");
  if (h[11] > 1 || h[12] > 1) return Bad("bad scaling");
  i.key_scale = static_cast<KvqScale>(h[11]);
  i.value_scale = static_cast<KvqScale>(h[12]);
  if (h[13] != rans::kProbBits || h[14] != rans::kLanes) {
    return Bad("unsupported coder parameters");
  }
  i.rotate_keys = (h[15] & kRotateKeys) != 0;
  i.rotate_values = (h[15] & kRotateValues) != 0;
  i.exact_tokens = h[15] >> 2;
  i.num_layers = DecodeFixed32(h + 16);
  i.num_heads = DecodeFixed32(h + 20);
  i.head_dim = DecodeFixed32(h + 24);
  i.num_tokens = DecodeFixed32(h + 28);
  i.subchunk_tokens = DecodeFixed32(h + 32);
  i.group_tokens = DecodeFixed32(h + 36);
  i.key_outliers = DecodeFixed32(h + 40);
  i.context_channels = DecodeFixed32(h + 44);
  i.payload = DecodeFixed64(h + 48);
  auto in = [](uint32_t v, uint32_t lo, uint32_t hi) { return v >= lo && v <= hi; };
  if (!in(i.num_layers, 1, kMaxDim) || !in(i.num_heads, 1, kMaxDim) ||
      !in(i.head_dim, 1, kMaxDim) || !in(i.num_tokens, 1, kMaxTokens) ||
      !in(i.subchunk_tokens, 1, 65535) || i.exact_tokens >= i.num_tokens) {
    return Bad("shape out of range");
  }
  if (i.RawBytes() > kMaxDecodedBytes) return Bad("decoded size too large");
  // Per-row counts (parameters, symbols) are 32-bit.
  if (uint64_t{i.num_tokens} * i.channels() > UINT32_MAX) return Bad("row too large");
  const bool channelwise =
      i.key_scale == KvqScale::kPerChannel || i.value_scale == KvqScale::kPerChannel;
  if (channelwise ? !in(i.group_tokens, 1, 65535) : i.group_tokens != 0) {
    return Bad("bad group tokens");
  }
  const uint32_t C = i.channels();
  if (i.key_outliers >= C || (i.key_outliers > 0 && C > 65536)) return Bad("bad outlier count");
  if ((i.rotate_keys || i.rotate_values) && PowerOfTwoLog2(i.head_dim) < 0) {
    return Bad("rotation needs a power-of-two head_dim");
  }
  if (i.rotate_keys && i.key_outliers > 0) return Bad("rotated keys with outlier channels");
  if (i.context_channels == 0 || C % i.context_channels != 0 ||
      C / i.context_channels + (i.key_outliers > 0 ? 1 : 0) > 255) {
    return Bad("bad context channels");
  }
  const uint64_t rows = i.rows();
  if (bytes.size() < kKvqHeaderBytes + rows) return Bad("truncated bits");
  p.g.bits.assign(h + kKvqHeaderBytes, h + kKvqHeaderBytes + rows);
  for (uint8_t b : p.g.bits) {
    if (b < 1 || b > 8) return Bad("bits out of range");
  }
  p.g.Derive();
  if (i.total() != bytes.size()) return Bad("section sizes do not add up to the input size");
  if (Crc32c(h + kKvqHeaderBytes, bytes.size() - kKvqHeaderBytes) !=
      DecodeFixed32(h + kBodyCrcOffset)) {
    return absl::DataLossError("KVQ container body checksum mismatch");
  }
  for (uint32_t r = 0; r < i.num_layers; ++r) {
    const std::vector<uint16_t> idx = p.OutlierIndex(r);
    for (size_t j = 0; j < idx.size(); ++j) {
      if (idx[j] >= C || (j > 0 && idx[j] <= idx[j - 1])) return Bad("bad outlier channels");
    }
  }
  for (uint32_t r = 0; r < rows; ++r) {
    for (uint32_t k = 0; k < 2 * p.g.param_count[r]; ++k) {
      const float v = p.Param(p.g.param_off[r] + k);
      if (!std::isfinite(v) || (k >= p.g.param_count[r] && v < 0)) return Bad("bad parameter");
    }
    const int alphabet = 1 << p.g.bits[r];
    std::vector<uint16_t> f(alphabet);
    for (uint32_t c = 0; c < p.g.contexts[r]; ++c) {
      const uint8_t* src = p.Freqs(r) + size_t{c} * alphabet * 2;
      for (int s = 0; s < alphabet; ++s) f[s] = DecodeFixed16(src + 2 * s);
      if (!rans::ValidFreqs(f.data(), alphabet)) return Bad("bad frequency table");
    }
  }
  uint64_t sum = 0;
  for (uint32_t s = 0; s < p.g.subs(); ++s) {
    const uint64_t symbols = uint64_t{p.g.SubTokens(s)} * C;
    for (uint32_t r = 0; r < rows; ++r) {
      const uint32_t len = p.StreamLength(s, r);
      if (len < rans::kStateBytes || len > rans::MaxStreamBytes(symbols)) {
        return Bad("bad stream length");
      }
      sum += len;
    }
  }
  if (sum != i.payload) return Bad("stream lengths do not add up to the payload");
  return p;
}

}  // namespace kvq_internal

using namespace kvq_internal;

std::string KvqScaleName(KvqScale scale) {
  return scale == KvqScale::kPerToken ? "per-token" : "per-channel";
}

bool IsKvqContainer(std::span<const uint8_t> bytes) {
  return bytes.size() >= 4 && std::memcmp(bytes.data(), kMagic, 4) == 0;
}

void RefreshKvqChecksums(std::span<uint8_t> bytes) {
  if (bytes.size() < kKvqHeaderBytes) return;
  EncodeFixed32(bytes.data() + kBodyCrcOffset,
                Crc32c(bytes.data() + kKvqHeaderBytes, bytes.size() - kKvqHeaderBytes));
  EncodeFixed32(bytes.data() + kHeaderCrcOffset, Crc32c(bytes.data(), kHeaderCrcOffset));
}

Result<std::vector<uint8_t>> KvqRowBitsForLevel(int level, uint32_t model_layers,
                                                uint32_t layer_begin, uint32_t num_layers) {
  static constexpr uint8_t kKey[4][3] = {{3, 3, 2}, {4, 3, 3}, {4, 4, 4}, {6, 5, 5}};
  static constexpr uint8_t kValue[4][2] = {{3, 2}, {3, 3}, {4, 4}, {5, 5}};
  if (level < kKvqMinLevel || level > kKvqMaxLevel) {
    return absl::InvalidArgumentError(absl::StrCat("KVQ level must be 1..4, got ", level));
  }
  if (model_layers == 0 || num_layers == 0 || layer_begin + num_layers > model_layers) {
    return absl::InvalidArgumentError("KVQ layers outside the model");
  }
  const LayerGroups g = LayerGroupsFor(model_layers);
  std::vector<uint8_t> bits(2 * num_layers);
  for (uint32_t i = 0; i < num_layers; ++i) {
    const uint32_t l = layer_begin + i;
    bits[i] = kKey[level - 1][l < g.k_group1_end ? 0 : l < g.k_group2_end ? 1 : 2];
    bits[num_layers + i] = kValue[level - 1][l < g.v_group1_end ? 0 : 1];
  }
  return bits;
}

Result<KvqInfo> ParseKvq(std::span<const uint8_t> bytes) {
  KVSTASH_ASSIGN_OR_RETURN(Parsed p, Parse(bytes));
  return p.g.info;
}

}  // namespace kvstash::codec
