#include "kvstash/common/coding.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace kvstash {
namespace {

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s.push_back(static_cast<char>(v));
  return s;
}

TEST(Coding, FixedIsLittleEndian) {
  std::string s;
  PutFixed16(&s, 0x0102);
  PutFixed32(&s, 0x03040506u);
  PutFixed64(&s, 0x0708090A0B0C0D0Eull);
  EXPECT_EQ(s, Bytes({0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0x09, 0x08,
                      0x07}));

  std::vector<uint8_t> v;
  PutFixed16(&v, 0x0102);
  PutFixed32(&v, 0x03040506u);
  PutFixed64(&v, 0x0708090A0B0C0D0Eull);
  EXPECT_EQ(std::string(v.begin(), v.end()), s);

  uint8_t buf[14];
  EncodeFixed16(buf, 0x0102);
  EncodeFixed32(buf + 2, 0x03040506u);
  EncodeFixed64(buf + 6, 0x0708090A0B0C0D0Eull);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), sizeof(buf)), s);
  EXPECT_EQ(DecodeFixed16(s.data()), 0x0102);
  EXPECT_EQ(DecodeFixed32(s.data() + 2), 0x03040506u);
  EXPECT_EQ(DecodeFixed64(s.data() + 6), 0x0708090A0B0C0D0Eull);
}

TEST(Coding, FixedRoundTripsExtremes) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{0x80}, uint64_t{0xFFFFFFFF},
                     uint64_t{1} << 63, std::numeric_limits<uint64_t>::max()}) {
    std::string s;
    PutFixed16(&s, static_cast<uint16_t>(v));
    PutFixed32(&s, static_cast<uint32_t>(v));
    PutFixed64(&s, v);
    std::string_view in = s;
    uint16_t a;
    uint32_t b;
    uint64_t c;
    ASSERT_TRUE(GetFixed16(&in, &a));
    ASSERT_TRUE(GetFixed32(&in, &b));
    ASSERT_TRUE(GetFixed64(&in, &c));
    EXPECT_TRUE(in.empty());
    EXPECT_EQ(a, static_cast<uint16_t>(v));
    EXPECT_EQ(b, static_cast<uint32_t>(v));
    EXPECT_EQ(c, v);
  }
}

TEST(Coding, BigEndianSortsNumerically) {
  std::string a, b;
  PutBigEndian64(&a, 0x00FF);
  PutBigEndian64(&b, 0x0100);
  EXPECT_EQ(a, Bytes({0, 0, 0, 0, 0, 0, 0, 0xFF}));
  EXPECT_LT(a, b);
  EXPECT_EQ(DecodeBigEndian64(reinterpret_cast<const uint8_t*>(b.data())), 0x0100u);
}

TEST(Coding, FloatBits) {
  EXPECT_EQ(FloatToBits(1.0f), 0x3F800000u);
  EXPECT_EQ(FloatFromBits(0x40490FDBu), 3.14159274f);
  EXPECT_EQ(DoubleToBits(-2.0), 0xC000000000000000ull);
  EXPECT_TRUE(std::isnan(FloatFromBits(0x7FC00000u)));
  EXPECT_EQ(FloatToBits(FloatFromBits(0x7FC00001u)), 0x7FC00001u);  // payload kept
}

TEST(Coding, TruncatedFixedLeavesCursorAlone) {
  const std::string s = Bytes({1, 2, 3, 4, 5, 6, 7});
  for (size_t n = 0; n < s.size(); ++n) {
    std::string_view in(s.data(), n);
    uint64_t v64 = 99;
    EXPECT_FALSE(GetFixed64(&in, &v64));
    EXPECT_EQ(v64, 99u);
    EXPECT_EQ(in.size(), n);
    if (n < 4) {
      uint32_t v32 = 99;
      EXPECT_FALSE(GetFixed32(&in, &v32));
      EXPECT_EQ(v32, 99u);
    }
    if (n < 2) {
      uint16_t v16 = 99;
      EXPECT_FALSE(GetFixed16(&in, &v16));
    }
    if (n < 1) {
      uint8_t v8 = 99;
      EXPECT_FALSE(GetFixed8(&in, &v8));
    }
    EXPECT_EQ(in.size(), n);
  }
  std::string_view in(s);
  std::string_view bytes;
  EXPECT_FALSE(GetBytes(&in, 8, &bytes));
  ASSERT_TRUE(GetBytes(&in, 3, &bytes));
  EXPECT_EQ(bytes, Bytes({1, 2, 3}));
  EXPECT_EQ(in, Bytes({4, 5, 6, 7}));
}

TEST(Coding, VarintKnownEncodings) {
  std::string s;
  PutVarint32(&s, 0);
  PutVarint32(&s, 127);
  PutVarint32(&s, 128);
  PutVarint32(&s, 300);
  EXPECT_EQ(s, Bytes({0x00, 0x7F, 0x80, 0x01, 0xAC, 0x02}));
  std::string m;
  PutVarint32(&m, std::numeric_limits<uint32_t>::max());
  EXPECT_EQ(m, Bytes({0xFF, 0xFF, 0xFF, 0xFF, 0x0F}));
  m.clear();
  PutVarint64(&m, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(m.size(), 10u);
  EXPECT_EQ(static_cast<uint8_t>(m.back()), 0x01);
}

TEST(Coding, VarintRoundTripsAndLengths) {
  std::vector<uint64_t> values;
  for (int bit = 0; bit < 64; ++bit) {
    const uint64_t p = uint64_t{1} << bit;
    values.push_back(p - 1);
    values.push_back(p);
    values.push_back(p + 1);
  }
  values.push_back(std::numeric_limits<uint64_t>::max());
  std::string s;
  for (uint64_t v : values) {
    const size_t before = s.size();
    PutVarint64(&s, v);
    EXPECT_EQ(s.size() - before, static_cast<size_t>(VarintLength(v))) << v;
    if (v <= std::numeric_limits<uint32_t>::max()) PutVarint32(&s, static_cast<uint32_t>(v));
  }
  std::string_view in = s;
  for (uint64_t v : values) {
    uint64_t got64;
    ASSERT_TRUE(GetVarint64(&in, &got64));
    EXPECT_EQ(got64, v);
    if (v <= std::numeric_limits<uint32_t>::max()) {
      uint32_t got32;
      ASSERT_TRUE(GetVarint32(&in, &got32));
      EXPECT_EQ(got32, v);
    }
  }
  EXPECT_TRUE(in.empty());
}

TEST(Coding, TruncatedVarintIsRefused) {
  std::string s;
  PutVarint64(&s, std::numeric_limits<uint64_t>::max());
  for (size_t n = 0; n < s.size(); ++n) {
    std::string_view in(s.data(), n);
    uint64_t v = 7;
    EXPECT_FALSE(GetVarint64(&in, &v)) << n;
    EXPECT_EQ(v, 7u);
    EXPECT_EQ(in.size(), n);
  }
  std::string t;
  PutVarint32(&t, 1u << 30);
  for (size_t n = 0; n < t.size(); ++n) {
    std::string_view in(t.data(), n);
    uint32_t v = 7;
    EXPECT_FALSE(GetVarint32(&in, &v)) << n;
    EXPECT_EQ(in.size(), n);
  }
}

TEST(Coding, OverlongVarintIsRefused) {
  // 32-bit: a sixth byte, or a fifth byte above 0x0F, does not fit.
  for (const std::string& bad :
       {Bytes({0x80, 0x80, 0x80, 0x80, 0x80, 0x00}), Bytes({0xFF, 0xFF, 0xFF, 0xFF, 0x10})}) {
    std::string_view in = bad;
    uint32_t v;
    EXPECT_FALSE(GetVarint32(&in, &v));
    EXPECT_EQ(in.size(), bad.size());
  }
  // 64-bit: an eleventh byte, or a tenth byte above 0x01.
  std::string eleven(10, static_cast<char>(0x80));
  eleven.push_back(0);
  std::string tenth(9, static_cast<char>(0xFF));
  tenth.push_back(0x02);
  for (const std::string& bad : {eleven, tenth}) {
    std::string_view in = bad;
    uint64_t v;
    EXPECT_FALSE(GetVarint64(&in, &v));
    EXPECT_EQ(in.size(), bad.size());
  }
  // The pointer form stops at limit even when the byte after it would end the varint.
  const std::string s = Bytes({0x80, 0x01});
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  uint32_t v;
  EXPECT_EQ(GetVarint32Ptr(p, p + 1, &v), nullptr);
  EXPECT_EQ(GetVarint32Ptr(p, p + 2, &v), p + 2);
  EXPECT_EQ(v, 128u);
}

}  // namespace
}  // namespace kvstash
