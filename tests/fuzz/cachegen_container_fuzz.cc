// Fuzz target: the CacheGen container parser and decoder (codec/container.h, cachegen.h).
//
// Input: byte 0 holds flags, the rest is the container.
//   bit 0: recompute the container's checksums first, so mutations reach past the crc checks
//   bit 1: write the id of the built-in profile (fuzz_profile.h) into the header, so profile
//          containers resolve
// Invariants: parsing never reads out of bounds; a container that parses either decodes or fails
// with InvalidArgument / NotFound; decoding writes exactly RawBytes() bytes.
#include <cstdint>
#include <vector>

#include "fuzz_profile.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/container.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash;
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  std::vector<uint8_t> bytes(data + 1, data + size);
  const codec::CdfProfile& profile = fuzz::FuzzProfile();
  if ((flags & 2) && bytes.size() >= codec::kContainerHeaderBytes) {
    for (int i = 0; i < 8; ++i) {
      bytes[40 + i] = static_cast<uint8_t>(profile.id().lo >> (8 * i));
      bytes[48 + i] = static_cast<uint8_t>(profile.id().hi >> (8 * i));
    }
  }
  if (flags & 1) codec::RefreshContainerChecksums(bytes);
  auto view = codec::ParseContainer(bytes);
  if (!view.ok()) return 0;
  if (view->info.sizes.total() != bytes.size()) __builtin_trap();
  if (view->info.RawBytes() > (uint64_t{32} << 20)) return 0;  // keep memory bounded
  static codec::ProfileSet* profiles = [&] {
    auto* set = new codec::ProfileSet;
    set->Add(profile);
    return set;
  }();
  std::vector<uint8_t> out(view->info.RawBytes());
  codec::DecodeOptions options;
  options.profiles = profiles;
  Status s = codec::DecodeCacheGen(bytes, out, options);
  if (!s.ok() && s.code() != absl::StatusCode::kInvalidArgument &&
      s.code() != absl::StatusCode::kNotFound) {
    __builtin_trap();
  }
  return 0;
}
