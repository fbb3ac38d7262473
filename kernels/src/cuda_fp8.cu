// CUDA kernels of the per-head-scaled formats' amax and of FP8 E4M3: the
// per-head amax reduction (cuda::accumulate_head_amax, where the fp8 and nvfp4
// head scales start) and fp8 quantize, dequantize and fake-quant with their
// entry points cuda::quantize_fp8, cuda::dequantize_fp8, cuda::fake_quant_fp8.
// The per-element math is format_math.h's, shared with the CPU reference.
#include "cuda_common.cuh"

namespace kvtune::kernels {
namespace cuda_detail {
namespace {

constexpr int64_t kFp8Chunk = 16;  // elements per thread in fp8: one 16-byte code store

// Head of consecutive elements of a [tokens, heads, head_dim] tensor.
struct HeadCursor {
  int64_t head;
  int64_t channel;

  KVT_HDI HeadCursor(int64_t element, int64_t head_dim, int64_t heads)
      : head((element / head_dim) % heads), channel(element % head_dim) {}

  KVT_HDI void next(int64_t head_dim, int64_t heads) {
    if (++channel == head_dim) {
      channel = 0;
      if (++head == heads) head = 0;
    }
  }
};

// ---------------------------------------------------------------------------
// Per-head amax.

// Blocks along y take heads, blocks along x stride over that head's
// (token, channel) pairs; a block reduces in shared memory and commits one atomic.
template <class T>
__global__ void head_amax_kernel(const T* __restrict__ x, CacheShape shape, float* amax,
                                 int* nonfinite_flag) {
  __shared__ float warp_max[kThreads / kWarp];
  const int64_t per_head = shape.tokens * shape.head_dim;
  bool nonfinite = false;
  for (int64_t h = blockIdx.y; h < shape.heads; h += gridDim.y) {
    float m = 0.0f;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_head;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t t = i / shape.head_dim;
      const int64_t d = i - t * shape.head_dim;
      const float v = to_float(x[(t * shape.heads + h) * shape.head_dim + d]);
      nonfinite |= is_nonfinite(v);
      m = max_f(m, fabsf(v));
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      m = max_f(m, __shfl_xor_sync(0xffffffffu, m, offset));
    }
    if (threadIdx.x % kWarp == 0) warp_max[threadIdx.x / kWarp] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kThreads / kWarp; ++w) m = max_f(m, warp_max[w]);
      // Non-negative floats order like their bit patterns as signed ints.
      atomicMax(reinterpret_cast<int*>(amax + h), __float_as_int(m));
    }
    __syncthreads();  // warp_max is reused by the next head
  }
  if (nonfinite && nonfinite_flag != nullptr) *nonfinite_flag = 1;
}

// ---------------------------------------------------------------------------
// FP8 E4M3.

// Chunk c (kFp8Chunk elements) of the tensor's n elements to E4M3 codes;
// returns whether it saw NaN or Inf.
template <class T>
KVT_HDI bool fp8_quantize_chunk(const T* x, int64_t n, HeadScales hs, bool vector_ok,
                                uint8_t* codes, int64_t c) {
  constexpr int kChunk = static_cast<int>(kFp8Chunk);
  const int64_t e0 = c * kChunk;
  const int count = chunk_count(n, e0, kChunk);
  float v[kChunk];
  load_elements<T, kChunk>(x + e0, count, vector_ok, v);
  HeadCursor cursor(e0, hs.head_dim, hs.heads);
  // Codes are gathered four to a register word, which keeps them out of local memory.
  uint32_t out[kChunk / 4] = {};
  bool nonfinite = false;
  for (int j = 0; j < kChunk; ++j) {
    nonfinite |= j < count && is_nonfinite(v[j]);
    out[j / 4] |= uint32_t{e4m3_encode(v[j] / hs.scales[cursor.head])} << (8 * (j % 4));
    cursor.next(hs.head_dim, hs.heads);
  }
  if (count == kChunk && vector_ok) {
    *reinterpret_cast<uint4*>(codes + e0) = make_uint4(out[0], out[1], out[2], out[3]);
  } else {
    for (int j = 0; j < kChunk; ++j) {
      if (j < count) codes[e0 + j] = static_cast<uint8_t>(out[j / 4] >> (8 * (j % 4)));
    }
  }
  return nonfinite;
}

template <class T>
KVT_HDI void fp8_dequantize_chunk(const uint8_t* codes, int64_t n, HeadScales hs, bool vector_ok,
                                  T* y, int64_t c) {
  constexpr int kChunk = static_cast<int>(kFp8Chunk);
  const int64_t e0 = c * kChunk;
  const int count = chunk_count(n, e0, kChunk);
  uint32_t in[kChunk / 4] = {};
  if (count == kChunk && vector_ok) {
    const uint4 raw = *reinterpret_cast<const uint4*>(codes + e0);
    in[0] = raw.x;
    in[1] = raw.y;
    in[2] = raw.z;
    in[3] = raw.w;
  } else {
    for (int j = 0; j < kChunk; ++j) {
      if (j < count) in[j / 4] |= uint32_t{codes[e0 + j]} << (8 * (j % 4));
    }
  }
  HeadCursor cursor(e0, hs.head_dim, hs.heads);
  float v[kChunk];
  for (int j = 0; j < kChunk; ++j) {
    const auto code = static_cast<uint8_t>(in[j / 4] >> (8 * (j % 4)));
    v[j] = e4m3_decode(code) * hs.scales[cursor.head];
    cursor.next(hs.head_dim, hs.heads);
  }
  store_elements<T, kChunk>(v, count, vector_ok, y + e0);
}

// The chunk is read before it is written, so y may alias x.
template <class T>
KVT_HDI bool fp8_fake_chunk(const T* x, int64_t n, HeadScales hs, bool vector_ok, T* y, int64_t c) {
  constexpr int kChunk = static_cast<int>(kFp8Chunk);
  const int64_t e0 = c * kChunk;
  const int count = chunk_count(n, e0, kChunk);
  float v[kChunk];
  load_elements<T, kChunk>(x + e0, count, vector_ok, v);
  HeadCursor cursor(e0, hs.head_dim, hs.heads);
  bool nonfinite = false;
  for (int j = 0; j < kChunk; ++j) {
    nonfinite |= j < count && is_nonfinite(v[j]);
    v[j] = fp8_fake_quant(v[j], hs.scales[cursor.head]);
    cursor.next(hs.head_dim, hs.heads);
  }
  store_elements<T, kChunk>(v, count, vector_ok, y + e0);
  return nonfinite;
}

template <class T>
__global__ void fp8_quantize_kernel(const T* __restrict__ x, int64_t n, HeadScales hs,
                                    bool vector_ok, uint8_t* __restrict__ codes,
                                    int* nonfinite_flag) {
  const int64_t chunks = (n + kFp8Chunk - 1) / kFp8Chunk;
  bool nonfinite = false;
  for (int64_t c = thread_index(); c < chunks; c += thread_count()) {
    nonfinite |= fp8_quantize_chunk<T>(x, n, hs, vector_ok, codes, c);
  }
  if (nonfinite && nonfinite_flag != nullptr) *nonfinite_flag = 1;
}

template <class T>
__global__ void fp8_dequantize_kernel(const uint8_t* __restrict__ codes, int64_t n, HeadScales hs,
                                      bool vector_ok, T* __restrict__ y) {
  const int64_t chunks = (n + kFp8Chunk - 1) / kFp8Chunk;
  for (int64_t c = thread_index(); c < chunks; c += thread_count()) {
    fp8_dequantize_chunk<T>(codes, n, hs, vector_ok, y, c);
  }
}

template <class T>
__global__ void fp8_fake_kernel(const T* x, int64_t n, HeadScales hs, bool vector_ok, T* y,
                                int* nonfinite_flag) {
  const int64_t chunks = (n + kFp8Chunk - 1) / kFp8Chunk;
  bool nonfinite = false;
  for (int64_t c = thread_index(); c < chunks; c += thread_count()) {
    nonfinite |= fp8_fake_chunk<T>(x, n, hs, vector_ok, y, c);
  }
  if (nonfinite && nonfinite_flag != nullptr) *nonfinite_flag = 1;
}

}  // namespace
}  // namespace cuda_detail

namespace cuda {

using namespace cuda_detail;

void accumulate_head_amax(const CacheShape& shape, DType dtype, const void* x, float* amax,
                          cudaStream_t stream, int* nonfinite_flag) {
  check_pointers("accumulate_head_amax", {x, amax});
  if (shape.tokens <= 0 || shape.heads <= 0 || shape.head_dim <= 0) {
    throw std::invalid_argument("accumulate_head_amax: empty KV tensor " + shape.str());
  }
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t per_head = shape.tokens * shape.head_dim;
    const int64_t heads_y = std::min<int64_t>(shape.heads, 65535);  // the grid's y limit
    const int64_t blocks_x =
        std::clamp<int64_t>((per_head + kThreads - 1) / kThreads, 1,
                            std::max<int64_t>(1, grid_size(shape.elements()) / heads_y));
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(heads_y));
    head_amax_kernel<T>
        <<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x), shape, amax, nonfinite_flag);
    check(cudaGetLastError(), "head_amax_kernel");
  });
}

void quantize_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                  uint8_t* codes, cudaStream_t stream, int* nonfinite_flag) {
  validate_shape(shape, "quantize_fp8");
  check_pointers("quantize_fp8", {x, codes, head_scales});
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = shape.elements();
    launch("fp8_quantize_kernel", fp8_quantize_kernel<T>, (n + kFp8Chunk - 1) / kFp8Chunk, stream,
           static_cast<const T*>(x), n, HeadScales{head_scales, shape.head_dim, shape.heads},
           aligned16(x) && aligned16(codes), codes, nonfinite_flag);
  });
}

void dequantize_fp8(const CacheShape& shape, const uint8_t* codes, const float* head_scales,
                    DType dtype, void* y, cudaStream_t stream) {
  validate_shape(shape, "dequantize_fp8");
  check_pointers("dequantize_fp8", {codes, y, head_scales});
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = shape.elements();
    launch("fp8_dequantize_kernel", fp8_dequantize_kernel<T>, (n + kFp8Chunk - 1) / kFp8Chunk,
           stream, codes, n, HeadScales{head_scales, shape.head_dim, shape.heads},
           aligned16(codes) && aligned16(y), static_cast<T*>(y));
  });
}

void fake_quant_fp8(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    void* y, cudaStream_t stream, int* nonfinite_flag) {
  validate_shape(shape, "fake_quant_fp8");
  check_pointers("fake_quant_fp8", {x, y, head_scales});
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = shape.elements();
    launch("fp8_fake_kernel", fp8_fake_kernel<T>, (n + kFp8Chunk - 1) / kFp8Chunk, stream,
           static_cast<const T*>(x), n, HeadScales{head_scales, shape.head_dim, shape.heads},
           aligned16(x) && aligned16(y), static_cast<T*>(y), nonfinite_flag);
  });
}

}  // namespace cuda
}  // namespace kvtune::kernels
