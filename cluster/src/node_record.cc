#include "kvstash/cluster/node_record.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace kvstash::cluster {
namespace {

using Json = nlohmann::json;

Result<std::string> StringField(const Json& j, const char* name, size_t max_bytes, bool required) {
  auto it = j.find(name);
  if (it == j.end()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("node record without ", name));
    return std::string();
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("node record field ", name, " not a string"));
  }
  std::string value = it->get<std::string>();
  if (value.size() > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("node record field ", name, " too long"));
  }
  return value;
}

Result<uint64_t> U64Field(const Json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return absl::InvalidArgumentError(absl::StrCat("node record without ", name));
  if (!it->is_number_unsigned()) {
    return absl::InvalidArgumentError(
        absl::StrCat("node record field ", name, " not an unsigned integer"));
  }
  return it->get<uint64_t>();
}

}  // namespace

bool ValidNodeId(std::string_view id) {
  if (id.empty() || id.size() > kMaxNodeIdBytes) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string EncodeNodeRecord(const NodeRecord& record) {
  Json j = {{"id", record.id},           {"grpc", record.grpc_address},
            {"ucx", record.ucx_address}, {"capacity", record.capacity_bytes},
            {"zone", record.zone},       {"epoch", record.epoch}};
  return j.dump();
}

Result<NodeRecord> DecodeNodeRecord(std::string_view json) {
  if (json.size() > kMaxRecordBytes) return absl::InvalidArgumentError("node record too large");
  // No exceptions: parse errors come back as a discarded value.
  Json j = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("node record is not a JSON object");
  }
  NodeRecord r;
  KVSTASH_ASSIGN_OR_RETURN(r.id, StringField(j, "id", kMaxNodeIdBytes, true));
  if (!ValidNodeId(r.id)) return absl::InvalidArgumentError("node record with an invalid id");
  KVSTASH_ASSIGN_OR_RETURN(r.grpc_address, StringField(j, "grpc", kMaxAddressBytes, true));
  if (r.grpc_address.empty()) return absl::InvalidArgumentError("node record with empty grpc");
  KVSTASH_ASSIGN_OR_RETURN(r.ucx_address, StringField(j, "ucx", 64 * 1024, false));
  KVSTASH_ASSIGN_OR_RETURN(r.zone, StringField(j, "zone", kMaxAddressBytes, false));
  KVSTASH_ASSIGN_OR_RETURN(r.capacity_bytes, U64Field(j, "capacity"));
  KVSTASH_ASSIGN_OR_RETURN(r.epoch, U64Field(j, "epoch"));
  return r;
}

}  // namespace kvstash::cluster
