#include "kvstash/proto/split_bytes_field.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace kvstash {
namespace {

constexpr int kWireVarint = 0, kWireFixed64 = 1, kWireLengthDelimited = 2, kWireFixed32 = 5;
constexpr int kMaxVarintBytes = 10;

// Reads forward through a list of slices as if they were one buffer.
class SliceCursor {
 public:
  explicit SliceCursor(std::span<const std::span<const uint8_t>> slices) : slices_(slices) {
    for (const std::span<const uint8_t>& s : slices) remaining_ += s.size();
    SkipEmpty();
  }

  bool AtEnd() const { return remaining_ == 0; }
  uint64_t remaining() const { return remaining_; }

  // A base-128 varint; its raw bytes are appended to `raw` when it is not null.
  bool ReadVarint(uint64_t* value, std::string* raw) {
    uint64_t v = 0;
    for (int i = 0; i < kMaxVarintBytes; ++i) {
      if (AtEnd()) return false;
      const uint8_t byte = slices_[index_][offset_];
      Advance(1);
      if (raw != nullptr) raw->push_back(static_cast<char>(byte));
      v |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
      if ((byte & 0x80) == 0) {
        *value = v;
        return true;
      }
    }
    return false;  // longer than any varint
  }

  // Takes the next `n` bytes: as borrowed spans appended to `spans`, or copied onto `copy`.
  bool Take(uint64_t n, std::vector<std::span<const uint8_t>>* spans, std::string* copy) {
    if (n > remaining_) return false;
    while (n > 0) {
      const std::span<const uint8_t> piece =
          slices_[index_].subspan(offset_, std::min<uint64_t>(n, slices_[index_].size() - offset_));
      if (spans != nullptr) spans->push_back(piece);
      if (copy != nullptr) copy->append(reinterpret_cast<const char*>(piece.data()), piece.size());
      Advance(piece.size());
      n -= piece.size();
    }
    return true;
  }

 private:
  void Advance(size_t n) {
    offset_ += n;
    remaining_ -= n;
    SkipEmpty();
  }
  void SkipEmpty() {
    while (index_ < slices_.size() && offset_ == slices_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
  }

  std::span<const std::span<const uint8_t>> slices_;
  size_t index_ = 0;
  size_t offset_ = 0;
  uint64_t remaining_ = 0;
};

Status Malformed(const google::protobuf::MessageLite& rest, const std::string& what, uint64_t at) {
  return absl::InvalidArgumentError(absl::StrCat(rest.GetTypeName(), ": ", what, " at byte ", at));
}

}  // namespace

Status SplitBytesField(std::span<const std::span<const uint8_t>> slices, uint32_t field_number,
                       google::protobuf::MessageLite* rest, BytesFieldView* field) {
  rest->Clear();
  field->pieces.clear();
  field->bytes = 0;
  SliceCursor cursor(slices);
  const uint64_t total = cursor.remaining();
  std::string other;  // every other field, re-assembled for protobuf's parser
  while (!cursor.AtEnd()) {
    const uint64_t at = total - cursor.remaining();
    const size_t field_start = other.size();
    uint64_t tag = 0;
    if (!cursor.ReadVarint(&tag, &other)) return Malformed(*rest, "truncated tag", at);
    if (tag > UINT32_MAX || (tag >> 3) == 0) return Malformed(*rest, "invalid tag", at);
    const auto number = static_cast<uint32_t>(tag >> 3);
    const int wire = static_cast<int>(tag & 7);
    if (number == field_number && wire == kWireLengthDelimited) {
      other.resize(field_start);  // the tag was copied; this field does not go to protobuf
      uint64_t n = 0;
      if (!cursor.ReadVarint(&n, nullptr)) return Malformed(*rest, "truncated length", at);
      field->pieces.clear();  // the last occurrence wins, as in protobuf
      if (!cursor.Take(n, &field->pieces, nullptr)) {
        return Malformed(*rest, absl::StrCat("truncated field ", field_number), at);
      }
      field->bytes = n;
      continue;
    }
    bool ok = false;
    switch (wire) {
      case kWireVarint: {
        uint64_t ignored = 0;
        ok = cursor.ReadVarint(&ignored, &other);
        break;
      }
      case kWireFixed64:
        ok = cursor.Take(8, nullptr, &other);
        break;
      case kWireFixed32:
        ok = cursor.Take(4, nullptr, &other);
        break;
      case kWireLengthDelimited: {
        uint64_t n = 0;
        ok = cursor.ReadVarint(&n, &other) && cursor.Take(n, nullptr, &other);
        break;
      }
      default:
        return Malformed(*rest, absl::StrCat("unsupported wire type ", wire), at);
    }
    if (!ok) return Malformed(*rest, absl::StrCat("truncated field ", number), at);
  }
  if (!rest->ParseFromString(other)) {  // clears `rest` first
    return absl::InvalidArgumentError(
        absl::StrCat(rest->GetTypeName(), ": fields other than ", field_number, " do not parse"));
  }
  return OkStatus();
}

void AppendLengthDelimitedTag(std::string* out, uint32_t field_number, uint64_t n) {
  auto append_varint = [out](uint64_t v) {
    while (v >= 0x80) {
      out->push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out->push_back(static_cast<char>(v));
  };
  append_varint((static_cast<uint64_t>(field_number) << 3) | kWireLengthDelimited);
  append_varint(n);
}

}  // namespace kvstash
