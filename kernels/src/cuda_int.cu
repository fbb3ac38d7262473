// CUDA kernels of the integer formats (per-token and KIVI groups, signed or
// float zero points): group parameters (min/max reductions, contiguous and
// channel groups), packing, dequantization and fused fake-quant, and their
// entry points cuda::quantize_int, cuda::dequantize_int, cuda::fake_quant_int.
// The per-group math is format_math.h's, shared with the CPU reference.
#include "cuda_common.cuh"

namespace kvtune::kernels {
namespace cuda_detail {
namespace {

constexpr int64_t kIntChunk = 8;  // elements per thread in int fake-quant

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

}  // namespace
}  // namespace cuda_detail

namespace cuda {

using namespace cuda_detail;

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

}  // namespace cuda
}  // namespace kvtune::kernels
