// The engine formats on the GPU: the entry point cuda::fake_quant_engine. One
// thread per group; the per-group math is engine_math.h's, shared with the
// CPU reference.
#include "cuda_common.cuh"
#include "kvtune/kernels/engine.h"

namespace kvtune::kernels {
namespace cuda_detail {
namespace {

template <class T>
__global__ void engine_fake_kernel(const T* x, T* y, int64_t groups, int64_t group,
                                   EngineArith arith, float scale, unsigned long long* counts) {
  for (int64_t g = thread_index(); g < groups; g += thread_count()) {
    int64_t first_bad = -1;
    const int64_t overflow =
        engine_fake_quant_group(arith, scale, x + g * group, y + g * group, group, &first_bad);
    if (first_bad >= 0) {
      // A group with non-finite input comes back NaN: never silently stale.
      for (int64_t i = 0; i < group; ++i) y[g * group + i] = from_float<T>(bits_float(0x7fc00000u));
      if (counts != nullptr) atomicAdd(&counts[0], 1ull);
    }
    if (overflow > 0 && counts != nullptr) {
      atomicAdd(&counts[1], static_cast<unsigned long long>(overflow));
    }
  }
}

}  // namespace
}  // namespace cuda_detail

namespace cuda {
using namespace cuda_detail;

void fake_quant_engine(const EngineSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                       void* y, cudaStream_t stream, unsigned long long* counts) {
  validate_engine(spec, shape);
  check_pointers("fake_quant_engine", {x, y});
  const int64_t group = engine_group_size(spec.arith, shape.head_dim);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t groups = shape.elements() / group;
    launch("engine_fake_kernel", engine_fake_kernel<T>, groups, stream, static_cast<const T*>(x),
           static_cast<T*>(y), groups, group, spec.arith, spec.scale, counts);
  });
}

}  // namespace cuda
}  // namespace kvtune::kernels
