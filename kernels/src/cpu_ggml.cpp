// The CPU reference of llama.cpp's cache types, fast: sixteen 32-element
// blocks at a time, eight block parameters per vector (iq4_nl: one block per
// vector lane, sixteen with AVX-512 in cpu_ggml_avx512.cpp), so that ggml's
// per-block reductions (the maximum, iq4_nl's sums in element order) run as
// vector operations without reordering any block's arithmetic. Every
// operation is the one of ggml_math.h's scalar definition, lane by lane; the scalar
// ggml_fake_quant_unit (shared with CUDA) handles units with non-finite input,
// and the tests compare the two on every type.
#include "cpu_ggml.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cpu_ggml_avx512.h"

// The vector helpers below take and return 32-byte vectors by value; they are
// always inlined, so the ABI of such calls without AVX never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace kvtune::kernels::cpu::detail {
namespace {

#define KVT_INLINE inline __attribute__((always_inline))

constexpr int kLanes = 8;
using V8 = float __attribute__((vector_size(kLanes * sizeof(float))));
using V8i = int32_t __attribute__((vector_size(kLanes * sizeof(int32_t))));
// Eight floats anywhere in memory, loaded and stored as one vector. (A memcpy
// into a vector variable may be split into two 16-byte stores that a 32-byte
// load of the variable then cannot forward from.)
using V8u = float __attribute__((vector_size(kLanes * sizeof(float)), aligned(4), may_alias));
KVT_INLINE V8 loadu(const float* p) {
  return *reinterpret_cast<const V8u*>(p);
}
KVT_INLINE void storeu(float* p, V8 v) {
  *reinterpret_cast<V8u*>(p) = v;
}

KVT_INLINE V8 splat(float v) {  // (V8{} + v would turn -0 into +0)
  return V8{v, v, v, v, v, v, v, v};
}
KVT_INLINE V8 vabs(V8 x) {
  return reinterpret_cast<V8>(reinterpret_cast<V8i>(x) & 0x7fffffff);
}
KVT_INLINE V8 vmax(V8 a, V8 b) {  // max_f lane by lane
  return b > a ? b : a;
}
KVT_INLINE V8 vmin(V8 a, V8 b) {  // min_f lane by lane
  return b < a ? b : a;
}
KVT_INLINE V8i nonfinite(V8 x) {
  return (reinterpret_cast<V8i>(x) & 0x7f800000) == 0x7f800000;
}
KVT_INLINE V8 to_v8(V8i i) {
  return __builtin_convertvector(i, V8);
}
// ggml_code: toward zero, 0 for a non-finite t (every finite t here is small).
KVT_INLINE V8i code(V8 t) {
  const V8i bad = nonfinite(t);
  return __builtin_convertvector(bad ? V8{} : t, V8i);
}

// rows[b] <-> columns: an 8 x 8 transpose.
KVT_INLINE void transpose8(V8 (&r)[kLanes]) {
  V8 t[kLanes], u[kLanes];
  for (int i = 0; i < kLanes; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < kLanes; i += 4) {
    for (int k = 0; k < 2; ++k) {
      u[i + k] = __builtin_shufflevector(t[i + k], t[i + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + k + 2] = __builtin_shufflevector(t[i + k], t[i + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  // u[0..3] = columns {0, 2, 1, 3} of rows 0-3 (low half) and 4-7 (high half).
  const int order[4] = {0, 2, 1, 3};
  for (int k = 0; k < 4; ++k) {
    r[k] = __builtin_shufflevector(u[order[k]], u[order[k] + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    r[k + 4] = __builtin_shufflevector(u[order[k]], u[order[k] + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// v[j] lane b = element j of block b of buf (8 blocks of 32), and back.
KVT_INLINE void load_lanes(const float* buf, V8 (&v)[kGgmlBlock]) {
  for (int q = 0; q < kGgmlBlock; q += kLanes) {
    V8 r[kLanes];
    for (int b = 0; b < kLanes; ++b) r[b] = loadu(buf + b * kGgmlBlock + q);
    transpose8(r);
    for (int k = 0; k < kLanes; ++k) v[q + k] = r[k];
  }
}
KVT_INLINE void store_lanes(V8 (&v)[kGgmlBlock], float* buf) {
  for (int q = 0; q < kGgmlBlock; q += kLanes) {
    V8 r[kLanes];
    for (int k = 0; k < kLanes; ++k) r[k] = v[q + k];
    transpose8(r);
    for (int b = 0; b < kLanes; ++b) storeu(buf + b * kGgmlBlock + q, r[b]);
  }
}

// fp16_round lane by lane, branch-free: round to 11 significant bits (to
// multiples of 2^-24 below 2^-14, where adding and removing 0.5 rounds to
// nearest even), inf from 65520 up, NaN (an iq4_nl scale from x^2 overflow)
// as the quiet NaN fp16_round gives.
KVT_INLINE V8 fp16_lanes(V8 d) {
  const V8 a = vabs(d);
  const V8i u = reinterpret_cast<V8i>(a);
  const V8i normal = (u + 0xfff + ((u >> 13) & 1)) & ~0x1fff;
  V8 r = u < 0x38800000 ? (a + 0.5f) - 0.5f : reinterpret_cast<V8>(normal);
  r = u >= 0x477ff000 ? splat(INFINITY) : r;
  r = u > 0x7f800000 ? reinterpret_cast<V8>(V8i{} + 0x7fc00000) : r;  // NaN: the quiet NaN
  return reinterpret_cast<V8>(reinterpret_cast<V8i>(r) |
                              (reinterpret_cast<V8i>(d) & static_cast<int32_t>(0x80000000u)));
}

// Lane b = the reduction by `op` of the eight lanes of r[b].
template <class Op>
KVT_INLINE V8 across(V8 (&r)[kLanes], Op op) {
  transpose8(r);
  V8 m = r[0];
  for (int k = 1; k < kLanes; ++k) m = op(m, r[k]);
  return m;
}

// Eight blocks as rows: at(b, k) = elements 8k..8k+7 of block b, read where
// they are (each pass reads them again from L1 rather than a copy on the stack).
struct Rows {
  const float* src;
  KVT_INLINE V8 at(int b, int k) const { return loadu(src + b * kGgmlBlock + k * kLanes); }
};

// Lane b = max |x| over block b.
KVT_INLINE V8 block_amax(const Rows& rows) {
  V8 m[kLanes];
  for (int b = 0; b < kLanes; ++b) {
    m[b] = vabs(rows.at(b, 0));
    for (int k = 1; k < kGgmlBlock / kLanes; ++k) m[b] = vmax(m[b], vabs(rows.at(b, k)));
  }
  return across(m, vmax);
}

// ggml_signed_max lane by lane: block b's first element of largest |x|, +0 for a zero block.
KVT_INLINE V8 block_signed_max(const Rows& rows) {
  const V8 amax = block_amax(rows);
  V8 first[kLanes];  // the lowest index of an element equal in |x| to the amax, as int bits
  for (int b = 0; b < kLanes; ++b) {
    const V8 target = splat(amax[b]);
    V8i lowest = V8i{} + kGgmlBlock;
    for (int k = kGgmlBlock / kLanes - 1; k >= 0; --k) {
      const V8i index = V8i{0, 1, 2, 3, 4, 5, 6, 7} + k * kLanes;
      lowest = vabs(rows.at(b, k)) == target ? index : lowest;
    }
    first[b] = reinterpret_cast<V8>(lowest);
  }
  const V8i at = reinterpret_cast<V8i>(across(first, [](V8 a, V8 b) {
    const V8i x = reinterpret_cast<V8i>(a), y = reinterpret_cast<V8i>(b);
    return reinterpret_cast<V8>(y < x ? y : x);
  }));
  V8 mx;
  for (int b = 0; b < kLanes; ++b) mx[b] = rows.src[b * kGgmlBlock + (at[b] & (kGgmlBlock - 1))];
  return amax == V8{} ? V8{} : mx;
}

// A block whose scale's reciprocal overflows (a subnormal scale): the
// scalar definition, whose codes for non-finite x * id are 0.
KVT_INLINE int64_t scalar_block(EngineArith arith, const float* src, float* dst) {
  float v[kGgmlBlock];
  std::memcpy(v, src, sizeof v);
  ggml_fake_quant_block(arith, v);
  int64_t bad = 0;
  for (int j = 0; j < kGgmlBlock; ++j) bad += is_nonfinite(v[j]) ? 1 : 0;
  std::memcpy(dst, v, sizeof v);
  return bad;
}

// Every value of a block with a non-finite scale or minimum is stored non-finite.
KVT_INLINE int64_t stored_nonfinite(V8i bad_scale) {
  int64_t n = 0;
  for (int b = 0; b < kLanes; ++b) n += bad_scale[b] ? kGgmlBlock : 0;
  return n;
}

// Whether any element of the rows is NaN or inf.
KVT_INLINE bool any_nonfinite(const Rows& rows) {
  V8i bad = V8i{};
  for (int b = 0; b < kLanes; ++b) {
    for (int k = 0; k < kGgmlBlock / kLanes; ++k) bad |= nonfinite(rows.at(b, k));
  }
  for (int b = 0; b < kLanes; ++b) {
    if (bad[b]) return true;
  }
  return false;
}

// The parameters of eight blocks (one vector lane each) of q8_0, q4_0, q5_0, q4_1 or q5_1.
struct Linear {
  V8 id, dh, mh = V8{}, mn = V8{};
  V8i tiny;  // blocks whose scale's reciprocal overflows: the scalar definition
  float offset = 0.5f;
  int levels = 0, top = 0;
};

KVT_INLINE Linear linear_params(EngineArith arith, const Rows& rows) {
  Linear p;
  V8 d;
  if (arith == EngineArith::GgmlQ8_0) {
    d = block_amax(rows) / 127.0f;
  } else if (arith == EngineArith::GgmlQ4_0 || arith == EngineArith::GgmlQ5_0) {
    p.levels = arith == EngineArith::GgmlQ4_0 ? 8 : 16;
    p.top = 2 * p.levels - 1;
    p.offset = static_cast<float>(p.levels) + 0.5f;
    d = block_signed_max(rows) / -static_cast<float>(p.levels);
  } else {
    p.top = arith == EngineArith::GgmlQ4_1 ? 15 : 31;
    V8 lo[kLanes], hi[kLanes];
    for (int b = 0; b < kLanes; ++b) {
      lo[b] = hi[b] = rows.at(b, 0);
      for (int k = 1; k < kGgmlBlock / kLanes; ++k) {
        lo[b] = vmin(lo[b], rows.at(b, k));
        hi[b] = vmax(hi[b], rows.at(b, k));
      }
    }
    p.mn = across(lo, vmin);
    d = (across(hi, vmax) - p.mn) / static_cast<float>(p.top);
    p.mh = fp16_lanes(p.mn);
  }
  p.id = d != V8{} ? 1.0f / d : V8{};
  p.dh = fp16_lanes(d);
  p.tiny = nonfinite(p.id);
  return p;
}

// The values of eight blocks into dst; returns those stored non-finite.
KVT_INLINE int64_t linear_values(EngineArith arith, const Rows& rows, const Linear& p, float* dst) {
  int64_t bad = stored_nonfinite((nonfinite(p.dh) | nonfinite(p.mh)) & ~p.tiny);
  const V8i top = V8i{} + p.top;
  for (int b = 0; b < kLanes; ++b) {
    float* out = dst + b * kGgmlBlock;
    if (p.tiny[b]) {
      bad += scalar_block(arith, rows.src + b * kGgmlBlock, out);
      continue;
    }
    const V8 idb = splat(p.id[b]), dhb = splat(p.dh[b]);
    for (int k = 0; k < kGgmlBlock / kLanes; ++k) {
      V8 y;
      if (arith == EngineArith::GgmlQ8_0) {
        // roundf(t) = trunc(t + copysign(0.5 - 2^-25, t)), exact for every float
        const V8 t = rows.at(b, k) * idb;
        const V8i sign = reinterpret_cast<V8i>(t) & static_cast<int32_t>(0x80000000u);
        const V8 half = reinterpret_cast<V8>(reinterpret_cast<V8i>(splat(0x1.fffffep-2f)) | sign);
        y = to_v8(__builtin_convertvector(t + half, V8i)) * dhb;
      } else if (p.levels > 0) {
        const V8i q = __builtin_convertvector(rows.at(b, k) * idb + p.offset, V8i);
        y = to_v8((q < top ? q : top) - p.levels) * dhb;
      } else {
        // NaN where a range past the largest float made the scale inf and id 0
        const V8i q = code((rows.at(b, k) - p.mn[b]) * idb + 0.5f);
        const V8 scaled = to_v8(q < top ? q : top) * dhb;
        y = scaled + p.mh[b];
      }
      storeu(out + k * kLanes, y);
    }
  }
  return bad;
}

// q8_0, q4_0, q5_0, q4_1, q5_1 on sixteen blocks of src into dst (may alias):
// the block parameters eight lanes at a time, the values block by block.
// -1, writing nothing, if an input is NaN or inf.
KVT_INLINE int64_t linear16(EngineArith arith, const float* src, float* dst) {
  constexpr int64_t kHalf = kLanes * kGgmlBlock;
  const Rows rows[2] = {{src}, {src + kHalf}};
  if (any_nonfinite(rows[0]) || any_nonfinite(rows[1])) return -1;
  const Linear p0 = linear_params(arith, rows[0]);
  const Linear p1 = linear_params(arith, rows[1]);
  return linear_values(arith, rows[0], p0, dst) + linear_values(arith, rows[1], p1, dst + kHalf);
}

// ggml_signed_max with one block per lane (v[j] lane b = element j of block b).
KVT_INLINE V8 signed_max(const V8 (&v)[kGgmlBlock], V8& amax) {
  amax = V8{};
  for (int j = 0; j < kGgmlBlock; ++j) amax = vmax(amax, vabs(v[j]));
  V8 mx = V8{};
  for (int j = kGgmlBlock - 1; j >= 0; --j) mx = vabs(v[j]) == amax ? v[j] : mx;
  return amax == V8{} ? V8{} : mx;
}

// Entry i of a 16-entry table held as two vectors.
KVT_INLINE V8 lookup16(V8 lo, V8 hi, V8i i) {
  return i >= 8 ? __builtin_shuffle(hi, i & 7) : __builtin_shuffle(lo, i & 7);
}

// ggml_iq4_nl with one block per lane of each of the G groups (v[g][j] lane b
// = element j of block b of group g); the groups interleave, so that one
// group's sums (in element order, a chain of dependent adds) overlap the
// other's. iq4nl_index by binary search over the midpoints K[i - 1] + K[i]
// (the same comparisons: 2x >= a midpoint goes up).
template <int G>
KVT_INLINE void iq4_nl(V8 (&v)[G][kGgmlBlock]) {
  V8 k_lo, k_hi, mid_lo, mid_hi;  // K[i]; K[i - 1] + K[i] (entry 0 unused)
  for (int i = 0; i < kLanes; ++i) {
    k_lo[i] = iq4nl_value(i);
    k_hi[i] = iq4nl_value(i + kLanes);
    mid_lo[i] = i == 0 ? 0.0f : iq4nl_value(i - 1) + iq4nl_value(i);
    mid_hi[i] = iq4nl_value(i + kLanes - 1) + iq4nl_value(i + kLanes);
  }
  V8 amax[G], id[G], sumqx[G], sumq2[G];
  for (int g = 0; g < G; ++g) {
    id[g] = 1.0f / (signed_max(v[g], amax[g]) / iq4nl_value(0));
    sumqx[g] = sumq2[g] = V8{};
  }
  for (int j = 0; j < kGgmlBlock; ++j) {
    for (int g = 0; g < G; ++g) {
      const V8 x = v[g][j];
      const V8 al = id[g] * x;
      const V8 x2 = al + al;
      V8i i = x2 >= splat(mid_hi[0]) ? V8i{} + 8 : V8i{};
      for (int step = 4; step > 0; step /= 2) {
        const V8i up = i + step;
        i = x2 >= lookup16(mid_lo, mid_hi, up) ? up : i;
      }
      const V8 q = lookup16(k_lo, k_hi, i);
      const V8 wq = x * x * q;
      sumqx[g] = sumqx[g] + wq * x;
      sumq2[g] = sumq2[g] + wq * q;
      v[g][j] = q;
    }
  }
  for (int g = 0; g < G; ++g) {
    const V8i zero = amax[g] < 1e-15f;
    const V8 d = sumq2[g] > 0.0f ? sumqx[g] / sumq2[g] : V8{};
    const V8 dh = zero ? V8{} : fp16_lanes(d);
    for (int j = 0; j < kGgmlBlock; ++j) {
      v[g][j] = dh * (zero ? splat(iq4nl_value(0)) : v[g][j]);
    }
  }
}

// iq4_nl on the sixteen blocks of src into dst (may alias), one block per
// lane, so that each block's sums run in element order; -1, writing nothing,
// if an input is NaN or inf.
KVT_INLINE int64_t iq4_nl16(const float* src, float* dst) {
  constexpr int kGroups = 2;
  V8 v[kGroups][kGgmlBlock];
  V8i nan_in = V8i{};
  for (int g = 0; g < kGroups; ++g) {
    load_lanes(src + g * kLanes * kGgmlBlock, v[g]);
    for (int j = 0; j < kGgmlBlock; ++j) nan_in |= nonfinite(v[g][j]);
  }
  for (int b = 0; b < kLanes; ++b) {
    if (nan_in[b]) return -1;
  }
  iq4_nl(v);
  int64_t n = 0;
  for (int g = 0; g < kGroups; ++g) {
    V8i bad = V8i{};
    for (int j = 0; j < kGgmlBlock; ++j) bad -= nonfinite(v[g][j]);
    store_lanes(v[g], dst + g * kLanes * kGgmlBlock);
    for (int b = 0; b < kLanes; ++b) n += bad[b];
  }
  return n;
}

// The sixteen blocks of src into dst (may alias); returns the values stored
// non-finite, or -1, having written nothing, if an input is NaN or inf.
KVT_VECTOR_CLONES int64_t blocks16(EngineArith arith, const float* src, float* dst) {
  if (arith != EngineArith::GgmlIq4Nl) return linear16(arith, src, dst);
  return use_avx512() ? iq4_nl16_avx512(src, dst) : iq4_nl16(src, dst);
}

// One butterfly stage at stride h < 8 inside each vector: lane l takes
// v[l] + v[l ^ h] where l & h == 0, else v[l ^ h] - v[l] (a + b, a - b).
template <int H>
KVT_INLINE V8 butterfly_in(V8 v) {
  constexpr int m = H;
  const V8 p =
      __builtin_shufflevector(v, v, 0 ^ m, 1 ^ m, 2 ^ m, 3 ^ m, 4 ^ m, 5 ^ m, 6 ^ m, 7 ^ m);
  const V8i low = (V8i{0, 1, 2, 3, 4, 5, 6, 7} & H) == 0;
  return low ? v + p : p - v;
}

// ggml_hadamard on n >= 8 values, eight at a time: the same scaling first and
// the same butterflies in the same stride order.
KVT_INLINE void hadamard8(float* x, int n) {
  const float scale = 1.0f / sqrtf(static_cast<float>(n));
  V8 v[kGgmlMaxRotation / kLanes];
  const int nv = n / kLanes;
  for (int i = 0; i < nv; ++i) {
    v[i] = butterfly_in<4>(butterfly_in<2>(butterfly_in<1>(loadu(x + i * kLanes) * scale)));
  }
  for (int h = 1; h < nv; h *= 2) {
    for (int i = 0; i < nv; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const V8 a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
  for (int i = 0; i < nv; ++i) storeu(x + i * kLanes, v[i]);
}

KVT_INLINE void rotate_chunks(float* buf, int64_t n, int chunk) {
  for (int64_t c = 0; c < n; c += chunk) {
    if (chunk >= kLanes) {
      hadamard8(buf + c, chunk);
    } else {
      ggml_hadamard(buf + c, chunk);
    }
  }
}

// Loads n elements into buf; false if any is NaN or inf.
template <class T>
KVT_INLINE bool load(const T* x, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    if (n % kLanes == 0) {
      V8i bad = V8i{};
      for (int64_t i = 0; i < n; i += kLanes) {
        const V8 v = loadu(x + i);
        bad |= nonfinite(v);
        storeu(buf + i, v);
      }
      for (int b = 0; b < kLanes; ++b) {
        if (bad[b]) return false;
      }
      return true;
    }
  }
  uint32_t bad = 0;  // an integer OR, which vectorizes (a float sum would not)
  for (int64_t i = 0; i < n; ++i) {
    buf[i] = to_float(x[i]);
    bad |= (float_bits(buf[i]) & 0x7f800000u) == 0x7f800000u ? 1u : 0u;
  }
  return bad == 0;
}

template <class T>
KVT_INLINE void store(const float* buf, int64_t n, T* y) {
  if constexpr (std::is_same_v<T, float>) {
    if (n % kLanes == 0) {
      for (int64_t i = 0; i < n; i += kLanes) storeu(y + i, loadu(buf + i));
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) y[i] = from_float<T>(buf[i]);
}

// bf16_round lane by lane (finite input: what rounds past the largest
// finite value carries into the exponent and gives inf, as in float_to_bf16).
KVT_INLINE V8 bf16_lanes(V8 x) {
  const V8i u = reinterpret_cast<V8i>(x);
  return reinterpret_cast<V8>((u + 0x7fff + ((u >> 16) & 1)) & static_cast<int32_t>(0xffff0000u));
}

// f16, bf16 or f32 of n finite values (a multiple of 8); returns those stored non-finite.
KVT_INLINE int64_t store_values(EngineArith arith, const float* x, int64_t n, float* y) {
  V8i bad = V8i{};
  for (int64_t i = 0; i < n; i += kLanes) {
    const V8 v = loadu(x + i);
    const V8 r = arith == EngineArith::GgmlF16    ? fp16_lanes(v)
                 : arith == EngineArith::GgmlBf16 ? bf16_lanes(v)
                                                  : v;
    bad -= nonfinite(r);
    storeu(y + i, r);
  }
  int64_t count = 0;
  for (int b = 0; b < kLanes; ++b) count += bad[b];
  return count;
}

}  // namespace

template <class T>
KVT_VECTOR_CLONES int64_t ggml_fake_quant_range(const EngineSpec& spec, const T* x, T* y,
                                                int64_t begin, int64_t end, int64_t unit,
                                                FirstBad& bad) {
  const EngineArith arith = spec.arith;
  const int rotate = spec.rotate_chunk;
  const bool blocks = engine_is_ggml_block(arith);
  alignas(32) float buf[std::max(kGgmlMaxRotation, static_cast<int>(kGgmlBatch))];
  int64_t overflow = 0;
  const auto by_units = [&](int64_t from, int64_t to) {  // the shared scalar definition
    for (int64_t u = from; u < to; u += unit) {
      int64_t first_bad = -1;
      overflow += ggml_fake_quant_unit(arith, rotate, x + u, y + u, unit, buf, &first_bad);
      if (first_bad >= 0) bad.report(u + first_bad);
    }
  };
  if (!blocks && rotate == 0) {  // f16, bf16, f32 value by value
    if constexpr (std::is_same_v<T, float>) {
      if ((end - begin) % kLanes == 0) {
        V8i nan_in = V8i{};
        for (int64_t i = begin; i < end; i += kLanes) nan_in |= nonfinite(loadu(x + i));
        bool clean = true;
        for (int b = 0; b < kLanes; ++b) clean = clean && nan_in[b] == 0;
        if (clean) return store_values(arith, x + begin, end - begin, y + begin);
      }
    }
    by_units(begin, end);
    return overflow;
  }
  const int64_t batch = std::max(kGgmlBatch, unit);  // whole units and whole 16-block batches
  for (int64_t e = begin; e < end; e += batch) {
    const int64_t n = std::min(batch, end - e);
    if constexpr (std::is_same_v<T, float>) {
      // fp32 without rotation: straight from x to y (blocks16 checks before it writes)
      if (rotate == 0 && n == kGgmlBatch) {
        const int64_t stored = blocks16(arith, x + e, y + e);
        if (stored < 0) {
          by_units(e, e + n);
        } else {
          overflow += stored;
        }
        continue;
      }
    }
    if (!load(x + e, n, buf)) {
      by_units(e, e + n);
      continue;
    }
    if (rotate > 0) rotate_chunks(buf, n, rotate);
    if (blocks) {
      // a short batch is padded with zero blocks, which quantize to finite values
      std::fill(buf + n, buf + (n + kGgmlBatch - 1) / kGgmlBatch * kGgmlBatch, 0.0f);
      int64_t stored = 0;
      for (int64_t b = 0; b < n && stored >= 0; b += kGgmlBatch) {
        const int64_t s = blocks16(arith, buf + b, buf + b);
        stored = s < 0 ? s : stored + s;
      }
      if (stored < 0) {  // the rotation overflowed: as the scalar definition does it
        by_units(e, e + n);
        continue;
      }
      overflow += stored;
    } else if (n % kLanes == 0) {
      overflow += store_values(arith, buf, n, buf);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        buf[i] = ggml_store_value(arith, buf[i]);
        overflow += is_nonfinite(buf[i]) ? 1 : 0;
      }
    }
    if (rotate > 0) rotate_chunks(buf, n, rotate);
    store(buf, n, y + e);
  }
  return overflow;
}

template int64_t ggml_fake_quant_range(const EngineSpec&, const float*, float*, int64_t, int64_t,
                                       int64_t, FirstBad&);
template int64_t ggml_fake_quant_range(const EngineSpec&, const Half*, Half*, int64_t, int64_t,
                                       int64_t, FirstBad&);
template int64_t ggml_fake_quant_range(const EngineSpec&, const BFloat16*, BFloat16*, int64_t,
                                       int64_t, int64_t, FirstBad&);

}  // namespace kvtune::kernels::cpu::detail
