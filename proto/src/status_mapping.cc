#include "kvstash/proto/status_mapping.h"

#include <string>

namespace kvstash {
namespace {

absl::StatusCode CodeFromInt(int code) {
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::StatusCode::kUnknown;
  }
  return static_cast<absl::StatusCode>(code);
}

}  // namespace

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return OkStatus();
  return Status(CodeFromInt(static_cast<int>(status.error_code())), status.error_message());
}

void ToItemStatus(const Status& status, v1::ItemStatus* out) {
  out->set_code(static_cast<int>(status.code()));
  out->set_message(std::string(status.message()));
}

Status FromItemStatus(const v1::ItemStatus& item) {
  if (item.code() == 0) return OkStatus();
  return Status(CodeFromInt(item.code()), item.message());
}

}  // namespace kvstash
