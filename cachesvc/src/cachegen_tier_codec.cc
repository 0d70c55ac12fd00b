#include "cachegen_tier_codec.h"

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/common/crc32c.h"

namespace kvstash::cachesvc {
namespace {

// The trailer `kvstash put --wrap` appends to an opaque file stored as an f16 object
// (cli/src/file_object.cc): magic, then the file's length. Such bytes must come back exactly.
constexpr char kWrappedFileMagic[8] = {'K', 'V', 'S', 'C', 'L', 'I', 'F', '1'};
constexpr size_t kWrappedFileTrailerBytes = 16;

bool LooksLikeWrappedFile(const ObjectInfo& info, std::span<const uint8_t> payload) {
  return info.layout.dtype == DType::kF16 && payload.size() >= kWrappedFileTrailerBytes &&
         std::memcmp(payload.data() + payload.size() - kWrappedFileTrailerBytes, kWrappedFileMagic,
                     sizeof(kWrappedFileMagic)) == 0;
}

size_t DecodeThreads(size_t requested) {
  if (requested > 0) return requested;
  size_t hw = std::thread::hardware_concurrency();
  return std::clamp<size_t>(hw, 1, 8);
}

}  // namespace

CacheGenTierCodec::CacheGenTierCodec(TierEncoding config, size_t decode_threads)
    : config_(config), pool_(std::make_unique<ThreadPool>(DecodeThreads(decode_threads))) {}

std::string TierEncodingName(const TierEncoding& config) {
  if (config.encoding == Encoding::kRaw) return codec::CodecName(codec::CodecKind::kRaw, 0);
  return codec::CodecName(config.kvq ? codec::CodecKind::kKvq : codec::CodecKind::kCacheGen,
                          config.level);
}

std::string CacheGenTierCodec::name() const { return TierEncodingName(config_); }

Result<std::optional<storage::TierCodec::Encoded>> CacheGenTierCodec::EncodeForTier(
    const ObjectInfo& info, std::span<const uint8_t> payload) {
  if (config_.encoding != Encoding::kCacheGen || info.encoding != Encoding::kRaw ||
      payload.size() != info.payload_bytes || LooksLikeWrappedFile(info, payload)) {
    return std::optional<Encoded>();
  }
  Encoded out;
  std::vector<uint8_t> reconstruction(payload.size());
  Result<std::vector<uint8_t>> container = absl::InternalError("unset");
  if (config_.kvq) {
    codec::KvqOptions options;
    options.level = config_.level;
    options.reconstruction = std::span<uint8_t>(reconstruction);
    container = codec::EncodeKvq(info.layout, payload, options);
  } else {
    codec::EncodeOptions options;
    options.level = config_.level;
    options.reconstruction = std::span<uint8_t>(reconstruction);
    container = codec::EncodeCacheGen(info.layout, payload, options);
  }
  if (!container.ok()) {
    // InvalidArgument: content the codec does not take (NaN/Inf, say); keep it as it is.
    if (absl::IsInvalidArgument(container.status())) return std::optional<Encoded>();
    return container.status();
  }
  if (container->size() >= payload.size()) return std::optional<Encoded>();
  out.stored_info = info;
  out.stored_info.encoding = Encoding::kCacheGen;
  out.stored_info.encoding_level = static_cast<uint8_t>(config_.level);
  out.stored_info.payload_bytes = container->size();
  out.stored_info.payload_crc32c = Crc32c(container->data(), container->size());
  out.stored_info.lossy = false;
  out.decoded_info = info;
  out.decoded_info.payload_crc32c = Crc32c(reconstruction.data(), reconstruction.size());
  out.decoded_info.lossy = true;
  out.bytes = std::move(*container);
  return std::optional<Encoded>(std::move(out));
}

Status CacheGenTierCodec::Decode(const ObjectInfo& stored_info, std::span<const uint8_t> stored,
                                 std::span<uint8_t> out) {
  if (stored_info.encoding != Encoding::kCacheGen) {
    return absl::InvalidArgumentError(absl::StrCat("tier copy has encoding ",
                                                   std::string(EncodingName(stored_info.encoding)),
                                                   ", not cachegen"));
  }
  // Encoding cachegen means a codec container; the magic says which codec wrote it.
  if (codec::IsKvqContainer(stored)) return codec::DecodeKvq(stored, out, pool_.get());
  codec::DecodeOptions options;
  options.pool = pool_.get();
  return codec::DecodeCacheGen(stored, out, options);
}

}  // namespace kvstash::cachesvc
