// Fuzz target: the GGUF container parser (engine gguf.h), which reads model files a user
// points the engine at.
//
// Input: the file's bytes.
// Invariants: no out-of-bounds reads; a file that parses has every tensor's data inside the input
// (its first and last byte are read, so ASan sees a tensor that points outside), tensors are
// found by name, and every typed getter answers every key without crashing.
#include <cstdint>
#include <span>

#include "kvstash/engine/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvstash::engine;
  auto file = GgufFile::Parse(std::span<const uint8_t>(data, size));
  if (!file.ok()) return 0;
  const GgufFile& f = **file;
  const uint8_t* begin = f.bytes().data();
  const uint8_t* end = begin + f.bytes().size();
  volatile uint8_t sink = 0;
  for (const GgufTensor& t : f.tensors()) {
    if (f.FindTensor(t.name) == nullptr) __builtin_trap();
    if (t.bytes == 0) continue;
    if (t.data == nullptr || t.data < begin || t.data > end ||
        t.bytes > static_cast<uint64_t>(end - t.data)) {
      __builtin_trap();
    }
    sink = sink + t.data[0] + t.data[t.bytes - 1];
  }
  for (const auto& [key, value] : f.metadata()) {
    if (f.Find(key) == nullptr) __builtin_trap();
    (void)f.GetString(key);
    (void)f.GetU32(key);
    (void)f.GetF32(key);
    (void)f.GetBool(key);
    (void)f.GetStringArray(key);
    (void)f.GetNumArray(key);
  }
  return 0;
}
