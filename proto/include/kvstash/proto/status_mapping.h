// The one place where kvstash::Status meets grpc::Status. absl and gRPC share the numbering of
// status codes, so the mapping is lossless in both directions.
#ifndef KVSTASH_PROTO_STATUS_MAPPING_H_
#define KVSTASH_PROTO_STATUS_MAPPING_H_

#include <grpcpp/support/status.h>

#include "kvstash/common/status.h"
#include "kvstash/v1/kvstash.pb.h"

namespace kvstash {

grpc::Status ToGrpcStatus(const Status& status);
Status FromGrpcStatus(const grpc::Status& status);

// Per-item status inside batched responses.
void ToItemStatus(const Status& status, v1::ItemStatus* out);
Status FromItemStatus(const v1::ItemStatus& item);

}  // namespace kvstash

#endif  // KVSTASH_PROTO_STATUS_MAPPING_H_
