// Host side of KVQ decode on CUDA (kvq_cuda.h); the device work is in kvq_cuda.cu.
#include "kvstash/kernels/kvq_cuda.h"

#include "kvstash/kernels/cuda_device.h"

#if defined(KVSTASH_HAVE_CUDA)
#include "kvq_cuda_launch.h"
#endif

namespace kvstash::kernels {

Status KvqDecodeCuda(const KvqCudaInputs& in, void* out, bool out_on_device) {
#if defined(KVSTASH_HAVE_CUDA)
  if (!CudaDeviceAvailable()) return absl::UnimplementedError("no CUDA device");
  const uint64_t rows = 2 * uint64_t{in.num_layers};
  const uint64_t subs =
      in.subchunk_tokens == 0 ? 0 : (in.num_tokens + in.subchunk_tokens - 1) / in.subchunk_tokens;
  if (in.per_channel.size() != rows || in.lut_base.size() != rows ||
      in.ctx.size() != rows * in.channels || in.outlier_slot.size() != rows * in.channels ||
      in.param_base.size() != rows || in.param_rows.size() != rows ||
      in.stream_offset.size() != subs * rows || in.stream_length.size() != subs * rows ||
      in.luts.size() % 4096 != 0 || out == nullptr) {
    return absl::InvalidArgumentError("KVQ CUDA: inconsistent inputs");
  }
  detail::KvqLaunch l;
  l.layers = in.num_layers;
  l.channels = in.channels;
  l.tokens = in.num_tokens;
  l.subchunk = in.subchunk_tokens;
  l.group_tokens = in.group_tokens == 0 ? 1 : in.group_tokens;
  l.dtype = static_cast<int>(in.dtype);
  l.per_channel = in.per_channel.data();
  l.luts = in.luts.data();
  l.lut_entries = in.luts.size();
  l.lut_base = in.lut_base.data();
  l.ctx = in.ctx.data();
  l.outlier_slot = in.outlier_slot.data();
  l.outliers = in.outliers;
  l.outlier_values = in.outlier_values;
  l.params = in.params.data();
  l.param_count = in.params.size();
  l.param_base = in.param_base.data();
  l.param_rows = in.param_rows.data();
  l.payload = in.payload;
  l.payload_bytes = in.payload_bytes;
  l.stream_offset = in.stream_offset.data();
  l.stream_length = in.stream_length.data();
  const detail::KvqResult r = detail::KvqDecode(l, out, out_on_device);
  switch (r.code) {
    case detail::KvqCode::kOk:
      return OkStatus();
    case detail::KvqCode::kInvalidArgument:
      return absl::InvalidArgumentError(r.message);
    case detail::KvqCode::kInternal:
      break;
  }
  return absl::InternalError(r.message);
#else
  (void)in;
  (void)out;
  (void)out_on_device;
  return absl::UnimplementedError("built without CUDA");
#endif
}

}  // namespace kvstash::kernels
