// The engine formats on the GPU: the entry point cuda::fake_quant_engine. One
// thread per group (llama.cpp's: per unit of blocks and Hadamard chunks); the
// per-group math is engine_math.h's, shared with the CPU reference.
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

// llama.cpp's types: one thread per unit of `unit` <= N elements (whole
// blocks and Hadamard chunks), with an N-float scratch buffer.
template <class T, int N>
__global__ void ggml_fake_kernel(const T* x, T* y, int64_t units, int64_t unit, EngineArith arith,
                                 int rotate_chunk, unsigned long long* counts) {
  float buf[N];
  for (int64_t u = thread_index(); u < units; u += thread_count()) {
    int64_t first_bad = -1;
    const int64_t overflow = ggml_fake_quant_unit(arith, rotate_chunk, x + u * unit, y + u * unit,
                                                  unit, buf, &first_bad);
    if (first_bad >= 0) {
      for (int64_t i = 0; i < unit; ++i) y[u * unit + i] = from_float<T>(bits_float(0x7fc00000u));
      if (counts != nullptr) atomicAdd(&counts[0], 1ull);
    }
    if (overflow > 0 && counts != nullptr) {
      atomicAdd(&counts[1], static_cast<unsigned long long>(overflow));
    }
  }
}

template <class T, int N>
void launch_ggml(const EngineSpec& spec, int64_t units, int64_t unit, const void* x, void* y,
                 cudaStream_t stream, unsigned long long* counts) {
  launch("ggml_fake_kernel", ggml_fake_kernel<T, N>, units, stream, static_cast<const T*>(x),
         static_cast<T*>(y), units, unit, spec.arith, spec.rotate_chunk, counts);
}

// The smallest scratch that holds a unit: 32 (blocks), else the Hadamard chunk.
template <class T>
void launch_ggml_sized(const EngineSpec& spec, int64_t units, int64_t unit, const void* x, void* y,
                       cudaStream_t stream, unsigned long long* counts) {
  const int need = spec.rotate_chunk > kGgmlBlock ? spec.rotate_chunk : kGgmlBlock;
  if (need <= 32) return launch_ggml<T, 32>(spec, units, unit, x, y, stream, counts);
  if (need <= 64) return launch_ggml<T, 64>(spec, units, unit, x, y, stream, counts);
  if (need <= 128) return launch_ggml<T, 128>(spec, units, unit, x, y, stream, counts);
  if (need <= 256) return launch_ggml<T, 256>(spec, units, unit, x, y, stream, counts);
  if (need <= 512) return launch_ggml<T, 512>(spec, units, unit, x, y, stream, counts);
  static_assert(kGgmlMaxRotation == 1024);
  launch_ggml<T, 1024>(spec, units, unit, x, y, stream, counts);
}

}  // namespace
}  // namespace cuda_detail

namespace cuda {
using namespace cuda_detail;

void fake_quant_engine(const EngineSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                       void* y, cudaStream_t stream, unsigned long long* counts) {
  validate_engine(spec, shape);
  check_pointers("fake_quant_engine", {x, y});
  const int64_t group = engine_unit_size(spec.arith, spec.rotate_chunk, shape.head_dim);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t groups = shape.elements() / group;
    if (engine_is_ggml(spec.arith)) {
      return launch_ggml_sized<T>(spec, groups, group, x, y, stream, counts);
    }
    launch("engine_fake_kernel", engine_fake_kernel<T>, groups, stream, static_cast<const T*>(x),
           static_cast<T*>(y), groups, group, spec.arith, spec.scale, counts);
  });
}

}  // namespace cuda
}  // namespace kvtune::kernels
