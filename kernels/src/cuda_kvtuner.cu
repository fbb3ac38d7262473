// KVTuner's vanilla quantizer on the GPU: the entry point
// cuda::fake_quant_kvtuner. One thread per group; the per-group math is
// format_math.h's, shared with the CPU reference.
#include "cuda_common.cuh"

namespace kvtune::kernels {
namespace cuda_detail {
namespace {

// Group g of KVTuner's flattened order, in place or into y.
template <class T>
__global__ void kvtuner_fake_kernel(const T* x, T* y, int64_t groups, int64_t group, int64_t tokens,
                                    int64_t heads, int64_t head_dim, KvtunerAxis axis, int bits,
                                    int* nonfinite_flag) {
  for (int64_t g = thread_index(); g < groups; g += thread_count()) {
    float mn = 0.0f, mx = 0.0f;
    bool nonfinite = false;
    for (int64_t i = 0; i < group; ++i) {
      const float v =
          bf16_round(to_float(x[kvtuner_offset(g * group + i, tokens, heads, head_dim, axis)]));
      mn = i == 0 ? v : min_f(mn, v);
      mx = i == 0 ? v : max_f(mx, v);
      nonfinite |= is_nonfinite(v);
    }
    if (nonfinite) {
      // Without a flag to check, the group comes back NaN: never silently stale.
      if (nonfinite_flag != nullptr) *nonfinite_flag = 1;
      for (int64_t i = 0; i < group; ++i) {
        y[kvtuner_offset(g * group + i, tokens, heads, head_dim, axis)] =
            from_float<T>(bits_float(0x7fc00000u));
      }
      continue;
    }
    const KvtunerParams p = kvtuner_params(mn, mx, bits);
    for (int64_t i = 0; i < group; ++i) {
      const int64_t off = kvtuner_offset(g * group + i, tokens, heads, head_dim, axis);
      y[off] = from_float<T>(kvtuner_fake_quant(bf16_round(to_float(x[off])), p, bits));
    }
  }
}

}  // namespace
}  // namespace cuda_detail

namespace cuda {
using namespace cuda_detail;

void fake_quant_kvtuner(const KvtunerSpec& spec, const CacheShape& shape, DType dtype,
                        const void* x, void* y, cudaStream_t stream, int* nonfinite_flag) {
  const int64_t group = kvtuner_group(spec, shape);
  check_pointers("fake_quant_kvtuner", {x, y});
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t groups = shape.elements() / group;
    launch("kvtuner_fake_kernel", kvtuner_fake_kernel<T>, groups, stream, static_cast<const T*>(x),
           static_cast<T*>(y), groups, group, shape.tokens, shape.heads, shape.head_dim, spec.axis,
           spec.bits, nonfinite_flag);
  });
}

}  // namespace cuda
}  // namespace kvtune::kernels
