// Row-wise vector operations of the forward pass. Each function reduces in one fixed order that
// depends only on the vector length and the process ISA, so a row's result never depends on the
// other rows of a batch.
#ifndef KVSTASH_ENGINE_SRC_VEC_MATH_H_
#define KVSTASH_ENGINE_SRC_VEC_MATH_H_

#include <cstddef>

namespace kvstash::engine {

// out = x / sqrt(mean(x^2) + eps) * weight. out may alias x.
void RmsNorm(const float* x, const float* weight, size_t n, float eps, float* out);
// gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
void SwiGlu(float* gate, const float* up, size_t n);
// y[i] += x[i].
void AddInPlace(float* y, const float* x, size_t n);
// x[i] = exp(x[i]) (|error| of a few ulp; inputs below about -87 give about 1e-38).
void ExpInPlace(float* x, size_t n);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SRC_VEC_MATH_H_
