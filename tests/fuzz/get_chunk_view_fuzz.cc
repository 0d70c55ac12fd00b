// Fuzz target: SplitGetChunk (kvstash/proto/get_chunk_view.h), which KvClient runs on every
// message of a streaming Get as it arrives from the network.
//
// Input: one byte saying where to cut, then the message bytes, cut into two or three slices.
// Invariants: no out-of-bounds reads; whatever SplitGetChunk accepts, protobuf's own parser
// accepts too, with the same data bytes and the same other fields.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "kvstash/proto/get_chunk_view.h"

namespace {

const bool kQuietProtobuf = [] {
  google::protobuf::SetLogHandler(nullptr);
  return true;
}();

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t n = size - 1;
  const uint8_t* msg = data + 1;
  const size_t a = n == 0 ? 0 : data[0] % (n + 1);
  const size_t b = a + (n - a) / 2;
  // Each slice in its own allocation, so ASan sees a read past any one of them.
  std::vector<std::vector<uint8_t>> pieces = {
      {msg, msg + a}, {msg + a, msg + b}, {msg + b, msg + n}};
  std::vector<std::span<const uint8_t>> slices;
  for (const std::vector<uint8_t>& p : pieces) slices.emplace_back(p.data(), p.size());

  kvstash::GetChunkView view;
  if (!kvstash::SplitGetChunk(slices, &view).ok()) return 0;
  kvstash::v1::GetChunk reference;
  if (!reference.ParseFromArray(msg, static_cast<int>(n))) std::abort();
  std::string joined;
  for (std::span<const uint8_t> s : view.data) joined.append(s.begin(), s.end());
  if (joined != reference.data() || view.data_bytes != joined.size()) std::abort();
  reference.clear_data();
  if (view.meta.SerializeAsString() != reference.SerializeAsString()) std::abort();
  return 0;
}
