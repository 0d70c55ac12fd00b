// CacheGenTierCodec: the storage::TierCodec the service installs on its SSD tier.
//
// With TierEncoding::encoding == kCacheGen it encodes every raw KV object at the configured
// level, except: objects already encoded, payloads the codec refuses (NaN/Inf values, layouts it
// does not take), files wrapped by `kvstash put --wrap` (opaque bytes that only look like f16 KV;
// recognised by the CLI's trailer, docs/cli.md), and objects the encoding would not shrink. Those
// are stored as they are. The reader's ObjectInfo (decoded_info) carries the crc32c of the exact
// reconstruction, computed at encode time from the encoder's own symbols
// (EncodeOptions::reconstruction), and lossy = true.
//
// With TierEncoding::kvq it writes KVQ containers (codec/kvq.h) instead, at the same level
// number; Decode reads either kind, told apart by the container's magic.
//
// With kRaw it encodes nothing but still decodes, so SSD copies an earlier run wrote encoded stay
// readable after a configuration change.
//
// Thread-safe. Decode fans out over a private pool (promotion is on a reader's path); encode runs
// on the calling thread, which is one of the store's parallel SSD writers.
#ifndef KVSTASH_CACHESVC_CACHEGEN_TIER_CODEC_H_
#define KVSTASH_CACHESVC_CACHEGEN_TIER_CODEC_H_

#include <memory>
#include <string>

#include "kvstash/cachesvc/config.h"
#include "kvstash/common/thread_pool.h"
#include "kvstash/storage/tier_codec.h"

namespace kvstash::cachesvc {

// "raw", "cachegen-l2" or "kvq-l3": what a codec with this configuration writes.
std::string TierEncodingName(const TierEncoding& config);

class CacheGenTierCodec final : public storage::TierCodec {
 public:
  // decode_threads 0: min(hardware threads, 8).
  explicit CacheGenTierCodec(TierEncoding config, size_t decode_threads = 0);

  std::string name() const override;
  Result<std::optional<Encoded>> EncodeForTier(const ObjectInfo& info,
                                               std::span<const uint8_t> payload) override;
  Status Decode(const ObjectInfo& stored_info, std::span<const uint8_t> stored,
                std::span<uint8_t> out) override;

 private:
  const TierEncoding config_;
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_CACHEGEN_TIER_CODEC_H_
