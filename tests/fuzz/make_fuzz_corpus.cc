// Writes the seed corpus of the fuzz targets into <dir>/<target>/ (tests/fuzz/corpus in the repo):
//   build/release/tests/fuzz/make_fuzz_corpus tests/fuzz/corpus
// Seeds are valid inputs of every kind plus a few mutated ones; each begins with the target's flag
// byte (see the targets' comments). Inputs found by fuzzing are added next to them by hand.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_profile.h"
#include "gguf_builder.h"
#include "kvstash/codec/cachegen.h"
#include "kvstash/codec/kvq.h"
#include "kvstash/common/crc32c.h"
#include "kvstash/common/object_header.h"
#include "kvstash/proto/arena_handshake.h"
#include "kvstash/proto/local_control.h"
#include "kvstash/v1/kvstash.pb.h"
#include "ssd_record.h"

namespace {

using namespace kvstash;

void Write(const std::filesystem::path& dir, const std::string& name, uint8_t flags,
           const std::vector<uint8_t>& bytes) {
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary);
  out.put(static_cast<char>(flags));
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Appends one local control frame carrying `body`.
void AppendFrame(std::vector<uint8_t>* out, LocalMethod method, const std::string& body,
                 uint32_t sequence, uint16_t flags = 0) {
  LocalFrameHeader h;
  h.body_bytes = static_cast<uint32_t>(body.size());
  h.code = static_cast<uint16_t>(method);
  h.flags = flags;
  h.sequence = sequence;
  auto head = EncodeLocalFrameHeader(h);
  out->insert(out->end(), head.begin(), head.end());
  out->insert(out->end(), body.begin(), body.end());
}

void WriteRaw(const std::filesystem::path& dir, const std::string& name,
              const std::vector<uint8_t>& bytes) {
  std::filesystem::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> Encode(KvLayout layout, const codec::EncodeOptions& options, uint64_t seed) {
  codec::SyntheticKvOptions so;
  so.seed = seed;
  auto c = codec::EncodeCacheGen(layout, codec::SyntheticKv(layout, so), options);
  if (!c.ok()) {
    std::fprintf(stderr, "encode failed: %s\n", std::string(c.status().message()).c_str());
    std::exit(1);
  }
  return *c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_ROOT\n", argv[0]);
    return 2;
  }
  const std::filesystem::path root = argv[1];
  const auto containers = root / "fuzz_cachegen_container";
  using codec::CacheGenMode;

  for (int level = 1; level <= 3; ++level) {
    codec::EncodeOptions o;
    o.level = level;
    o.subchunk_tokens = 8;
    Write(containers, "ref_level" + std::to_string(level), 0, Encode(fuzz::FuzzLayout(23), o, 1));
  }
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    KvLayout layout = fuzz::FuzzLayout(9);
    layout.dtype = dtype;
    Write(containers, std::string("ref_") + std::string(DTypeName(dtype)), 0,
          Encode(layout, codec::EncodeOptions{}, 2));
  }
  {
    codec::EncodeOptions o;
    o.mode = CacheGenMode::kDelta;
    o.subchunk_tokens = 16;
    Write(containers, "delta_level2", 0, Encode(fuzz::FuzzLayout(31), o, 3));
    o.subchunk_tokens = 1;
    Write(containers, "delta_subchunk1", 0, Encode(fuzz::FuzzLayout(12), o, 4));
  }
  {
    codec::EncodeOptions o;
    o.row_bins = {4, 64, 12, 32};
    o.subchunk_tokens = 5;
    Write(containers, "explicit_bins_lp65", 0, Encode(fuzz::FuzzLayout(17), o, 5));
    Write(containers, "one_token", 0, Encode(fuzz::FuzzLayout(1), codec::EncodeOptions{}, 6));
  }
  const codec::CdfProfile& profile = fuzz::FuzzProfile();
  for (CacheGenMode mode : {CacheGenMode::kReference, CacheGenMode::kDelta}) {
    codec::EncodeOptions o;
    o.mode = mode;
    o.profile = &profile;
    o.subchunk_tokens = 10;
    Write(containers, std::string("profile_") + codec::CacheGenModeName(mode), 2,
          Encode(fuzz::FuzzLayout(27), o, 7));
  }
  {
    // Mutations whose checksums the target refreshes (flag bit 0).
    auto base = Encode(fuzz::FuzzLayout(23), codec::EncodeOptions{}, 8);
    auto m = base;
    m[base.size() - 3] ^= 0x5A;  // payload byte
    Write(containers, "mutated_payload", 1, m);
    m = base;
    m[72] = 30;  // bins
    Write(containers, "mutated_bins", 1, m);
    m = base;
    m[28] = 24;  // token count
    Write(containers, "mutated_tokens", 1, m);
    m = std::vector<uint8_t>(base.begin(), base.begin() + 100);
    Write(containers, "truncated", 1, m);
    Write(containers, "header_only", 1, std::vector<uint8_t>(base.begin(), base.begin() + 72));
  }

  const auto profiles = root / "fuzz_cachegen_profile";
  Write(profiles, "four_tables", 0, profile.bytes());
  {
    KvLayout layout = fuzz::FuzzLayout(16);
    layout.num_layers = 1;
    auto b = codec::CdfProfileBuilder::Create(codec::ProfileShape::Of(layout), {{}});
    if (!b.ok() || !b->Add(layout, codec::SyntheticKv(layout)).ok()) return 1;
    auto p = b->Build();
    if (!p.ok()) return 1;
    Write(profiles, "one_table", 0, p->bytes());
    auto m = p->bytes();
    m[44] = 0;  // first table's mode/level area
    m[46] = 3;  // lp
    Write(profiles, "mutated_lp", 1, m);
    m = p->bytes();
    m[p->bytes().size() / 2] ^= 0xFF;  // inside a CDF
    Write(profiles, "mutated_cdf", 1, m);
  }

  const auto headers = root / "fuzz_object_header";
  {
    ObjectInfo info;
    info.layout = fuzz::FuzzLayout(256);
    info.layout.rope = RopeConvention::kGptj;
    info.layout.position_start = 512;
    info.payload_bytes = info.layout.RawBytes();
    auto h = EncodeObjectHeader(info);
    if (!h.ok()) return 1;
    Write(headers, "raw_f16", 0, std::vector<uint8_t>(h->begin(), h->end()));
    info.encoding = Encoding::kCacheGen;
    info.encoding_level = 2;
    info.payload_bytes = 1234;
    h = EncodeObjectHeader(info);
    if (!h.ok()) return 1;
    Write(headers, "cachegen_level2", 0, std::vector<uint8_t>(h->begin(), h->end()));
    auto m = std::vector<uint8_t>(h->begin(), h->end());
    m[27] = 7;  // level out of range
    Write(headers, "mutated_level", 1, m);
    m = std::vector<uint8_t>(h->begin(), h->end());
    m[16] = 9;  // head_begin past head_end
    Write(headers, "mutated_heads", 1, m);
  }
  const auto frames = root / "fuzz_local_frame";  // no flag byte: the input is the stream
  {
    std::vector<uint8_t> stream;
    AppendFrame(&stream, LocalMethod::kHello, std::string(kLocalClientIdBytes, 'c'), 1);
    v1::ReserveManyRequest reserve;
    for (int i = 0; i < 3; ++i) {
      v1::ReserveRequest* item = reserve.add_items();
      item->mutable_key()->set_namespace_("ns");
      item->mutable_key()->set_token_hash(std::string(16, static_cast<char>(i)));
      item->mutable_info()->set_payload_bytes(4096);
      item->set_lease_ms(1000);
    }
    AppendFrame(&stream, LocalMethod::kReserveMany, reserve.SerializeAsString(), 2);
    v1::CommitRequest commit;
    commit.set_reservation_id(7);
    commit.set_payload_crc32c(0xDEADBEEF);
    AppendFrame(&stream, LocalMethod::kCommit, commit.SerializeAsString(), 3);
    v1::AcquireRequest acquire;
    *acquire.add_keys() = reserve.items(0).key();
    AppendFrame(&stream, LocalMethod::kAcquire, acquire.SerializeAsString(), 4);
    v1::ReleaseRequest release;
    release.add_lease_ids(1);
    release.add_lease_ids(2);
    AppendFrame(&stream, LocalMethod::kRelease, release.SerializeAsString(), 5, kLocalFlagNoReply);
    WriteRaw(frames, "session", stream);
    std::vector<uint8_t> odd;
    AppendFrame(&odd, static_cast<LocalMethod>(77), "", 1);
    AppendFrame(&odd, LocalMethod::kReserve, "\xff\xff\xff", 2);
    WriteRaw(frames, "unknown_method_and_garbage_body", odd);
    std::vector<uint8_t> big;
    AppendFrame(&big, LocalMethod::kLookup, "", 1);
    big[4] = 0xFF;  // announces 4 GiB - 1
    big[5] = 0xFF;
    big[6] = 0xFF;
    big[7] = 0xFF;
    WriteRaw(frames, "oversized_body", big);
    // Arena attach requests (kvstash/proto/arena_handshake.h): read-only with a token, and one
    // with an access byte no version knows.
    std::vector<uint8_t> attach;
    AppendFrame(&attach, LocalMethod::kAttach,
                EncodeArenaAttachRequest({.writable = false, .token = "alpha-token-0123456789"}), 0,
                kLocalFlagNoReply);
    AppendFrame(&attach, LocalMethod::kAttach, std::string("\x07tok", 4), 0, kLocalFlagNoReply);
    WriteRaw(frames, "attach_requests", attach);
    // Attach tickets (the marker bit): a 32-byte one, read-write and read-only, a short one and
    // an empty one.
    std::vector<uint8_t> tickets;
    AppendFrame(&tickets, LocalMethod::kAttach,
                EncodeArenaAttachRequest(
                    {.writable = true, .token = "", .ticket = std::string(32, '\x5a')}),
                0, kLocalFlagNoReply);
    AppendFrame(&tickets, LocalMethod::kAttach,
                EncodeArenaAttachRequest(
                    {.writable = false, .token = "", .ticket = std::string(31, '\x01')}),
                0, kLocalFlagNoReply);
    AppendFrame(&tickets, LocalMethod::kAttach,
                EncodeArenaAttachRequest({.writable = false, .token = "", .ticket = std::string()}),
                0, kLocalFlagNoReply);
    WriteRaw(frames, "attach_tickets", tickets);
  }
  // A byte (top bit: 0 GetChunk, 1 PutChunk; the rest: where to cut), then the message.
  const auto chunks = root / "fuzz_split_bytes_field";
  {
    auto with_cut = [](uint8_t cut, const std::string& message) {
      std::vector<uint8_t> out = {cut};
      out.insert(out.end(), message.begin(), message.end());
      return out;
    };
    v1::GetChunk first;
    first.mutable_info()->set_payload_bytes(300);
    first.mutable_info()->set_payload_crc32c(0xDEADBEEF);
    first.set_served_from(v1::TIER_CPU);
    first.set_data(std::string(300, 'k'));
    WriteRaw(chunks, "first_chunk", with_cut(5, first.SerializeAsString()));
    v1::GetChunk encoded = first;
    encoded.mutable_wire_info()->set_encoding(v1::ENCODING_CACHEGEN);
    encoded.mutable_wire_info()->set_payload_bytes(120);
    encoded.set_data(std::string(120, 'c'));
    WriteRaw(chunks, "encoded_first_chunk", with_cut(40, encoded.SerializeAsString()));
    v1::GetChunk middle;
    middle.set_data(std::string(64, 'm'));
    WriteRaw(chunks, "data_only_twice",
             with_cut(3, middle.SerializeAsString() + middle.SerializeAsString()));
    WriteRaw(chunks, "truncated", with_cut(1, first.SerializeAsString().substr(0, 40)));
    v1::PutChunk put;
    put.mutable_header()->mutable_key()->set_namespace_("ns");
    put.mutable_header()->mutable_key()->set_token_hash(std::string(16, 'h'));
    put.mutable_header()->mutable_info()->set_payload_bytes(200);
    put.mutable_header()->set_overwrite(true);
    put.set_data(std::string(100, 'p'));
    WriteRaw(chunks, "put_first_chunk", with_cut(0x80 | 9, put.SerializeAsString()));
  }
  {
    // KVQ containers: 16 channels take the vector decoder, 4 the portable one.
    const auto kvq = root / "fuzz_kvq_container";
    auto encode = [](KvLayout layout, const codec::KvqOptions& o, uint64_t seed) {
      codec::SyntheticKvOptions so;
      so.seed = seed;
      auto c = codec::EncodeKvq(layout, codec::SyntheticKv(layout, so), o);
      if (!c.ok()) {
        std::fprintf(stderr, "KVQ encode failed: %s\n", std::string(c.status().message()).c_str());
        std::exit(1);
      }
      return *c;
    };
    KvLayout wide = fuzz::FuzzLayout(23);
    wide.head_dim = 16;
    for (int level = 1; level <= 4; ++level) {
      codec::KvqOptions o;
      o.level = level;
      o.subchunk_tokens = 8;
      o.group_tokens = 5;
      Write(kvq, "level" + std::to_string(level), 0, encode(wide, o, 11));
    }
    codec::KvqOptions o;
    o.key_scale = codec::KvqScale::kPerToken;
    o.key_outliers = 2;
    o.context_channels = 8;
    o.row_bits = {1, 8, 2, 3};
    Write(kvq, "per_token_outliers", 0, encode(wide, o, 12));
    codec::KvqOptions rot;  // rotated keys (per token) and values: the rotation decode path
    rot.key_scale = codec::KvqScale::kPerToken;
    rot.rotate_keys = rot.rotate_values = true;
    Write(kvq, "rotated", 0, encode(wide, rot, 15));
    codec::KvqOptions sinks;  // two exact (sink) tokens: the exact-token section
    sinks.sink_tokens = 2;
    sinks.rotate_values = true;
    Write(kvq, "sinks", 0, encode(wide, sinks, 16));
    KvLayout f32 = fuzz::FuzzLayout(9);
    f32.dtype = DType::kF32;
    Write(kvq, "narrow_f32", 0, encode(f32, codec::KvqOptions{}, 13));
    const std::vector<uint8_t> base = encode(wide, codec::KvqOptions{}, 14);
    std::vector<uint8_t> m = base;
    m[m.size() - 3] ^= 0x40;
    Write(kvq, "mutated_payload", 1, m);
    m = base;
    m[28] ^= 1;  // tokens
    Write(kvq, "mutated_tokens", 1, m);
    m = base;
    m[codec::kKvqHeaderBytes] = 9;  // bits of row 0
    Write(kvq, "mutated_bits", 1, m);
    m.assign(base.begin(), base.end() - 5);
    Write(kvq, "truncated", 1, m);
  }
  {
    // SSD index records, record keys and name blocks (flags: bits 0-1 pick the decoder, bit 2
    // reseals the crc32c).
    const std::filesystem::path ssd = root / "fuzz_ssd_record";
    auto bytes = [](const std::string& v) { return std::vector<uint8_t>(v.begin(), v.end()); };
    storage::TierRecord r;
    r.name.storage_key = Hash128{0x0123456789abcdefull, 0xfedcba9876543210ull};
    r.name.model_fingerprint = Hash128{1, 2};
    r.name.token_hash = Hash128{3, 4};
    r.name.name_space = "tenant-a";
    r.info.layout = fuzz::FuzzLayout(16);
    r.info.payload_bytes = r.info.layout.RawBytes();
    r.info.payload_crc32c = 0xdeadbeef;
    r.served = r.info;
    r.hits = 7;
    r.last_access_ns = 1234567890123ull;
    r.pins = 2;
    r.seq = 42;
    auto value = storage::EncodeRecord(r);
    if (!value.ok()) {
      std::fprintf(stderr, "SSD record encode failed\n");
      return 1;
    }
    Write(ssd, "record", 0, bytes(*value));
    storage::TierRecord enc = r;
    enc.info.encoding = Encoding::kCacheGen;
    enc.info.encoding_level = 2;
    enc.info.payload_bytes = r.info.payload_bytes / 4;
    enc.encoded = true;
    enc.served.lossy = true;
    enc.served.payload_crc32c = 0x12345678;
    if (auto v = storage::EncodeRecord(enc); v.ok()) Write(ssd, "record_encoded", 0, bytes(*v));
    std::string v1 = *value;  // version 1: no flags and served crc32c
    v1[0] = 1;
    v1.erase(1 + kObjectHeaderBytes, 5);
    Write(ssd, "record_v1", 4, bytes(v1));
    Write(ssd, "name_block", 1, bytes(storage::EncodeNameBlock(r.name)));
    Write(ssd, "record_key", 2, bytes(storage::RecordKey(r.name.storage_key, r.seq)));
    std::string m = *value;
    m[1 + kObjectHeaderBytes + 5] ^= 0x10;  // hits
    Write(ssd, "mutated_hits", 4, bytes(m));
    Write(ssd, "truncated", 4, bytes(value->substr(0, value->size() - 7)));
    Write(ssd, "all_three", 3, bytes(*value));
  }
  {
    // GGUF files: metadata of every kind the engine reads and a few tensors.
    const std::filesystem::path gguf = root / "fuzz_gguf";
    engine::testing::GgufBuilder b;
    b.Str("general.architecture", "llama");
    b.U32("llama.block_count", 1);
    b.U32("llama.embedding_length", 8);
    b.F32("llama.rope.freq_base", 10000.0f);
    b.Bool("tokenizer.ggml.add_bos_token", true);
    b.StrArray("tokenizer.ggml.tokens", {"<s>", "a", "b"});
    b.I32Array("tokenizer.ggml.token_type", {3, 1, 1});
    b.Tensor("token_embd.weight", {8, 3}, 0, std::vector<uint8_t>(8 * 3 * 4, 0x3c));
    b.Tensor("output_norm.weight", {8}, 1, std::vector<uint8_t>(8 * 2, 0x01));
    const std::vector<uint8_t> file = b.Build();
    WriteRaw(gguf, "small_llama", file);
    WriteRaw(gguf, "truncated", std::vector<uint8_t>(file.begin(), file.begin() + file.size() / 2));
    engine::testing::GgufBuilder empty;
    WriteRaw(gguf, "empty", empty.Build());
  }
  std::printf("corpus written to %s\n", root.c_str());
  return 0;
}
