#include "kvstash/blend/service_store.h"

#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstash/common/coding.h"
#include "kvstash/kernels/paged_kv.h"

namespace kvstash::blend {
namespace {

KvLayout StatsLayout(size_t framed_bytes) {
  KvLayout l;
  l.num_layers = 1;
  l.total_kv_heads = 1;
  l.head_begin = 0;
  l.head_end = 1;
  l.head_dim = 1;
  l.dtype = DType::kF32;
  l.num_tokens = static_cast<uint32_t>(framed_bytes / 8);
  l.rope = RopeConvention::kNone;
  return l;
}

std::vector<uint8_t> FrameStats(const ChunkStats& stats) {
  std::vector<uint8_t> body = EncodeStats(stats);
  std::vector<uint8_t> out(4 + body.size());
  const uint32_t n = static_cast<uint32_t>(body.size());
  EncodeFixed32(out.data(), n);
  std::memcpy(out.data() + 4, body.data(), body.size());
  out.resize((out.size() + 7) / 8 * 8, 0);
  return out;
}

Result<ChunkStats> UnframeStats(std::span<const uint8_t> bytes) {
  if (bytes.size() < 4) return absl::DataLossError("chunk stats object too short");
  const uint32_t n = DecodeFixed32(bytes.data());
  if (n > bytes.size() - 4) return absl::DataLossError("chunk stats object truncated");
  return DecodeStats(bytes.subspan(4, n));
}

class ServiceChunkKv : public ChunkKv {
 public:
  ServiceChunkKv(KvLayout layout, std::optional<client::ReadLease> lease, std::vector<uint8_t> copy,
                 Tier tier)
      : layout_(layout), lease_(std::move(lease)), copy_(std::move(copy)), tier_(tier) {}
  const KvLayout& layout() const override { return layout_; }
  Result<std::span<const uint8_t>> Layer(uint32_t layer) override {
    if (layer < layout_.layer_begin || layer >= layout_.layer_begin + layout_.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("chunk KV holds no layer ", layer));
    }
    std::span<const uint8_t> all = lease_ ? lease_->data() : std::span<const uint8_t>(copy_);
    const size_t slab = kernels::ChunkLayerBytes(layout_);
    if (all.size() < slab * layout_.num_layers) return absl::DataLossError("chunk KV truncated");
    return all.subspan((layer - layout_.layer_begin) * slab, slab);
  }
  Tier tier() const override { return tier_; }

 private:
  KvLayout layout_;
  std::optional<client::ReadLease> lease_;
  std::vector<uint8_t> copy_;
  Tier tier_;
};

class ServiceChunkStore : public ChunkKvStore {
 public:
  ServiceChunkStore(client::KvClient* client, const Hash128& fingerprint,
                    const ServiceStoreOptions& options)
      : client_(client), fingerprint_(fingerprint), options_(options) {}

  Result<std::vector<ChunkEntries>> Lookup(std::span<const Hash128> chunks) override {
    const uint32_t m = options_.max_variants;
    const size_t per_chunk = 1 + 2 * size_t{m};
    std::vector<ObjectName> names;
    names.reserve(chunks.size() * per_chunk);
    for (const Hash128& c : chunks) {
      names.push_back(Name(c));
      for (uint32_t v = 0; v < m; ++v) {
        names.push_back(Name(ChunkVariantHash(c, v, kVariantKv)));
        names.push_back(Name(ChunkVariantHash(c, v, kVariantStats)));
      }
    }
    std::vector<ChunkEntries> out(chunks.size());
    if (names.empty()) return out;
    KVSTASH_ASSIGN_OR_RETURN(client::LookupReply reply, client_->Lookup(names));
    if (reply.results.size() != names.size()) {
      return absl::InternalError("cachesvc Lookup answered a different number of keys");
    }
    // Present variants whose stats must be read.
    std::vector<ObjectName> stats_names;
    std::vector<std::pair<size_t, ChunkRecord>> pending;
    for (size_t i = 0; i < chunks.size(); ++i) {
      const client::KeyPresence& alone = reply.results[i * per_chunk];
      if (alone.present && Usable(alone.info)) {
        ChunkRecord r;
        r.chunk = chunks[i];
        r.kind = CacheKind::kAlone;
        r.layout = alone.info.layout;
        r.tier = alone.tier;
        out[i].alone = r;
      }
      for (uint32_t v = 0; v < m; ++v) {
        const client::KeyPresence& kv = reply.results[i * per_chunk + 1 + 2 * v];
        const client::KeyPresence& st = reply.results[i * per_chunk + 2 + 2 * v];
        if (!kv.present || !st.present || !Usable(kv.info)) continue;
        ChunkRecord r;
        r.chunk = chunks[i];
        r.kind = CacheKind::kVariant;
        r.slot = v;
        r.layout = kv.info.layout;
        r.tier = kv.tier;
        stats_names.push_back(names[i * per_chunk + 2 + 2 * v]);
        pending.emplace_back(i, std::move(r));
      }
    }
    if (stats_names.empty()) return out;
    KVSTASH_ASSIGN_OR_RETURN(std::vector<Result<std::vector<uint8_t>>> payloads,
                             ReadAll(stats_names));
    for (size_t k = 0; k < pending.size(); ++k) {
      if (!payloads[k].ok()) continue;  // evicted since the lookup: not a variant any more
      auto stats = UnframeStats(*payloads[k]);
      if (!stats.ok() || !stats->Validate(pending[k].second.layout.num_tokens).ok()) continue;
      pending[k].second.stats = std::move(*stats);
      out[pending[k].first].variants.push_back(std::move(pending[k].second));
    }
    return out;
  }

  Result<std::vector<std::unique_ptr<ChunkKv>>> Fetch(
      std::span<const ChunkRecord> records) override {
    std::vector<ObjectName> names;
    for (const ChunkRecord& r : records) names.push_back(KvName(r));
    std::vector<std::unique_ptr<ChunkKv>> out;
    if (names.empty()) return out;
    if (client_->shared_memory_attached()) {
      KVSTASH_ASSIGN_OR_RETURN(auto leases, client_->AcquireMany(names));
      for (size_t i = 0; i < records.size(); ++i) {
        if (!leases[i].ok()) return leases[i].status();
        KVSTASH_RETURN_IF_ERROR(CheckFetched(records[i], leases[i]->info()));
        const Tier tier = leases[i]->served_from();
        out.push_back(std::make_unique<ServiceChunkKv>(
            leases[i]->info().layout, std::move(*leases[i]), std::vector<uint8_t>(), tier));
      }
      return out;
    }
    for (size_t i = 0; i < records.size(); ++i) {
      KVSTASH_ASSIGN_OR_RETURN(client::GetReply got, client_->Get(names[i]));
      KVSTASH_RETURN_IF_ERROR(CheckFetched(records[i], got.info));
      out.push_back(std::make_unique<ServiceChunkKv>(got.info.layout, std::nullopt,
                                                     std::move(got.payload), got.served_from));
    }
    return out;
  }

  Status Put(const ChunkRecord& record, std::span<const uint8_t> kv) override {
    KVSTASH_RETURN_IF_ERROR(CheckPutArguments(record, kv));
    if (record.kind == CacheKind::kVariant && record.slot >= options_.max_variants) {
      return absl::InvalidArgumentError("variant slot beyond max_variants");
    }
    client::PutOptions po;
    po.overwrite = true;
    po.durable = options_.durable;
    ObjectInfo info;
    info.layout = record.layout;
    info.encoding = Encoding::kRaw;
    info.payload_bytes = kv.size();
    KVSTASH_RETURN_IF_ERROR(client_->Put(KvName(record), info, kv, po));
    if (record.kind == CacheKind::kAlone) return OkStatus();
    std::vector<uint8_t> framed = FrameStats(record.stats);
    ObjectInfo sinfo;
    sinfo.layout = StatsLayout(framed.size());
    sinfo.payload_bytes = framed.size();
    return client_->Put(Name(ChunkVariantHash(record.chunk, record.slot, kVariantStats)), sinfo,
                        framed, po);
  }

 private:
  ObjectName Name(const Hash128& token_hash) const {
    return MakeObjectName(options_.name_space, fingerprint_, token_hash);
  }
  ObjectName KvName(const ChunkRecord& r) const {
    return r.kind == CacheKind::kAlone ? Name(r.chunk)
                                       : Name(ChunkVariantHash(r.chunk, r.slot, kVariantKv));
  }
  static bool Usable(const ObjectInfo& info) {
    return info.encoding == Encoding::kRaw && info.Validate().ok();
  }
  static Status CheckFetched(const ChunkRecord& want, const ObjectInfo& got) {
    if (got.layout != want.layout || !Usable(got)) {
      return absl::NotFoundError("chunk cache replaced since the lookup");
    }
    return OkStatus();
  }

  Result<std::vector<Result<std::vector<uint8_t>>>> ReadAll(std::span<const ObjectName> names) {
    std::vector<Result<std::vector<uint8_t>>> out;
    if (client_->shared_memory_attached()) {
      KVSTASH_ASSIGN_OR_RETURN(auto leases, client_->AcquireMany(names));
      for (auto& l : leases) {
        if (!l.ok()) {
          out.emplace_back(l.status());
        } else {
          out.emplace_back(std::vector<uint8_t>(l->data().begin(), l->data().end()));
        }
      }
      return out;
    }
    for (const ObjectName& n : names) {
      auto got = client_->Get(n);
      if (!got.ok()) {
        out.emplace_back(got.status());
      } else {
        out.emplace_back(std::move(got->payload));
      }
    }
    return out;
  }

  client::KvClient* client_;
  Hash128 fingerprint_;
  ServiceStoreOptions options_;
};

}  // namespace

std::unique_ptr<ChunkKvStore> NewServiceChunkStore(client::KvClient* client,
                                                   const Hash128& model_fingerprint,
                                                   const ServiceStoreOptions& options) {
  return std::make_unique<ServiceChunkStore>(client, model_fingerprint, options);
}

}  // namespace kvstash::blend
