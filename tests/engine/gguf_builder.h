// Writes small GGUF files for tests (the engine itself only reads GGUF).
#ifndef KVSTASH_TESTS_ENGINE_GGUF_BUILDER_H_
#define KVSTASH_TESTS_ENGINE_GGUF_BUILDER_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kvstash/common/half.h"

namespace kvstash::engine::testing {

class GgufBuilder {
 public:
  void U32(const std::string& key, uint32_t v) { Key(key, 4), Put(v); }
  void F32(const std::string& key, float v) { Key(key, 6), Put(v); }
  void Bool(const std::string& key, bool v) { Key(key, 7), Put(static_cast<uint8_t>(v)); }
  void Str(const std::string& key, const std::string& v) { Key(key, 8), PutStr(&kv_, v); }
  void StrArray(const std::string& key, const std::vector<std::string>& v) {
    Key(key, 9);
    Put(uint32_t{8});
    Put(uint64_t{v.size()});
    for (const auto& s : v) PutStr(&kv_, s);
  }
  void I32Array(const std::string& key, const std::vector<int32_t>& v) {
    Key(key, 9);
    Put(uint32_t{5});
    Put(uint64_t{v.size()});
    for (int32_t x : v) Put(x);
  }
  // dims innermost first; `bytes` already in the stored type.
  void Tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type,
              const std::vector<uint8_t>& bytes) {
    tensors_.push_back({name, std::move(dims), type, bytes});
  }

  std::vector<uint8_t> Build() const {
    std::vector<uint8_t> out;
    Append(&out, uint32_t{0x46554747u});
    Append(&out, uint32_t{3});
    Append(&out, uint64_t{tensors_.size()});
    Append(&out, uint64_t{n_kv_});
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors_) {
      PutStr(&out, t.name);
      Append(&out, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) Append(&out, d);
      Append(&out, t.type);
      Append(&out, offset);
      offsets.push_back(offset);
      offset += (t.bytes.size() + 31) / 32 * 32;
    }
    out.resize((out.size() + 31) / 32 * 32, 0);
    size_t base = out.size();
    out.resize(base + offset, 0);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      std::memcpy(out.data() + base + offsets[i], tensors_[i].bytes.data(),
                  tensors_[i].bytes.size());
    }
    return out;
  }

 private:
  struct T {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> bytes;
  };
  template <typename V>
  static void Append(std::vector<uint8_t>* out, V v) {
    // resize + memcpy: GCC 12 reports a false -Wstringop-overflow for the equivalent insert.
    const size_t at = out->size();
    out->resize(at + sizeof(V));
    std::memcpy(out->data() + at, &v, sizeof(V));
  }
  template <typename V>
  void Put(V v) {
    Append(&kv_, v);
  }
  static void PutStr(std::vector<uint8_t>* out, const std::string& s) {
    Append(out, uint64_t{s.size()});
    out->insert(out->end(), s.begin(), s.end());
  }
  void Key(const std::string& key, uint32_t type) {
    PutStr(&kv_, key);
    Put(type);
    ++n_kv_;
  }
  std::vector<uint8_t> kv_;
  size_t n_kv_ = 0;
  std::vector<T> tensors_;
};

// Test-side quantisers and dequantisers (independent of the engine's), GGML block layouts.
inline std::vector<uint8_t> AsF32(const float* w, size_t n) {
  std::vector<uint8_t> out(n * 4);
  std::memcpy(out.data(), w, n * 4);
  return out;
}

inline std::vector<uint8_t> AsF16(const float* w, size_t n) {
  std::vector<uint8_t> out(n * 2);
  for (size_t i = 0; i < n; ++i) {
    uint16_t h = F32ToF16(w[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

// Quantises n weights (n % 32 == 0) to type 2 (Q4_0), 3 (Q4_1) or 8 (Q8_0) and writes the exact
// dequantised values to `deq`.
inline std::vector<uint8_t> Quantize(uint32_t type, const float* w, size_t n, float* deq) {
  std::vector<uint8_t> out;
  for (size_t b = 0; b < n; b += 32) {
    const float* x = w + b;
    float lo = x[0], hi = x[0], amax = 0;
    for (int j = 0; j < 32; ++j) {
      lo = std::min(lo, x[j]), hi = std::max(hi, x[j]), amax = std::max(amax, std::fabs(x[j]));
    }
    auto put16 = [&out](float v) {
      uint16_t h = F32ToF16(v);
      out.push_back(static_cast<uint8_t>(h & 0xFF));
      out.push_back(static_cast<uint8_t>(h >> 8));
      return F16ToF32(h);
    };
    if (type == 8) {
      float d = put16(amax / 127.0f);
      for (int j = 0; j < 32; ++j) {
        int q = d == 0 ? 0 : static_cast<int>(std::lround(x[j] / d));
        q = std::clamp(q, -127, 127);
        out.push_back(static_cast<uint8_t>(static_cast<int8_t>(q)));
        deq[b + j] = static_cast<float>(q) * d;
      }
    } else {
      float d, m = 0;
      if (type == 2) {
        d = put16(amax / 7.0f);
      } else {
        d = put16((hi - lo) / 15.0f);
        m = put16(lo);
      }
      int q[32];
      for (int j = 0; j < 32; ++j) {
        float v = type == 2 ? (d == 0 ? 0 : x[j] / d + 8) : (d == 0 ? 0 : (x[j] - m) / d);
        q[j] = std::clamp(static_cast<int>(std::lround(v)), 0, 15);
        deq[b + j] =
            type == 2 ? static_cast<float>(q[j] - 8) * d : static_cast<float>(q[j]) * d + m;
      }
      for (int j = 0; j < 16; ++j) out.push_back(static_cast<uint8_t>(q[j] | (q[j + 16] << 4)));
    }
  }
  return out;
}

}  // namespace kvstash::engine::testing

#endif  // KVSTASH_TESTS_ENGINE_GGUF_BUILDER_H_
