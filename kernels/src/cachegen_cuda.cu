// CacheGen on CUDA: quantise, per-(row, channel) CDF, range encode, compact; range decode +
// dequantise. One thread per stream, like the reference kernels, but stream buffers are sized
// from the worst case (18 bits per symbol + 2) instead of a fixed 256 bytes, and all arithmetic
// is the shared host/device code of cachegen_core.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cachegen_cuda_launch.h"
#include "kvstash/kernels/cachegen_core.h"

namespace kvstash::kernels::detail {
namespace {

namespace cg = cachegen;

constexpr int kQuantThreads = 256;
constexpr int kStreamThreads = 128;

enum ErrorBits : int { kNonFinite = 1, kOverflow = 2, kBadSymbol = 4 };

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  cudaError_t Alloc(size_t bytes) { return cudaMalloc(&p_, bytes == 0 ? 1 : bytes); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

CgResult CudaFailure(const char* what, cudaError_t e) {
  return {CgCode::kInternal, std::string("CUDA ") + what + ": " + cudaGetErrorString(e)};
}

#define CG_CUDA(expr)                                               \
  do {                                                              \
    cudaError_t cg_err_ = (expr);                                   \
    if (cg_err_ != cudaSuccess) return CudaFailure(#expr, cg_err_); \
  } while (0)

__device__ __forceinline__ float LoadAsFloat(const void* base, size_t i, int dtype) {
  if (dtype == 1) return __half2float(static_cast<const __half*>(base)[i]);
  if (dtype == 2) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

__device__ __forceinline__ void StoreFromFloat(void* base, size_t i, int dtype, float v) {
  if (dtype == 1) {
    static_cast<__half*>(base)[i] = __float2half_rn(v);
  } else if (dtype == 2) {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(base)[i] = v;
  }
}

// Element (row, token, channel) of the layer-major [L][K|V][T][C] chunk.
__device__ __forceinline__ size_t ElementIndex(uint32_t row, uint32_t t, uint32_t c,
                                               const CgShape& s) {
  const uint32_t layer = row < s.layers ? row : row - s.layers;
  const uint32_t half = row < s.layers ? 0u : 1u;
  return ((static_cast<size_t>(layer) * 2 + half) * s.tokens + t) * s.channels + c;
}

// One block per (token, row): max |x| over the channels, then symbols.
__global__ void QuantizeKernel(const void* kv, CgShape s, const uint8_t* bins, uint8_t* sym,
                               float* scales, int* error) {
  __shared__ float red[kQuantThreads];
  const uint32_t t = blockIdx.x;
  const uint32_t row = blockIdx.y;
  float local = 0.0f;
  bool bad = false;
  for (uint32_t c = threadIdx.x; c < s.channels; c += blockDim.x) {
    const float x = LoadAsFloat(kv, ElementIndex(row, t, c, s), s.dtype);
    bad |= !isfinite(x);
    local = fmaxf(local, fabsf(x));
  }
  if (bad) atomicOr(error, kNonFinite);
  red[threadIdx.x] = local;
  __syncthreads();
  for (int stride = kQuantThreads / 2; stride > 0; stride >>= 1) {
    if (static_cast<int>(threadIdx.x) < stride) {
      red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  const float m = red[0];
  const int cq = cg::QuantCq(bins[row]);
  const float factor = cg::QuantFactor(m, cq);
  uint8_t* out = sym + (static_cast<size_t>(row) * s.tokens + t) * s.channels;
  for (uint32_t c = threadIdx.x; c < s.channels; c += blockDim.x) {
    const float x = LoadAsFloat(kv, ElementIndex(row, t, c, s), s.dtype);
    out[c] = static_cast<uint8_t>(cg::QuantizeValue(x, factor, cq));
  }
  if (threadIdx.x == 0) scales[static_cast<size_t>(row) * s.tokens + t] = cg::StoredScale(m);
}

// One thread per (row, channel): histogram over all tokens, then the 16-bit CDF.
__global__ void CdfKernel(const uint8_t* sym, CgShape s, uint16_t* cdf) {
  const uint64_t idx = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const uint64_t rc_count = static_cast<uint64_t>(2) * s.layers * s.channels;
  if (idx >= rc_count) return;
  const uint32_t row = static_cast<uint32_t>(idx / s.channels);
  const uint32_t c = static_cast<uint32_t>(idx % s.channels);
  const int mb = static_cast<int>(s.lp) - 1;
  uint32_t hist[cg::kMaxLp];
  for (int i = 0; i < cg::kMaxLp; ++i) hist[i] = 0;
  const uint8_t* col = sym + static_cast<size_t>(row) * s.tokens * s.channels + c;
  for (uint32_t t = 0; t < s.tokens; ++t) {
    const uint8_t v = col[static_cast<size_t>(t) * s.channels];
    if (v < mb) ++hist[v];
  }
  uint16_t* out = cdf + idx * s.lp;
  uint64_t cum = 0;
  for (int i = 0; i <= mb; ++i) {
    out[i] = cg::CdfValue(cum, s.tokens, mb, i);
    if (i < mb) cum += hist[i];
  }
}

struct StreamCoords {
  uint32_t row, channel, t0, t1;
  uint64_t rc;  // row * C + channel
};

__device__ __forceinline__ StreamCoords Coords(uint64_t idx, const CgShape& s) {
  const uint64_t per_sub = static_cast<uint64_t>(2) * s.layers * s.channels;
  StreamCoords k;
  const uint32_t sub = static_cast<uint32_t>(idx / per_sub);
  k.rc = idx % per_sub;
  k.row = static_cast<uint32_t>(k.rc / s.channels);
  k.channel = static_cast<uint32_t>(k.rc % s.channels);
  k.t0 = sub * s.subchunk;
  k.t1 = min(s.tokens, k.t0 + s.subchunk);
  return k;
}

// One thread per stream (sub-chunk, row, channel), writing into its worst-case slot of scratch.
__global__ void EncodeKernel(const uint8_t* sym, const uint16_t* cdf, CgShape s, uint64_t streams,
                             uint64_t max_bytes, uint8_t* scratch, uint32_t* lengths, int* error) {
  const uint64_t idx = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= streams) return;
  const StreamCoords k = Coords(idx, s);
  uint32_t table[cg::kTableSize];
  cg::BuildTable(cg::CdfView{cdf + k.rc * s.lp}, static_cast<int>(s.lp), cg::TableRef{table});
  const cg::TableView view{table};
  cg::BitWriter w(scratch + idx * max_bytes, max_bytes);
  cg::EncoderState st;
  const uint8_t* col = sym + static_cast<size_t>(k.row) * s.tokens * s.channels + k.channel;
  for (uint32_t t = k.t0; t < k.t1; ++t) {
    cg::EncodeSymbol(st, view, col[static_cast<size_t>(t) * s.channels], w);
  }
  cg::FinishEncode(st, w);
  if (w.overflowed()) atomicOr(error, kOverflow);
  lengths[idx] = static_cast<uint32_t>(min(w.size(), max_bytes));
}

__global__ void CompactKernel(const uint8_t* scratch, uint64_t max_bytes, const uint32_t* lengths,
                              const uint64_t* offsets, uint64_t streams, uint8_t* payload) {
  for (uint64_t idx = blockIdx.x; idx < streams; idx += gridDim.x) {
    const uint8_t* src = scratch + idx * max_bytes;
    uint8_t* dst = payload + offsets[idx];
    for (uint32_t j = threadIdx.x; j < lengths[idx]; j += blockDim.x) dst[j] = src[j];
  }
}

// One thread per stream: decode its symbols and write dequantised values in place.
__global__ void DecodeKernel(const uint16_t* cdf, const uint8_t* bins, const float* scales,
                             const uint32_t* lengths, const uint64_t* offsets,
                             const uint8_t* payload, CgShape s, uint64_t streams, void* out,
                             int* error) {
  const uint64_t idx = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= streams) return;
  const StreamCoords k = Coords(idx, s);
  uint32_t table[cg::kTableSize];
  cg::BuildTable(cg::CdfView{cdf + k.rc * s.lp}, static_cast<int>(s.lp), cg::TableRef{table});
  const cg::TableView view{table};
  cg::BitReader r(payload + offsets[idx], lengths[idx]);
  cg::DecoderState st;
  cg::StartDecode(st, r);
  const int cq = cg::QuantCq(bins[k.row]);
  bool bad = false;
  for (uint32_t t = k.t0; t < k.t1; ++t) {
    int v = cg::DecodeSymbol(st, view, r);
    if (v > 2 * cq) {
      bad = true;
      v = cq;
    }
    const float x = cg::DequantizeValue(v, cq, scales[static_cast<size_t>(k.row) * s.tokens + t]);
    StoreFromFloat(out, ElementIndex(k.row, t, k.channel, s), s.dtype, x);
  }
  if (bad) atomicOr(error, kBadSymbol);
}

size_t DTypeBytes(int dtype) { return dtype == 3 ? 4 : 2; }

unsigned int Blocks(uint64_t n, int threads) {
  return static_cast<unsigned int>((n + threads - 1) / threads);
}

}  // namespace

CgResult CgEncode(const void* kv, bool kv_on_device, const CgShape& s, const uint8_t* bins,
                  const uint16_t* cdf_in, float* scales, uint16_t* cdf_out, uint32_t* lengths,
                  std::vector<uint8_t>* payload) {
  const uint32_t rows = 2 * s.layers;
  const uint64_t elements = static_cast<uint64_t>(rows) * s.tokens * s.channels;
  const uint64_t subchunks = (s.tokens + s.subchunk - 1) / s.subchunk;
  const uint64_t streams = subchunks * rows * s.channels;
  const uint64_t max_bytes = cg::MaxStreamBytes(s.subchunk);
  const uint64_t cdf_entries = static_cast<uint64_t>(rows) * s.channels * s.lp;

  DeviceBuffer d_kv, d_bins, d_sym, d_scales, d_cdf, d_err, d_scratch, d_len, d_off, d_payload;
  const void* kv_dev = kv;
  if (!kv_on_device) {
    CG_CUDA(d_kv.Alloc(elements * DTypeBytes(s.dtype)));
    CG_CUDA(
        cudaMemcpy(d_kv.as<void>(), kv, elements * DTypeBytes(s.dtype), cudaMemcpyHostToDevice));
    kv_dev = d_kv.as<void>();
  }
  CG_CUDA(d_bins.Alloc(rows));
  CG_CUDA(cudaMemcpy(d_bins.as<void>(), bins, rows, cudaMemcpyHostToDevice));
  CG_CUDA(d_sym.Alloc(elements));
  CG_CUDA(d_scales.Alloc(static_cast<size_t>(rows) * s.tokens * sizeof(float)));
  CG_CUDA(d_cdf.Alloc(cdf_entries * sizeof(uint16_t)));
  CG_CUDA(d_err.Alloc(sizeof(int)));
  CG_CUDA(cudaMemset(d_err.as<void>(), 0, sizeof(int)));
  CG_CUDA(d_scratch.Alloc(streams * max_bytes));
  CG_CUDA(d_len.Alloc(streams * sizeof(uint32_t)));

  QuantizeKernel<<<dim3(s.tokens, rows), kQuantThreads>>>(
      kv_dev, s, d_bins.as<uint8_t>(), d_sym.as<uint8_t>(), d_scales.as<float>(), d_err.as<int>());
  CG_CUDA(cudaGetLastError());
  if (cdf_in != nullptr) {
    CG_CUDA(cudaMemcpy(d_cdf.as<void>(), cdf_in, cdf_entries * sizeof(uint16_t),
                       cudaMemcpyHostToDevice));
  } else {
    CdfKernel<<<Blocks(uint64_t{rows} * s.channels, kStreamThreads), kStreamThreads>>>(
        d_sym.as<uint8_t>(), s, d_cdf.as<uint16_t>());
    CG_CUDA(cudaGetLastError());
  }
  EncodeKernel<<<Blocks(streams, kStreamThreads), kStreamThreads>>>(
      d_sym.as<uint8_t>(), d_cdf.as<uint16_t>(), s, streams, max_bytes, d_scratch.as<uint8_t>(),
      d_len.as<uint32_t>(), d_err.as<int>());
  CG_CUDA(cudaGetLastError());
  CG_CUDA(cudaDeviceSynchronize());

  int err = 0;
  CG_CUDA(cudaMemcpy(&err, d_err.as<void>(), sizeof(int), cudaMemcpyDeviceToHost));
  if (err & kNonFinite) return {CgCode::kInvalidArgument, "KV contains NaN or infinity"};
  if (err & kOverflow) return {CgCode::kInternal, "CacheGen stream exceeded its bound"};

  CG_CUDA(cudaMemcpy(scales, d_scales.as<void>(), static_cast<size_t>(rows) * s.tokens * 4,
                     cudaMemcpyDeviceToHost));
  if (cdf_in == nullptr) {
    CG_CUDA(cudaMemcpy(cdf_out, d_cdf.as<void>(), cdf_entries * sizeof(uint16_t),
                       cudaMemcpyDeviceToHost));
  }
  CG_CUDA(
      cudaMemcpy(lengths, d_len.as<void>(), streams * sizeof(uint32_t), cudaMemcpyDeviceToHost));
  std::vector<uint64_t> offsets(streams);
  uint64_t total = 0;
  for (uint64_t i = 0; i < streams; ++i) {
    offsets[i] = total;
    total += lengths[i];
  }
  payload->assign(total, 0);
  CG_CUDA(d_off.Alloc(streams * sizeof(uint64_t)));
  CG_CUDA(cudaMemcpy(d_off.as<void>(), offsets.data(), streams * sizeof(uint64_t),
                     cudaMemcpyHostToDevice));
  CG_CUDA(d_payload.Alloc(total));
  const unsigned int compact_blocks = static_cast<unsigned int>(std::min<uint64_t>(streams, 65535));
  CompactKernel<<<compact_blocks, 32>>>(d_scratch.as<uint8_t>(), max_bytes, d_len.as<uint32_t>(),
                                        d_off.as<uint64_t>(), streams, d_payload.as<uint8_t>());
  CG_CUDA(cudaGetLastError());
  CG_CUDA(cudaMemcpy(payload->data(), d_payload.as<void>(), total, cudaMemcpyDeviceToHost));
  return {};
}

CgResult CgDecode(const CgShape& s, const uint8_t* bins, const uint16_t* cdf, const float* scales,
                  const uint32_t* lengths, const uint64_t* offsets, const uint8_t* payload,
                  uint64_t payload_bytes, void* out, bool out_on_device) {
  const uint32_t rows = 2 * s.layers;
  const uint64_t elements = static_cast<uint64_t>(rows) * s.tokens * s.channels;
  const uint64_t subchunks = (s.tokens + s.subchunk - 1) / s.subchunk;
  const uint64_t streams = subchunks * rows * s.channels;
  const uint64_t cdf_entries = static_cast<uint64_t>(rows) * s.channels * s.lp;
  const size_t out_bytes = elements * DTypeBytes(s.dtype);

  DeviceBuffer d_bins, d_cdf, d_scales, d_len, d_off, d_payload, d_out, d_err;
  CG_CUDA(d_bins.Alloc(rows));
  CG_CUDA(cudaMemcpy(d_bins.as<void>(), bins, rows, cudaMemcpyHostToDevice));
  CG_CUDA(d_cdf.Alloc(cdf_entries * sizeof(uint16_t)));
  CG_CUDA(
      cudaMemcpy(d_cdf.as<void>(), cdf, cdf_entries * sizeof(uint16_t), cudaMemcpyHostToDevice));
  CG_CUDA(d_scales.Alloc(static_cast<size_t>(rows) * s.tokens * sizeof(float)));
  CG_CUDA(cudaMemcpy(d_scales.as<void>(), scales, static_cast<size_t>(rows) * s.tokens * 4,
                     cudaMemcpyHostToDevice));
  CG_CUDA(d_len.Alloc(streams * sizeof(uint32_t)));
  CG_CUDA(
      cudaMemcpy(d_len.as<void>(), lengths, streams * sizeof(uint32_t), cudaMemcpyHostToDevice));
  CG_CUDA(d_off.Alloc(streams * sizeof(uint64_t)));
  CG_CUDA(
      cudaMemcpy(d_off.as<void>(), offsets, streams * sizeof(uint64_t), cudaMemcpyHostToDevice));
  CG_CUDA(d_payload.Alloc(payload_bytes));
  CG_CUDA(cudaMemcpy(d_payload.as<void>(), payload, payload_bytes, cudaMemcpyHostToDevice));
  CG_CUDA(d_err.Alloc(sizeof(int)));
  CG_CUDA(cudaMemset(d_err.as<void>(), 0, sizeof(int)));
  void* out_dev = out;
  if (!out_on_device) {
    CG_CUDA(d_out.Alloc(out_bytes));
    out_dev = d_out.as<void>();
  }
  DecodeKernel<<<Blocks(streams, kStreamThreads), kStreamThreads>>>(
      d_cdf.as<uint16_t>(), d_bins.as<uint8_t>(), d_scales.as<float>(), d_len.as<uint32_t>(),
      d_off.as<uint64_t>(), d_payload.as<uint8_t>(), s, streams, out_dev, d_err.as<int>());
  CG_CUDA(cudaGetLastError());
  CG_CUDA(cudaDeviceSynchronize());
  int err = 0;
  CG_CUDA(cudaMemcpy(&err, d_err.as<void>(), sizeof(int), cudaMemcpyDeviceToHost));
  if (err & kBadSymbol) return {CgCode::kDataLoss, "CacheGen stream decodes to an invalid symbol"};
  if (!out_on_device) {
    CG_CUDA(cudaMemcpy(out, out_dev, out_bytes, cudaMemcpyDeviceToHost));
  }
  return {};
}

}  // namespace kvstash::kernels::detail
