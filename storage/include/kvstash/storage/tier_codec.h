// TierCodec: how a storage tier encodes the objects it keeps (docs/storage.md "Per-tier encoding").
//
// The store stays codec-agnostic: it calls EncodeForTier when it writes an object to a tier
// configured with a codec (StoreOptions::ssd_codec) and Decode when it promotes such an object
// back into the CPU arena. cachesvc implements this with CacheGen (codec/); storage never depends
// on codec/.
//
// Contract:
//   - EncodeForTier decides which objects it encodes. Returning std::nullopt means "store these
//     bytes as they are" (another encoding, a dtype or content the codec does not take); the
//     store then writes the payload verbatim. An error status is treated the same way (and
//     counted); it never fails the write.
//   - Encoded::stored_info describes `bytes` exactly (encoding, level, payload_bytes, crc32c of
//     `bytes`); it is what the tier's file header and index record carry.
//   - Encoded::decoded_info describes what Decode(bytes) writes, bit for bit: same layout and
//     payload_bytes as the input, encoding raw, payload_crc32c of the decoded bytes, lossy = true
//     unless decoding restores the input exactly. It is the ObjectInfo readers get once the
//     object is served from the encoded copy; the store verifies the crc32c of every decode
//     against it and never serves bytes that do not match.
//   - Decode writes exactly decoded_info.payload_bytes bytes into `out`. The stored bytes were
//     already crc-checked by the tier, but Decode must still treat them as untrusted (no read or
//     write outside the spans; InvalidArgument / DataLoss on malformed input).
//
// Threading: both methods are called concurrently from the store's SSD writer pool (encode) and
// from Acquire (decode); implementations must be thread-safe. A Decode may use its own pool.
#ifndef KVSTASH_STORAGE_TIER_CODEC_H_
#define KVSTASH_STORAGE_TIER_CODEC_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvstash/common/layout.h"
#include "kvstash/common/status.h"

namespace kvstash::storage {

class TierCodec {
 public:
  struct Encoded {
    std::vector<uint8_t> bytes;
    ObjectInfo stored_info;
    ObjectInfo decoded_info;
  };

  virtual ~TierCodec() = default;

  // Short name for logs and metrics ("cachegen-l2").
  virtual std::string name() const = 0;

  virtual Result<std::optional<Encoded>> EncodeForTier(const ObjectInfo& info,
                                                       std::span<const uint8_t> payload) = 0;

  virtual Status Decode(const ObjectInfo& stored_info, std::span<const uint8_t> stored,
                        std::span<uint8_t> out) = 0;
};

}  // namespace kvstash::storage

#endif  // KVSTASH_STORAGE_TIER_CODEC_H_
