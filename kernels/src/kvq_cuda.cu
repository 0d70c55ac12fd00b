// KVQ decode on CUDA (kvq_cuda.h): one warp per (sub-chunk, row) stream. Lane i owns rANS state
// i, so the warp decodes 32 symbols per step; states that fall below 2^16 refill from the shared
// word stream in lane order (ballot + prefix popcount), which is exactly the order of the CPU
// decoder (codec/src/rans.cc). Dequantisation is fused: x = min + q * step in f32 without FMA,
// rounded to the KV dtype to nearest even, as on the CPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "kvq_cuda_launch.h"

namespace kvstash::kernels::detail {
namespace {

constexpr uint32_t kLow = 1u << 16;
constexpr uint32_t kMask12 = 4095;

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);
  }
  cudaError_t Upload(const void* src, size_t bytes) {
    cudaError_t e = cudaMalloc(&p_, bytes == 0 ? 1 : bytes);
    if (e != cudaSuccess || bytes == 0) return e;
    return cudaMemcpy(p_, src, bytes, cudaMemcpyHostToDevice);
  }
  cudaError_t Alloc(size_t bytes) { return cudaMalloc(&p_, bytes == 0 ? 1 : bytes); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

struct Device {
  uint32_t layers, channels, tokens, subchunk, group_tokens, outliers;
  int dtype;
  const uint8_t* per_channel;
  const uint32_t* luts;
  const uint32_t* lut_base;
  const uint8_t* ctx;
  const int32_t* outlier_slot;
  const uint8_t* outlier_values;
  const float* params;
  const uint64_t* param_base;
  const uint32_t* param_rows;
  const uint8_t* payload;
  const uint64_t* stream_offset;
  const uint32_t* stream_length;
};

__device__ __forceinline__ void Store(void* base, size_t i, int dtype, float v) {
  if (dtype == 1) {
    static_cast<__half*>(base)[i] = __float2half_rn(v);
  } else if (dtype == 2) {
    static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<float*>(base)[i] = v;
  }
}

__global__ void DecodeKernel(Device d, void* out, int* error) {
  const uint32_t rows = 2 * d.layers;
  const uint32_t item = blockIdx.x;  // sub-chunk * rows + row
  const uint32_t row = item % rows, sub = item / rows;
  const uint32_t lane = threadIdx.x;
  const uint32_t t0 = sub * d.subchunk;
  const uint32_t n_tokens = min(d.subchunk, d.tokens - t0);
  const uint64_t n = uint64_t{n_tokens} * d.channels;
  const uint8_t* s = d.payload + d.stream_offset[item];
  const uint32_t len = d.stream_length[item];
  uint32_t x = uint32_t{s[4 * lane]} | uint32_t{s[4 * lane + 1]} << 8 |
               uint32_t{s[4 * lane + 2]} << 16 | uint32_t{s[4 * lane + 3]} << 24;
  bool bad = x < kLow;
  uint32_t p = 128;
  const uint32_t* lut = d.luts + uint64_t{d.lut_base[row]} * 4096;
  const uint8_t* ctx = d.ctx + uint64_t{row} * d.channels;
  const int32_t* slot = d.outlier_slot + uint64_t{row} * d.channels;
  const float* mins = d.params + d.param_base[row];
  const float* steps = mins + d.param_rows[row];
  const bool per_channel = d.per_channel[row] != 0;
  const uint32_t layer = row < d.layers ? row : row - d.layers;
  const size_t row_base = (size_t{layer} * 2 + (row < d.layers ? 0 : 1)) * d.tokens * d.channels;
  const size_t es = d.dtype == 3 ? 4 : 2;
  for (uint64_t k0 = 0; k0 < n; k0 += 32) {
    const uint64_t k = k0 + lane;
    const bool active = k < n;
    uint32_t sym = 0, c = 0, t = 0;
    bool need = false;
    if (active) {
      c = static_cast<uint32_t>(k % d.channels);
      t = t0 + static_cast<uint32_t>(k / d.channels);
      const uint32_t e = lut[uint32_t{ctx[c]} * 4096 + (x & kMask12)];
      sym = e >> 24;
      x = ((e >> 12) & kMask12) * (x >> 12) + (e & kMask12);
      need = x < kLow;
    }
    const uint32_t mask = __ballot_sync(0xFFFFFFFFu, need);
    if (need) {
      const uint32_t at = p + 2 * __popc(mask & ((1u << lane) - 1));
      if (at + 2 > len) {
        bad = true;
      } else {
        x = x << 16 | uint32_t{s[at]} | uint32_t{s[at + 1]} << 8;
      }
    }
    p += 2 * __popc(mask);
    if (active) {
      const size_t o = row_base + size_t{t} * d.channels + c;
      if (slot[c] >= 0) {
        const uint8_t* src =
            d.outlier_values + ((size_t{row} * d.tokens + t) * d.outliers + slot[c]) * es;
        memcpy(static_cast<uint8_t*>(out) + o * es, src, es);
      } else {
        const size_t pi = per_channel ? size_t{t / d.group_tokens} * d.channels + c : t;
        Store(out, o, d.dtype, __fadd_rn(mins[pi], __fmul_rn(static_cast<float>(sym), steps[pi])));
      }
    }
  }
  if (x != kLow || p != len) bad = true;
  if (bad) atomicOr(error, 1);
}

KvqResult Failure(const char* what, cudaError_t e) {
  return {KvqCode::kInternal, std::string("CUDA ") + what + ": " + cudaGetErrorString(e)};
}

#define KVQ_CUDA(expr)                                            \
  do {                                                            \
    cudaError_t kvq_err_ = (expr);                                \
    if (kvq_err_ != cudaSuccess) return Failure(#expr, kvq_err_); \
  } while (0)

}  // namespace

KvqResult KvqDecode(const KvqLaunch& in, void* out, bool out_on_device) {
  const uint32_t rows = 2 * in.layers;
  const uint32_t subs = (in.tokens + in.subchunk - 1) / in.subchunk;
  const size_t es = in.dtype == 3 ? 4 : 2;
  const size_t raw = size_t{rows} * in.tokens * in.channels * es;
  DeviceBuffer per_channel, luts, lut_base, ctx, slot, ovals, params, pbase, prows, payload, soff,
      slen, dout, err;
  KVQ_CUDA(per_channel.Upload(in.per_channel, rows));
  KVQ_CUDA(luts.Upload(in.luts, in.lut_entries * 4));
  KVQ_CUDA(lut_base.Upload(in.lut_base, rows * 4));
  KVQ_CUDA(ctx.Upload(in.ctx, size_t{rows} * in.channels));
  KVQ_CUDA(slot.Upload(in.outlier_slot, size_t{rows} * in.channels * 4));
  KVQ_CUDA(ovals.Upload(in.outlier_values, size_t{in.layers} * in.tokens * in.outliers * es));
  KVQ_CUDA(params.Upload(in.params, in.param_count * 4));
  KVQ_CUDA(pbase.Upload(in.param_base, rows * 8));
  KVQ_CUDA(prows.Upload(in.param_rows, rows * 4));
  KVQ_CUDA(payload.Upload(in.payload, in.payload_bytes));
  KVQ_CUDA(soff.Upload(in.stream_offset, size_t{subs} * rows * 8));
  KVQ_CUDA(slen.Upload(in.stream_length, size_t{subs} * rows * 4));
  const int zero = 0;
  KVQ_CUDA(err.Upload(&zero, sizeof(int)));
  void* target = out;
  if (!out_on_device) {
    KVQ_CUDA(dout.Alloc(raw));
    target = dout.as<void>();
  }
  Device d{in.layers,
           in.channels,
           in.tokens,
           in.subchunk,
           in.group_tokens,
           in.outliers,
           in.dtype,
           per_channel.as<uint8_t>(),
           luts.as<uint32_t>(),
           lut_base.as<uint32_t>(),
           ctx.as<uint8_t>(),
           slot.as<int32_t>(),
           ovals.as<uint8_t>(),
           params.as<float>(),
           pbase.as<uint64_t>(),
           prows.as<uint32_t>(),
           payload.as<uint8_t>(),
           soff.as<uint64_t>(),
           slen.as<uint32_t>()};
  DecodeKernel<<<subs * rows, 32>>>(d, target, err.as<int>());
  KVQ_CUDA(cudaGetLastError());
  KVQ_CUDA(cudaDeviceSynchronize());
  int error = 0;
  KVQ_CUDA(cudaMemcpy(&error, err.as<int>(), sizeof(int), cudaMemcpyDeviceToHost));
  if (error != 0)
    return {KvqCode::kInvalidArgument, "malformed KVQ container: a stream does not decode"};
  if (!out_on_device) KVQ_CUDA(cudaMemcpy(out, target, raw, cudaMemcpyDeviceToHost));
  return {};
}

}  // namespace kvstash::kernels::detail
