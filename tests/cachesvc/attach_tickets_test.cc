// AttachTickets (cachesvc/src/attach_tickets.h) on its own: a ticket opens one attach, for the
// identity it was issued to; reused, expired, unknown and malformed tickets are UNAUTHENTICATED;
// a tenant holds a bounded number outstanding, without crowding out another tenant.
#include "attach_tickets.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>
#include <thread>

#include "testing/status_matchers.h"

namespace kvstash::cachesvc {
namespace {

using ::kvstash::testing::IsOk;
using ::kvstash::testing::StatusIs;
using namespace std::chrono_literals;

TicketGrant Grant(const std::string& tenant, bool read_only = false) {
  TicketGrant g;
  g.caller.identity.tenant = tenant;
  g.caller.identity.read_only = read_only;
  g.caller.identity.principal = "cert:" + tenant;
  g.caller.restricted = true;
  g.credential.certificate_names = {tenant + ".example"};
  g.generation = 3;
  return g;
}

// The counter `name` (with reason=`reason` when given) as the tickets counted it.
uint64_t Count(MetricsRegistry& metrics, const std::string& name, const std::string& reason = "") {
  MetricLabels labels;
  if (!reason.empty()) labels.emplace_back("reason", reason);
  return metrics.GetCounter(name, "", labels)->Value();
}

TEST(AttachTicketsTest, ATicketOpensOneAttachForItsIdentity) {
  MetricsRegistry metrics;
  AttachTickets tickets(10s, 8, &metrics);
  ASSERT_OK_AND_ASSIGN(std::string ticket, tickets.Issue(Grant("alpha", /*read_only=*/true)));
  EXPECT_EQ(ticket.size(), AttachTickets::kTicketBytes);
  EXPECT_EQ(tickets.outstanding(), 1u);
  ASSERT_OK_AND_ASSIGN(TicketGrant got, tickets.Redeem(ticket));
  EXPECT_EQ(got.caller.identity.tenant, "alpha");
  EXPECT_TRUE(got.caller.identity.read_only);
  EXPECT_TRUE(got.caller.restricted);
  EXPECT_EQ(got.credential.certificate_names, std::vector<std::string>{"alpha.example"});
  EXPECT_EQ(got.generation, 3u);
  EXPECT_EQ(tickets.outstanding(), 0u);
  // Used up.
  EXPECT_THAT(tickets.Redeem(ticket), StatusIs(absl::StatusCode::kUnauthenticated));
  // Tickets differ (32 bytes from getrandom each).
  std::set<std::string> seen;
  for (int i = 0; i < 8; ++i) {
    ASSERT_OK_AND_ASSIGN(std::string t, tickets.Issue(Grant("beta")));
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 8u);
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_issued_total"), 9u);
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_redeemed_total"), 1u);
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_refused_total", "unknown"), 1u);
}

TEST(AttachTicketsTest, MalformedUnknownAndExpiredTicketsAreRefused) {
  MetricsRegistry metrics;
  AttachTickets tickets(1ms, 8, &metrics);
  ASSERT_OK_AND_ASSIGN(std::string ticket, tickets.Issue(Grant("alpha")));
  for (const std::string& bad :
       {std::string(), ticket.substr(0, 31), ticket + "x", std::string(1024, 'z')}) {
    EXPECT_THAT(tickets.Redeem(bad), StatusIs(absl::StatusCode::kUnauthenticated)) << bad.size();
  }
  std::string flipped = ticket;
  flipped[7] ^= 1;
  EXPECT_THAT(tickets.Redeem(flipped), StatusIs(absl::StatusCode::kUnauthenticated));
  // Well past the 1 ms it is valid for (a bounded wait, no timing assertion).
  std::this_thread::sleep_for(20ms);
  Result<TicketGrant> expired = tickets.Redeem(ticket);
  EXPECT_THAT(expired, StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(std::string(expired.status().message()), ::testing::HasSubstr("expired"));
  EXPECT_THAT(tickets.Redeem(ticket), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_refused_total", "malformed"), 4u);
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_refused_total", "unknown"), 2u);
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_refused_total", "expired"), 1u);
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_redeemed_total"), 0u);
}

TEST(AttachTicketsTest, OutstandingTicketsAreBoundedPerTenant) {
  MetricsRegistry metrics;
  AttachTickets tickets(10s, 2, &metrics);
  ASSERT_OK_AND_ASSIGN(std::string first, tickets.Issue(Grant("alpha")));
  ASSERT_THAT(tickets.Issue(Grant("alpha")).status(), IsOk());
  EXPECT_THAT(tickets.Issue(Grant("alpha")).status(),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // Another tenant is not crowded out.
  EXPECT_THAT(tickets.Issue(Grant("beta")).status(), IsOk());
  // A used ticket frees its slot.
  ASSERT_THAT(tickets.Redeem(first).status(), IsOk());
  EXPECT_THAT(tickets.Issue(Grant("alpha")).status(), IsOk());
  EXPECT_EQ(Count(metrics, "kvstash_attach_tickets_refused_total", "exhausted"), 1u);
  // Expired tickets free theirs too (purged when tickets are issued).
  AttachTickets brief(1ms, 1, &metrics);
  ASSERT_THAT(brief.Issue(Grant("alpha")).status(), IsOk());
  std::this_thread::sleep_for(20ms);
  EXPECT_THAT(brief.Issue(Grant("alpha")).status(), IsOk());
  EXPECT_EQ(brief.outstanding(), 1u);
  // The TTL is capped at 10 s.
  EXPECT_EQ(AttachTickets(1h, 1, &metrics).ttl(), AttachTickets::kMaxTtl);
}

}  // namespace
}  // namespace kvstash::cachesvc
