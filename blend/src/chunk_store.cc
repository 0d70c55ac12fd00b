#include "kvstash/blend/chunk_store.h"

#include <cstring>
#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::blend {
namespace {

constexpr char kStatsMagic[8] = {'K', 'V', 'S', 'C', 'S', 'T', '0', '1'};
constexpr uint32_t kMaxContext = 1u << 16;

class Writer {
 public:
  explicit Writer(size_t expected_bytes) { out_.reserve(expected_bytes); }
  // resize + memcpy rather than insert: GCC 12 reports a false -Wstringop-overflow for a
  // vector::insert followed by out-of-line appends.
  void Bytes(const void* p, size_t n) {
    const size_t at = out_.size();
    out_.resize(at + n);
    std::memcpy(out_.data() + at, p, n);
  }
  void U32(uint32_t v) { PutFixed32(&out_, v); }
  void U64(uint64_t v) { PutFixed64(&out_, v); }
  void F64(double v) { U64(DoubleToBits(v)); }
  void F32(float v) { U32(FloatToBits(v)); }
  std::vector<uint8_t> Take() { return std::move(out_); }

 private:
  std::vector<uint8_t> out_;
};

// Bounds-checked: a failed read consumes nothing.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in)
      : in_(reinterpret_cast<const char*>(in.data()), in.size()) {}
  bool Bytes(void* p, size_t n) {
    std::string_view bytes;
    if (!GetBytes(&in_, n, &bytes)) return false;
    std::memcpy(p, bytes.data(), n);
    return true;
  }
  bool U32(uint32_t* v) { return GetFixed32(&in_, v); }
  bool U64(uint64_t* v) { return GetFixed64(&in_, v); }
  bool F64(double* v) {
    uint64_t u;
    if (!U64(&u)) return false;
    *v = DoubleFromBits(u);
    return true;
  }
  bool F32(float* v) {
    uint32_t u;
    if (!U32(&u)) return false;
    *v = FloatFromBits(u);
    return true;
  }
  size_t remaining() const { return in_.size(); }

 private:
  std::string_view in_;
};

class MemoryChunkKv : public ChunkKv {
 public:
  MemoryChunkKv(KvLayout layout, std::shared_ptr<const std::vector<uint8_t>> bytes)
      : layout_(layout), bytes_(std::move(bytes)) {}
  const KvLayout& layout() const override { return layout_; }
  Result<std::span<const uint8_t>> Layer(uint32_t layer) override {
    if (layer < layout_.layer_begin || layer >= layout_.layer_begin + layout_.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("chunk KV holds no layer ", layer));
    }
    const size_t slab = kernels::ChunkLayerBytes(layout_);
    return std::span<const uint8_t>(*bytes_).subspan((layer - layout_.layer_begin) * slab, slab);
  }
  Tier tier() const override { return Tier::kProcess; }

 private:
  KvLayout layout_;
  std::shared_ptr<const std::vector<uint8_t>> bytes_;
};

class InProcessChunkStore : public ChunkKvStore {
 public:
  Result<std::vector<ChunkEntries>> Lookup(std::span<const Hash128> chunks) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ChunkEntries> out(chunks.size());
    for (size_t i = 0; i < chunks.size(); ++i) {
      auto it = entries_.find(chunks[i]);
      if (it == entries_.end()) continue;
      if (it->second.alone) out[i].alone = it->second.alone->record;
      for (const auto& [slot, stored] : it->second.variants)
        out[i].variants.push_back(stored.record);
    }
    return out;
  }

  Result<std::vector<std::unique_ptr<ChunkKv>>> Fetch(
      std::span<const ChunkRecord> records) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::unique_ptr<ChunkKv>> out;
    for (const ChunkRecord& r : records) {
      const Stored* s = Find(r);
      if (s == nullptr) return absl::NotFoundError("chunk cache not stored");
      out.push_back(std::make_unique<MemoryChunkKv>(s->record.layout, s->bytes));
    }
    return out;
  }

  Status Put(const ChunkRecord& record, std::span<const uint8_t> kv) override {
    KVSTASH_RETURN_IF_ERROR(CheckPutArguments(record, kv));
    Stored s{record, std::make_shared<const std::vector<uint8_t>>(kv.begin(), kv.end())};
    s.record.tier = Tier::kProcess;
    if (record.kind == CacheKind::kAlone) s.record.stats = ChunkStats{};
    std::lock_guard<std::mutex> lock(mu_);
    Entry& e = entries_[record.chunk];
    if (record.kind == CacheKind::kAlone) {
      e.alone = std::move(s);
    } else {
      e.variants.insert_or_assign(record.slot, std::move(s));
    }
    return OkStatus();
  }

 private:
  struct Stored {
    ChunkRecord record;
    std::shared_ptr<const std::vector<uint8_t>> bytes;
  };
  struct Entry {
    std::optional<Stored> alone;
    std::map<uint32_t, Stored> variants;
  };

  const Stored* Find(const ChunkRecord& r) const {
    auto it = entries_.find(r.chunk);
    if (it == entries_.end()) return nullptr;
    if (r.kind == CacheKind::kAlone) return it->second.alone ? &*it->second.alone : nullptr;
    auto v = it->second.variants.find(r.slot);
    return v == it->second.variants.end() ? nullptr : &v->second;
  }

  std::mutex mu_;
  std::map<Hash128, Entry> entries_;
};

}  // namespace

Status ChunkStats::Validate(uint32_t num_tokens) const {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat("ChunkStats: ", what));
  };
  if (context_tokens.size() != context.size()) return bad("context_tokens size");
  if (context.size() > kMaxContext) return bad("context too long");
  if (num_layers == 0 || num_layers > kMaxLayers) return bad("num_layers out of range");
  if (inter.size() != size_t{num_layers} * context.size()) return bad("inter size");
  if (intra.size() != num_layers) return bad("intra size");
  if (token_scores.size() != num_tokens) return bad("token_scores size");
  return OkStatus();
}

std::vector<uint8_t> EncodeStats(const ChunkStats& s) {
  Writer w(8 + 4 * 3 + 8 + 16 * s.context.size() + 4 * s.context_tokens.size() +
           8 * (s.inter.size() + s.intra.size()) + 4 * s.token_scores.size());
  w.Bytes(kStatsMagic, 8);
  w.U32(static_cast<uint32_t>(s.context.size()));
  w.U32(s.num_layers);
  w.U32(static_cast<uint32_t>(s.token_scores.size()));
  w.U64(s.created);
  for (const Hash128& h : s.context) {
    w.U64(h.lo);
    w.U64(h.hi);
  }
  for (uint32_t n : s.context_tokens) w.U32(n);
  for (double v : s.inter) w.F64(v);
  for (double v : s.intra) w.F64(v);
  for (float v : s.token_scores) w.F32(v);
  return w.Take();
}

Result<ChunkStats> DecodeStats(std::span<const uint8_t> bytes) {
  Reader r(bytes);
  char magic[8];
  if (!r.Bytes(magic, 8) || std::memcmp(magic, kStatsMagic, 8) != 0) {
    return absl::DataLossError("chunk stats: bad magic");
  }
  ChunkStats s;
  uint32_t n_ctx = 0, n_tokens = 0;
  if (!r.U32(&n_ctx) || !r.U32(&s.num_layers) || !r.U32(&n_tokens) || !r.U64(&s.created)) {
    return absl::DataLossError("chunk stats: truncated header");
  }
  if (n_ctx > kMaxContext || s.num_layers == 0 || s.num_layers > kMaxLayers ||
      n_tokens > kMaxTokensPerObject) {
    return absl::DataLossError("chunk stats: sizes out of range");
  }
  const uint64_t need =
      uint64_t{n_ctx} * 20 + uint64_t{s.num_layers} * (n_ctx + 1) * 8 + uint64_t{n_tokens} * 4;
  if (r.remaining() != need) return absl::DataLossError("chunk stats: wrong length");
  s.context.resize(n_ctx);
  for (Hash128& h : s.context) r.U64(&h.lo), r.U64(&h.hi);
  s.context_tokens.resize(n_ctx);
  for (uint32_t& n : s.context_tokens) r.U32(&n);
  s.inter.resize(size_t{s.num_layers} * n_ctx);
  for (double& v : s.inter) r.F64(&v);
  s.intra.resize(s.num_layers);
  for (double& v : s.intra) r.F64(&v);
  s.token_scores.resize(n_tokens);
  for (float& v : s.token_scores) r.F32(&v);
  return s;
}

Status CheckPutArguments(const ChunkRecord& record, std::span<const uint8_t> kv) {
  KVSTASH_RETURN_IF_ERROR(record.layout.Validate());
  if (kv.size() != record.layout.RawBytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk KV has ", kv.size(), " bytes, layout says ", record.layout.RawBytes()));
  }
  if (record.kind == CacheKind::kVariant) {
    KVSTASH_RETURN_IF_ERROR(record.stats.Validate(record.layout.num_tokens));
  }
  return OkStatus();
}

std::unique_ptr<ChunkKvStore> NewInProcessChunkStore() {
  return std::make_unique<InProcessChunkStore>();
}

}  // namespace kvstash::blend
