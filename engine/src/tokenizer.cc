#include "kvstash/engine/tokenizer.h"

namespace kvstash::engine {

std::string Tokenizer::Decode(std::span<const int32_t> tokens) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t t : tokens) {
    out += Piece(prev, t);
    prev = t;
  }
  return out;
}

}  // namespace kvstash::engine
