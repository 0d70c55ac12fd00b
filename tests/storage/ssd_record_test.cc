// The bytes of the SSD index and files (ssd_record.h) are a format on disk: these golden values
// were produced by the encoder as it was before kvstash/common/coding.h replaced its private
// little-endian helpers, and must never change for version 2 records.
#include "ssd_record.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kvstash/common/crc32c.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::storage {
namespace {

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

TierRecord GoldenRecord() {
  TierRecord r;
  r.name.storage_key = Hash128{0x0123456789abcdefull, 0xfedcba9876543210ull};
  r.name.model_fingerprint = Hash128{1, 2};
  r.name.token_hash = Hash128{3, 4};
  r.name.name_space = "tenant-a";
  KvLayout& l = r.info.layout;
  l.num_layers = 2;
  l.total_kv_heads = 4;
  l.head_begin = 0;
  l.head_end = 4;
  l.head_dim = 64;
  l.dtype = DType::kF16;
  l.num_tokens = 16;
  l.rope = RopeConvention::kNone;
  r.info.payload_bytes = l.RawBytes();
  r.info.payload_crc32c = 0xdeadbeef;
  r.served = r.info;
  r.hits = 7;
  r.last_access_ns = 1234567890123ull;
  r.pins = 2;
  r.seq = 42;
  return r;
}

constexpr char kGoldenRecord[] =
    "024b56534f010040000200000000000000000004000400400001000000100000"
    "00000000000000000000401c46000000000080000000000000efbeadde8a84ac"
    "2b00efbeadde0700000000000000cb04fb711f01000002000000010000000000"
    "0000020000000000000003000000000000000400000000000000080000007465"
    "6e616e742d61bf06a554";
constexpr char kGoldenName[] =
    "4b56534e01000000efcdab89674523011032547698badcfe0100000000000000"
    "0200000000000000030000000000000004000000000000000800000074656e61"
    "6e742d6136f6d254";
constexpr char kGoldenKey[] = "6fefcdab89674523011032547698badcfe000000000000002a";

TEST(SsdRecord, EncodingIsGolden) {
  const TierRecord r = GoldenRecord();
  auto value = EncodeRecord(r);
  ASSERT_OK(value);
  EXPECT_EQ(Hex(*value), kGoldenRecord);
  EXPECT_EQ(Hex(RecordKey(r.name.storage_key, r.seq)), kGoldenKey);
  EXPECT_EQ(Hex(EncodeNameBlock(r.name)), kGoldenName);
}

TEST(SsdRecord, RoundTrips) {
  const TierRecord r = GoldenRecord();
  auto value = EncodeRecord(r);
  ASSERT_OK(value);
  TierRecord back;
  ASSERT_OK(DecodeRecord(*value, back));
  EXPECT_EQ(back.name.model_fingerprint, r.name.model_fingerprint);
  EXPECT_EQ(back.name.token_hash, r.name.token_hash);
  EXPECT_EQ(back.name.name_space, r.name.name_space);
  EXPECT_EQ(back.info.payload_bytes, r.info.payload_bytes);
  EXPECT_EQ(back.info.payload_crc32c, r.info.payload_crc32c);
  EXPECT_EQ(back.hits, 7u);
  EXPECT_EQ(back.last_access_ns, 1234567890123ull);
  EXPECT_EQ(back.pins, 2u);
  EXPECT_FALSE(back.encoded);

  Hash128 key;
  uint64_t seq = 0;
  ASSERT_TRUE(ParseRecordKey(RecordKey(r.name.storage_key, 42), key, seq));
  EXPECT_EQ(key, r.name.storage_key);
  EXPECT_EQ(seq, 42u);
  EXPECT_FALSE(ParseRecordKey(RecordKey(r.name.storage_key, 42).substr(1), key, seq));
}

// Every truncation of a valid record is refused with DataLoss, whether or not its last four
// bytes happen to be a valid checksum of the rest.
TEST(SsdRecord, TruncatedRecordsAreDataLoss) {
  auto value = EncodeRecord(GoldenRecord());
  ASSERT_OK(value);
  for (size_t n = 0; n < value->size(); ++n) {
    std::string cut = value->substr(0, n);
    TierRecord r;
    EXPECT_THAT(DecodeRecord(cut, r), StatusIs(absl::StatusCode::kDataLoss)) << n;
    if (n >= 4) {
      // Re-seal the truncated body so only the structure check can catch it.
      std::string body = value->substr(0, n - 4);
      const uint32_t crc = Crc32c(body.data(), body.size());
      for (int i = 0; i < 4; ++i) body.push_back(static_cast<char>(crc >> (8 * i)));
      EXPECT_THAT(DecodeRecord(body, r), StatusIs(absl::StatusCode::kDataLoss)) << n;
    }
  }
}

TEST(SsdRecord, NameBlockChecks) {
  const TierRecord r = GoldenRecord();
  std::vector<uint8_t> block(kSsdBlockBytes - 64, 0);
  const std::string name = EncodeNameBlock(r.name);
  std::copy(name.begin(), name.end(), block.begin());
  EXPECT_OK(CheckNameBlock(block.data(), r.name.storage_key));
  EXPECT_THAT(CheckNameBlock(block.data(), Hash128{1, 1}), StatusIs(absl::StatusCode::kDataLoss));
  block[10] ^= 1;
  EXPECT_THAT(CheckNameBlock(block.data(), r.name.storage_key),
              StatusIs(absl::StatusCode::kDataLoss));
}

}  // namespace
}  // namespace kvstash::storage
