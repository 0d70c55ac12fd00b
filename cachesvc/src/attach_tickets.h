// Attach tickets: how a client identified only by its client certificate maps its tenant's arena
// (docs/deploy.md "Attach tickets"). The arena socket is a unix socket, with no certificate to
// check, so such a client asks for a ticket over its mutual-TLS gRPC channel (ArenaInfo with
// `attach_ticket`) and presents it in its attach request instead of a bearer token.
//
// A ticket is 32 bytes from the kernel's CSPRNG (getrandom), good for one attach within the TTL
// (at most kMaxTtl), bound to the identity its certificate mapped to when it was issued (tenant,
// role, read-only access) and to the certificate's names (for the re-checks after a reload). The
// service keeps only each ticket's SHA-256, so a copy of its memory yields no usable ticket, and
// finds a presented ticket by that digest: the attacker chooses the ticket, not the digest, so
// the lookup's timing tells nothing about stored tickets. At most `max_per_tenant` tickets of a
// tenant are outstanding (issued, not used, not expired): one tenant cannot crowd out another's.
//
// Thread-safe.
#ifndef KVSTASH_CACHESVC_ATTACH_TICKETS_H_
#define KVSTASH_CACHESVC_ATTACH_TICKETS_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include "authz.h"
#include "kvstash/common/metrics.h"
#include "kvstash/common/mutex.h"
#include "kvstash/common/status.h"

namespace kvstash::cachesvc {

// What a ticket stands for.
struct TicketGrant {
  Caller caller;
  Credential credential;    // the certificate's names
  uint64_t generation = 0;  // Authorizer::generation() read before `caller` was authenticated
};

class AttachTickets {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kMaxTtl{10'000};
  static constexpr size_t kTicketBytes = 32;

  // `ttl` is clamped to (0, kMaxTtl]; `max_per_tenant` to at least 1. `metrics` must outlive this.
  AttachTickets(std::chrono::milliseconds ttl, int max_per_tenant, MetricsRegistry* metrics);

  std::chrono::milliseconds ttl() const { return ttl_; }

  // A new ticket for `grant`: its 32 bytes, which are not kept. ResourceExhausted when the
  // grant's tenant has max_per_tenant tickets outstanding; Unavailable when getrandom fails.
  // Counted in kvstash_attach_tickets_issued_total / _refused_total{reason="exhausted"}.
  Result<std::string> Issue(TicketGrant grant);

  // Consumes `ticket` and returns its grant. Unauthenticated for a ticket of the wrong length
  // (malformed), one never issued or already used (unknown), or one past its TTL (expired; used
  // up too): kvstash_attach_tickets_refused_total{reason}. Messages never echo the ticket.
  Result<TicketGrant> Redeem(std::string_view ticket);

  // Tickets issued and neither used nor purged yet (expired ones are purged when tickets are
  // issued).
  size_t outstanding() const;

 private:
  struct Entry {
    TicketGrant grant;
    Clock::time_point expires;
  };
  // Drops expired tickets.
  void PurgeLocked(Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ForgetLocked(const std::string& tenant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::chrono::milliseconds ttl_;
  const int max_per_tenant_;
  Counter* issued_;
  Counter* redeemed_;
  Counter* exhausted_;
  Counter* malformed_;
  Counter* unknown_;
  Counter* expired_;
  mutable Mutex mu_;
  std::unordered_map<std::string, Entry> by_digest_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, int> per_tenant_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_ATTACH_TICKETS_H_
