// Model-level CDF profiles: per-(row, channel) CDFs learned once over many chunks of one model and
// layout, stored once, and referenced from containers by id, so chunks carry no CDF.
//
// A profile holds up to 16 tables, one per (mode, row bins), e.g. levels 1-3 of reference mode.
// Its serialised form (docs/codec.md §4) is versioned little-endian with a crc32c trailer; its id
// is the XXH3-128 of those bytes, so equal profiles have equal ids on every host.
//
// CdfProfile is an immutable value once built or parsed; share it freely between threads.
// CdfProfileBuilder is not thread-safe (one builder per thread, or lock around Add).
#ifndef KVSTASH_CODEC_PROFILE_H_
#define KVSTASH_CODEC_PROFILE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "kvstash/codec/container.h"
#include "kvstash/common/key.h"
#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::codec {

inline constexpr uint16_t kProfileVersion = 1;
inline constexpr size_t kMaxProfileTables = 16;

// The model slice a profile was learned on; chunks must match it exactly (tokens may differ).
struct ProfileShape {
  uint32_t num_layers = 0;
  uint32_t layer_begin = 0;
  uint32_t num_heads = 0;  // heads held
  uint32_t head_begin = 0;
  uint32_t head_dim = 0;

  static ProfileShape Of(const KvLayout& layout);
  uint32_t rows() const { return 2 * num_layers; }
  uint32_t channels() const { return num_heads * head_dim; }
  bool operator==(const ProfileShape&) const = default;
};

struct ProfileTable {
  CacheGenMode mode = CacheGenMode::kReference;
  uint8_t level = 0;              // informational; 0 for explicit bins
  std::vector<uint8_t> row_bins;  // 2L entries
  uint8_t lp = 0;                 // max bins + 1
  std::vector<uint16_t> cdf;      // [2L][C][lp]
};

class CdfProfile {
 public:
  const ProfileShape& shape() const { return shape_; }
  const std::vector<ProfileTable>& tables() const { return tables_; }
  const Hash128& id() const { return id_; }
  // The serialised bytes (id = XXH3-128 of them).
  const std::vector<uint8_t>& bytes() const { return bytes_; }

  // The table for this mode and these bins, or null.
  const ProfileTable* Find(CacheGenMode mode, std::span<const uint8_t> row_bins) const;

  // Untrusted input: InvalidArgument for anything malformed, DataLoss for a crc mismatch.
  static Result<CdfProfile> Parse(std::span<const uint8_t> bytes);
  // Validates and serialises tables into a profile.
  static Result<CdfProfile> Create(const ProfileShape& shape, std::vector<ProfileTable> tables);

 private:
  ProfileShape shape_;
  std::vector<ProfileTable> tables_;
  std::vector<uint8_t> bytes_;
  Hash128 id_;
};

// Looks profiles up by id for the decoder. Implementations must be thread-safe for Find.
class ProfileResolver {
 public:
  virtual ~ProfileResolver() = default;
  // Null when unknown. The pointer stays valid while the resolver lives.
  virtual const CdfProfile* Find(const Hash128& id) const = 0;
};

// A simple in-memory resolver. Add is not thread-safe against Find; fill it first.
class ProfileSet : public ProfileResolver {
 public:
  const CdfProfile* Add(CdfProfile profile);
  const CdfProfile* Find(const Hash128& id) const override;

 private:
  std::map<Hash128, std::unique_ptr<CdfProfile>> profiles_;
};

// Learns tables by counting symbols over many chunks of one shape.
class CdfProfileBuilder {
 public:
  struct TableSpec {
    CacheGenMode mode = CacheGenMode::kReference;
    int level = 2;                  // used when row_bins is empty
    std::vector<uint8_t> row_bins;  // explicit bins (level recorded as 0)
  };
  // `model_layers` as in EncodeOptions (0: layer_begin + num_layers). Delta tables use
  // `delta_group_tokens` anchors, as the encoder will. Specs that resolve to the same mode and
  // bins (levels 2 and 3 of a one-layer model, say) share one table.
  static Result<CdfProfileBuilder> Create(const ProfileShape& shape, std::vector<TableSpec> specs,
                                          uint32_t model_layers = 0,
                                          uint32_t delta_group_tokens = 10);

  // Adds one chunk (same shape; any token count). InvalidArgument on mismatch or NaN/Inf.
  Status Add(const KvLayout& layout, std::span<const uint8_t> kv);
  uint64_t chunks() const { return chunks_; }

  // CDFs from the counts: cdf[i] = floor((65535 - Mb) * cum[i] / N) + i per (row, channel), with
  // one pseudo-count for every symbol the row can produce (unseen symbols stay codable cheaply).
  Result<CdfProfile> Build() const;

 private:
  struct Accumulator {
    ProfileTable table;            // cdf empty until Build
    std::vector<uint64_t> counts;  // [2L][C][kMaxLp]
  };
  ProfileShape shape_;
  uint32_t model_layers_ = 0;
  uint32_t delta_group_tokens_ = 10;
  std::vector<Accumulator> acc_;
  uint64_t chunks_ = 0;
};

}  // namespace kvstash::codec

#endif  // KVSTASH_CODEC_PROFILE_H_
