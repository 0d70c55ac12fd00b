// Interleaved rANS for the KVQ container (docs/codec.md §9): 32-bit states, 16-bit words,
// 12-bit probabilities, kLanes states per stream, one frequency table per context.
//
// Stream layout: kLanes initial decoder states (u32 LE), then the 16-bit words (u16 LE) in the
// order the decoder consumes them. Symbol k of a stream uses state k % kLanes and the table of
// context ctx[k % period]. The decoder starts from the stored states, the encoder from kLow in
// every lane, so a well-formed stream ends with every state at kLow and every word consumed;
// DecodeStream checks both, which rejects truncated and most corrupted streams.
//
// Thread-safety: all functions are pure over their arguments.
#ifndef KVSTASH_CODEC_SRC_RANS_H_
#define KVSTASH_CODEC_SRC_RANS_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace kvstash::codec::internal::rans {

inline constexpr int kProbBits = 12;
inline constexpr uint32_t kProbScale = 1u << kProbBits;
inline constexpr int kLanes = 32;
inline constexpr uint32_t kLow = 1u << 16;  // states live in [kLow, 2^32)
inline constexpr size_t kStateBytes = kLanes * 4;

// Frequencies of an alphabet of n symbols (2 <= n <= 256): every symbol >= 1, sum kProbScale,
// so each is <= kProbScale - 1 and fits 12 bits. Counts may be all zero (uniform result).
void NormalizeFreqs(const uint64_t* counts, int n, uint16_t* freqs);
bool ValidFreqs(const uint16_t* freqs, int n);

// Worst case: every symbol emits one word.
inline size_t MaxStreamBytes(size_t symbols) { return kStateBytes + 2 * symbols; }

struct EncSymbol {
  uint32_t x_max = 0;  // renormalise while x >= x_max
  uint32_t freq = 1;
  uint32_t cum = 0;
  uint64_t rcp = 0;  // ceil(2^44 / freq): x / freq == (x * rcp) >> 44 for every x < 2^32
};
struct EncTable {
  EncSymbol sym[256];
};
// Decode entry per slot: symbol << 24 | freq << 12 | (slot - cum).
struct DecTable {
  uint32_t lut[kProbScale];
};

void BuildEncTable(const uint16_t* freqs, int n, EncTable* table);
void BuildDecTable(const uint16_t* freqs, int n, DecTable* table);

// Encodes syms[0, n) (each < its table's alphabet) into out (at least MaxStreamBytes(n) bytes);
// returns the stream length. ctx has `period` entries, each an index into tables.
size_t EncodeStream(const uint8_t* syms, size_t n, const uint8_t* ctx, uint32_t period,
                    const EncTable* tables, uint8_t* out);

// Decodes n symbols from stream[0, len). False if the stream is shorter than the states, reads
// past its end, leaves words unread or does not end in the encoder's initial states. Uses the
// AVX-512 path when the CPU has it and period % 16 == 0 (identical output); `allow_simd` = false
// forces the portable path (tests).
bool DecodeStream(const uint8_t* stream, size_t len, size_t n, const uint8_t* ctx, uint32_t period,
                  const DecTable* tables, uint8_t* syms, bool allow_simd = true);

// One stream to decode (the arguments of DecodeStream).
struct StreamJob {
  const uint8_t* stream;
  size_t len;
  size_t n;
  const uint8_t* ctx;
  uint32_t period;
  const DecTable* tables;
  uint8_t* syms;
};
// Which decoder runs: all give identical symbols and results. kBest = AVX-512 when the CPU has it
// and period % 16 == 0, else AVX2 when it has that and period % 8 == 0, else portable. A path
// the CPU lacks (or the period does not fit) falls back to portable.
enum class DecodePath { kPortable, kAvx2, kAvx512, kBest };
bool DecodeStream(const StreamJob& job, DecodePath path = DecodePath::kBest);
inline bool DecodeStream(const StreamJob& job, bool allow_simd) {
  return DecodeStream(job, allow_simd ? DecodePath::kBest : DecodePath::kPortable);
}

// Decodes two independent streams, interleaving their vector steps (twice the independent
// dependency chains); ok[i] and the symbols are exactly what DecodeStream gives for each.
void DecodeStreamPair(const StreamJob& a, const StreamJob& b, bool ok[2], bool allow_simd = true);

bool SimdDecodeAvailable();
bool Avx2DecodeAvailable();

}  // namespace kvstash::codec::internal::rans

#endif  // KVSTASH_CODEC_SRC_RANS_H_
