// The shared-prefix workload (shared_prefix_harness.h) at its smallest: three real engine
// processes (stories260K through the KV connector), each on its own cachesvc node, run the same
// seeded requests as one cluster (etcd, default R, peer fetch), as three isolated nodes, and
// without a cache. Correctness only, never speed: in the cluster a document another engine
// computed is a remote hit, and every generated token is the same in all three configurations
// (reused KV is bit for bit what the engine computes). The benchmark at full size is
// bench/cluster/shared_prefix_bench.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <utility>

#include "shared_prefix_harness.h"
#include "testing/status_matchers.h"

namespace kvstash::testing {
namespace {

SharedPrefixOptions Minimal() {
  SharedPrefixOptions o;
  const std::string data = KVSTASH_SHARED_DATA;
  o.model = data + "/models/stories260K.bin";
  o.tokenizer = data + "/models/tok512.bin";
  o.doc_files = {data + "/text/tinystories_sample.txt", data + "/text/botchan.txt"};
  o.engines = 3;
  o.docs = 2;
  o.doc_tokens = 96;  // stories260K's context is 512 tokens: three 32-token chunks per document
  o.chunk_tokens = 32;
  o.requests = 9;
  o.max_tokens = 8;
  o.seed = 7;
  o.threads = 1;
  o.cpu_capacity = "64MiB";
  o.ready_timeout_ms = 60'000;
  o.request_timeout_ms = 60'000;
  o.verbose = true;
  return o;
}

// Requests whose document was run before on another engine but not on their own: remote hits in
// the cluster, misses on isolated nodes.
int ExpectedRemoteHits(const SharedPrefixOptions& o) {
  std::set<std::pair<int, int>> seen;  // (engine, doc)
  std::set<int> docs_seen;
  int n = 0;
  for (const PrefixRequest& r : MakeSharedPrefixWorkload(o)) {
    if (docs_seen.count(r.doc) && !seen.count({r.engine, r.doc})) ++n;
    seen.insert({r.engine, r.doc});
    docs_seen.insert(r.doc);
  }
  return n;
}

TEST(SharedPrefixTest, ClusterTurnsOtherEnginesPrefixesIntoHitsWithIdenticalTokens) {
  const SharedPrefixOptions o = Minimal();
  ASSERT_GT(ExpectedRemoteHits(o), 0) << "the seeded workload must share documents across engines";

  Result<PrefixRun> cluster = RunSharedPrefix(PrefixConfig::kCluster, o);
  if (absl::IsFailedPrecondition(cluster.status())) GTEST_SKIP() << cluster.status();
  ASSERT_OK(cluster.status());
  ASSERT_OK_AND_ASSIGN(PrefixRun isolated, RunSharedPrefix(PrefixConfig::kIsolated, o));
  ASSERT_OK_AND_ASSIGN(PrefixRun nocache, RunSharedPrefix(PrefixConfig::kNoCache, o));

  ASSERT_EQ(cluster->results.size(), static_cast<size_t>(o.requests));
  ASSERT_EQ(isolated.results.size(), cluster->results.size());
  ASSERT_EQ(nocache.results.size(), cluster->results.size());
  for (size_t i = 0; i < cluster->results.size(); ++i) {
    const PrefixRequestResult& c = cluster->results[i];
    SCOPED_TRACE(::testing::Message() << "request " << i << " on engine " << c.request.engine
                                      << ", document " << c.request.doc);
    EXPECT_EQ(c.prompt_tokens, nocache.results[i].prompt_tokens);
    EXPECT_EQ(isolated.results[i].prompt_tokens, nocache.results[i].prompt_tokens);
    EXPECT_FALSE(c.tokens.empty());
    EXPECT_EQ(c.tokens, nocache.results[i].tokens);
    EXPECT_EQ(isolated.results[i].tokens, nocache.results[i].tokens);
    EXPECT_EQ(c.tokens, isolated.results[i].tokens);
    EXPECT_EQ(isolated.results[i].remote_hit_tokens, 0u);
    EXPECT_EQ(nocache.results[i].hit_tokens, 0u);
  }
  const PrefixSummary cs = Summarize(*cluster);
  const PrefixSummary is = Summarize(isolated);
  EXPECT_GT(cs.remote_hit_tokens, 0u);
  EXPECT_GT(cs.remote_hit_requests, 0u);
  EXPECT_GT(cs.peer_fetched_objects, 0);  // the reading node fetched from a peer
  EXPECT_GT(cs.hit_tokens, is.hit_tokens);
  EXPECT_EQ(is.peer_fetched_objects, 0);
  EXPECT_GT(is.hit_tokens, 0u);  // an engine's own repeats hit on isolated nodes too
  std::printf(
      "hit rate cluster %.3f (remote %.3f, %llu of %d expected remote-hit requests), "
      "isolated %.3f\n",
      cs.hit_rate, cs.remote_hit_rate, static_cast<unsigned long long>(cs.remote_hit_requests),
      ExpectedRemoteHits(o), is.hit_rate);
}

}  // namespace
}  // namespace kvstash::testing
