// CUDA kernels of NVFP4 (E2M1 codes, E4M3 scales per block of 16, per-head
// scales): quantize, dequantize and fake-quant of a block per thread, and
// their entry points cuda::quantize_nvfp4, cuda::dequantize_nvfp4,
// cuda::fake_quant_nvfp4. The per-element math is format_math.h's, shared
// with the CPU reference.
#include "cuda_common.cuh"

namespace kvtune::kernels {
namespace cuda_detail {
namespace {

constexpr int kNvfp4MaxBlock = 16;

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
}  // namespace cuda_detail

namespace cuda {

using namespace cuda_detail;

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

}  // namespace cuda
}  // namespace kvtune::kernels
