// Per-element arithmetic of every KV-cache format kvtune supports.
//
// These functions are the single definition of the quantization semantics in
// ../shared/DESIGN.md. Both the CPU reference and the CUDA kernels call them,
// so the GPU runs exactly the math the CPU tests check; GPU-only code is
// reduced to indexing and launch. They are written without FMA-contractible
// expressions (the build disables contraction) and round half to even, so CPU
// and CUDA agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define KVT_HD __host__ __device__ __forceinline__
#else
#define KVT_HD inline
#endif

namespace kvtune::kernels {

enum class ZeroPoint : uint8_t {
  Int,   // KVTuner's vanilla quantizer: signed codes, integer zero point
  Float  // KIVI: unsigned codes, the group minimum as a float offset
};

KVT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

KVT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// True for NaN and +-Inf.
KVT_HD bool is_nonfinite(float f) {
  return ((float_bits(f) >> 23) & 0xffu) == 0xffu;
}

// Round to the nearest integer, ties to even (torch.round). Exact for every
// float: values of magnitude >= 2^23 are already integers, smaller ones are
// rounded by adding and removing 2^23 in float arithmetic.
KVT_HD float round_half_even(float x) {
  const float big = 8388608.0f;  // 2^23
  const float a = fabsf(x);
  if (a < big) {
    const float r = (a + big) - big;
    return copysignf(r, x);
  }
  return x;
}

// min/max for finite operands (inputs are validated). Unlike fminf/fmaxf these
// compile to single vector instructions on the CPU.
KVT_HD float min_f(float a, float b) {
  return b < a ? b : a;
}
KVT_HD float max_f(float a, float b) {
  return b > a ? b : a;
}
KVT_HD float clamp_f(float x, float lo, float hi) {
  return min_f(max_f(x, lo), hi);
}

// 2^n for n in the normal float range.
KVT_HD float pow2(int n) {
  return bits_float(static_cast<uint32_t>(n + 127) << 23);
}

// floor(log2(a)) for a normal positive float; a very negative value for 0 and
// subnormals (callers clamp it).
KVT_HD int floor_log2(float a) {
  return static_cast<int>((float_bits(a) >> 23) & 0xffu) - 127;
}

// ---------------------------------------------------------------------------
// Asymmetric min/max integer quantization of one group.

struct AffineParams {
  float scale;
  float zero;  // Int: the integer zero point; Float: the group minimum
};

KVT_HD float int_levels(int bits) {
  return static_cast<float>((1u << bits) - 1u);
}
KVT_HD float int_qmin(int bits) {
  return -static_cast<float>(1u << (bits - 1));
}

KVT_HD AffineParams int_params(float mn, float mx, int bits, ZeroPoint mode) {
  const float levels = int_levels(bits);
  if (mode == ZeroPoint::Int) {
    const float scale = max_f(mx - mn, 1e-5f) / levels;
    const float zero = round_half_even(mn / scale) - int_qmin(bits);
    return {scale, zero};
  }
  return {(mx - mn) / levels, mn};
}

// The code of x as a float: q in [qmin, qmax] for Int, in [0, 2^bits) for Float.
KVT_HD float int_level(float x, AffineParams p, int bits, ZeroPoint mode) {
  if (mode == ZeroPoint::Int) {
    const float qmin = int_qmin(bits);
    return clamp_f(round_half_even(x / p.scale - p.zero), qmin, qmin + int_levels(bits));
  }
  if (p.scale == 0.0f) return 0.0f;  // constant group: every value is the minimum
  return round_half_even(clamp_f((x - p.zero) / p.scale, 0.0f, int_levels(bits)));
}

KVT_HD float int_dequant_level(float q, AffineParams p, ZeroPoint mode) {
  if (mode == ZeroPoint::Int) return (q + p.zero) * p.scale;
  const float scaled = q * p.scale;
  return scaled + p.zero;
}

// The unsigned code in [0, 2^bits) stored for x (Int stores q - qmin).
KVT_HD uint32_t int_encode(float x, AffineParams p, int bits, ZeroPoint mode) {
  const float q = int_level(x, p, bits, mode);
  const float code = mode == ZeroPoint::Int ? q - int_qmin(bits) : q;
  return static_cast<uint32_t>(static_cast<int32_t>(code));
}

KVT_HD float int_decode(uint32_t code, AffineParams p, int bits, ZeroPoint mode) {
  float q = static_cast<float>(static_cast<int32_t>(code));
  if (mode == ZeroPoint::Int) q = q + int_qmin(bits);
  return int_dequant_level(q, p, mode);
}

// int_decode(int_encode(x)) without leaving float: codes are small integers,
// so the round trip through an integer is exact and this is bit-identical.
KVT_HD float int_fake_quant(float x, AffineParams p, int bits, ZeroPoint mode) {
  return int_dequant_level(int_level(x, p, bits, mode), p, mode);
}

// ---------------------------------------------------------------------------
// FP8 E4M3 (OCP): bias 7, 3 mantissa bits, max 448, no infinities. Values are
// rounded to nearest, ties to even, and saturate at +-448.

inline constexpr float kE4M3Max = 448.0f;

KVT_HD float e4m3_round(float x) {
  const float a = fabsf(x);
  int e = floor_log2(a);
  e = e < -6 ? -6 : e;  // below 2^-6 the spacing is the subnormal 2^-9
  const float quantum = pow2(e - 3);
  const float v = round_half_even(a / quantum) * quantum;
  return copysignf(min_f(v, kE4M3Max), x);
}

KVT_HD uint8_t e4m3_encode(float x) {
  const float v = e4m3_round(x);
  const uint32_t sign = (float_bits(v) >> 24) & 0x80u;
  const float a = fabsf(v);
  if (a < 0.015625f) {  // subnormal: m * 2^-9
    return static_cast<uint8_t>(sign | static_cast<uint32_t>(a * 512.0f));
  }
  const uint32_t exp_field = static_cast<uint32_t>(floor_log2(a) + 7);
  const uint32_t mant = (float_bits(a) >> 20) & 7u;
  return static_cast<uint8_t>(sign | (exp_field << 3) | mant);
}

KVT_HD float e4m3_decode(uint8_t code) {
  const uint32_t exp_field = (code >> 3) & 0xfu;
  const uint32_t mant = code & 7u;
  float v;
  if (exp_field == 0xfu && mant == 7u) {
    v = bits_float(0x7fc00000u);  // the format's only NaN; never produced
  } else if (exp_field == 0) {
    v = static_cast<float>(mant) * 0.001953125f;  // 2^-9
  } else {
    v = (1.0f + static_cast<float>(mant) * 0.125f) * pow2(static_cast<int>(exp_field) - 7);
  }
  return (code & 0x80u) ? -v : v;
}

// ---------------------------------------------------------------------------
// FP4 E2M1: values +-{0, 0.5, 1, 1.5, 2, 3, 4, 6}, ties to even, saturating.

inline constexpr float kE2M1Max = 6.0f;

KVT_HD float e2m1_round(float x) {
  const float a = fabsf(x);
  int e = floor_log2(a);
  e = e < 0 ? 0 : e;  // below 1 the spacing is the subnormal 0.5
  const float quantum = pow2(e - 1);
  const float v = round_half_even(a / quantum) * quantum;
  return copysignf(min_f(v, kE2M1Max), x);
}

KVT_HD uint32_t e2m1_encode(float x) {
  const float v = e2m1_round(x);
  const uint32_t sign = (float_bits(v) >> 28) & 0x8u;
  const float a = fabsf(v);
  if (a < 1.0f) return sign | static_cast<uint32_t>(a * 2.0f);
  const uint32_t exp_field = static_cast<uint32_t>(floor_log2(a) + 1);
  const uint32_t mant = (float_bits(a) >> 22) & 1u;
  return sign | (exp_field << 1) | mant;
}

KVT_HD float e2m1_decode(uint32_t code) {
  const uint32_t exp_field = (code >> 1) & 3u;
  const uint32_t mant = code & 1u;
  const float v = exp_field == 0 ? 0.5f * static_cast<float>(mant)
                                 : (1.0f + 0.5f * static_cast<float>(mant)) *
                                       pow2(static_cast<int>(exp_field) - 1);
  return (code & 0x8u) ? -v : v;
}

// NVFP4's effective scale of one block: its E4M3 block scale times the fp32
// per-head scale. A block whose scale rounds to zero quantizes to zeros.
KVT_HD uint8_t nvfp4_block_scale_code(float block_amax, float head_scale) {
  return e4m3_encode((block_amax / kE2M1Max) / head_scale);
}
KVT_HD float nvfp4_block_scale(uint8_t block_code, float head_scale) {
  return e4m3_decode(block_code) * head_scale;
}
KVT_HD uint32_t nvfp4_encode(float x, float block_scale) {
  return block_scale == 0.0f ? 0u : e2m1_encode(x / block_scale);
}
KVT_HD float nvfp4_decode(uint32_t code, float block_scale) {
  return e2m1_decode(code) * block_scale;
}

// Fake quantization (the evaluator's hot path), bit-identical to decoding the
// encoded value: the rounding functions return exactly the decoded values.
KVT_HD float fp8_fake_quant(float x, float head_scale) {
  return e4m3_round(x / head_scale) * head_scale;
}
KVT_HD float nvfp4_fake_quant(float x, float block_scale) {
  return block_scale == 0.0f ? 0.0f : e2m1_round(x / block_scale) * block_scale;
}

// ---------------------------------------------------------------------------
// fp16 / bf16 storage conversions (round to nearest even).

KVT_HD float bf16_to_float(uint16_t b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}

KVT_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

KVT_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp_field = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp_field == 0) {  // zero or subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return bits_float(float_bits(v) | sign);
  }
  if (exp_field == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp_field + 112u) << 23) | (mant << 13));
}

KVT_HD uint16_t float_to_half(float f) {
  uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return static_cast<uint16_t>(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (u >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (u < 0x38800000u) {                                               // half subnormal range
    const float units = round_half_even(bits_float(u) * 16777216.0f);  // in units of 2^-24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(units));
  }
  const uint32_t rounded = u + 0xfffu + ((u >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

// Storage element types: loading widens to float, storing rounds to nearest even.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
KVT_HD float to_float(float v) {
  return v;
}
KVT_HD float to_float(Half v) {
  return half_to_float(v.bits);
}
KVT_HD float to_float(BFloat16 v) {
  return bf16_to_float(v.bits);
}
template <class T>
KVT_HD T from_float(float v);
template <>
KVT_HD float from_float<float>(float v) {
  return v;
}
template <>
KVT_HD Half from_float<Half>(float v) {
  return Half{float_to_half(v)};
}
template <>
KVT_HD BFloat16 from_float<BFloat16>(float v) {
  return BFloat16{float_to_bf16(v)};
}

// ---------------------------------------------------------------------------
// KVTuner's vanilla quantizer (cmd2001/KVTuner, flexible_quant/
// vanilla_quantizer.py, asym=True) as PyTorch runs it on the model's bf16
// tensors: each tensor op computes in float from bf16 operands and rounds its
// result to bf16 (8 significant bits), so KV8 is coarser than exact integer
// arithmetic. Codes are signed, q in [-2^(b-1), 2^(b-1) - 1].

KVT_HD float bf16_round(float f) {
  return bf16_to_float(float_to_bf16(f));
}

struct KvtunerParams {
  float scale;
  float zero;  // integer-valued
};

// The scale and zero point of a group whose bf16 values span [mn, mx].
KVT_HD KvtunerParams kvtuner_params(float mn, float mx, int bits) {
  const float qmin = int_qmin(bits);
  // scale = (_max - _min).clamp(min=1e-5).div(q_max - q_min): the clamp bound
  // is converted to bf16 first (PyTorch's clamp_min on a bf16 tensor).
  const float range = max_f(bf16_round(mx - mn), bf16_round(1e-5f));
  const float scale = bf16_round(range / int_levels(bits));
  // zeros = (_min / scale).round() - q_min
  const float zero = bf16_round(round_half_even(bf16_round(mn / scale)) - qmin);
  return {scale, zero};
}

// dequantize(quantize(x)) of a bf16 value x:
// q = round(x / scale - zeros).clip(q_min, q_max); (q + zeros) * scale.
KVT_HD float kvtuner_fake_quant(float x, KvtunerParams p, int bits) {
  const float qmin = int_qmin(bits);
  const float t = bf16_round(bf16_round(x / p.scale) - p.zero);
  const float q = clamp_f(round_half_even(t), qmin, qmin + int_levels(bits));
  return bf16_round(bf16_round(q + p.zero) * p.scale);
}

}  // namespace kvtune::kernels
