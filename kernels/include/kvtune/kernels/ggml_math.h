// llama.cpp's KV-cache types (ggml block types, ../shared/ENGINES.md) as the
// cache holds them: one 32-element block quantized by ggml's reference
// quantizer and read back by its dequantizer, and the Hadamard rotation
// llama.cpp applies around a quantized cache. Shared by the CPU reference and
// the CUDA kernels, like format_math.h.
//
// Source: ggml-org/llama.cpp ggml/src/ggml-quants.c at 01243c58
// (quantize_row_{q8_0,q4_0,q4_1,q5_0,q5_1}_ref, quantize_row_iq4_nl_ref ->
// quantize_row_iq4_nl_impl with ntry = -1, best_index_int8, dequantize_row_*),
// src/llama-kv-cache.cpp (build_input_k_rot / build_input_v_rot,
// ggml_gen_hadamard), ggml/src/ggml-cpu/ops.cpp ggml_compute_forward_fwht_f32
// and ggml/src/ggml-cuda/fwht.cu.
//
// The emulation follows the C semantics without FMA contraction (the build
// disables it). Where the engine itself differs by backend:
// - q8_0: the CPU backend's set_rows uses the SIMD quantize_row_q8_0 (x86
//   AVX/AVX2: id = 127 / amax instead of 1 / (amax / 127), rounding ties to
//   even with _mm256_round_ps; ARM NEON likewise rounds to nearest even). The
//   two can differ only where x * id lies within an ulp of a half-integer.
// - q4_0, q4_1, q5_0, q5_1, iq4_nl: the CPU backend calls the _ref functions.
// - CUDA set_rows (ggml-cuda/cpy-utils.cuh) computes the same formulas but is
//   compiled with FMA contraction (x * id + 8.5f may fuse), iq4_nl there takes
//   no 1e-15 floor, accumulates its sums in pairs (j, j + 16), uses the older
//   best_index_int8 (float subtractions; ties also go up) and never a zero
//   block's -0: all last-bit or near-tie differences.
// - iq4_nl on aarch64 builds of ggml may contract sumqx += w*q*x into an FMA.
#pragma once

#include <cstdint>

#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {

// Elements per ggml block (QK8_0 = QK4_0 = ... = QK4_NL = 32).
inline constexpr int kGgmlBlock = 32;
// The largest Hadamard chunk kvtune applies (llama.cpp's K chunk for head_dim 1024).
inline constexpr int kGgmlMaxRotation = 1024;

KVT_HD float fp16_round(float x) {
  return half_to_float(float_to_half(x));
}

// C's roundf (ties away from zero), exact for every float.
KVT_HD float round_half_away(float x) {
  const float a = fabsf(x);
  const float t = truncf(a);
  return copysignf(a - t >= 0.5f ? t + 1.0f : t, x);
}

// C's float -> small integer conversion (toward zero) of a code that is in
// range for every finite block; a non-finite t (only from a subnormal block
// scale whose reciprocal overflows, undefined in C) gives 0, what x86 gives.
KVT_HD int ggml_code(float t) {
  return is_nonfinite(t) ? 0 : static_cast<int>(t);
}

// The element of largest |x| with its sign, the first one on ties (ggml's
// `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`); +0 for a zero block.
KVT_HD float ggml_signed_max(const float* v, float& amax) {
  amax = 0.0f;
  for (int j = 0; j < kGgmlBlock; ++j) amax = max_f(amax, fabsf(v[j]));
  int first = kGgmlBlock;
  for (int j = kGgmlBlock - 1; j >= 0; --j) first = fabsf(v[j]) == amax ? j : first;
  return amax == 0.0f ? 0.0f : v[first];
}

// q8_0: d = amax / 127, id = d ? 1 / d : 0, q = roundf(x * id), value q * fp16(d).
KVT_HD void ggml_q8_0(float* v) {
  float amax = 0.0f;
  for (int j = 0; j < kGgmlBlock; ++j) amax = max_f(amax, fabsf(v[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float dh = fp16_round(d);
  for (int j = 0; j < kGgmlBlock; ++j) {
    v[j] = static_cast<float>(ggml_code(round_half_away(v[j] * id))) * dh;
  }
}

// q4_0 (levels 8) and q5_0 (levels 16): d = max / -levels with max the signed
// largest element; q = min(2 levels - 1, trunc(x * id + levels + 0.5)); value
// (q - levels) * fp16(d).
KVT_HD void ggml_q_0(float* v, int levels) {
  float amax;
  const float mx = ggml_signed_max(v, amax);
  const float d = mx / -static_cast<float>(levels);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float dh = fp16_round(d);
  const float offset = static_cast<float>(levels) + 0.5f;
  const int top = 2 * levels - 1;
  for (int j = 0; j < kGgmlBlock; ++j) {
    const int q = ggml_code(v[j] * id + offset);
    v[j] = static_cast<float>((q < top ? q : top) - levels) * dh;
  }
}

// q4_1 (top 15) and q5_1 (top 31): d = (max - min) / top; q = min(top,
// trunc((x - min) * id + 0.5)); value q * fp16(d) + fp16(min).
KVT_HD void ggml_q_1(float* v, int top) {
  float mn = v[0], mx = v[0];
  for (int j = 1; j < kGgmlBlock; ++j) {
    mn = min_f(mn, v[j]);
    mx = max_f(mx, v[j]);
  }
  const float d = (mx - mn) / static_cast<float>(top);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float dh = fp16_round(d), mh = fp16_round(mn);
  for (int j = 0; j < kGgmlBlock; ++j) {
    const int q = ggml_code((v[j] - mn) * id + 0.5f);
    const float scaled = static_cast<float>(q < top ? q : top) * dh;
    v[j] = scaled + mh;
  }
}

// iq4_nl's codebook (kvalues_iq4nl).
KVT_HD float iq4nl_value(int i) {
  const int8_t k[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  return static_cast<float>(k[i]);
}

// best_index_int8 over the codebook: x takes level i once 2x reaches
// K[i-1] + K[i] (ties go up). ggml's branchless binary search over these
// sorted midpoints equals this count.
KVT_HD int iq4nl_index(float x) {
  const float x2 = x + x;
  int i = 0;
  i += x2 >= -231.0f;
  i += x2 >= -187.0f;
  i += x2 >= -148.0f;
  i += x2 >= -114.0f;
  i += x2 >= -84.0f;
  i += x2 >= -57.0f;
  i += x2 >= -32.0f;
  i += x2 >= -9.0f;
  i += x2 >= 14.0f;
  i += x2 >= 38.0f;
  i += x2 >= 63.0f;
  i += x2 >= 91.0f;
  i += x2 >= 122.0f;
  i += x2 >= 158.0f;
  i += x2 >= 202.0f;
  return i;
}

// iq4_nl by quantize_row_iq4_nl_ref (quantize_row_iq4_nl_impl with one block,
// no importance weights, ntry = -1, so no scale sweep): amax < 1e-15 gives a
// zero block (scale 0, every index 0: values -0); else d0 = max / -127 with
// max the signed largest element, each x takes iq4nl_index(x * (1 / d0)),
// and with weights w = x^2 the scale is refitted once,
// d = sum(w K x) / sum(w K^2) (0 when the denominator is not positive),
// accumulated in element order, without recomputing the indices; value
// fp16(d) * K.
KVT_HD void ggml_iq4_nl(float* v) {
  float amax;
  const float mx = ggml_signed_max(v, amax);
  if (amax < 1e-15f) {
    for (int j = 0; j < kGgmlBlock; ++j) v[j] = 0.0f * iq4nl_value(0);
    return;
  }
  const float id = 1.0f / (mx / iq4nl_value(0));
  float sumqx = 0.0f, sumq2 = 0.0f;
  int index[kGgmlBlock];
  for (int j = 0; j < kGgmlBlock; ++j) {
    index[j] = iq4nl_index(id * v[j]);
    const float q = iq4nl_value(index[j]);
    const float wq = v[j] * v[j] * q;
    sumqx = sumqx + wq * v[j];
    sumq2 = sumq2 + wq * q;
  }
  const float dh = fp16_round(sumq2 > 0.0f ? sumqx / sumq2 : 0.0f);
  for (int j = 0; j < kGgmlBlock; ++j) v[j] = dh * iq4nl_value(index[j]);
}

// The orthonormal Sylvester-Hadamard transform of n (a power of two) values
// in place: x * (1 / sqrtf(n)) first, then butterflies (a, b) -> (a + b,
// a - b) at strides 1, 2, ..., n/2 — the order of llama.cpp's CPU
// (ggml_compute_forward_fwht_f32) and CUDA (fwht_cuda) fast paths for the
// GGML_HINT_SRC0_IS_HADAMARD product, whose butterflies are exact-defined
// adds. H_n = [[H, H], [H, -H]] is symmetric, so it is its own inverse.
// (CUDA may fuse the scaling into the first butterfly, which changes the last
// bit for n = 128, 512, where 1/sqrt(n) is inexact; backends without the fast
// path multiply by ggml_gen_hadamard's matrix and round differently.)
KVT_HD void ggml_hadamard(float* v, int n) {
  const float scale = 1.0f / sqrtf(static_cast<float>(n));
  for (int i = 0; i < n; ++i) v[i] = v[i] * scale;
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
}

// llama.cpp's Hadamard chunk for a cache of `role` with heads of head_dim
// channels, when the cache type is quantized (llama_kv_cache: attn_rot_k /
// attn_rot_v = !LLAMA_ATTN_ROT_DISABLE && every layer has the same head size
// && ggml_is_quantized(type) && head_dim % 64 == 0, decided for K and V
// separately): keys the largest power of two >= 64 dividing head_dim
// (build_input_k_rot), values 64 (build_input_v_rot); 0 where it does not
// rotate.
KVT_HD int ggml_rotation_chunk(Role role, int64_t head_dim) {
  if (head_dim <= 0 || head_dim % 64 != 0) return 0;
  if (role == Role::Value) return 64;
  int64_t n = 64;
  while (head_dim % (2 * n) == 0) n *= 2;
  return static_cast<int>(n);
}

}  // namespace kvtune::kernels
