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

#include "arena_socket.h"
#include "kv_service.h"
#include "kvstash/common/metrics.h"
#include "kvstash/storage/object_store.h"

namespace kvstash::cachesvc {

// Makes the sessions for ArenaSocketServer. All pointers must outlive every session.
LocalControlFactory ServiceLocalSessions(KvStashService* service, storage::ObjectStore* store,
                                         MetricsRegistry* metrics);

}  // namespace kvstash::cachesvc

#endif  // KVSTASH_CACHESVC_LOCAL_CONTROL_SESSION_H_
