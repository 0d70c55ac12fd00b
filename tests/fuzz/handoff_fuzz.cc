// Handoff descriptors come from another engine through a router: untrusted bytes. Parse must
// reject or accept without crashing, and what it accepts must survive a round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "kvstash/client/kv_client.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed =
      kvstash::client::Handoff::Parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!parsed.ok()) return 0;
  if (parsed->names.size() != parsed->payload_bytes.size()) std::abort();
  auto again = kvstash::client::Handoff::Parse(parsed->Serialize());
  if (!again.ok() || again->id != parsed->id || again->node != parsed->node ||
      again->names.size() != parsed->names.size()) {
    std::abort();
  }
  for (size_t i = 0; i < parsed->names.size(); ++i) {
    if (!(again->names[i].storage_key == parsed->names[i].storage_key)) std::abort();
  }
  return 0;
}
