// Private to kvtune_kernels' CUDA sources (cuda_*.cu): what they share.
//
// Every number the kernels produce comes from the shared functions in
// format_math.h; the CUDA sources only add indexing, reductions and launches.
// The build compiles them with --fmad=false so those functions round exactly
// as they do in the CPU reference, which the tests compare against bit for bit.
//
// This header owns the host-side launch plumbing (error checks, grid sizing,
// launch, dtype dispatch, pointer checks, stream-ordered scratch memory; the
// non-template parts are defined in cuda_launch.cu) and the device-side
// helpers every format uses (grid-stride indices, vectorized element loads and
// stores, chunk bounds, per-head scales). The per-thread work items are
// __host__ __device__ so that their indexing can be exercised on a machine
// without a GPU; the kernels are thin grid-stride loops around them.
//
// Each kernel lives, in an anonymous namespace, in the one file that launches
// it (no separable compilation).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "kvtune/kernels/quant.h"

#define KVT_HDI __host__ __device__ __forceinline__

namespace kvtune::kernels::cuda_detail {

inline constexpr int kThreads = 256;
inline constexpr int kWarp = 32;

// ---------------------------------------------------------------------------
// Host-side error handling and launch configuration (cuda_launch.cu).

// Throws std::runtime_error naming `call` unless status is cudaSuccess.
void check(cudaError_t status, const char* call);

// Grid-stride kernels need no more blocks than fill the device a few times
// over; more only adds scheduling overhead.
int grid_size(int64_t threads);

// Launches `kernel` with enough threads for `threads` work items (callers skip
// empty work: a zero-sized grid is a launch error).
template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), int64_t threads, cudaStream_t stream,
            Args&&... args) {
  kernel<<<grid_size(threads), kThreads, 0, stream>>>(std::forward<Args>(args)...);
  check(cudaGetLastError(), name);
}

template <class F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::F32:
      f(float{});
      return;
    case DType::F16:
      f(Half{});
      return;
    case DType::BF16:
      f(BFloat16{});
      return;
  }
  throw std::invalid_argument("dtype " + std::to_string(static_cast<int>(dtype)) +
                              " is not supported");
}

inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Throws std::invalid_argument naming `what` when a pointer is null.
void check_pointers(const char* what, std::initializer_list<const void*> pointers);

// Scratch device memory ordered on a stream: freed after the work enqueued
// before the destructor runs, without synchronizing.
class StreamScratch {
 public:
  StreamScratch(size_t bytes, cudaStream_t stream) : stream_(stream) {
    check(cudaMallocAsync(&ptr_, bytes, stream), "cudaMallocAsync");
  }
  ~StreamScratch() { (void)cudaFreeAsync(ptr_, stream_); }
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;

  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

// ---------------------------------------------------------------------------
// Device-side helpers.

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// The vector type moving N elements of T in the widest transactions that divide them.
template <class T, int N>
using VectorOf = std::conditional_t<(N * sizeof(T)) % 16 == 0, uint4, uint2>;

// Loads N consecutive elements; the vector path needs `p` aligned to the
// vector type, which callers guarantee by starting chunks at multiples of N
// from a 16-byte-aligned base.
template <class T, int N>
KVT_HDI void load_elements(const T* p, int count, bool vector_ok, float (&out)[N]) {
  if (count == N && vector_ok) {
    using Vec = VectorOf<T, N>;
    constexpr int kBytes = N * static_cast<int>(sizeof(T));
    static_assert(kBytes % sizeof(Vec) == 0);
    Vec raw[kBytes / sizeof(Vec)];
    const Vec* src = reinterpret_cast<const Vec*>(p);
    for (int i = 0; i < kBytes / static_cast<int>(sizeof(Vec)); ++i) raw[i] = src[i];
    T values[N];
    memcpy(values, raw, kBytes);
    for (int i = 0; i < N; ++i) out[i] = to_float(values[i]);
    return;
  }
  for (int i = 0; i < N; ++i) out[i] = i < count ? to_float(p[i]) : 0.0f;
}

template <class T, int N>
KVT_HDI void store_elements(const float (&in)[N], int count, bool vector_ok, T* p) {
  T values[N];
  for (int i = 0; i < N; ++i) values[i] = from_float<T>(in[i]);
  if (count == N && vector_ok) {
    using Vec = VectorOf<T, N>;
    constexpr int kBytes = N * static_cast<int>(sizeof(T));
    Vec raw[kBytes / sizeof(Vec)];
    memcpy(raw, values, kBytes);
    Vec* dst = reinterpret_cast<Vec*>(p);
    for (int i = 0; i < kBytes / static_cast<int>(sizeof(Vec)); ++i) dst[i] = raw[i];
    return;
  }
  for (int i = 0; i < N; ++i) {
    if (i < count) p[i] = values[i];
  }
}

// Elements of the chunk starting at e0 that lie before n.
KVT_HDI int chunk_count(int64_t n, int64_t e0, int chunk) {
  return n - e0 < chunk ? static_cast<int>(n - e0) : chunk;
}

// The per-head scales of a [tokens, heads, head_dim] tensor (fp8, nvfp4).
struct HeadScales {
  const float* scales;
  int64_t head_dim;
  int64_t heads;
};

}  // namespace kvtune::kernels::cuda_detail
