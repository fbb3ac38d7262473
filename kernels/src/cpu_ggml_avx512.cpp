// iq4_nl on sixteen blocks at a time with AVX-512: one block per lane of a
// 16-float vector (two 16 x 16 transposes), so that each block's refit sums
// still run in element order, and the codebook index found by a table
// lookup instead of a search; the values are then written block by block. Bit-identical to ggml_iq4_nl
// (ggml_math.h); the tests compare the two on every path.
//
// Only the functions after the target pragma use AVX-512, and only after
// use_avx512() has found it: everything that runs before that check (the
// tables, the check itself) is defined above the pragma.
#include "cpu_ggml_avx512.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kvtune/kernels/ggml_math.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KVT_HAVE_AVX512_PATH 1
// GCC 12's AVX-512 intrinsics initialize their undefined vectors from
// themselves (GCC bug 105593), which -Wuninitialized reports at each use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

namespace kvtune::kernels::cpu::detail {
namespace {

// iq4nl_index as a lookup. With al = x * id (the scalar's x), 2 al >= K[i-1]
// + K[i] exactly when al >= (K[i-1] + K[i]) / 2 (doubling is exact), so the
// levels change at half-integer thresholds at least 11.5 apart. Bucket k =
// round(al / 8) covers [8k - 4, 8k + 4] and holds at most one threshold:
// the level is lo[k], or hi[k] from thr[k] up. Entry k mod 32 serves k in
// [-15, 16]; k = -16 (al <= -124, level 0) shares entry 16 (al >= 124,
// level 15), told apart by the threshold 0. An entry is the threshold's
// float bits (the low byte of a half-integer below 128 is zero) with lo in
// bits 0-3 and hi in bits 4-7.
struct Iq4Buckets {
  alignas(64) uint32_t entry[32];
  alignas(64) float values[16];
};
constexpr uint32_t kLevelBits = 0xff;

Iq4Buckets make_buckets() {
  Iq4Buckets t{};
  for (int i = 0; i < 16; ++i) t.values[i] = iq4nl_value(i);
  for (int k = -15; k <= 16; ++k) {
    float thr = INFINITY;
    uint32_t lo = 0, hi = 15;
    if (k != 16) {
      const float from = 8.0f * static_cast<float>(k) - 4.5f, to = from + 9.0f;
      int inside = 0;
      for (int i = 1; i < 16; ++i) {
        const float threshold = (iq4nl_value(i - 1) + iq4nl_value(i)) / 2.0f;
        if (threshold < from) {
          lo = static_cast<uint32_t>(i);
        } else if (threshold <= to) {
          ++inside;
          thr = threshold;
        }
      }
      if (inside > 1) throw std::logic_error("iq4_nl bucket " + std::to_string(k) + ": 2 levels");
      hi = inside > 0 ? lo + 1 : lo;
    } else {
      thr = 0.0f;
    }
    uint32_t bits;
    std::memcpy(&bits, &thr, sizeof bits);
    if ((bits & kLevelBits) != 0) throw std::logic_error("iq4_nl threshold with low bits");
    t.entry[k & 31] = bits | lo | hi << 4;
  }
  return t;
}

const Iq4Buckets kBuckets = make_buckets();

bool avx512_wanted() {
#ifdef KVT_HAVE_AVX512_PATH
  const char* off = std::getenv("KVTUNE_CPU_NO_AVX512");
  if (off != nullptr && *off != '\0' && std::strcmp(off, "0") != 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

}  // namespace

bool use_avx512() {
  static const bool on = avx512_wanted();
  return on;
}

}  // namespace kvtune::kernels::cpu::detail

namespace kvtune::kernels::cpu {

const char* vector_isa() {
  if (detail::use_avx512()) return "avx512";
#ifdef KVT_HAVE_AVX512_PATH
  if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
  return "baseline";
}

}  // namespace kvtune::kernels::cpu

#ifdef KVT_HAVE_AVX512_PATH
#pragma GCC push_options
#pragma GCC target("avx512f")

namespace kvtune::kernels::cpu::detail {
namespace {

constexpr int kWide = 16;

// r[i] lane j <-> r[j] lane i.
inline void transpose16(__m512 (&r)[kWide]) {
  __m512 t[kWide], u[kWide];
  for (int i = 0; i < kWide; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < kWide; i += 4) {
    u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// iq4nl_value(iq4nl_index(2 al)) for each lane of al, by kBuckets.
class Levels {
 public:
  Levels()
      : lo_(_mm512_load_si512(kBuckets.entry)),
        hi_(_mm512_load_si512(kBuckets.entry + kWide)),
        values_(_mm512_load_ps(kBuckets.values)) {}

  __m512 operator()(__m512 al) const {
    // al + 1.5 * 2^26 rounds al to a multiple of 8 (the ulp there, ties to
    // even) and holds round(al / 8) in its low mantissa bits, the low five
    // of which select the entry
    const __m512i k = _mm512_castps_si512(_mm512_add_ps(al, _mm512_set1_ps(0x1.8p26f)));
    const __m512i e = _mm512_permutex2var_epi32(lo_, k, hi_);
    const __m512 thr = _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32(kLevelBits), e));
    const __mmask16 up = _mm512_cmp_ps_mask(al, thr, _CMP_GE_OQ);
    return _mm512_permutexvar_ps(_mm512_mask_srli_epi32(e, up, e, 4), values_);
  }

 private:
  __m512i lo_, hi_;
  __m512 values_;
};

}  // namespace

int64_t iq4_nl16_avx512(const float* src, float* dst) {
  // x[j] lane b = element j of block b; the signed maximum (ggml_signed_max:
  // the first element of largest |x|) as the elements arrive in order
  __m512 x[kGgmlBlock];
  __m512 amax = _mm512_setzero_ps(), mx = _mm512_setzero_ps();
  for (int half = 0; half < kGgmlBlock; half += kWide) {
    __m512 r[kWide];
    for (int b = 0; b < kWide; ++b) r[b] = _mm512_loadu_ps(src + b * kGgmlBlock + half);
    transpose16(r);
    for (int k = 0; k < kWide; ++k) {
      const __m512 a = _mm512_abs_ps(r[k]);
      mx = _mm512_mask_mov_ps(mx, _mm512_cmp_ps_mask(a, amax, _CMP_GT_OQ), r[k]);
      amax = _mm512_max_ps(a, amax);
      x[half + k] = r[k];
    }
  }
  const __m512 id =
      _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(mx, _mm512_set1_ps(iq4nl_value(0))));
  const Levels level;
  __m512 sumqx = _mm512_setzero_ps(), sumq2 = _mm512_setzero_ps();
  for (int j = 0; j < kGgmlBlock; ++j) {
    const __m512 v = x[j];
    const __m512 q = level(_mm512_mul_ps(id, v));
    const __m512 wq = _mm512_mul_ps(_mm512_mul_ps(v, v), q);
    sumqx = _mm512_add_ps(sumqx, _mm512_mul_ps(wq, v));
    sumq2 = _mm512_add_ps(sumq2, _mm512_mul_ps(wq, q));
  }
  // NaN input makes sumq2 NaN (its terms are otherwise >= 0 or +inf), inf makes amax inf
  const __m512 inf = _mm512_set1_ps(INFINITY);
  if ((_mm512_cmp_ps_mask(amax, inf, _CMP_EQ_OQ) |
       _mm512_cmp_ps_mask(sumq2, sumq2, _CMP_UNORD_Q)) != 0) {
    return -1;
  }
  const __mmask16 zero = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(1e-15f), _CMP_LT_OQ);
  const __m512 d =
      _mm512_maskz_div_ps(_mm512_cmp_ps_mask(sumq2, _mm512_setzero_ps(), _CMP_GT_OQ), sumqx, sumq2);
  // fp16_round: the conversion rounds to nearest even, overflows to inf and
  // keeps the (only, default) NaN a non-finite sum gives
  const __m512 dh = _mm512_cvtph_ps(_mm512_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT));
  const __mmask16 stored_bad =
      _mm512_cmp_ps_mask(_mm512_abs_ps(dh), inf, _CMP_NLT_UQ) & static_cast<__mmask16>(~zero);
  // The values block by block, each level found again from the block's own
  // elements (the same products, so the same levels), cheaper than a transpose back.
  alignas(64) float ids[kWide], dhs[kWide];
  _mm512_store_ps(ids, id);
  _mm512_store_ps(dhs, dh);
  for (int b = 0; b < kWide; ++b) {
    const float* in = src + b * kGgmlBlock;
    float* out = dst + b * kGgmlBlock;
    if ((zero >> b & 1) != 0) {
      for (int h = 0; h < kGgmlBlock; h += kWide) {
        _mm512_storeu_ps(out + h, _mm512_set1_ps(0.0f * iq4nl_value(0)));  // -0
      }
      continue;
    }
    const __m512 idb = _mm512_set1_ps(ids[b]), dhb = _mm512_set1_ps(dhs[b]);
    const __m512 v0 = _mm512_loadu_ps(in), v1 = _mm512_loadu_ps(in + kWide);
    _mm512_storeu_ps(out, _mm512_mul_ps(dhb, level(_mm512_mul_ps(idb, v0))));
    _mm512_storeu_ps(out + kWide, _mm512_mul_ps(dhb, level(_mm512_mul_ps(idb, v1))));
  }
  return static_cast<int64_t>(kGgmlBlock) * __builtin_popcount(stored_bad);
}

}  // namespace kvtune::kernels::cpu::detail

#pragma GCC pop_options
#else

namespace kvtune::kernels::cpu::detail {
int64_t iq4_nl16_avx512(const float*, float*) {
  throw std::logic_error("iq4_nl16_avx512 without AVX-512 support in this build");
}
}  // namespace kvtune::kernels::cpu::detail

#endif
