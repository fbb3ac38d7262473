// Per-group arithmetic of the KV-cache formats of released engines (vLLM,
// SGLang, TensorRT-LLM, llama.cpp; ../shared/ENGINES.md), shared by the CPU
// reference and the CUDA kernels as format_math.h is. A group is a run of
// contiguous elements handled together: a 16-element block for the fp4
// formats, a unit of whole 32-element blocks and Hadamard chunks for
// llama.cpp's (ggml_math.h), else one (token, head) vector (which the
// per-token-head formats scale as one).
#pragma once

#include "kvtune/kernels/format_math.h"
#include "kvtune/kernels/ggml_math.h"

namespace kvtune::kernels {

enum class EngineArith : uint8_t {
  // e4m3(x / scale), saturating at +-448 (CUDA __NV_SATFINITE); value * scale.
  // vLLM fp8 / fp8_e4m3; TensorRT-LLM fp8 at scale 1.
  E4m3Scaled,
  // The same in E5M2, saturating at +-57344: vLLM fp8_e5m2.
  E5m2Scaled,
  // PyTorch's cast of x / scale (divided in the tensor's dtype) to
  // float8_e4m3fn: not saturating, NaN beyond 464. SGLang fp8_e4m3.
  E4m3Cast,
  // PyTorch's cast to float8_e5m2: not saturating, +-inf from 61440. SGLang fp8_e5m2.
  E5m2Cast,
  // Per (token, head): s = max(amax / 448, 1e-6); e4m3(clamp(x * (1/s), +-448)) * s.
  Fp8PerTokenHead,
  // Per (token, head): s = max(amax / 127, 1e-6); trunc(clamp(x * (1/s), -128, 127)) * s.
  Int8PerTokenHead,
  // NVFP4 with one global scale g = 1 / scale per layer: per 16 channels of
  // one (token, head), SF = e4m3(g * (amax * (1/6))); codes E2M1 (nearest,
  // ties to even) of x * (1 / (SF * (1/g))). vLLM nvfp4; TensorRT-LLM nvfp4.
  // vLLM's kernel takes these reciprocals with rcp.approx.ftz; kvtune takes
  // them exactly (they can differ in the last bit).
  Nvfp4Layer,
  // SGLang fp4_e2m1: per 16 consecutive elements of the flattened tensor, a
  // power-of-two scale 2^ceil(log2(max(amax / 6, 1e-10))); the code counts
  // the E2M1 midpoints <= |x| / 2^e (ties go up).
  Fp4Pow2,
  // llama.cpp's cache types (-ctk / -ctv), ggml_math.h: blocks of 32
  // consecutive elements of a token's heads x head_dim row, quantized by
  // ggml's reference quantizer, with an fp16 block scale (and minimum).
  GgmlQ8_0,
  GgmlQ4_0,
  GgmlQ4_1,
  GgmlQ5_0,
  GgmlQ5_1,
  GgmlIq4Nl,
  // The unquantized ones: fp16 and bf16 (round to nearest even), f32 (identity).
  GgmlF16,
  GgmlBf16,
  GgmlF32
};

// llama.cpp's types, and among them those quantized in 32-element blocks.
KVT_HD bool engine_is_ggml(EngineArith arith) {
  return arith >= EngineArith::GgmlQ8_0 && arith <= EngineArith::GgmlF32;
}
KVT_HD bool engine_is_ggml_block(EngineArith arith) {
  return arith >= EngineArith::GgmlQ8_0 && arith <= EngineArith::GgmlIq4Nl;
}

// The Hadamard chunk llama.cpp applies to a cache of this type and role
// (ggml_rotation_chunk for the quantized types; 0 for f16, bf16, f32 and the
// other engines' formats).
KVT_HD int ggml_rotation_chunk(EngineArith arith, Role role, int64_t head_dim) {
  return engine_is_ggml_block(arith) ? ggml_rotation_chunk(role, head_dim) : 0;
}

// Elements per group of `arith` (not llama.cpp's) in a tensor whose heads are
// head_dim long: 16 for the fp4 blocks, else one (token, head) vector (the
// per-layer-scale formats act element by element; a vector is just the unit
// of work).
KVT_HD int64_t engine_group_size(EngineArith arith, int64_t head_dim) {
  return arith == EngineArith::Nvfp4Layer || arith == EngineArith::Fp4Pow2 ? 16 : head_dim;
}

// The unit of work of `arith` with Hadamard chunks of rotate_chunk channels
// (0: none): whole blocks and whole chunks, max(32, chunk) for the block
// types; the chunk, else head_dim, for f16, bf16, f32; else the group.
KVT_HD int64_t engine_unit_size(EngineArith arith, int rotate_chunk, int64_t head_dim) {
  if (engine_is_ggml_block(arith)) return rotate_chunk > kGgmlBlock ? rotate_chunk : kGgmlBlock;
  if (engine_is_ggml(arith)) return rotate_chunk > 0 ? rotate_chunk : head_dim;
  return engine_group_size(arith, head_dim);
}

// ---------------------------------------------------------------------------
// FP8 E5M2: bias 15, 2 mantissa bits, max 57344, subnormal spacing 2^-16.

inline constexpr float kE5M2Max = 57344.0f;

KVT_HD float e5m2_round(float x) {
  const float a = fabsf(x);
  int e = floor_log2(a);
  e = e < -14 ? -14 : e;
  const float quantum = pow2(e - 2);
  const float v = round_half_even(a / quantum) * quantum;
  return copysignf(min_f(v, kE5M2Max), x);
}

// PyTorch's non-saturating conversions (c10 fp8e4m3fn_from_fp32_value,
// fp8e5m2_from_fp32_value): round to nearest even, and what rounds past the
// largest finite value is NaN (E4M3FN has no infinity) or +-inf (E5M2).
KVT_HD float e4m3_cast(float x) {
  return fabsf(x) > 464.0f ? bits_float(0x7fc00000u) : e4m3_round(x);
}
KVT_HD float e5m2_cast(float x) {
  return fabsf(x) >= 61440.0f ? copysignf(bits_float(0x7f800000u), x) : e5m2_round(x);
}

// E2M1 by SGLang's midpoint count: |v| >= 0.25 -> 0.5, >= 0.75 -> 1, ... >= 5 -> 6.
KVT_HD float e2m1_round_up_ties(float x) {
  const float a = fabsf(x);
  float v = 0.0f;
  if (a >= 0.25f) v = 0.5f;
  if (a >= 0.75f) v = 1.0f;
  if (a >= 1.25f) v = 1.5f;
  if (a >= 1.75f) v = 2.0f;
  if (a >= 2.5f) v = 3.0f;
  if (a >= 3.5f) v = 4.0f;
  if (a >= 5.0f) v = 6.0f;
  return copysignf(v, x);
}

// ceil(log2(a)) exactly, for a normal positive float.
KVT_HD int ceil_log2(float a) {
  const int e = floor_log2(a);
  return (float_bits(a) & 0x7fffffu) == 0 ? e : e + 1;
}

// What one group of `n` elements holds after a round trip through the
// engine's cache: in[i] -> out[i] (out may alias in). `scale` is the per-layer
// scale of the formats that take one. Returns how many values the engine
// stores as NaN or inf (the cast formats only); a non-finite input sets
// *first_bad to its index in the group (else it stays -1) and writes nothing.
template <class T>
KVT_HD int64_t engine_fake_quant_group(EngineArith arith, float scale, const T* in, T* out,
                                       int64_t n, int64_t* first_bad) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = to_float(in[i]);
    if (is_nonfinite(v)) {
      *first_bad = i;
      return 0;
    }
    amax = max_f(amax, fabsf(v));
  }
  int64_t overflow = 0;
  switch (arith) {
    case EngineArith::E4m3Scaled:
      for (int64_t i = 0; i < n; ++i)
        out[i] = from_float<T>(e4m3_round(to_float(in[i]) / scale) * scale);
      break;
    case EngineArith::E5m2Scaled:
      for (int64_t i = 0; i < n; ++i)
        out[i] = from_float<T>(e5m2_round(to_float(in[i]) / scale) * scale);
      break;
    case EngineArith::E4m3Cast:
    case EngineArith::E5m2Cast: {
      // SGLang: cache_k.div_(k_scale) in the model's dtype (the fp32 scale
      // rounded to it), then cast to fp8; read back cast to the model dtype
      // and multiplied by the scale.
      const float s = to_float(from_float<T>(scale));
      for (int64_t i = 0; i < n; ++i) {
        const float scaled = to_float(from_float<T>(to_float(in[i]) / s));
        const float q = arith == EngineArith::E4m3Cast ? e4m3_cast(scaled) : e5m2_cast(scaled);
        overflow += is_nonfinite(q) ? 1 : 0;
        out[i] = from_float<T>(q * s);
      }
      break;
    }
    case EngineArith::Fp8PerTokenHead:
    case EngineArith::Int8PerTokenHead: {
      // vLLM's Triton store: k_scale = max(amax / QUANT_MAX, 1e-6); k * (1.0 / k_scale),
      // clamped, then stored (fp8 rounds, int8 truncates toward zero).
      const bool fp8 = arith == EngineArith::Fp8PerTokenHead;
      const float qmax = fp8 ? kE4M3Max : 127.0f, qmin = fp8 ? -kE4M3Max : -128.0f;
      const float s = max_f(amax / qmax, 1e-6f);
      const float inv = 1.0f / s;
      for (int64_t i = 0; i < n; ++i) {
        const float q = clamp_f(to_float(in[i]) * inv, qmin, qmax);
        out[i] = from_float<T>((fp8 ? e4m3_round(q) : truncf(q)) * s);
      }
      break;
    }
    case EngineArith::Nvfp4Layer: {
      // vLLM's cvt_warp_fp16_to_fp4 with g = 1 / k_scale: SF = e4m3(g * (amax
      // * (1/6))); x * (1 / (SF * (1/g))); read back as code * SF * (1/g).
      const float g = 1.0f / scale;
      const float sf = e4m3_round(g * (amax * (1.0f / kE2M1Max)));
      const float block = sf * (1.0f / g);
      const float inv = sf == 0.0f ? 0.0f : 1.0f / block;
      for (int64_t i = 0; i < n; ++i)
        out[i] = from_float<T>(sf == 0.0f ? 0.0f : e2m1_round(to_float(in[i]) * inv) * block);
      break;
    }
    case EngineArith::Fp4Pow2: {
      const float block = pow2(ceil_log2(max_f(amax / kE2M1Max, 1e-10f)));
      for (int64_t i = 0; i < n; ++i)
        out[i] = from_float<T>(e2m1_round_up_ties(to_float(in[i]) / block) * block);
      break;
    }
    default:  // llama.cpp's: ggml_fake_quant_unit
      break;
  }
  return overflow;
}

// What one 32-element block of a llama.cpp block type holds, in place.
KVT_HD void ggml_fake_quant_block(EngineArith arith, float* v) {
  switch (arith) {
    case EngineArith::GgmlQ8_0:
      return ggml_q8_0(v);
    case EngineArith::GgmlQ4_0:
      return ggml_q_0(v, 8);
    case EngineArith::GgmlQ5_0:
      return ggml_q_0(v, 16);
    case EngineArith::GgmlQ4_1:
      return ggml_q_1(v, 15);
    case EngineArith::GgmlQ5_1:
      return ggml_q_1(v, 31);
    default:
      return ggml_iq4_nl(v);
  }
}

// The unquantized llama.cpp types, element by element.
KVT_HD float ggml_store_value(EngineArith arith, float x) {
  return arith == EngineArith::GgmlF16    ? fp16_round(x)
         : arith == EngineArith::GgmlBf16 ? bf16_round(x)
                                          : x;
}

// What one unit (engine_unit_size) of a llama.cpp type holds after a round
// trip through the cache: each rotate_chunk-channel chunk multiplied by the
// orthonormal Hadamard matrix (none when 0), the blocks quantized and read
// back, the chunks rotated back. in[i] -> out[i] (out may alias in); `buf`
// is scratch for n floats (unused for f16, bf16, f32 without rotation).
// Returns how many stored values are NaN or inf (fp16 overflow of a value or
// a block scale); a non-finite input sets *first_bad to its index in the unit
// and writes nothing.
template <class T>
KVT_HD int64_t ggml_fake_quant_unit(EngineArith arith, int rotate_chunk, const T* in, T* out,
                                    int64_t n, float* buf, int64_t* first_bad) {
  int64_t overflow = 0;
  if (rotate_chunk == 0 && !engine_is_ggml_block(arith)) {
    for (int64_t i = 0; i < n; ++i) {
      if (is_nonfinite(to_float(in[i]))) {
        *first_bad = i;
        return 0;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const float v = ggml_store_value(arith, to_float(in[i]));
      overflow += is_nonfinite(v) ? 1 : 0;
      out[i] = from_float<T>(v);
    }
    return overflow;
  }
  for (int64_t i = 0; i < n; ++i) {
    buf[i] = to_float(in[i]);
    if (is_nonfinite(buf[i])) {
      *first_bad = i;
      return 0;
    }
  }
  for (int64_t c = 0; rotate_chunk > 0 && c < n; c += rotate_chunk) {
    ggml_hadamard(buf + c, rotate_chunk);
  }
  if (engine_is_ggml_block(arith)) {
    for (int64_t b = 0; b < n; b += kGgmlBlock) ggml_fake_quant_block(arith, buf + b);
  } else {
    for (int64_t i = 0; i < n; ++i) buf[i] = ggml_store_value(arith, buf[i]);
  }
  for (int64_t i = 0; i < n; ++i) overflow += is_nonfinite(buf[i]) ? 1 : 0;
  for (int64_t c = 0; rotate_chunk > 0 && c < n; c += rotate_chunk) {
    ggml_hadamard(buf + c, rotate_chunk);
  }
  for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(buf[i]);
  return overflow;
}

}  // namespace kvtune::kernels
