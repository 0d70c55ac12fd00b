#include "kvstash/proto/split_bytes_field.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kvstash/v1/kvstash.pb.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash {
namespace {

using Spans = std::vector<std::span<const uint8_t>>;

// What KvClient reads: a GetChunk split at its data field.
struct GetChunkView {
  v1::GetChunk meta;
  BytesFieldView data;
};

Status SplitGetChunk(std::span<const std::span<const uint8_t>> slices, GetChunkView* view) {
  return SplitBytesField(slices, v1::GetChunk::kDataFieldNumber, &view->meta, &view->data);
}

v1::GetChunk SampleChunk(size_t data_bytes) {
  v1::GetChunk chunk;
  chunk.mutable_info()->set_payload_bytes(data_bytes);
  chunk.mutable_info()->set_payload_crc32c(0xdeadbeef);
  chunk.mutable_wire_info()->set_payload_bytes(7);
  chunk.set_served_from(v1::TIER_SSD);
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i * 31 + 7);
  chunk.set_data(data);
  return chunk;
}

std::span<const uint8_t> Bytes(const std::string& s, size_t begin, size_t end) {
  return {reinterpret_cast<const uint8_t*>(s.data()) + begin, end - begin};
}

std::string Joined(const GetChunkView& view) {
  std::string out;
  for (std::span<const uint8_t> s : view.data.pieces) out.append(s.begin(), s.end());
  return out;
}

// What the reader must see: protobuf's own parse, data aside.
void ExpectSameAsProtobuf(const std::string& wire, const GetChunkView& view) {
  v1::GetChunk parsed;
  ASSERT_TRUE(parsed.ParseFromString(wire));
  EXPECT_EQ(Joined(view), parsed.data());
  EXPECT_EQ(view.data.bytes, parsed.data().size());
  parsed.clear_data();
  EXPECT_EQ(view.meta.SerializeAsString(), parsed.SerializeAsString());
}

TEST(SplitBytesField, EveryCutOfAMessageGivesProtobufsFieldsAndTheDataInPlace) {
  const std::string wire = SampleChunk(300).SerializeAsString();
  for (size_t cut = 0; cut <= wire.size(); ++cut) {
    SCOPED_TRACE(cut);
    Spans slices = {Bytes(wire, 0, cut), Bytes(wire, cut, wire.size())};
    GetChunkView view;
    ASSERT_OK(SplitGetChunk(slices, &view));
    ExpectSameAsProtobuf(wire, view);
    // The data is borrowed from the input, not copied.
    for (std::span<const uint8_t> s : view.data.pieces) {
      EXPECT_GE(s.data(), reinterpret_cast<const uint8_t*>(wire.data()));
      EXPECT_LE(s.data() + s.size(), reinterpret_cast<const uint8_t*>(wire.data()) + wire.size());
    }
  }
}

TEST(SplitBytesField, ManySmallAndEmptySlices) {
  const std::string wire = SampleChunk(5000).SerializeAsString();
  std::mt19937 rng(7);
  Spans slices;
  for (size_t at = 0; at < wire.size();) {
    size_t n = std::min<size_t>(rng() % 97, wire.size() - at);
    slices.push_back(Bytes(wire, at, at + n));  // n may be 0
    at += n;
  }
  GetChunkView view;
  ASSERT_OK(SplitGetChunk(slices, &view));
  ExpectSameAsProtobuf(wire, view);
  EXPECT_GT(view.data.pieces.size(), 1u);
}

TEST(SplitBytesField, FollowsProtobufForRepeatedUnknownAndOutOfOrderFields) {
  v1::GetChunk first = SampleChunk(10);
  v1::GetChunk second;
  second.set_data("the last data field wins");
  second.mutable_info()->set_payload_crc32c(42);  // message fields merge
  std::string wire = first.SerializeAsString() + second.SerializeAsString();
  // An unknown field 15 (varint) and 16 (fixed32) before everything.
  wire = std::string("\x78\x05\x85\x01\x01\x02\x03\x04", 8) + wire;
  GetChunkView view;
  ASSERT_OK(SplitGetChunk(Spans{Bytes(wire, 0, wire.size())}, &view));
  ExpectSameAsProtobuf(wire, view);
  EXPECT_EQ(Joined(view), "the last data field wins");
  EXPECT_EQ(view.meta.info().payload_crc32c(), 42u);
  EXPECT_EQ(view.meta.info().payload_bytes(), 10u);
}

TEST(SplitBytesField, EmptyInputIsAnEmptyChunk) {
  GetChunkView view;
  view.data.bytes = 9;
  view.meta.set_served_from(v1::TIER_CPU);
  ASSERT_OK(SplitGetChunk(Spans{}, &view));
  EXPECT_EQ(view.data.bytes, 0u);
  EXPECT_TRUE(view.data.pieces.empty());
  EXPECT_EQ(view.meta.served_from(), v1::TIER_UNSPECIFIED);
  EXPECT_FALSE(view.meta.has_info());
}

TEST(SplitBytesField, RejectsTruncatedAndMalformedInput) {
  const std::string wire = SampleChunk(64).SerializeAsString();
  // A prefix that SplitGetChunk accepts is one protobuf accepts too.
  for (size_t n = 1; n < wire.size(); ++n) {
    v1::GetChunk reference;
    GetChunkView view;
    const bool ours = SplitGetChunk(Spans{Bytes(wire, 0, n)}, &view).ok();
    if (ours) {
      ASSERT_TRUE(reference.ParseFromString(wire.substr(0, n))) << n;
    }
  }
  const std::vector<std::string> bad = {
      std::string("\x00", 1),      // field number 0
      std::string("\x13\x00", 2),  // group start (field 2, wire type 3)
      std::string("\x16", 1),      // wire type 6
      std::string("\x12\x05"
                  "abc",
                  5),  // data shorter than its length
      std::string("\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11),      // absurd data length
      std::string("\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", 12),  // 11-byte varint
      std::string("\x0a\x02\xff\xff", 4),  // info that is not an ObjectInfo
  };
  for (const std::string& b : bad) {
    GetChunkView view;
    Status s = SplitGetChunk(Spans{Bytes(b, 0, b.size())}, &view);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument))
        << ::testing::PrintToString(b) << ": " << s;
  }
}

TEST(SplitBytesField, SplitsAPutChunkAtItsData) {
  v1::PutChunk chunk;
  chunk.mutable_header()->mutable_key()->set_namespace_("ns");
  chunk.mutable_header()->mutable_info()->set_payload_bytes(4);
  chunk.mutable_header()->set_durable(true);
  chunk.set_data("kvkv");
  const std::string wire = chunk.SerializeAsString();
  v1::PutChunk rest;
  BytesFieldView data;
  ASSERT_TRUE(SplitBytesField(Spans{Bytes(wire, 0, 3), Bytes(wire, 3, wire.size())},
                              v1::PutChunk::kDataFieldNumber, &rest, &data)
                  .ok());
  EXPECT_EQ(data.bytes, 4u);
  chunk.clear_data();
  EXPECT_EQ(rest.SerializeAsString(), chunk.SerializeAsString());
  // A field of another wire type with the same number is not the payload: protobuf keeps it as an
  // unknown field, and so does the split.
  const std::string varint_two = std::string("\x10\x07", 2);
  ASSERT_OK(SplitBytesField(Spans{Bytes(varint_two, 0, 2)}, 2, &rest, &data));
  EXPECT_EQ(data.bytes, 0u);
  EXPECT_EQ(rest.SerializeAsString(), varint_two);
}

TEST(SplitBytesField, RandomMessagesAgreeWithProtobuf) {
  std::mt19937 rng(11);
  for (int i = 0; i < 200; ++i) {
    v1::GetChunk chunk = SampleChunk(rng() % 3000);
    if (rng() % 2) chunk.clear_wire_info();
    if (rng() % 3 == 0) chunk.clear_info();
    std::string wire = chunk.SerializeAsString();
    const size_t a = wire.empty() ? 0 : rng() % wire.size();
    const size_t b = a + (wire.size() == a ? 0 : rng() % (wire.size() - a));
    GetChunkView view;
    ASSERT_TRUE(SplitGetChunk(
                    Spans{Bytes(wire, 0, a), Bytes(wire, a, b), Bytes(wire, b, wire.size())}, &view)
                    .ok());
    ExpectSameAsProtobuf(wire, view);
  }
}

}  // namespace
}  // namespace kvstash
