// CUDA implementation of the kvtune::kernels::cuda API in quant.h.
//
// Every number the kernels produce comes from the shared functions in
// format_math.h; this file only adds indexing, reductions and launches. The
// build compiles it with --fmad=false so those functions round exactly as they
// do in the CPU reference, which the tests compare against bit for bit.
//
// The per-thread work items are __host__ __device__ so that their indexing can
// be exercised on a machine without a GPU; the kernels are thin grid-stride
// loops around them.
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

namespace kvtune::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kIntChunk = 8;   // elements per thread in int fake-quant
constexpr int64_t kFp8Chunk = 16;  // elements per thread in fp8: one 16-byte code store
constexpr int kNvfp4MaxBlock = 16;

// ---------------------------------------------------------------------------
// Host-side error handling and launch configuration.

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(status));
  }
}

// Grid-stride kernels need no more blocks than fill the device a few times
// over; more only adds scheduling overhead.
int grid_size(int64_t threads) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)");
  const int64_t wanted = (threads + kThreads - 1) / kThreads;
  return static_cast<int>(std::clamp<int64_t>(wanted, 1, int64_t{sms} * 16));
}

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

// int_layout() has already rejected any other width.
template <class F>
void dispatch_bits(int bits, F&& f) {
  switch (bits) {
    case 1:
      f(std::integral_constant<int, 1>{});
      return;
    case 2:
      f(std::integral_constant<int, 2>{});
      return;
    case 3:
      f(std::integral_constant<int, 3>{});
      return;
    case 4:
      f(std::integral_constant<int, 4>{});
      return;
    case 8:
      f(std::integral_constant<int, 8>{});
      return;
  }
  throw std::invalid_argument("bits " + std::to_string(bits) + " is not supported");
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

void check_pointers(const char* what, std::initializer_list<const void*> pointers) {
  for (const void* p : pointers) {
    if (p == nullptr) throw std::invalid_argument(std::string(what) + ": null buffer");
  }
}

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

// Follows the group of consecutive elements of the quantized prefix, so a
// thread walking a run of elements pays GroupGeometry::group_of's 64-bit
// divisions once instead of per element.
struct GroupCursor {
  int64_t group;
  int64_t offset;          // contiguous: position in the group; channel: position in the row
  int64_t token_in_block;  // channel groups: token within the token_group block

  KVT_HDI GroupCursor(const GroupGeometry& geo, int64_t element) : group(geo.group_of(element)) {
    if (geo.token_group == 0) {
      offset = element - geo.first_element(group);
      token_in_block = 0;
    } else {
      offset = element % geo.row;
      token_in_block = (element / geo.row) % geo.token_group;
    }
  }

  KVT_HDI void next(const GroupGeometry& geo) {
    if (geo.token_group == 0) {
      if (++offset == geo.size) {
        offset = 0;
        ++group;
      }
      return;
    }
    // Channel groups are numbered (token block, row position): the next element
    // is the next channel's group, and at the end of a row it goes back to the
    // block's first group unless the row also ended the block.
    ++group;
    if (++offset == geo.row) {
      offset = 0;
      if (++token_in_block == geo.token_group) {
        token_in_block = 0;
      } else {
        group -= geo.row;
      }
    }
  }
};

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
// Integer formats.

// Running min/max of a group. Non-finite input only has to raise the flag:
// the caller rejects the whole tensor.
struct MinMax {
  float mn = bits_float(0x7f800000u);  // +inf
  float mx = bits_float(0xff800000u);  // -inf
  bool nonfinite = false;

  KVT_HDI void add(float v) {
    nonfinite |= is_nonfinite(v);
    mn = min_f(mn, v);
    mx = max_f(mx, v);
  }
};

// Contiguous groups: a team of `team` lanes (a power of two <= 32) per group,
// so a warp reads a group's channels coalesced and small groups still keep
// every lane busy.
template <class T>
__global__ void int_params_contiguous_kernel(const T* __restrict__ x, GroupGeometry geo, int team,
                                             int bits, ZeroPoint mode, float* __restrict__ scales,
                                             float* __restrict__ zeros, int* nonfinite_flag) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int teams_per_warp = kWarp / team;
  const int64_t warp = thread_index() / kWarp;
  const int64_t warps = thread_count() / kWarp;
  bool nonfinite = false;
  // The loop bound is warp-uniform, so every lane reaches the shuffles.
  for (int64_t first = warp * teams_per_warp; first < geo.count; first += warps * teams_per_warp) {
    const int64_t g = first + lane / team;
    MinMax acc;
    if (g < geo.count) {
      const T* group = x + geo.first_element(g);
      // Unrolled so that a lane has several loads in flight, not one at a time.
#pragma unroll 4
      for (int64_t i = lane % team; i < geo.size; i += team) acc.add(to_float(group[i]));
    }
    for (int offset = team / 2; offset > 0; offset /= 2) {
      acc.mn = min_f(acc.mn, __shfl_xor_sync(0xffffffffu, acc.mn, offset));
      acc.mx = max_f(acc.mx, __shfl_xor_sync(0xffffffffu, acc.mx, offset));
    }
    nonfinite |= acc.nonfinite;
    if (g < geo.count && lane % team == 0) {
      const AffineParams p = int_params(acc.mn, acc.mx, bits, mode);
      scales[g] = p.scale;
      zeros[g] = p.zero;
    }
  }
  if (nonfinite && nonfinite_flag != nullptr) *nonfinite_flag = 1;
}

// Channel groups (kivi keys): a thread per group; consecutive threads take
// consecutive channels, so each of the token_group loads is coalesced.
template <class T>
__global__ void int_params_channel_kernel(const T* __restrict__ x, GroupGeometry geo, int bits,
                                          ZeroPoint mode, float* __restrict__ scales,
                                          float* __restrict__ zeros, int* nonfinite_flag) {
  bool nonfinite = false;
  for (int64_t g = thread_index(); g < geo.count; g += thread_count()) {
    const T* group = x + geo.first_element(g);
    MinMax acc;
#pragma unroll 4
    for (int64_t i = 0; i < geo.size; ++i) acc.add(to_float(group[i * geo.stride]));
    nonfinite |= acc.nonfinite;
    const AffineParams p = int_params(acc.mn, acc.mx, bits, mode);
    scales[g] = p.scale;
    zeros[g] = p.zero;
  }
  if (nonfinite && nonfinite_flag != nullptr) *nonfinite_flag = 1;
}

// Reads the group parameters of consecutive elements, reloading only when the
// group changes.
struct ParamsCache {
  const float* scales;
  const float* zeros;
  int64_t loaded = -1;
  AffineParams params{0.0f, 0.0f};

  KVT_HDI AffineParams get(int64_t group) {
    if (group != loaded) {
      params = AffineParams{scales[group], zeros[group]};
      loaded = group;
    }
    return params;
  }
};

// Whether the parameters of every aligned run of `chunk` elements can be read
// as vectors: with channel groups, consecutive elements of a row have
// consecutive groups, so when rows hold whole runs (and hence the prefix, a
// whole number of rows, holds whole runs) a run's groups are `chunk`
// consecutive, 16-byte-aligned entries. Per-element loads would otherwise
// multiply the L1 traffic of kivi keys several times over.
bool channel_params_vectorizable(const GroupGeometry& geo, int chunk, const float* scales,
                                 const float* zeros) {
  return geo.token_group != 0 && chunk % 4 == 0 && geo.row % chunk == 0 && aligned16(scales) &&
         aligned16(zeros);
}

// Applies f(j, params) to the N elements of a full run starting at e0, under
// channel_params_vectorizable().
template <int N, class F>
KVT_HDI void for_each_channel_param(const float* scales, const float* zeros,
                                    const GroupGeometry& geo, int64_t e0, F&& f) {
  const int64_t g0 = geo.group_of(e0);
  for (int j4 = 0; j4 < N; j4 += 4) {
    float s[4], z[4];
    load_elements<float, 4>(scales + g0 + j4, 4, true, s);
    load_elements<float, 4>(zeros + g0 + j4, 4, true, z);
    for (int k = 0; k < 4; ++k) f(j4 + k, AffineParams{s[k], z[k]});
  }
}

// Packed word w of the quantized prefix (n elements).
template <class T, int kBits>
KVT_HDI uint32_t int_pack_word(const T* x, int64_t n, const GroupGeometry& geo, const float* scales,
                               const float* zeros, ZeroPoint mode, bool vector_ok,
                               bool channel_vectors, int64_t w) {
  constexpr int kWidth = kBits == 3 ? 8 : kBits;  // 3-bit codes take a byte each
  constexpr int kPerWord = 32 / kWidth;
  const int64_t e0 = w * kPerWord;
  const int count = chunk_count(n, e0, kPerWord);
  float v[kPerWord];
  load_elements<T, kPerWord>(x + e0, count, vector_ok, v);
  uint32_t word = 0;
  if (channel_vectors) {
    for_each_channel_param<kPerWord>(scales, zeros, geo, e0, [&](int j, AffineParams p) {
      word |= int_encode(v[j], p, kBits, mode) << (kWidth * j);
    });
    return word;
  }
  GroupCursor cursor(geo, e0);
  ParamsCache cache{scales, zeros};
  for (int j = 0; j < kPerWord; ++j) {
    if (j < count) word |= int_encode(v[j], cache.get(cursor.group), kBits, mode) << (kWidth * j);
    cursor.next(geo);
  }
  return word;
}

template <class T, int kBits>
__global__ void int_pack_kernel(const T* __restrict__ x, int64_t n, GroupGeometry geo,
                                const float* __restrict__ scales, const float* __restrict__ zeros,
                                ZeroPoint mode, bool vector_ok, bool channel_vectors,
                                uint32_t* __restrict__ codes, int64_t words) {
  for (int64_t w = thread_index(); w < words; w += thread_count()) {
    codes[w] =
        int_pack_word<T, kBits>(x, n, geo, scales, zeros, mode, vector_ok, channel_vectors, w);
  }
}

template <class T>
KVT_HDI T int_dequantize_element(const uint32_t* codes, const float* scales, const float* zeros,
                                 const GroupGeometry& geo, int bits, int codes_per_word,
                                 ZeroPoint mode, int64_t e) {
  const int64_t g = geo.group_of(e);
  const uint32_t code = unpack_code(codes, e, bits, codes_per_word);
  return from_float<T>(int_decode(code, AffineParams{scales[g], zeros[g]}, bits, mode));
}

template <class T>
__global__ void int_dequantize_kernel(const uint32_t* __restrict__ codes,
                                      const float* __restrict__ scales,
                                      const float* __restrict__ zeros, int64_t n, GroupGeometry geo,
                                      int bits, int codes_per_word, ZeroPoint mode,
                                      T* __restrict__ y) {
  for (int64_t e = thread_index(); e < n; e += thread_count()) {
    y[e] = int_dequantize_element<T>(codes, scales, zeros, geo, bits, codes_per_word, mode, e);
  }
}

// Chunk c of the quantized prefix through quantize and dequantize. Each
// thread reads its whole chunk before writing it, so y may alias x.
template <class T>
KVT_HDI void int_fake_chunk(const T* x, int64_t n, const GroupGeometry& geo, const float* scales,
                            const float* zeros, int bits, ZeroPoint mode, bool vector_ok,
                            bool channel_vectors, T* y, int64_t c) {
  constexpr int kChunk = static_cast<int>(kIntChunk);
  const int64_t e0 = c * kChunk;
  const int count = chunk_count(n, e0, kChunk);
  float v[kChunk];
  load_elements<T, kChunk>(x + e0, count, vector_ok, v);
  if (channel_vectors) {
    for_each_channel_param<kChunk>(scales, zeros, geo, e0, [&](int j, AffineParams p) {
      v[j] = int_fake_quant(v[j], p, bits, mode);
    });
  } else {
    GroupCursor cursor(geo, e0);
    ParamsCache cache{scales, zeros};
    for (int j = 0; j < kChunk; ++j) {
      if (j < count) v[j] = int_fake_quant(v[j], cache.get(cursor.group), bits, mode);
      cursor.next(geo);
    }
  }
  store_elements<T, kChunk>(v, count, vector_ok, y + e0);
}

template <class T>
__global__ void int_fake_kernel(const T* x, int64_t n, GroupGeometry geo,
                                const float* __restrict__ scales, const float* __restrict__ zeros,
                                int bits, ZeroPoint mode, bool vector_ok, bool channel_vectors,
                                T* y) {
  const int64_t chunks = (n + kIntChunk - 1) / kIntChunk;
  for (int64_t c = thread_index(); c < chunks; c += thread_count()) {
    int_fake_chunk<T>(x, n, geo, scales, zeros, bits, mode, vector_ok, channel_vectors, y, c);
  }
}

template <class T>
void launch_int_params(const T* x, const IntSpec& spec, const IntLayout& layout, float* scales,
                       float* zeros, cudaStream_t stream, int* nonfinite_flag) {
  const GroupGeometry& geo = layout.groups;
  if (geo.token_group == 0) {
    int team = 1;
    while (team < kWarp && team < geo.size) team *= 2;
    const int64_t warps = (geo.count + (kWarp / team) - 1) / (kWarp / team);
    launch("int_params_contiguous_kernel", int_params_contiguous_kernel<T>, warps * kWarp, stream,
           x, geo, team, spec.bits, spec.zero_point, scales, zeros, nonfinite_flag);
  } else {
    launch("int_params_channel_kernel", int_params_channel_kernel<T>, geo.count, stream, x, geo,
           spec.bits, spec.zero_point, scales, zeros, nonfinite_flag);
  }
}

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

struct HeadScales {
  const float* scales;
  int64_t head_dim;
  int64_t heads;
};

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

// ---------------------------------------------------------------------------
// NVFP4. A thread owns one block (16 elements, or head_dim below 16). kBlock
// is 16 for the common case, so the block lives in registers with vector
// loads, or 0 for a runtime block below 16.

template <class T, int kBlock>
struct Nvfp4Block {
  float v[kNvfp4MaxBlock];
  int size;
  int64_t first;  // element index of v[0]
  float head_scale;

  KVT_HDI Nvfp4Block(int runtime_block, int64_t b, HeadScales hs)
      : size(kBlock != 0 ? kBlock : runtime_block), first(b * size) {
    // A block never straddles heads: its size divides head_dim.
    head_scale = hs.scales[(first / hs.head_dim) % hs.heads];
  }

  KVT_HDI void load(const T* x, bool vector_ok) {
    if constexpr (kBlock == kNvfp4MaxBlock) {
      load_elements<T, kNvfp4MaxBlock>(x + first, kNvfp4MaxBlock, vector_ok, v);
    } else {
      for (int i = 0; i < kNvfp4MaxBlock; ++i) v[i] = i < size ? to_float(x[first + i]) : 0.0f;
    }
  }

  KVT_HDI void store(bool vector_ok, T* y) const {
    if constexpr (kBlock == kNvfp4MaxBlock) {
      store_elements<T, kNvfp4MaxBlock>(v, kNvfp4MaxBlock, vector_ok, y + first);
    } else {
      for (int i = 0; i < kNvfp4MaxBlock; ++i) {
        if (i < size) y[first + i] = from_float<T>(v[i]);
      }
    }
  }

  // The block's E4M3 scale code; `nonfinite` reports NaN/Inf among its values.
  KVT_HDI uint8_t scale_code(bool& nonfinite) const {
    float amax = 0.0f;
    for (int i = 0; i < kNvfp4MaxBlock; ++i) {
      if (i < size) {
        nonfinite |= is_nonfinite(v[i]);
        amax = max_f(amax, fabsf(v[i]));
      }
    }
    return nvfp4_block_scale_code(amax, head_scale);
  }
};

// ORs bits into a code word shared with a neighbouring block's thread.
KVT_HDI void or_word(uint32_t* word, uint32_t bits) {
#if defined(__CUDA_ARCH__)
  atomicOr(word, bits);
#else
  *word |= bits;
#endif
}

// Quantizes block b; returns whether it saw NaN or Inf. When the block does not
// fill whole words (block % 8 != 0), codes must be zeroed beforehand.
template <class T, int kBlock>
KVT_HDI bool nvfp4_quantize_block(const T* x, int runtime_block, HeadScales hs, bool vector_ok,
                                  uint32_t* codes, uint8_t* block_scales, int64_t b) {
  Nvfp4Block<T, kBlock> block(runtime_block, b, hs);
  block.load(x, vector_ok);
  bool nonfinite = false;
  const uint8_t code = block.scale_code(nonfinite);
  block_scales[b] = code;
  const float s = nvfp4_block_scale(code, block.head_scale);
  if (block.size % 8 == 0) {
    for (int k = 0; k < kNvfp4MaxBlock / 8; ++k) {
      if (8 * k < block.size) {
        uint32_t word = 0;
        for (int j = 0; j < 8; ++j) word |= nvfp4_encode(block.v[8 * k + j], s) << (4 * j);
        codes[block.first / 8 + k] = word;
      }
    }
    return nonfinite;
  }
  int64_t word_index = block.first / 8;
  uint32_t word = 0;
  for (int i = 0; i < kNvfp4MaxBlock && i < block.size; ++i) {
    const int64_t e = block.first + i;
    if (e / 8 != word_index) {
      or_word(codes + word_index, word);
      word_index = e / 8;
      word = 0;
    }
    word |= nvfp4_encode(block.v[i], s) << (4 * (e % 8));
  }
  or_word(codes + word_index, word);
  return nonfinite;
}

template <class T, int kBlock>
KVT_HDI void nvfp4_dequantize_block(const uint32_t* codes, const uint8_t* block_scales,
                                    int runtime_block, HeadScales hs, bool vector_ok, T* y,
                                    int64_t b) {
  Nvfp4Block<T, kBlock> block(runtime_block, b, hs);
  const float s = nvfp4_block_scale(block_scales[b], block.head_scale);
  for (int i = 0; i < kNvfp4MaxBlock; ++i) {
    if (i < block.size) {
      const int64_t e = block.first + i;
      block.v[i] = nvfp4_decode((codes[e / 8] >> (4 * (e % 8))) & 0xfu, s);
    }
  }
  block.store(vector_ok, y);
}

// The block is read before it is written, so y may alias x.
template <class T, int kBlock>
KVT_HDI bool nvfp4_fake_block(const T* x, int runtime_block, HeadScales hs, bool vector_ok, T* y,
                              int64_t b) {
  Nvfp4Block<T, kBlock> block(runtime_block, b, hs);
  block.load(x, vector_ok);
  bool nonfinite = false;
  const float s = nvfp4_block_scale(block.scale_code(nonfinite), block.head_scale);
  for (int i = 0; i < kNvfp4MaxBlock; ++i) {
    if (i < block.size) block.v[i] = nvfp4_fake_quant(block.v[i], s);
  }
  block.store(vector_ok, y);
  return nonfinite;
}

template <class T, int kBlock>
__global__ void nvfp4_quantize_kernel(const T* __restrict__ x, int64_t blocks, int runtime_block,
                                      HeadScales hs, bool vector_ok, uint32_t* codes,
                                      uint8_t* __restrict__ block_scales, int* nonfinite_flag) {
  bool nonfinite = false;
  for (int64_t b = thread_index(); b < blocks; b += thread_count()) {
    nonfinite |=
        nvfp4_quantize_block<T, kBlock>(x, runtime_block, hs, vector_ok, codes, block_scales, b);
  }
  if (nonfinite && nonfinite_flag != nullptr) *nonfinite_flag = 1;
}

template <class T, int kBlock>
__global__ void nvfp4_dequantize_kernel(const uint32_t* __restrict__ codes,
                                        const uint8_t* __restrict__ block_scales, int64_t blocks,
                                        int runtime_block, HeadScales hs, bool vector_ok,
                                        T* __restrict__ y) {
  for (int64_t b = thread_index(); b < blocks; b += thread_count()) {
    nvfp4_dequantize_block<T, kBlock>(codes, block_scales, runtime_block, hs, vector_ok, y, b);
  }
}

template <class T, int kBlock>
__global__ void nvfp4_fake_kernel(const T* x, int64_t blocks, int runtime_block, HeadScales hs,
                                  bool vector_ok, T* y, int* nonfinite_flag) {
  bool nonfinite = false;
  for (int64_t b = thread_index(); b < blocks; b += thread_count()) {
    nonfinite |= nvfp4_fake_block<T, kBlock>(x, runtime_block, hs, vector_ok, y, b);
  }
  if (nonfinite && nonfinite_flag != nullptr) *nonfinite_flag = 1;
}

// Calls f with std::integral_constant 16 (full blocks) or 0 (a runtime block).
template <class F>
void dispatch_nvfp4_block(int block, F&& f) {
  if (block == kNvfp4MaxBlock) {
    f(std::integral_constant<int, kNvfp4MaxBlock>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

}  // namespace

bool cuda_compiled() {
  return true;
}

bool cuda_device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // a missing driver must not poison later calls
    return false;
  }
  return count > 0;
}

namespace cuda {

void quantize_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                  IntBuffers out, cudaStream_t stream, int* nonfinite_flag) {
  const IntLayout layout = int_layout(spec, shape);
  check_pointers("quantize_int", {x});
  if (layout.code_elements > 0) check_pointers("quantize_int", {out.codes, out.scales, out.zeros});
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (layout.code_elements == 0) return;
    const T* xt = static_cast<const T*>(x);
    launch_int_params(xt, spec, layout, out.scales, out.zeros, stream, nonfinite_flag);
    dispatch_bits(spec.bits, [&](auto bits) {
      constexpr int kBits = decltype(bits)::value;
      launch(
          "int_pack_kernel", int_pack_kernel<T, kBits>, layout.code_words, stream, xt,
          layout.code_elements, layout.groups, out.scales, out.zeros, spec.zero_point, aligned16(x),
          channel_params_vectorizable(layout.groups, layout.codes_per_word, out.scales, out.zeros),
          out.codes, layout.code_words);
    });
  });
}

void dequantize_int(const IntSpec& spec, const CacheShape& shape, ConstIntBuffers in, DType dtype,
                    void* y, cudaStream_t stream) {
  const IntLayout layout = int_layout(spec, shape);
  check_pointers("dequantize_int", {y});
  if (layout.code_elements > 0) check_pointers("dequantize_int", {in.codes, in.scales, in.zeros});
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (layout.code_elements == 0) return;
    launch("int_dequantize_kernel", int_dequantize_kernel<T>, layout.code_elements, stream,
           in.codes, in.scales, in.zeros, layout.code_elements, layout.groups, spec.bits,
           layout.codes_per_word, spec.zero_point, static_cast<T*>(y));
  });
}

void fake_quant_int(const IntSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                    void* y, cudaStream_t stream, int* nonfinite_flag) {
  const IntLayout layout = int_layout(spec, shape);
  check_pointers("fake_quant_int", {x, y});
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xt = static_cast<const T*>(x);
    T* yt = static_cast<T*>(y);
    const int64_t n = layout.code_elements;
    if (n > 0) {
      const int64_t groups = layout.groups.count;
      const StreamScratch params(2 * static_cast<size_t>(groups) * sizeof(float), stream);
      float* scales = params.as<float>();
      float* zeros = scales + groups;
      launch_int_params(xt, spec, layout, scales, zeros, stream, nonfinite_flag);
      launch("int_fake_kernel", int_fake_kernel<T>, (n + kIntChunk - 1) / kIntChunk, stream, xt, n,
             layout.groups, scales, zeros, spec.bits, spec.zero_point, aligned16(x) && aligned16(y),
             channel_params_vectorizable(layout.groups, static_cast<int>(kIntChunk), scales, zeros),
             yt);
    }
    if (layout.residual_tokens > 0 && x != y) {
      const size_t bytes = static_cast<size_t>(shape.elements() - n) * sizeof(T);
      check(cudaMemcpyAsync(yt + n, xt + n, bytes, cudaMemcpyDeviceToDevice, stream),
            "cudaMemcpyAsync(residual tokens)");
    }
  });
}

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

void quantize_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                    Nvfp4Buffers out, cudaStream_t stream, int* nonfinite_flag) {
  validate_shape(shape, "quantize_nvfp4");
  check_pointers("quantize_nvfp4", {x, out.codes, out.block_scales, head_scales});
  const int block = nvfp4_block(shape.head_dim);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = shape.elements();
    if (block % 8 != 0) {
      // Blocks share code words, which their threads OR into.
      const size_t words = static_cast<size_t>((n + 7) / 8);
      check(cudaMemsetAsync(out.codes, 0, words * sizeof(uint32_t), stream),
            "cudaMemsetAsync(nvfp4 codes)");
    }
    dispatch_nvfp4_block(block, [&](auto block_tag) {
      constexpr int kBlock = decltype(block_tag)::value;
      launch("nvfp4_quantize_kernel", nvfp4_quantize_kernel<T, kBlock>, n / block, stream,
             static_cast<const T*>(x), n / block, block,
             HeadScales{head_scales, shape.head_dim, shape.heads}, aligned16(x), out.codes,
             out.block_scales, nonfinite_flag);
    });
  });
}

void dequantize_nvfp4(const CacheShape& shape, ConstNvfp4Buffers in, const float* head_scales,
                      DType dtype, void* y, cudaStream_t stream) {
  validate_shape(shape, "dequantize_nvfp4");
  check_pointers("dequantize_nvfp4", {in.codes, in.block_scales, y, head_scales});
  const int block = nvfp4_block(shape.head_dim);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = shape.elements();
    dispatch_nvfp4_block(block, [&](auto block_tag) {
      constexpr int kBlock = decltype(block_tag)::value;
      launch("nvfp4_dequantize_kernel", nvfp4_dequantize_kernel<T, kBlock>, n / block, stream,
             in.codes, in.block_scales, n / block, block,
             HeadScales{head_scales, shape.head_dim, shape.heads}, aligned16(y),
             static_cast<T*>(y));
    });
  });
}

void fake_quant_nvfp4(const CacheShape& shape, DType dtype, const void* x, const float* head_scales,
                      void* y, cudaStream_t stream, int* nonfinite_flag) {
  validate_shape(shape, "fake_quant_nvfp4");
  check_pointers("fake_quant_nvfp4", {x, y, head_scales});
  const int block = nvfp4_block(shape.head_dim);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = shape.elements();
    dispatch_nvfp4_block(block, [&](auto block_tag) {
      constexpr int kBlock = decltype(block_tag)::value;
      launch("nvfp4_fake_kernel", nvfp4_fake_kernel<T, kBlock>, n / block, stream,
             static_cast<const T*>(x), n / block, block,
             HeadScales{head_scales, shape.head_dim, shape.heads}, aligned16(x) && aligned16(y),
             static_cast<T*>(y), nonfinite_flag);
    });
  });
}

void check_flag(const int* nonfinite_flag, cudaStream_t stream, const char* what) {
  if (nonfinite_flag == nullptr) return;
  int seen = 0;
  check(cudaMemcpyAsync(&seen, nonfinite_flag, sizeof seen, cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync(nonfinite flag)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (seen == 0) return;
  // The flag is the caller's, reused across calls: clear it before reporting.
  check(cudaMemsetAsync(const_cast<int*>(nonfinite_flag), 0, sizeof seen, stream),
        "cudaMemsetAsync(nonfinite flag)");
  throw std::invalid_argument(std::string(what) + ": input contains NaN or Inf");
}

}  // namespace cuda
}  // namespace kvtune::kernels
