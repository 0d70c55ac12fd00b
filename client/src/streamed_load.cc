#include "kvstash/client/streamed_load.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace kvstash::client {
namespace {

using Clock = std::chrono::steady_clock;

Status CheckCandidates(std::span<const codec::CodecRates> candidates) {
  for (const codec::CodecRates& c : candidates) {
    const int max_level = c.kind == codec::CodecKind::kCacheGen ? 3
                          : c.kind == codec::CodecKind::kKvq    ? 4
                                                                : 0;
    if (c.kind != codec::CodecKind::kRaw && (c.level < 1 || c.level > max_level)) {
      return absl::InvalidArgumentError(absl::StrCat("StreamedLoad: candidate ",
                                                     codec::CodecRatesName(c), " is not ",
                                                     "CacheGen level 1..3 or KVQ level 1..4"));
    }
    if (c.kind != codec::CodecKind::kRaw && c.kind != codec::CodecKind::kCacheGen &&
        c.kind != codec::CodecKind::kKvq) {
      return absl::InvalidArgumentError(
          absl::StrCat("StreamedLoad: unknown codec ", static_cast<int>(c.kind)));
    }
  }
  return OkStatus();
}

GetOptions OptionsFor(const codec::CodecRates& c) {
  GetOptions o;
  switch (c.kind) {
    case codec::CodecKind::kRaw:
      o.codec = TransferCodec::kRaw;
      break;
    case codec::CodecKind::kCacheGen:
      o.codec = TransferCodec::kCacheGen;
      o.level = c.level;
      break;
    case codec::CodecKind::kKvq:
      o.codec = TransferCodec::kKvq;
      o.level = c.level;
      break;
  }
  return o;
}

}  // namespace

double LinkSeconds(const GetIntoReply& got, const codec::CodecRates& asked,
                   codec::CostModel cost_model) {
  if (got.wire_codec == TransferCodec::kRaw) return got.stream_s;
  if (got.encode_s > 0 && got.stream_s > got.encode_s) return got.stream_s - got.encode_s;
  if (got.encode_s <= 0 && cost_model == codec::CostModel::kTransfer &&
      asked.encode_bytes_per_s > 0) {
    const double predicted_s =
        static_cast<double>(got.info.payload_bytes) / asked.encode_bytes_per_s;
    return std::max(got.stream_s - predicted_s, got.stream_s / 2);
  }
  return got.stream_s;
}

Result<StreamedLoadReply> StreamedLoad(KvClient& client, std::span<const ObjectName> names,
                                       const StreamedLoadOptions& options) {
  KVSTASH_RETURN_IF_ERROR(CheckCandidates(options.candidates));
  if (!(options.budget_s > 0)) {
    return absl::InvalidArgumentError("StreamedLoad: the budget must be positive");
  }
  KVSTASH_ASSIGN_OR_RETURN(LookupReply present, client.Lookup(names));
  std::vector<codec::CandidateChunk> chunks(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    if (present.results[i].present) {
      chunks[i].raw_bytes = present.results[i].payload_bytes;
      chunks[i].tokens = present.results[i].info.layout.num_tokens;
    }
  }
  codec::CandidateControllerConfig config;
  config.budget_s = options.budget_s;
  config.fallback = options.fallback;
  config.prefill_tokens_per_s = options.prefill_tokens_per_s;
  config.cost_model = options.cost_model;
  config.initial_bandwidth_bps = options.initial_bandwidth_bps;
  config.fixed_bandwidth_bps = options.link_bytes_per_s;
  codec::CandidateController controller(config, options.candidates, chunks);
  // With no rate known, chunks go raw until one has measured the link.
  bool measured = options.link_bytes_per_s > 0 || options.initial_bandwidth_bps > 0;

  StreamedLoadReply reply;
  reply.chunks.resize(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    StreamedChunk& out = reply.chunks[i];
    if (!present.results[i].present) {
      out.status = absl::NotFoundError("not found by the load's Lookup");
      controller.Report(0, 0, 0);
      continue;
    }
    codec::CandidateDecision d = controller.Next();
    if (!measured) {
      d.candidate = 0;  // raw
      d.predicted_s = 0;
    }
    out.bandwidth_bps = d.bandwidth_bps;
    out.predicted_s = d.predicted_s;
    if (d.candidate == codec::CandidateDecision::kRecompute) {
      out.recompute = true;
      out.chosen = "recompute";
      out.seconds = d.predicted_s;  // the engine's prefill pays it
      controller.Report(0, out.seconds, 0);
      reply.total_s += out.seconds;
      continue;
    }
    const codec::CodecRates& c = controller.candidates()[static_cast<size_t>(d.candidate)];
    out.chosen = codec::CodecRatesName(c);
    out.payload.resize(chunks[i].raw_bytes);
    const Clock::time_point t0 = Clock::now();
    Result<GetIntoReply> got = client.GetInto(names[i], out.payload, OptionsFor(c));
    out.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!got.ok()) {
      out.status = got.status();
      out.payload.clear();
      controller.Report(0, out.seconds, 0);
      reply.total_s += out.seconds;
      continue;
    }
    out.payload.resize(got->info.payload_bytes);
    out.info = got->info;
    out.wire_bytes = got->wire_bytes;
    out.received = TransferCodecName(got->wire_codec, got->wire_level);
    out.encode_s = got->encode_s;
    out.decode_s = got->decode_s;
    double transfer_s = LinkSeconds(*got, c, options.cost_model);
    // Only a container of the candidate asked for says how fast that candidate encodes (an older
    // service may send its policy's codec instead).
    if (out.received == out.chosen) {
      controller.ReportEncode(static_cast<size_t>(d.candidate), got->info.payload_bytes,
                              got->encode_s);
    }
    if (options.link_bytes_per_s > 0) {
      const double link_s = static_cast<double>(got->wire_bytes) / options.link_bytes_per_s;
      out.seconds += link_s;
      transfer_s += link_s;
    }
    controller.Report(got->wire_bytes, out.seconds, transfer_s);
    measured = measured || got->wire_bytes > 0;
    reply.total_s += out.seconds;
  }
  reply.within_budget = reply.total_s <= options.budget_s;
  return reply;
}

}  // namespace kvstash::client
