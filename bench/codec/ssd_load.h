// Loading KV chunks from local disk: raw fp16 files against CacheGen containers that are read and
// then decoded on the CPU, measured in the same run on the same device.
//
// Reads bypass the page cache with O_DIRECT where the file system allows it, else the pages are
// dropped with posix_fadvise(DONTNEED) before every read (the result's "read_method" says which).
#ifndef KVSTASH_BENCH_CODEC_SSD_LOAD_H_
#define KVSTASH_BENCH_CODEC_SSD_LOAD_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kv_corpus.h"
#include "kvstash/codec/profile.h"
#include "kvstash/common/status.h"

namespace kvstash::bench {

struct EncodedSet {
  std::string name;                              // e.g. "cachegen_profile_l2"
  std::vector<std::vector<uint8_t>> containers;  // one per chunk, same order as the raw chunks
};

struct SsdLoadOptions {
  std::string dir;  // files are written here and removed afterwards
  int reps = 5;
  size_t threads = 2;  // "all cores" decode uses this many threads (caller included)
  const codec::ProfileResolver* profiles = nullptr;
};

// Per chunk (medians over chunks x reps): raw read time against container read + decode on 1
// thread and on `threads`, and the same for the whole set with reading and decoding overlapped
// (a reader thread fetches chunk i + 1 while chunk i decodes).
Result<nlohmann::json> MeasureSsdLoad(const std::vector<KvChunk>& chunks,
                                      const std::vector<EncodedSet>& sets,
                                      const SsdLoadOptions& options);

}  // namespace kvstash::bench

#endif  // KVSTASH_BENCH_CODEC_SSD_LOAD_H_
