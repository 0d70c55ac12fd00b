// Model-level CDF profiles: format, parser, resolver and builder (docs/codec.md §4).
//
//   header (40 bytes)
//    0 4 magic "KVCP"   4 2 version (1)   6 2 header bytes (40)
//    8 4 num_layers L   12 4 layer_begin   16 4 num_heads H   20 4 head_begin   24 4 head_dim D
//   28 4 num_tables N (1..16)   32 8 reserved (0)
//   N tables: u8 mode, u8 level, u8 lp, u8 reserved (0), 2L x u8 bins, 2L x C x lp x u16 cdf
//   trailer: u32 crc32c of every byte before it
#include "kvstash/codec/profile.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "chunk.h"
#include "kvstash/codec/coder.h"
#include "kvstash/codec/levels.h"
#include "kvstash/common/coding.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::codec {
namespace cg = kernels::cachegen;

namespace {

constexpr uint8_t kMagic[4] = {'K', 'V', 'C', 'P'};
constexpr size_t kHeaderBytes = 40;

Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed CacheGen profile: ", what));
}

Status CheckShape(const ProfileShape& s) {
  if (s.num_layers == 0 || s.num_layers > kMaxLayers) return Bad("num_layers out of range");
  if (uint64_t{s.layer_begin} + s.num_layers > kMaxLayers) return Bad("layer range out of range");
  if (s.num_heads == 0 || s.num_heads > kMaxKvHeads) return Bad("num_heads out of range");
  if (uint64_t{s.head_begin} + s.num_heads > kMaxKvHeads) return Bad("head range out of range");
  if (s.head_dim == 0 || s.head_dim > kMaxHeadDim) return Bad("head_dim out of range");
  return OkStatus();
}

Status CheckTable(const ProfileShape& s, const ProfileTable& t) {
  if (t.mode != CacheGenMode::kReference && t.mode != CacheGenMode::kDelta) {
    return Bad("unknown mode");
  }
  if (t.level > kMaxLevel) return Bad("level above 3");
  auto max_bins = CheckRowBins(t.row_bins, s.num_layers);
  if (!max_bins.ok()) return Bad(std::string(max_bins.status().message()));
  if (t.lp != *max_bins + 1) return Bad("lp is not max bins + 1");
  const size_t columns = size_t{s.rows()} * s.channels();
  if (t.cdf.size() != columns * t.lp) return Bad("CDF size mismatch");
  for (size_t i = 0; i < columns; ++i) {
    if (!ValidateCdf(std::span<const uint16_t>(t.cdf).subspan(i * t.lp, t.lp)).ok()) {
      return Bad(absl::StrCat("invalid CDF for column ", i));
    }
  }
  return OkStatus();
}

Hash128 HashBytes(const std::vector<uint8_t>& bytes) {
  XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  Hash128 out;
  out.lo = h.low64;
  out.hi = h.high64;
  return out;
}

}  // namespace

ProfileShape ProfileShape::Of(const KvLayout& layout) {
  ProfileShape s;
  s.num_layers = layout.num_layers;
  s.layer_begin = layout.layer_begin;
  s.num_heads = layout.heads();
  s.head_begin = layout.head_begin;
  s.head_dim = layout.head_dim;
  return s;
}

const ProfileTable* CdfProfile::Find(CacheGenMode mode, std::span<const uint8_t> row_bins) const {
  for (const ProfileTable& t : tables_) {
    if (t.mode == mode &&
        std::equal(t.row_bins.begin(), t.row_bins.end(), row_bins.begin(), row_bins.end())) {
      return &t;
    }
  }
  return nullptr;
}

Result<CdfProfile> CdfProfile::Create(const ProfileShape& shape, std::vector<ProfileTable> tables) {
  KVSTASH_RETURN_IF_ERROR(CheckShape(shape));
  if (tables.empty() || tables.size() > kMaxProfileTables) return Bad("needs 1..16 tables");
  for (size_t i = 0; i < tables.size(); ++i) {
    KVSTASH_RETURN_IF_ERROR(CheckTable(shape, tables[i]));
    for (size_t j = 0; j < i; ++j) {
      if (tables[j].mode == tables[i].mode && tables[j].row_bins == tables[i].row_bins) {
        return Bad("two tables for the same mode and bins");
      }
    }
  }
  CdfProfile p;
  p.shape_ = shape;
  p.tables_ = std::move(tables);
  std::vector<uint8_t>& b = p.bytes_;
  b.assign(kMagic, kMagic + 4);
  PutFixed16(&b, kProfileVersion);
  PutFixed16(&b, kHeaderBytes);
  PutFixed32(&b, shape.num_layers);
  PutFixed32(&b, shape.layer_begin);
  PutFixed32(&b, shape.num_heads);
  PutFixed32(&b, shape.head_begin);
  PutFixed32(&b, shape.head_dim);
  PutFixed32(&b, static_cast<uint32_t>(p.tables_.size()));
  PutFixed64(&b, 0);
  for (const ProfileTable& t : p.tables_) {
    b.push_back(static_cast<uint8_t>(t.mode));
    b.push_back(t.level);
    b.push_back(t.lp);
    b.push_back(0);
    b.insert(b.end(), t.row_bins.begin(), t.row_bins.end());
    for (uint16_t c : t.cdf) PutFixed16(&b, c);
  }
  PutFixed32(&b, Crc32c(b.data(), b.size()));
  p.id_ = HashBytes(b);
  return p;
}

Result<CdfProfile> CdfProfile::Parse(std::span<const uint8_t> bytes) {
  if (bytes.size() < kHeaderBytes + 4) return Bad("too short");
  const uint8_t* h = bytes.data();
  if (std::memcmp(h, kMagic, 4) != 0) return Bad("bad magic (not KVCP)");
  if (DecodeFixed16(h + 4) != kProfileVersion) return Bad("unsupported version");
  if (DecodeFixed16(h + 6) != kHeaderBytes) return Bad("bad header length");
  const size_t body = bytes.size() - 4;
  if (DecodeFixed32(h + body) != Crc32c(h, body)) {
    return absl::DataLossError("CacheGen profile checksum mismatch");
  }
  ProfileShape shape;
  shape.num_layers = DecodeFixed32(h + 8);
  shape.layer_begin = DecodeFixed32(h + 12);
  shape.num_heads = DecodeFixed32(h + 16);
  shape.head_begin = DecodeFixed32(h + 20);
  shape.head_dim = DecodeFixed32(h + 24);
  const uint32_t num_tables = DecodeFixed32(h + 28);
  if (DecodeFixed64(h + 32) != 0) return Bad("reserved bytes not zero");
  KVSTASH_RETURN_IF_ERROR(CheckShape(shape));
  if (num_tables == 0 || num_tables > kMaxProfileTables) return Bad("needs 1..16 tables");
  const uint64_t rows = shape.rows();
  const uint64_t columns = rows * shape.channels();
  std::vector<ProfileTable> tables(num_tables);
  size_t off = kHeaderBytes;
  for (ProfileTable& t : tables) {
    if (body - off < 4 + rows) return Bad("truncated table");
    if (h[off] > 1) return Bad("unknown mode");
    t.mode = static_cast<CacheGenMode>(h[off]);
    t.level = h[off + 1];
    t.lp = h[off + 2];
    if (h[off + 3] != 0) return Bad("reserved byte not zero");
    if (t.lp < cg::kMinBins + 1 || t.lp > cg::kMaxLp) return Bad("lp out of range");
    off += 4;
    t.row_bins.assign(h + off, h + off + rows);
    off += rows;
    const uint64_t cdf_bytes = columns * t.lp * 2;
    if (body - off < cdf_bytes) return Bad("truncated CDF");
    t.cdf.resize(columns * t.lp);
    for (size_t i = 0; i < t.cdf.size(); ++i) t.cdf[i] = DecodeFixed16(h + off + 2 * i);
    off += cdf_bytes;
  }
  if (off != body) return Bad("trailing bytes");
  KVSTASH_ASSIGN_OR_RETURN(CdfProfile p, Create(shape, std::move(tables)));
  // Create re-serialises; a canonical input reproduces itself byte for byte.
  if (p.bytes_.size() != bytes.size() ||
      std::memcmp(p.bytes_.data(), bytes.data(), bytes.size()) != 0) {
    return Bad("not in canonical form");
  }
  return p;
}

const CdfProfile* ProfileSet::Add(CdfProfile profile) {
  auto owned = std::make_unique<CdfProfile>(std::move(profile));
  const Hash128 id = owned->id();
  auto [it, inserted] = profiles_.try_emplace(id, std::move(owned));
  return it->second.get();
}

const CdfProfile* ProfileSet::Find(const Hash128& id) const {
  auto it = profiles_.find(id);
  return it == profiles_.end() ? nullptr : it->second.get();
}

Result<CdfProfileBuilder> CdfProfileBuilder::Create(const ProfileShape& shape,
                                                    std::vector<TableSpec> specs,
                                                    uint32_t model_layers,
                                                    uint32_t delta_group_tokens) {
  KVSTASH_RETURN_IF_ERROR(CheckShape(shape));
  if (specs.empty() || specs.size() > kMaxProfileTables) {
    return absl::InvalidArgumentError("a profile needs 1..16 tables");
  }
  if (delta_group_tokens < 2 || delta_group_tokens > 65535) {
    return absl::InvalidArgumentError("delta_group_tokens must be in [2, 65535]");
  }
  CdfProfileBuilder b;
  b.shape_ = shape;
  b.model_layers_ = model_layers != 0 ? model_layers : shape.layer_begin + shape.num_layers;
  b.delta_group_tokens_ = delta_group_tokens;
  for (TableSpec& spec : specs) {
    Accumulator acc;
    acc.table.mode = spec.mode;
    if (spec.row_bins.empty()) {
      KVSTASH_ASSIGN_OR_RETURN(
          acc.table.row_bins,
          RowBinsForLevel(spec.level, b.model_layers_, shape.layer_begin, shape.num_layers));
      acc.table.level = static_cast<uint8_t>(spec.level);
    } else {
      acc.table.row_bins = std::move(spec.row_bins);
      acc.table.level = 0;
    }
    KVSTASH_ASSIGN_OR_RETURN(int max_bins, CheckRowBins(acc.table.row_bins, shape.num_layers));
    acc.table.lp = static_cast<uint8_t>(max_bins + 1);
    bool duplicate = false;
    for (const Accumulator& other : b.acc_) {
      duplicate |= other.table.mode == acc.table.mode && other.table.row_bins == acc.table.row_bins;
    }
    if (duplicate) continue;  // e.g. levels 2 and 3 of a 1-layer model: one table serves both
    acc.counts.assign(size_t{shape.rows()} * shape.channels() * cg::kMaxLp, 0);
    b.acc_.push_back(std::move(acc));
  }
  return b;
}

Status CdfProfileBuilder::Add(const KvLayout& layout, std::span<const uint8_t> kv) {
  KVSTASH_RETURN_IF_ERROR(layout.Validate());
  if (!(ProfileShape::Of(layout) == shape_)) {
    return absl::InvalidArgumentError("chunk does not match the profile's layer and head range");
  }
  const internal::ChunkShape shape = internal::ChunkShape::Of(layout);
  const size_t C = shape.channels();
  for (Accumulator& acc : acc_) {
    internal::ChunkParams p;
    p.mode = acc.table.mode;
    p.row_bins = acc.table.row_bins;
    p.lp = acc.table.lp;
    p.group_tokens = p.mode == CacheGenMode::kDelta ? delta_group_tokens_ : 0;
    internal::QuantizedChunk q;
    KVSTASH_RETURN_IF_ERROR(internal::QuantizeChunk(shape, kv, p, nullptr, &q));
    for (uint32_t row = 0; row < shape.rows(); ++row) {
      internal::CountRowSymbols(shape, p, q, row, acc.counts.data() + size_t{row} * C * cg::kMaxLp);
    }
  }
  ++chunks_;
  return OkStatus();
}

Result<CdfProfile> CdfProfileBuilder::Build() const {
  if (chunks_ == 0) return absl::FailedPreconditionError("no chunks added to the profile");
  const size_t C = shape_.channels();
  std::vector<ProfileTable> tables;
  for (const Accumulator& acc : acc_) {
    ProfileTable t = acc.table;
    const int mb = t.lp - 1;
    t.cdf.resize(size_t{shape_.rows()} * C * t.lp);
    for (uint32_t row = 0; row < shape_.rows(); ++row) {
      const int top = 2 * cg::QuantCq(t.row_bins[row]);  // highest symbol of this row
      for (size_t c = 0; c < C; ++c) {
        const uint64_t* h = acc.counts.data() + (size_t{row} * C + c) * cg::kMaxLp;
        uint64_t total = 0;
        for (int s = 0; s <= top; ++s) total += h[s] + 1;
        uint16_t* out = t.cdf.data() + (size_t{row} * C + c) * t.lp;
        uint64_t cum = 0;
        for (int i = 0; i <= mb; ++i) {
          out[i] = cg::CdfValue(cum, total, mb, i);
          if (i <= top) cum += h[i] + 1;
        }
      }
    }
    tables.push_back(std::move(t));
  }
  return CdfProfile::Create(shape_, std::move(tables));
}

}  // namespace kvstash::codec
