// `kvstash get --slo-ms MS --out-dir DIR KEY...`: several objects loaded in order within a time
// budget by client::StreamedLoad (docs/codec.md §6), each chunk at the most exact encoding that
// lets the rest of the load fit, among codecs calibrated on this host; every object written to
// DIR, every chunk's choice printed (docs/cli.md).
#ifndef KVSTASH_CLI_SLO_GET_H_
#define KVSTASH_CLI_SLO_GET_H_

#include <span>
#include <string>
#include <vector>

#include "kvstash/client/kv_client.h"
#include "kvstash/codec/codec_choice.h"
#include "kvstash/common/object_name.h"
#include "kvstash/common/status.h"

namespace kvstash::cli {

struct SloGetArgs {
  double slo_ms = 0;              // the budget of the whole load
  std::string out_dir;            // created if missing
  std::vector<std::string> keys;  // as typed (names the files)
  // Empty: the calibrated default (CalibrateCodecs: CacheGen level 2 and the KVQ levels at least
  // as exact on the sample). Else a comma-separated list of cachegen-l1..l3, kvq-l1..l4, or
  // cachegen / kvq for all of that codec's levels; raw is always a candidate.
  std::string codecs;
  // > 0: stand a link of this rate in for the real one (StreamedLoadOptions::link_bytes_per_s):
  // decisions assume it and each chunk is charged its wire bytes at it.
  double simulate_link_mbps = 0;
  bool raw = false;  // as get --raw: header + payload even for a wrapped file
};

// The candidates --codecs names, kind and level only (not measured). InvalidArgument naming the
// entry for anything else.
Result<std::vector<codec::CodecRates>> ParseCodecList(const std::string& list);

// The file each key is written to in out_dir: the key with every character other than
// [A-Za-z0-9._-] replaced by '_' ("." and ".." become "_").
std::string OutputFileName(const std::string& key);

// Usage errors, before anything is contacted: InvalidArgument with the message to print (no keys,
// a budget that is not positive, no --out-dir, an unknown codec, a negative link rate, two keys
// that name the same file).
Status CheckSloGetArgs(const SloGetArgs& args);

// Calibrates, loads `names` (one per args.keys) with StreamedLoad, writes each object's file
// (ObjectToFile) and prints per chunk what was chosen and the total against the budget on
// stdout. Returns the exit code: 0, or 1 when the calibration, the load or any chunk failed (the
// chunks that came are written all the same).
int RunSloGet(client::KvClient& kv, std::span<const ObjectName> names, const SloGetArgs& args);

}  // namespace kvstash::cli

#endif  // KVSTASH_CLI_SLO_GET_H_
