#include "attach_tickets.h"

#include <openssl/sha.h>
#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvstash::cachesvc {
namespace {

std::string Digest(std::string_view ticket) {
  std::string d(SHA256_DIGEST_LENGTH, '\0');
  SHA256(reinterpret_cast<const unsigned char*>(ticket.data()), ticket.size(),
         reinterpret_cast<unsigned char*>(d.data()));
  return d;
}

}  // namespace

AttachTickets::AttachTickets(std::chrono::milliseconds ttl, int max_per_tenant,
                             MetricsRegistry* metrics)
    : ttl_(std::clamp(ttl, std::chrono::milliseconds{1}, kMaxTtl)),
      max_per_tenant_(std::max(max_per_tenant, 1)) {
  issued_ = metrics->GetCounter("kvstash_attach_tickets_issued_total",
                                "Arena attach tickets issued to certificate-identified clients");
  redeemed_ = metrics->GetCounter("kvstash_attach_tickets_redeemed_total",
                                  "Arena attach tickets presented and accepted");
  const char* help = "Arena attach tickets refused: issuing one (exhausted) or accepting one";
  exhausted_ =
      metrics->GetCounter("kvstash_attach_tickets_refused_total", help, {{"reason", "exhausted"}});
  malformed_ =
      metrics->GetCounter("kvstash_attach_tickets_refused_total", help, {{"reason", "malformed"}});
  unknown_ =
      metrics->GetCounter("kvstash_attach_tickets_refused_total", help, {{"reason", "unknown"}});
  expired_ =
      metrics->GetCounter("kvstash_attach_tickets_refused_total", help, {{"reason", "expired"}});
}

void AttachTickets::ForgetLocked(const std::string& tenant) {
  auto it = per_tenant_.find(tenant);
  if (it != per_tenant_.end() && --it->second <= 0) per_tenant_.erase(it);
}

void AttachTickets::PurgeLocked(Clock::time_point now) {
  for (auto it = by_digest_.begin(); it != by_digest_.end();) {
    if (it->second.expires <= now) {
      ForgetLocked(it->second.grant.caller.identity.tenant);
      it = by_digest_.erase(it);
    } else {
      ++it;
    }
  }
}

Result<std::string> AttachTickets::Issue(TicketGrant grant) {
  std::string ticket(kTicketBytes, '\0');
  size_t got = 0;
  while (got < ticket.size()) {
    ssize_t n = ::getrandom(ticket.data() + got, ticket.size() - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::UnavailableError("getrandom failed for an attach ticket");
    got += static_cast<size_t>(n);
  }
  std::string digest = Digest(ticket);
  const Clock::time_point now = Clock::now();
  const std::string tenant = grant.caller.identity.tenant;
  MutexLock lock(&mu_);
  PurgeLocked(now);  // at most max_per_tenant_ per tenant of the table: a short walk
  int& count = per_tenant_[tenant];
  if (count >= max_per_tenant_) {
    exhausted_->Increment();
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant ", tenant, " has ", count,
                     " attach tickets outstanding (limits.attach_tickets); use them or let them "
                     "expire"));
  }
  ++count;
  by_digest_[std::move(digest)] = Entry{std::move(grant), now + ttl_};
  issued_->Increment();
  return ticket;
}

Result<TicketGrant> AttachTickets::Redeem(std::string_view ticket) {
  if (ticket.size() != kTicketBytes) {
    malformed_->Increment();
    return absl::UnauthenticatedError(
        absl::StrCat("an attach ticket is ", kTicketBytes, " bytes; this one has ", ticket.size()));
  }
  const std::string digest = Digest(ticket);
  const Clock::time_point now = Clock::now();
  MutexLock lock(&mu_);
  auto it = by_digest_.find(digest);
  if (it == by_digest_.end()) {
    unknown_->Increment();
    return absl::UnauthenticatedError("unknown or already used attach ticket");
  }
  // Used up whatever happens next: a ticket never opens a second attach.
  Entry entry = std::move(it->second);
  by_digest_.erase(it);
  ForgetLocked(entry.grant.caller.identity.tenant);
  if (entry.expires <= now) {
    expired_->Increment();
    return absl::UnauthenticatedError(
        absl::StrCat("attach ticket expired (valid ", ttl_.count(), " ms)"));
  }
  redeemed_->Increment();
  return std::move(entry.grant);
}

size_t AttachTickets::outstanding() const {
  MutexLock lock(&mu_);
  return by_digest_.size();
}

}  // namespace kvstash::cachesvc
