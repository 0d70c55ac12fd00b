// Fuzz target: SplitBytesField (kvstash/proto/split_bytes_field.h), which KvClient runs on every
// reply of a streaming Get (a GetChunk) and cachesvc on every message of a streaming Put (a
// PutChunk) as they arrive from the network.
//
// Input: one byte saying where to cut the rest and, in its top bit, which message it is
// (0: GetChunk, 1: PutChunk); then the message bytes, cut into three slices.
// Invariants: no out-of-bounds reads; whatever SplitBytesField accepts, protobuf's own parser
// accepts too, with the same data bytes and the same other fields.
#include <google/protobuf/stubs/logging.h>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "kvstash/proto/split_bytes_field.h"
#include "kvstash/v1/kvstash.pb.h"

namespace {

const bool kQuietProtobuf = [] {
  google::protobuf::SetLogHandler(nullptr);
  return true;
}();

template <typename Message>
void Check(std::span<const std::span<const uint8_t>> slices, const uint8_t* msg, size_t n) {
  Message rest;
  kvstash::BytesFieldView data;
  if (!kvstash::SplitBytesField(slices, Message::kDataFieldNumber, &rest, &data).ok()) return;
  Message reference;
  if (!reference.ParseFromArray(msg, static_cast<int>(n))) std::abort();
  std::string joined;
  for (std::span<const uint8_t> s : data.pieces) joined.append(s.begin(), s.end());
  if (joined != reference.data() || data.bytes != joined.size()) std::abort();
  reference.clear_data();
  if (rest.SerializeAsString() != reference.SerializeAsString()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t n = size - 1;
  const uint8_t* msg = data + 1;
  const size_t a = n == 0 ? 0 : (data[0] & 0x7f) % (n + 1);
  const size_t b = a + (n - a) / 2;
  // Each slice in its own allocation, so ASan sees a read past any one of them.
  std::vector<std::vector<uint8_t>> pieces = {
      {msg, msg + a}, {msg + a, msg + b}, {msg + b, msg + n}};
  std::vector<std::span<const uint8_t>> slices;
  for (const std::vector<uint8_t>& p : pieces) slices.emplace_back(p.data(), p.size());

  if ((data[0] & 0x80) == 0) {
    Check<kvstash::v1::GetChunk>(slices, msg, n);
  } else {
    Check<kvstash::v1::PutChunk>(slices, msg, n);
  }
  return 0;
}
