#include "file_object.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kvstash/common/crc32c.h"
#include "kvstash/common/key.h"
#include "kvstash/common/object_header.h"
#include "testing/status_matchers.h"

using ::kvstash::testing::StatusIs;

namespace kvstash::cli {
namespace {

std::vector<uint8_t> Bytes(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 31);
  return v;
}

TEST(UserKey, NamesHashUnderTheCliModel) {
  auto a = ParseUserKey("doc-1", "", kDefaultCliModel);
  auto b = ParseUserKey("doc-1", "", kDefaultCliModel);
  auto c = ParseUserKey("doc-2", "", kDefaultCliModel);
  auto d = ParseUserKey("doc-1", "tenant-b", kDefaultCliModel);
  auto e = ParseUserKey("doc-1", "", "other-model");
  ASSERT_OK(a);
  ASSERT_OK(b);
  ASSERT_OK(c);
  ASSERT_OK(d);
  ASSERT_OK(e);
  EXPECT_EQ(a->storage_key, b->storage_key);
  EXPECT_NE(a->storage_key, c->storage_key);
  EXPECT_NE(a->storage_key, d->storage_key);  // namespaces never collide
  EXPECT_NE(a->storage_key, e->storage_key);
  ModelSpec spec;
  spec.model_id = kDefaultCliModel;
  EXPECT_EQ(a->model_fingerprint, ModelFingerprint(spec));
  std::vector<uint32_t> tokens = {'d', 'o', 'c', '-', '1'};
  EXPECT_EQ(a->token_hash, IndependentTokenHash(tokens));
}

TEST(UserKey, FpThFormRoundTrips) {
  auto a = ParseUserKey("some name", "ns", kDefaultCliModel);
  ASSERT_OK(a);
  std::string text = FormatUserKey(*a);
  EXPECT_EQ(text.size(), 65u);
  auto back = ParseUserKey(text, "ns", "ignored-model");
  ASSERT_OK(back);
  EXPECT_EQ(back->storage_key, a->storage_key);
  std::string bad = text;
  bad[3] = 'z';
  EXPECT_THAT(ParseUserKey(bad, "", kDefaultCliModel),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseUserKey("", "", kDefaultCliModel), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseUserKey("k", std::string(300, 'n'), kDefaultCliModel),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(FileObject, ArbitraryFilesWrapAndUnwrapExactly) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{239}, size_t{240}, size_t{241}, size_t{4096},
                   size_t{1000003}}) {
    std::vector<uint8_t> file = Bytes(n, 7);
    auto object = FileToObject(file, false);
    ASSERT_OK(object) << n << ": " << object.status();
    EXPECT_TRUE(object->wrapped);
    EXPECT_OK(object->info.Validate());
    EXPECT_EQ(object->payload.size(), object->info.payload_bytes);
    EXPECT_EQ(object->payload.size() % 256, 0u);
    EXPECT_GE(object->payload.size(), n + kFileTrailerBytes);
    EXPECT_EQ(object->info.payload_crc32c, Crc32c(object->payload.data(), object->payload.size()));
    uint64_t original = 0;
    EXPECT_TRUE(IsWrappedFile(object->info, object->payload, &original));
    EXPECT_EQ(original, n);
    auto back = ObjectToFile(object->info, object->payload, false);
    ASSERT_OK(back);
    EXPECT_EQ(*back, file) << n;
  }
}

TEST(FileObject, LargeFilesSpreadOverLayers) {
  auto info = WrappedInfo(uint64_t{300} << 20);  // > 2^20 tokens of 256 bytes
  ASSERT_OK(info);
  EXPECT_EQ(info->layout.num_layers, 2u);
  EXPECT_LE(info->layout.num_tokens, kMaxTokensPerObject);
  EXPECT_GE(info->payload_bytes, (uint64_t{300} << 20) + kFileTrailerBytes);
  EXPECT_THAT(WrappedInfo(kMaxObjectBytes), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(FileObject, ObjectFilesKeepTheirLayout) {
  ObjectInfo info;
  info.layout = {.num_layers = 2,
                 .layer_begin = 0,
                 .total_kv_heads = 3,
                 .head_begin = 0,
                 .head_end = 3,
                 .head_dim = 64,
                 .dtype = DType::kF16,
                 .num_tokens = 16};
  info.payload_bytes = info.layout.RawBytes();
  std::vector<uint8_t> payload = Bytes(info.payload_bytes, 3);
  info.payload_crc32c = Crc32c(payload.data(), payload.size());
  auto header = EncodeObjectHeader(info);
  ASSERT_OK(header);
  std::vector<uint8_t> file(header->begin(), header->end());
  file.insert(file.end(), payload.begin(), payload.end());

  auto object = FileToObject(file, false);
  ASSERT_OK(object);
  EXPECT_FALSE(object->wrapped);
  EXPECT_EQ(object->info, info);
  EXPECT_EQ(object->payload, payload);
  auto back = ObjectToFile(object->info, object->payload, false);
  ASSERT_OK(back);
  EXPECT_EQ(*back, file);

  // --wrap stores the object file as opaque bytes.
  auto forced = FileToObject(file, true);
  ASSERT_OK(forced);
  EXPECT_TRUE(forced->wrapped);

  // A header whose payload is cut short or corrupted is refused, not silently wrapped.
  std::vector<uint8_t> truncated(file.begin(), file.end() - 1);
  EXPECT_THAT(std::string(FileToObject(truncated, false).status().message()),
              ::testing::HasSubstr("announcing"));
  std::vector<uint8_t> corrupt = file;
  corrupt[100] ^= 1;
  EXPECT_THAT(std::string(FileToObject(corrupt, false).status().message()),
              ::testing::HasSubstr("crc32c"));
}

TEST(FileObject, RawWritesTheObjectFormat) {
  auto object = FileToObject(Bytes(1000, 1), false);
  ASSERT_OK(object);
  auto raw = ObjectToFile(object->info, object->payload, true);
  ASSERT_OK(raw);
  ASSERT_EQ(raw->size(), kObjectHeaderBytes + object->payload.size());
  auto decoded = DecodeObjectHeader(std::span<const uint8_t>(raw->data(), kObjectHeaderBytes));
  ASSERT_OK(decoded);
  EXPECT_EQ(*decoded, object->info);
  // ... which `put` takes back as the same object.
  auto again = FileToObject(*raw, false);
  ASSERT_OK(again);
  EXPECT_FALSE(again->wrapped);
  EXPECT_EQ(again->payload, object->payload);
}

}  // namespace
}  // namespace kvstash::cli
