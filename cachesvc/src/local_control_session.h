// The service side of the local control channel: one LocalControlSession per arena-socket
// connection, answering each call with the gRPC handler of the same name (same validation,
// metrics and status codes as gRPC).
//
// Sessions remember the reservations and leases handed out and not yet settled, per client: a
// client names itself with a Hello on each connection, and its connections share one record, so
// a lease acquired on one connection may be released on another. When the client's last
// connection closes, what is still open is aborted or released: a client that dies mid-put frees
// its arena space at once instead of at lease expiry. (Clients keep a connection open for as long
// as they may hold a reservation or lease.)
#ifndef KVSTASH_CACHESVC_LOCAL_CONTROL_SESSION_H_
#define KVSTASH_CACHESVC_LOCAL_CONTROL_SESSION_H_

#include <functional>
#include <memory>
#include <string>

#include "arena_socket.h"
#include "authz.h"
#include "kv_service.h"
#include "kvstash/common/metrics.h"
#include "kvstash/storage/object_store.h"

namespace kvstash::cachesvc {

// Makes the sessions for ArenaSocketServer. All pointers must outlive every session.
LocalControlFactory ServiceLocalSessions(KvStashService* service, storage::ObjectStore* store,
                                         MetricsRegistry* metrics);

// The sessions of a multi-tenant node's authenticated arena socket: each is bound to the caller
// that the `credential` of the connection's attach request named (its bearer token, or the
// client certificate an attach ticket was issued to; authenticated when Authorizer::generation()
// was `generation`: read it before authenticating), and runs every call as that caller
// (KvStashService::CallerScope): the same namespace scoping, id ownership, quota and permission
// checks as the caller's gRPC calls. After a reload of the tokens file (Authorizer::generation
// moved) the credential is checked again before the next call (Authorizer::Reauthenticate): a
// revoked token's or removed certificate's calls are UNAUTHENTICATED from then on, and one that
// now names another tenant (or the peer role) too (its connection mapped the old tenant's
// arena). A client's Hello id is scoped to its tenant, so one tenant cannot join another's record
// of open handles.
using TenantLocalFactory = std::function<std::unique_ptr<LocalControlSession>(
    const Caller& caller, Credential credential, uint64_t generation)>;
TenantLocalFactory TenantLocalSessions(KvStashService* service, storage::ObjectStore* store,
                                       Authorizer* auth, MetricsRegistry* metrics);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_LOCAL_CONTROL_SESSION_H_
