// Fake quantization in the KV-cache formats of released engines: what the
// engine's cache holds for one layer's keys or values, read back in the
// tensor's dtype. Tensors are [tokens, heads, head_dim] as in quant.h; the
// arithmetic is engine_math.h's, shared by the CPU reference and CUDA.
#pragma once

#include <cstdint>

#include "kvtune/kernels/engine_math.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {

struct EngineSpec {
  EngineArith arith = EngineArith::E4m3Scaled;
  float scale = 1.0f;  // the per-layer scale (k_scale or v_scale); ignored by the others
  // llama.cpp's types only: the size n of the orthonormal Sylvester-Hadamard
  // chunks applied along each head's head_dim around the cache (0: none).
  // The cache then holds H^T deq(q(H k)) in effect, since llama.cpp rotates Q
  // (keys) or the attention output (values) the same way.
  // ggml_rotation_chunk(arith, role, head_dim) is what llama.cpp uses.
  int rotate_chunk = 0;
};

// Whether `arith` takes a per-layer scale.
bool engine_takes_scale(EngineArith arith);

// Throws std::invalid_argument naming the value unless the spec and shape can
// be run: a positive finite scale, head_dim a multiple of 16 for Nvfp4Layer
// (its blocks are 16 channels of one head), heads * head_dim a multiple of 16
// for Fp4Pow2 (its blocks of the flattened tensor must not straddle tokens)
// and of 32 for llama.cpp's block types; rotate_chunk 0, or for llama.cpp's
// types a power of two from 2 to kGgmlMaxRotation dividing head_dim.
void validate_engine(const EngineSpec& spec, const CacheShape& shape);

// Storage bits per element: the codes, their block or per-(token, head)
// scales, and the per-layer fp32 scale over the tensor's elements (llama.cpp:
// q8_0 8.5, q4_0 4.5, q4_1 5, q5_0 5.5, q5_1 6, iq4_nl 4.5, f16 and bf16 16,
// f32 32; the rotation stores nothing).
double engine_storage_bits(const EngineSpec& spec, const CacheShape& shape);

namespace cpu {
// y = what the engine's cache gives back for x; y may alias x. Non-finite
// input throws naming the element. Returns how many values the engine
// stores as NaN or inf (the non-saturating cast formats; llama.cpp's where a
// value or a block's fp16 scale or minimum passes 65504; 0 for the others).
int64_t fake_quant_engine(const EngineSpec& spec, const CacheShape& shape, DType dtype,
                          const void* x, void* y);
}  // namespace cpu

namespace cuda {
// The same on device pointers. `counts`, when given, is a device array of two
// unsigned long longs that the kernel adds to: [0] groups (llama.cpp's: units
// of engine_unit_size) with non-finite input, which come back NaN, [1] values
// the engine stores as NaN or inf.
void fake_quant_engine(const EngineSpec& spec, const CacheShape& shape, DType dtype, const void* x,
                       void* y, cudaStream_t stream, unsigned long long* counts = nullptr);
}  // namespace cuda

}  // namespace kvtune::kernels
