// Checks the quantization kernels against numbers derived in this file alone:
// hand-worked groups, a plain reference quantizer written from the formulas in
// DESIGN.md ("Quantization schemes"), E4M3 / E2M1 tables built from the format
// definitions, and the compiler's own _Float16 conversions. No expectation here
// is produced by calling the function under test.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kvtune/kernels/format_math.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

uint32_t bits_of(float f) {
  return std::bit_cast<uint32_t>(f);
}
float float_from_bits(uint32_t u) {
  return std::bit_cast<float>(u);
}

// Equal as numbers (so +0 == -0), or both NaN.
bool same_value(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || a == b;
}

// Reports the first few mismatches of one comparison, then how many more.
class Mismatches {
 public:
  explicit Mismatches(std::string context) : context_(std::move(context)) {}
  Mismatches(const Mismatches&) = delete;
  Mismatches& operator=(const Mismatches&) = delete;
  ~Mismatches() {
    if (count_ > kShown) ADD_FAILURE() << context_ << ": " << count_ - kShown << " more mismatches";
  }
  void add(const std::string& what) {
    if (++count_ <= kShown) ADD_FAILURE() << context_ << ": " << what;
  }

 private:
  static constexpr int kShown = 8;
  std::string context_;
  int count_ = 0;
};

std::string where(const CacheShape& s, int64_t e) {
  const int64_t c = e % s.head_dim;
  const int64_t h = (e / s.head_dim) % s.heads;
  const int64_t t = e / (s.head_dim * s.heads);
  return "element " + std::to_string(e) + " (token " + std::to_string(t) + ", head " +
         std::to_string(h) + ", channel " + std::to_string(c) + ")";
}

// ---------------------------------------------------------------------------
// Independent fp16 / bf16 conversions.

// The compiler's IEEE binary16 (round to nearest even).
uint16_t ref_half_bits(float f) {
  return std::bit_cast<uint16_t>(static_cast<_Float16>(f));
}
float ref_half_value(uint16_t b) {
  return static_cast<float>(std::bit_cast<_Float16>(b));
}

// bf16 value from its fields: (1 + m/128) * 2^(e-127), subnormals m * 2^-133.
float ref_bf16_value(uint16_t b) {
  const bool negative = (b & 0x8000u) != 0;
  const int e = (b >> 7) & 0xff;
  const int m = b & 0x7f;
  double v;
  if (e == 0xff) {
    v = m != 0 ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (e == 0) {
    v = std::ldexp(m, -133);
  } else {
    v = std::ldexp(128 + m, e - 134);
  }
  return static_cast<float>(negative ? -v : v);
}

// Nearest bf16, ties to even, decided by exact distances in double. Past the
// largest finite bf16 the next value up is 2^128 (rounds to infinity).
uint16_t ref_bf16_bits(float f) {
  const uint32_t u = bits_of(f);
  const uint32_t sign = u & 0x80000000u;
  if (std::isnan(f)) return static_cast<uint16_t>((sign >> 16) | 0x7fc0u);
  const uint32_t mag = u & 0x7fffffffu;
  const uint32_t lo = mag & 0xffff0000u;  // toward zero
  uint32_t chosen = lo;
  if (lo != mag) {
    const uint32_t hi = lo + 0x10000u;
    const double a = float_from_bits(mag);
    const double v_lo = float_from_bits(lo);
    const double v_hi = hi >= 0x7f800000u ? std::ldexp(1.0, 128) : float_from_bits(hi);
    const double d_lo = a - v_lo;
    const double d_hi = v_hi - a;
    if (d_hi < d_lo || (d_hi == d_lo && ((lo >> 16) & 1u) != 0)) chosen = hi;
  }
  return static_cast<uint16_t>((sign | chosen) >> 16);
}

// A tensor stored in fp32, fp16 or bf16, built by rounding float values with the
// reference conversions above.
struct Tensor {
  DType dtype = DType::F32;
  std::vector<float> f32;
  std::vector<Half> f16;
  std::vector<BFloat16> bf16;

  Tensor(DType type, const std::vector<float>& values) : dtype(type) {
    for (float v : values) {
      if (type == DType::F32) f32.push_back(v);
      if (type == DType::F16) f16.push_back(Half{ref_half_bits(v)});
      if (type == DType::BF16) bf16.push_back(BFloat16{ref_bf16_bits(v)});
    }
  }
  size_t size() const {
    return dtype == DType::F32 ? f32.size() : dtype == DType::F16 ? f16.size() : bf16.size();
  }
  void* data() {
    if (dtype == DType::F32) return f32.data();
    if (dtype == DType::F16) return f16.data();
    return bf16.data();
  }
  const void* data() const { return const_cast<Tensor*>(this)->data(); }
  float at(size_t i) const {
    if (dtype == DType::F32) return f32[i];
    if (dtype == DType::F16) return ref_half_value(f16[i].bits);
    return ref_bf16_value(bf16[i].bits);
  }
  uint32_t raw(size_t i) const {
    if (dtype == DType::F32) return bits_of(f32[i]);
    return dtype == DType::F16 ? f16[i].bits : bf16[i].bits;
  }
  std::vector<float> values() const {
    std::vector<float> v(size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = at(i);
    return v;
  }
};

// What storing v as dtype gives back.
float stored(DType dtype, float v) {
  if (dtype == DType::F16) return ref_half_value(ref_half_bits(v));
  if (dtype == DType::BF16) return ref_bf16_value(ref_bf16_bits(v));
  return v;
}

// Expects out[e] == stored(want[e]) for e in [begin, end).
void expect_values(const Tensor& out, const std::vector<float>& want, int64_t begin, int64_t end,
                   const CacheShape& shape, const std::string& context) {
  Mismatches bad(context);
  for (int64_t e = begin; e < end; ++e) {
    const float expected = stored(out.dtype, want[e]);
    const float got = out.at(e);
    if (!same_value(got, expected)) {
      bad.add(where(shape, e) + ": expected " + fmt(expected) + ", got " + fmt(got));
    }
  }
}

// ---------------------------------------------------------------------------
// Reference integer quantizer, straight from DESIGN.md in float arithmetic.

std::string describe(const IntSpec& spec, const CacheShape& s, DType dtype = DType::F32) {
  std::string out = spec.grouping == Grouping::PerToken ? "per-token"
                    : spec.role == Role::Key            ? "kivi keys"
                                                        : "kivi values";
  out += " bits=" + std::to_string(spec.bits);
  out += spec.zero_point == ZeroPoint::Int ? " zero=int" : " zero=float";
  if (spec.grouping == Grouping::Kivi) {
    out += " G=" + std::to_string(spec.group_size) + " R=" + std::to_string(spec.residual);
  }
  return out + " tokens=" + std::to_string(s.tokens) + " heads=" + std::to_string(s.heads) +
         " head_dim=" + std::to_string(s.head_dim) + " " + dtype_name(dtype);
}

int64_t ref_quantized_tokens(const IntSpec& spec, const CacheShape& s) {
  if (spec.grouping == Grouping::PerToken) return s.tokens;
  return s.tokens / spec.residual * spec.residual;
}

// Channels per kivi value group: G, or head_dim when head_dim < G.
int64_t ref_value_group(const IntSpec& spec, const CacheShape& s) {
  return std::min<int64_t>(spec.group_size, s.head_dim);
}

int64_t ref_group_count(const IntSpec& spec, const CacheShape& s) {
  const int64_t qt = ref_quantized_tokens(spec, s);
  if (spec.grouping == Grouping::PerToken) return qt * s.heads;
  if (spec.role == Role::Key) return qt / spec.group_size * s.heads * s.head_dim;
  return qt * s.heads * (s.head_dim / ref_value_group(spec, s));
}

// The group of element (t, h, c), numbered as quant.h's GroupGeometry numbers
// them: per-token (t, h); kivi keys (token block, h, c); kivi values (t, h, block).
int64_t ref_group(const IntSpec& spec, const CacheShape& s, int64_t t, int64_t h, int64_t c) {
  if (spec.grouping == Grouping::PerToken) return t * s.heads + h;
  if (spec.role == Role::Key) return ((t / spec.group_size) * s.heads + h) * s.head_dim + c;
  const int64_t g = ref_value_group(spec, s);
  return (t * s.heads + h) * (s.head_dim / g) + c / g;
}

int64_t ref_group_of(const IntSpec& spec, const CacheShape& s, int64_t e) {
  return ref_group(spec, s, e / (s.heads * s.head_dim), (e / s.head_dim) % s.heads, e % s.head_dim);
}

struct RefInt {
  int64_t quantized_elements = 0;
  std::vector<float> mn, mx;         // per group
  std::vector<float> scales, zeros;  // per group
  std::vector<uint32_t> codes;       // per quantized element, unsigned as stored
  std::vector<float> out;            // whole tensor; residual tokens copied
};

RefInt ref_quantize_int(const IntSpec& spec, const CacheShape& s, const std::vector<float>& x) {
  RefInt r;
  r.quantized_elements = ref_quantized_tokens(spec, s) * s.heads * s.head_dim;
  const int64_t groups = ref_group_count(spec, s);
  r.mn.assign(groups, kInf);
  r.mx.assign(groups, -kInf);
  for (int64_t e = 0; e < r.quantized_elements; ++e) {
    const int64_t g = ref_group_of(spec, s, e);
    r.mn[g] = std::min(r.mn[g], x[e]);
    r.mx[g] = std::max(r.mx[g], x[e]);
  }
  const int b = spec.bits;
  const float qmax = static_cast<float>((1 << (b - 1)) - 1);
  const float qmin = -static_cast<float>(1 << (b - 1));
  const float levels = static_cast<float>((1 << b) - 1);
  r.scales.resize(groups);
  r.zeros.resize(groups);
  for (int64_t g = 0; g < groups; ++g) {
    if (spec.zero_point == ZeroPoint::Int) {
      r.scales[g] = std::max(r.mx[g] - r.mn[g], 1e-5f) / (qmax - qmin);
      r.zeros[g] = std::nearbyint(r.mn[g] / r.scales[g]) - qmin;
    } else {
      r.scales[g] = (r.mx[g] - r.mn[g]) / levels;
      r.zeros[g] = r.mn[g];
    }
  }
  r.out = x;
  r.codes.resize(r.quantized_elements);
  for (int64_t e = 0; e < r.quantized_elements; ++e) {
    const int64_t g = ref_group_of(spec, s, e);
    const float scale = r.scales[g];
    const float zero = r.zeros[g];
    if (spec.zero_point == ZeroPoint::Int) {
      const float q = std::clamp(std::nearbyint(x[e] / scale - zero), qmin, qmax);
      r.codes[e] = static_cast<uint32_t>(q - qmin);
      r.out[e] = (q + zero) * scale;
    } else {
      // A constant group has scale 0: every value is its minimum, code 0.
      const float q =
          scale == 0.0f ? 0.0f : std::nearbyint(std::clamp((x[e] - zero) / scale, 0.0f, levels));
      r.codes[e] = static_cast<uint32_t>(q);
      r.out[e] = q * scale + zero;
    }
  }
  return r;
}

// What the kernels produce for one tensor.
struct IntRun {
  IntLayout layout;
  std::vector<uint32_t> words;
  std::vector<float> scales, zeros;
};

IntRun run_quantize_int(const IntSpec& spec, const CacheShape& shape, const Tensor& x,
                        uint32_t fill = 0) {
  IntRun r;
  r.layout = int_layout(spec, shape);
  r.words.assign(std::max<int64_t>(r.layout.code_words, 1), fill);
  r.scales.assign(std::max<int64_t>(r.layout.groups.count, 1), kNaN);
  r.zeros.assign(std::max<int64_t>(r.layout.groups.count, 1), kNaN);
  cpu::quantize_int(spec, shape, x.dtype, x.data(),
                    IntBuffers{r.words.data(), r.scales.data(), r.zeros.data()});
  return r;
}

Tensor run_fake_quant_int(const IntSpec& spec, const CacheShape& shape, const Tensor& x) {
  Tensor y(x.dtype, std::vector<float>(x.size(), -12345.0f));
  cpu::fake_quant_int(spec, shape, x.dtype, x.data(), y.data());
  return y;
}

Tensor run_dequantize_int(const IntSpec& spec, const CacheShape& shape, const IntRun& q,
                          DType dtype) {
  Tensor y(dtype, std::vector<float>(shape.elements(), -12345.0f));
  cpu::dequantize_int(spec, shape, ConstIntBuffers{q.words.data(), q.scales.data(), q.zeros.data()},
                      dtype, y.data());
  return y;
}

// Checks quantize / dequantize / fake-quant of x against the reference, exactly.
void expect_int_matches_reference(const IntSpec& spec, const CacheShape& shape, const Tensor& x) {
  const std::string context = describe(spec, shape, x.dtype);
  const RefInt ref = ref_quantize_int(spec, shape, x.values());
  const int64_t n = shape.elements();

  const IntRun q = run_quantize_int(spec, shape, x);
  ASSERT_EQ(q.layout.code_elements, ref.quantized_elements) << context;
  ASSERT_EQ(q.layout.groups.count, static_cast<int64_t>(ref.scales.size())) << context;
  {
    Mismatches bad(context + " scales/zeros");
    for (size_t g = 0; g < ref.scales.size(); ++g) {
      if (!same_value(q.scales[g], ref.scales[g]) || !same_value(q.zeros[g], ref.zeros[g])) {
        bad.add("group " + std::to_string(g) + " [min " + fmt(ref.mn[g]) + ", max " +
                fmt(ref.mx[g]) + "]: expected scale " + fmt(ref.scales[g]) + " zero " +
                fmt(ref.zeros[g]) + ", got scale " + fmt(q.scales[g]) + " zero " + fmt(q.zeros[g]));
      }
    }
  }
  {
    Mismatches bad(context + " codes");
    for (int64_t e = 0; e < ref.quantized_elements; ++e) {
      const uint32_t got = unpack_code(q.words.data(), e, spec.bits, q.layout.codes_per_word);
      if (got != ref.codes[e]) {
        bad.add(where(shape, e) + " x=" + fmt(x.at(e)) + ": expected code " +
                std::to_string(ref.codes[e]) + ", got " + std::to_string(got));
      }
    }
  }
  const Tensor fake = run_fake_quant_int(spec, shape, x);
  expect_values(fake, ref.out, 0, n, shape, context + " fake_quant_int");
  {
    Mismatches bad(context + " residual tokens not copied bit for bit");
    for (int64_t e = ref.quantized_elements; e < n; ++e) {
      if (fake.raw(e) != x.raw(e)) bad.add(where(shape, e));
    }
  }
  const Tensor deq = run_dequantize_int(spec, shape, q, x.dtype);
  expect_values(deq, ref.out, 0, ref.quantized_elements, shape, context + " dequantize_int");
  {
    Mismatches bad(context + " dequantize_int wrote past the quantized prefix");
    const float sentinel = stored(x.dtype, -12345.0f);
    for (int64_t e = ref.quantized_elements; e < n; ++e) {
      if (deq.at(e) != sentinel) bad.add(where(shape, e));
    }
  }
}

// ---------------------------------------------------------------------------
// Random tensors and shapes.

// Values of one of four kinds, chosen to reach every code path: 0 normal with
// outliers over a random magnitude, 1 half-integers (exact scales and ties),
// 2 far from zero, 3 long runs of one value (constant groups).
std::vector<float> random_values(std::mt19937& rng, int64_t n, int kind) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-8, 8);
  const float magnitude = std::pow(10.0f, std::uniform_real_distribution<float>(-3.0f, 3.0f)(rng));
  std::vector<float> v(n);
  float run = 1.5f;
  for (auto& x : v) {
    switch (kind) {
      case 0:
        x = normal(rng) * magnitude * (unit(rng) < 0.01f ? 20.0f : 1.0f);
        break;
      case 1:
        x = 0.5f * static_cast<float>(small(rng));
        break;
      case 2:
        x = 100.0f + unit(rng);
        break;
      default:
        if (unit(rng) < 0.05f) run = normal(rng) * magnitude;
        x = run;
    }
  }
  return v;
}

int64_t pick(std::mt19937& rng, std::initializer_list<int64_t> options) {
  std::uniform_int_distribution<size_t> index(0, options.size() - 1);
  return options.begin()[index(rng)];
}

struct IntCase {
  IntSpec spec;
  CacheShape shape;
};

IntCase random_int_case(std::mt19937& rng, Grouping grouping, Role role, int bits, ZeroPoint mode) {
  IntCase c;
  c.spec.grouping = grouping;
  c.spec.role = role;
  c.spec.bits = bits;
  c.spec.zero_point = mode;
  c.shape.heads = pick(rng, {1, 2, 3});
  if (grouping == Grouping::PerToken) {
    c.spec.role = pick(rng, {0, 1}) == 0 ? Role::Key : Role::Value;  // irrelevant per token
    c.shape.head_dim = pick(rng, {1, 2, 3, 5, 8, 16, 32, 64, 128});
    c.shape.tokens = std::uniform_int_distribution<int64_t>(1, 24)(rng);
    return c;
  }
  const int64_t g = pick(rng, {1, 2, 4, 8, 16, 32});
  c.spec.group_size = static_cast<int>(g);
  c.spec.residual = static_cast<int>(g * pick(rng, {1, 2, 3}));
  do {
    c.shape.head_dim = pick(rng, {1, 2, 3, 4, 6, 8, 16, 24, 32, 48, 64});
  } while (role == Role::Value && c.shape.head_dim >= g && c.shape.head_dim % g != 0);
  c.shape.tokens = std::uniform_int_distribution<int64_t>(1, 2 * c.spec.residual + g + 3)(rng);
  return c;
}

struct GroupingRole {
  Grouping grouping;
  Role role;
};
constexpr std::array<GroupingRole, 3> kGroupings = {GroupingRole{Grouping::PerToken, Role::Key},
                                                    GroupingRole{Grouping::Kivi, Role::Key},
                                                    GroupingRole{Grouping::Kivi, Role::Value}};
constexpr std::array<int, 5> kBits = {1, 2, 3, 4, 8};
constexpr std::array<ZeroPoint, 2> kModes = {ZeroPoint::Int, ZeroPoint::Float};

// ===========================================================================
// 4. round_half_even against std::nearbyint.

void expect_rounds_like_nearbyint(float x, Mismatches& bad) {
  const float want = std::nearbyint(x);
  const float got = round_half_even(x);
  const bool ok = std::isnan(want) ? std::isnan(got) : bits_of(got) == bits_of(want);
  if (!ok) bad.add("x=" + fmt(x) + ": expected " + fmt(want) + ", got " + fmt(got));
}

TEST(FormulaRounding, DefaultModeIsNearestEven) {
  EXPECT_EQ(std::fegetround(), FE_TONEAREST);
}

TEST(FormulaRounding, TiesGoToEven) {
  // Every tie below is exactly representable: floats in [2^22, 2^23) are spaced
  // 0.5 apart, so 8388607.5 = 2^23 - 0.5 exists and rounds up to 2^23.
  const std::vector<std::pair<float, float>> ties = {{0.5f, 0.0f},
                                                     {1.5f, 2.0f},
                                                     {2.5f, 2.0f},
                                                     {3.5f, 4.0f},
                                                     {-0.5f, -0.0f},
                                                     {-1.5f, -2.0f},
                                                     {-2.5f, -2.0f},
                                                     {1000.5f, 1000.0f},
                                                     {1001.5f, 1002.0f},
                                                     {4194302.5f, 4194302.0f},
                                                     {4194303.5f, 4194304.0f},
                                                     {8388606.5f, 8388606.0f},
                                                     {8388607.5f, 8388608.0f},
                                                     {-8388607.5f, -8388608.0f}};
  for (const auto& [x, want] : ties) {
    EXPECT_EQ(bits_of(round_half_even(x)), bits_of(want)) << "x=" << fmt(x);
    EXPECT_EQ(bits_of(std::nearbyint(x)), bits_of(want)) << "x=" << fmt(x);
  }
}

TEST(FormulaRounding, MatchesNearbyintEverywhere) {
  Mismatches bad("round_half_even vs std::nearbyint");
  for (int k = -2000; k <= 2000; ++k) {
    const float half = static_cast<float>(k) + 0.5f;
    expect_rounds_like_nearbyint(half, bad);
    expect_rounds_like_nearbyint(std::nextafter(half, kInf), bad);
    expect_rounds_like_nearbyint(std::nextafter(half, -kInf), bad);
  }
  // Around 2^23 and 2^24, where floats stop having fractions.
  for (float base : {8388608.0f, 16777216.0f}) {
    float x = base;
    for (int i = 0; i < 64; ++i) x = std::nextafter(x, 0.0f);
    for (int i = 0; i < 128; ++i, x = std::nextafter(x, kInf)) {
      expect_rounds_like_nearbyint(x, bad);
      expect_rounds_like_nearbyint(-x, bad);
    }
  }
  for (float x : {0.0f, -0.0f, 1e-45f, -1e-45f, 0.49999997f, -0.49999997f, 1e30f, -1e30f,
                  std::numeric_limits<float>::max(), kInf, -kInf, kNaN}) {
    expect_rounds_like_nearbyint(x, bad);
  }
  std::mt19937 rng(4);
  std::uniform_int_distribution<uint32_t> any_bits;
  std::uniform_real_distribution<float> moderate(-100.0f, 100.0f);
  for (int i = 0; i < 1000000; ++i) {
    expect_rounds_like_nearbyint(float_from_bits(any_bits(rng)), bad);
    expect_rounds_like_nearbyint(moderate(rng), bad);
  }
}

// ===========================================================================
// 5. fp16 and bf16 conversions.

bool is_half_nan(uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
}

void expect_half_conversion(float f, Mismatches& bad) {
  const uint16_t got = float_to_half(f);
  if (std::isnan(f)) {
    if (!is_half_nan(got)) bad.add("NaN converted to " + std::to_string(got));
    return;
  }
  const uint16_t want = ref_half_bits(f);
  if (got != want) {
    bad.add("x=" + fmt(f) + ": expected bits " + std::to_string(want) + ", got " +
            std::to_string(got));
  }
}

TEST(FormulaHalf, FromFloatMatchesFloat16) {
  Mismatches bad("float_to_half vs _Float16");
  const float min_sub = std::ldexp(1.0f, -24);
  for (float f : {0.0f,
                  1.0f,
                  65504.0f,
                  std::nextafter(65520.0f, 0.0f),
                  65520.0f,
                  65536.0f,
                  1e5f,
                  1e30f,
                  kInf,
                  kNaN,
                  min_sub,
                  min_sub / 2,
                  std::nextafter(min_sub / 2, 1.0f),
                  3 * min_sub / 2,
                  std::ldexp(1.0f, -14),
                  std::ldexp(1.0f, -14) - min_sub / 2,
                  std::numeric_limits<float>::min(),
                  std::numeric_limits<float>::denorm_min(),
                  1.0f + std::ldexp(1.0f, -11),
                  1.0f + 3 * std::ldexp(1.0f, -11),
                  0.1f,
                  3.14159265f}) {
    expect_half_conversion(f, bad);
    expect_half_conversion(-f, bad);
  }
  // Every rounding boundary between adjacent finite halves, and either side of it.
  for (uint32_t h = 0; h < 0x7c00u; ++h) {
    const float lo = ref_half_value(static_cast<uint16_t>(h));
    const float hi = h == 0x7bffu ? 65536.0f : ref_half_value(static_cast<uint16_t>(h + 1));
    const float mid = (lo + hi) / 2;  // exact: one bit more than a half has
    for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, kInf), lo}) {
      expect_half_conversion(f, bad);
      expect_half_conversion(-f, bad);
    }
  }
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> any_bits;
  std::uniform_int_distribution<uint32_t> half_range(0x33000000u, 0x47800000u);  // 2^-25..2^16
  for (int i = 0; i < 1000000; ++i) {
    expect_half_conversion(float_from_bits(any_bits(rng)), bad);
    expect_half_conversion(float_from_bits(half_range(rng) | (any_bits(rng) & 0x80000000u)), bad);
  }
}

TEST(FormulaHalf, ToFloatAllPatterns) {
  Mismatches bad("half_to_float vs _Float16");
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float want = ref_half_value(static_cast<uint16_t>(h));
    const float got = half_to_float(static_cast<uint16_t>(h));
    const bool ok = std::isnan(want) ? std::isnan(got) : bits_of(got) == bits_of(want);
    if (!ok) bad.add("bits " + std::to_string(h) + ": expected " + fmt(want) + ", got " + fmt(got));
  }
}

void expect_bf16_conversion(float f, Mismatches& bad) {
  const uint16_t got = float_to_bf16(f);
  if (std::isnan(f)) {
    if (!std::isnan(ref_bf16_value(got))) bad.add("NaN converted to " + std::to_string(got));
    return;
  }
  const uint16_t want = ref_bf16_bits(f);
  if (got != want) {
    bad.add("x=" + fmt(f) + " (bits " + std::to_string(bits_of(f)) + "): expected " +
            std::to_string(want) + ", got " + std::to_string(got));
  }
}

TEST(FormulaBf16, FromFloatRoundsToNearestEven) {
  Mismatches bad("float_to_bf16 vs exact rounding");
  // Hand-checked anchors: 1 + 2^-8 is the tie between 1 and 1 + 2^-7 (goes to 1);
  // 1 + 3*2^-8 ties between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80u);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82u);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80u);  // rounds to infinity
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    if (((b >> 7) & 0xffu) == 0xffu) continue;  // inf / NaN
    const uint32_t tie = (b << 16) | 0x8000u;
    for (uint32_t u : {b << 16, tie, tie - 1, tie + 1})
      expect_bf16_conversion(float_from_bits(u), bad);
  }
  for (float f : {kInf, -kInf, kNaN, -kNaN}) expect_bf16_conversion(f, bad);
  std::mt19937 rng(6);
  std::uniform_int_distribution<uint32_t> any_bits;
  for (int i = 0; i < 1000000; ++i) expect_bf16_conversion(float_from_bits(any_bits(rng)), bad);
}

TEST(FormulaBf16, ToFloatAllPatterns) {
  Mismatches bad("bf16_to_float vs field decoding");
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    const float want = ref_bf16_value(static_cast<uint16_t>(b));
    const float got = bf16_to_float(static_cast<uint16_t>(b));
    const bool ok = std::isnan(want) ? std::isnan(got) : bits_of(got) == bits_of(want);
    if (!ok) bad.add("bits " + std::to_string(b) + ": expected " + fmt(want) + ", got " + fmt(got));
  }
}

// ===========================================================================
// 3. E4M3 and E2M1 from their definitions.

// The non-negative finite E4M3 values, indexed by code 0x00..0x7e (OCP: bias
// 7, 3 mantissa bits, subnormals m * 2^-9; exponent 15 with mantissa 7 is NaN).
const std::vector<float>& e4m3_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t;
    for (int code = 0; code < 0x7f; ++code) {
      const int e = code >> 3;
      const int m = code & 7;
      t.push_back(static_cast<float>(e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10)));
    }
    return t;
  }();
  return table;
}

// The non-negative E2M1 values by code 0..7: subnormals m * 0.5, then (1 + m/2) * 2^(e-1).
const std::vector<float>& e2m1_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t;
    for (int code = 0; code < 8; ++code) {
      const int e = code >> 1;
      const int m = code & 1;
      t.push_back(static_cast<float>(e == 0 ? 0.5 * m : std::ldexp(2 + m, e - 2)));
    }
    return t;
  }();
  return table;
}

// Index of the table value nearest to a >= 0; a tie goes to the even index
// (the even mantissa); past the last value it saturates.
size_t nearest_index(const std::vector<float>& table, float a) {
  const auto it = std::lower_bound(table.begin(), table.end(), a);
  if (it == table.end()) return table.size() - 1;
  const size_t hi = static_cast<size_t>(it - table.begin());
  if (hi == 0 || table[hi] == a) return hi;
  const size_t lo = hi - 1;
  const double d_lo = static_cast<double>(a) - table[lo];
  const double d_hi = static_cast<double>(table[hi]) - a;
  if (d_lo != d_hi) return d_lo < d_hi ? lo : hi;
  return lo % 2 == 0 ? lo : hi;
}

TEST(FormulaE4M3, TableFromDefinition) {
  const auto& t = e4m3_table();
  ASSERT_EQ(t.size(), 127u);
  EXPECT_EQ(t[0x01], 0.001953125f);  // 2^-9, smallest subnormal
  EXPECT_EQ(t[0x07], 0.013671875f);  // 7 * 2^-9, largest subnormal
  EXPECT_EQ(t[0x08], 0.015625f);     // 2^-6, smallest normal
  EXPECT_EQ(t[0x38], 1.0f);
  EXPECT_EQ(t[0x39], 1.125f);
  EXPECT_EQ(t[0x7e], 448.0f);  // 1.75 * 2^8
  for (size_t i = 1; i < t.size(); ++i) ASSERT_LT(t[i - 1], t[i]);
}

TEST(FormulaE4M3, DecodeAllCodes) {
  const auto& t = e4m3_table();
  for (uint32_t code = 0; code < 256; ++code) {
    const float got = e4m3_decode(static_cast<uint8_t>(code));
    const uint32_t mag = code & 0x7fu;
    if (mag == 0x7fu) {
      EXPECT_TRUE(std::isnan(got)) << "code " << code;
      continue;
    }
    EXPECT_FALSE(std::isnan(got)) << "code " << code;
    const float want = (code & 0x80u) ? -t[mag] : t[mag];
    EXPECT_EQ(bits_of(got), bits_of(want)) << "code " << code << ": " << fmt(got);
  }
}

TEST(FormulaE4M3, EncodeRoundTrips) {
  for (uint32_t code = 0; code < 256; ++code) {
    if ((code & 0x7fu) == 0x7fu) continue;
    const float v = e4m3_decode(static_cast<uint8_t>(code));
    EXPECT_EQ(e4m3_encode(v), code) << fmt(v);
    EXPECT_EQ(bits_of(e4m3_round(v)), bits_of(v)) << fmt(v);
  }
}

void expect_e4m3(float x, size_t index) {
  const auto& t = e4m3_table();
  EXPECT_EQ(e4m3_encode(x), index) << "x=" << fmt(x);
  EXPECT_EQ(e4m3_round(x), t[index]) << "x=" << fmt(x);
  EXPECT_EQ(e4m3_encode(-x), 0x80u | index) << "x=" << fmt(-x);
  EXPECT_EQ(bits_of(e4m3_round(-x)), bits_of(-t[index])) << "x=" << fmt(-x);
}

TEST(FormulaE4M3, EveryRoundingBoundary) {
  const auto& t = e4m3_table();
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    SCOPED_TRACE("between " + fmt(t[i]) + " and " + fmt(t[i + 1]));
    const float mid = (t[i] + t[i + 1]) / 2;  // exact in float
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(t[i]) + t[i + 1]) / 2);
    expect_e4m3(t[i], i);
    expect_e4m3(mid, i % 2 == 0 ? i : i + 1);  // ties to the even mantissa
    expect_e4m3(std::nextafter(mid, 0.0f), i);
    expect_e4m3(std::nextafter(mid, kInf), i + 1);
  }
  expect_e4m3(std::numeric_limits<float>::denorm_min(), 0);
  expect_e4m3(1e-30f, 0);
}

TEST(FormulaE4M3, SaturatesAbove448) {
  for (float x : {std::nextafter(448.0f, kInf), 456.0f, 464.0f, 479.0f, 480.0f, 512.0f, 1e6f,
                  std::numeric_limits<float>::max()}) {
    expect_e4m3(x, 0x7e);
  }
}

void expect_e2m1(float x, uint32_t index) {
  const auto& t = e2m1_table();
  EXPECT_EQ(e2m1_encode(x), index) << "x=" << fmt(x);
  EXPECT_EQ(e2m1_round(x), t[index]) << "x=" << fmt(x);
  EXPECT_EQ(e2m1_encode(-x), 0x8u | index) << "x=" << fmt(-x);
  EXPECT_EQ(bits_of(e2m1_round(-x)), bits_of(-t[index])) << "x=" << fmt(-x);
}

TEST(FormulaE2M1, TableAndDecode) {
  EXPECT_EQ(e2m1_table(), (std::vector<float>{0, 0.5f, 1, 1.5f, 2, 3, 4, 6}));
  for (uint32_t code = 0; code < 16; ++code) {
    const float mag = e2m1_table()[code & 7u];
    const float want = (code & 8u) ? -mag : mag;
    EXPECT_EQ(bits_of(e2m1_decode(code)), bits_of(want)) << "code " << code;
    EXPECT_EQ(e2m1_encode(want), code) << fmt(want);
  }
}

TEST(FormulaE2M1, EveryRoundingBoundary) {
  // Midpoints and where they go (ties to the even mantissa).
  const std::vector<std::pair<float, uint32_t>> midpoints = {
      {0.25f, 0}, {0.75f, 2}, {1.25f, 2}, {1.75f, 4}, {2.5f, 4}, {3.5f, 6}, {5.0f, 6}};
  const auto& t = e2m1_table();
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    const float mid = (t[i] + t[i + 1]) / 2;
    SCOPED_TRACE("midpoint " + fmt(mid));
    EXPECT_EQ(mid, midpoints[i].first);
    expect_e2m1(t[i], static_cast<uint32_t>(i));
    expect_e2m1(mid, midpoints[i].second);
    expect_e2m1(std::nextafter(mid, 0.0f), static_cast<uint32_t>(i));
    expect_e2m1(std::nextafter(mid, kInf), static_cast<uint32_t>(i + 1));
  }
  expect_e2m1(6.0f, 7);
  expect_e2m1(1e-30f, 0);
  for (float x : {std::nextafter(6.0f, kInf), 6.5f, 7.0f, 8.0f, 1e10f}) expect_e2m1(x, 7);
}

// ===========================================================================
// 1. Hand-worked groups.

// A group of values with what one zero-point mode makes of it, worked by hand.
struct HandGroup {
  std::vector<float> x;
  float scale;
  float zero;
  std::vector<uint32_t> codes;
  std::vector<float> out;
};

// Four 2-bit groups A..D. int mode: qmin = -2, qmax = 1, scale = (mx - mn) / 3,
// zero = round(mn / scale) + 2, q = clip(round(x / scale - zero), -2, 1),
// code = q + 2, x' = (q + zero) * scale.
const std::vector<HandGroup>& hand_int2() {
  static const std::vector<HandGroup> groups = {
      // A: scale 1, zero 2: x - 2 = [-2, -1, 0, 1] exactly.
      {{0, 1, 2, 3}, 1, 2, {0, 1, 2, 3}, {0, 1, 2, 3}},
      // B: scale 1, zero 2: x - 2 = [-2, -1.5, -0.5, 1] -> [-2, -2, 0, 1] (ties to even).
      {{0, 0.5f, 1.5f, 3}, 1, 2, {0, 0, 2, 3}, {0, 0, 2, 3}},
      // C: scale 9 / 3 = 3, zero = round(-6 / 3) + 2 = 0: x / 3 = [-2, 0, 1, -1].
      {{-6, 0, 3, -3}, 3, 0, {0, 2, 3, 1}, {-6, 0, 3, -3}},
      // D: scale 1, zero = round(2.5) + 2 = 4 (2.5 rounds to 2), so the grid is
      //    [2, 5]: x - 4 = [-1.5, 1.5, 0, -1] -> [-2, 2 clipped to 1, 0, -1].
      {{2.5f, 5.5f, 4, 3}, 1, 4, {0, 3, 2, 1}, {2, 5, 4, 3}},
  };
  return groups;
}

// The same groups in float mode: scale = (mx - mn) / 3, zero = mn,
// q = round(clamp((x - mn) / scale, 0, 3)), x' = q * scale + mn.
const std::vector<HandGroup>& hand_float2() {
  static const std::vector<HandGroup> groups = {
      {{0, 1, 2, 3}, 1, 0, {0, 1, 2, 3}, {0, 1, 2, 3}},
      // B: x / 1 = [0, 0.5, 1.5, 3] -> [0, 0, 2, 3].
      {{0, 0.5f, 1.5f, 3}, 1, 0, {0, 0, 2, 3}, {0, 0, 2, 3}},
      // C: scale 3: (x + 6) / 3 = [0, 2, 3, 1].
      {{-6, 0, 3, -3}, 3, -6, {0, 2, 3, 1}, {-6, 0, 3, -3}},
      // D: x - 2.5 = [0, 3, 1.5, 0.5] -> [0, 3, 2, 0]; x' = q + 2.5.
      {{2.5f, 5.5f, 4, 3}, 1, 2.5f, {0, 3, 2, 0}, {2.5f, 5.5f, 4.5f, 2.5f}},
  };
  return groups;
}

// Where hand groups sit in a tensor: per element ([token][head][channel]) the
// group letter plus the member index, or kRes for a residual-window element.
constexpr int kA = 0, kB = 4, kC = 8, kD = 12, kRes = -1;

struct HandCase {
  const char* name;
  IntSpec spec;
  CacheShape shape;
  std::vector<int> map;
  std::vector<int> group_order;  // hand group (0..3 = A..D) of each kernel group number
};

std::vector<int> members(int letter) {
  return {letter, letter + 1, letter + 2, letter + 3};
}

std::vector<int> concat(std::initializer_list<std::vector<int>> parts) {
  std::vector<int> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

IntSpec hand_spec(Grouping grouping, Role role, int group_size, int residual) {
  IntSpec spec;
  spec.grouping = grouping;
  spec.role = role;
  spec.bits = 2;
  spec.group_size = group_size;
  spec.residual = residual;
  return spec;
}

// Residual elements get distinct values that no quantizer would produce.
float residual_value(int k) {
  return (k % 2 ? -1.0f : 1.0f) * (100.0f + 0.37f * k);
}

void run_hand_case(const HandCase& hc, ZeroPoint mode) {
  const auto& groups = mode == ZeroPoint::Int ? hand_int2() : hand_float2();
  IntSpec spec = hc.spec;
  spec.zero_point = mode;
  const CacheShape& shape = hc.shape;
  SCOPED_TRACE(std::string(hc.name) + ": " + describe(spec, shape));
  const int64_t n = shape.elements();
  ASSERT_EQ(static_cast<int64_t>(hc.map.size()), n);
  std::vector<float> x(n), want(n);
  std::vector<uint32_t> want_codes;
  int residual_seen = 0;
  for (int64_t e = 0; e < n; ++e) {
    const int m = hc.map[e];
    if (m == kRes) {
      x[e] = want[e] = residual_value(residual_seen++);
      continue;
    }
    ASSERT_EQ(residual_seen, 0) << "residual elements come last";
    const HandGroup& g = groups[m / 4];
    x[e] = g.x[m % 4];
    want[e] = g.out[m % 4];
    want_codes.push_back(g.codes[m % 4]);
  }
  const int64_t quantized = static_cast<int64_t>(want_codes.size());
  const Tensor input(DType::F32, x);

  const IntRun q = run_quantize_int(spec, shape, input);
  EXPECT_EQ(q.layout.code_elements, quantized);
  EXPECT_EQ(q.layout.residual_tokens * shape.heads * shape.head_dim, n - quantized);
  ASSERT_EQ(q.layout.groups.count, static_cast<int64_t>(hc.group_order.size()));
  for (size_t k = 0; k < hc.group_order.size(); ++k) {
    EXPECT_EQ(q.scales[k], groups[hc.group_order[k]].scale) << "group " << k;
    EXPECT_EQ(q.zeros[k], groups[hc.group_order[k]].zero) << "group " << k;
  }
  for (int64_t e = 0; e < quantized; ++e) {
    EXPECT_EQ(unpack_code(q.words.data(), e, spec.bits, q.layout.codes_per_word), want_codes[e])
        << where(shape, e) << " x=" << x[e];
  }
  const Tensor fake = run_fake_quant_int(spec, shape, input);
  for (int64_t e = 0; e < n; ++e) EXPECT_EQ(fake.at(e), want[e]) << where(shape, e);
  const Tensor deq = run_dequantize_int(spec, shape, q, DType::F32);
  for (int64_t e = 0; e < quantized; ++e) EXPECT_EQ(deq.at(e), want[e]) << where(shape, e);
}

std::vector<HandCase> hand_cases() {
  return {
      // Four (token, head) vectors of 4 channels: A B / C D.
      {"per-token [2, 2, 4]",
       hand_spec(Grouping::PerToken, Role::Key, 32, 32),
       CacheShape{2, 2, 4},
       concat({members(kA), members(kB), members(kC), members(kD)}),
       {0, 1, 2, 3}},
      // Keys [9 tokens, 1 head, 2 channels], G = R = 4: each channel of tokens
      // 4b..4b+3 is one group, numbered (block, channel); token 8 is residual.
      //   token:  0  1  2  3 |  4  5  6  7 | 8
      //   ch 0:  C0 C1 C2 C3 | D0 D1 D2 D3 | res
      //   ch 1:  A0 A1 A2 A3 | B0 B1 B2 B3 | res
      {"kivi keys [9, 1, 2]",
       hand_spec(Grouping::Kivi, Role::Key, 4, 4),
       CacheShape{9, 1, 2},
       {kC + 0, kA + 0, kC + 1, kA + 1, kC + 2, kA + 2, kC + 3, kA + 3,  //
        kD + 0, kB + 0, kD + 1, kB + 1, kD + 2, kB + 2, kD + 3, kB + 3,  //
        kRes, kRes},
       {2, 0, 3, 1}},
      // Keys [5 tokens, 2 heads, 1 channel], G = R = 4: head 0 is B, head 1 is D.
      {"kivi keys [5, 2, 1]",
       hand_spec(Grouping::Kivi, Role::Key, 4, 4),
       CacheShape{5, 2, 1},
       {kB + 0, kD + 0, kB + 1, kD + 1, kB + 2, kD + 2, kB + 3, kD + 3, kRes, kRes},
       {1, 3}},
      // Values [5 tokens, 1 head, 8 channels], G = R = 4: two groups of 4 channels
      // per token, numbered (token, block); token 4 is residual.
      //   token 0: B D   token 1: A C   token 2: C A   token 3: D B
      {"kivi values [5, 1, 8]",
       hand_spec(Grouping::Kivi, Role::Value, 4, 4),
       CacheShape{5, 1, 8},
       concat({members(kB), members(kD), members(kA), members(kC), members(kC), members(kA),
               members(kD), members(kB), std::vector<int>(8, kRes)}),
       {1, 3, 0, 2, 2, 0, 3, 1}},
      // Values [9, 1, 4] with G = 8 > head_dim: a group is the whole head_dim.
      {"kivi values [9, 1, 4], G > head_dim",
       hand_spec(Grouping::Kivi, Role::Value, 8, 8),
       CacheShape{9, 1, 4},
       concat({members(kA), members(kB), members(kC), members(kD), members(kD), members(kC),
               members(kB), members(kA), std::vector<int>(4, kRes)}),
       {0, 1, 2, 3, 3, 2, 1, 0}},
  };
}

TEST(FormulaIntHand, TwoBitGroupsIntMode) {
  for (const HandCase& hc : hand_cases()) run_hand_case(hc, ZeroPoint::Int);
}

TEST(FormulaIntHand, TwoBitGroupsFloatMode) {
  for (const HandCase& hc : hand_cases()) run_hand_case(hc, ZeroPoint::Float);
}

// One per-token group of another width, worked by hand for both modes (the
// HandGroups leave x empty: it is HandSingle::x).
struct HandSingle {
  int bits;
  std::vector<float> x;
  HandGroup int_mode;
  HandGroup float_mode;
};

std::vector<HandSingle> hand_singles() {
  return {
      // 3 bits (qmin -4, qmax 3, 7 levels), range 3.5 so scale = 0.5 exactly.
      // int: mn / scale = -1.5 rounds to -2, zero = 2, grid (q + 2) * 0.5 = [-1, 2.5];
      //   x / 0.5 - 2 = [-3.5, 3.5, -1.5, 0, -3] -> [-4, 4 -> 3, -2, 0, -3].
      // float: (x + 0.75) / 0.5 = [0, 7, 2, 3.5, 0.5] -> [0, 7, 2, 4, 0].
      {3,
       {-0.75f, 2.75f, 0.25f, 1.0f, -0.5f},
       {{}, 0.5f, 2, {0, 7, 2, 4, 1}, {-1, 2.5f, 0, 1, -0.5f}},
       {{}, 0.5f, -0.75f, {0, 7, 2, 4, 0}, {-0.75f, 2.75f, 0.25f, 1.25f, -0.75f}}},
      // 1 bit (qmin -1, qmax 0, 1 level): scale 2.
      // int: zero = round(0.5) + 1 = 1; x / 2 - 1 = [-0.5, 0.5, 0, 0.25] all round to 0,
      //   so every code is 1 and x' = (0 + 1) * 2 = 2.
      // float: (x - 1) / 2 = [0, 1, 0.5, 0.75] -> [0, 1, 0, 1].
      {1,
       {1, 3, 2, 2.5f},
       {{}, 2, 1, {1, 1, 1, 1}, {2, 2, 2, 2}},
       {{}, 2, 1, {0, 1, 0, 1}, {1, 3, 1, 3}}},
      // 4 bits (qmin -8, 15 levels): scale 1.
      // int: zero = -1 + 8 = 7; x - 7 = [-8, 7, -0.5, 0.5, -7] -> [-8, 7, 0, 0, -7].
      // float: x + 1 = [0, 15, 7.5, 8.5, 1] -> [0, 15, 8, 8, 1].
      {4,
       {-1, 14, 6.5f, 7.5f, 0},
       {{}, 1, 7, {0, 15, 8, 8, 1}, {-1, 14, 7, 7, 0}},
       {{}, 1, -1, {0, 15, 8, 8, 1}, {-1, 14, 7, 7, 0}}},
      // 8 bits (qmin -128, 255 levels): scale 1.
      // int: zero = 128; x - 128 = [-128, 127, -0.5, 0.5, -126.5] -> [-128, 127, 0, 0, -126].
      // float: [0, 255, 127.5, 128.5, 1.5] -> [0, 255, 128, 128, 2].
      {8,
       {0, 255, 127.5f, 128.5f, 1.5f},
       {{}, 1, 128, {0, 255, 128, 128, 2}, {0, 255, 128, 128, 2}},
       {{}, 1, 0, {0, 255, 128, 128, 2}, {0, 255, 128, 128, 2}}},
  };
}

TEST(FormulaIntHand, SingleGroupsOfOtherWidths) {
  for (const HandSingle& hs : hand_singles()) {
    for (ZeroPoint mode : kModes) {
      const HandGroup& want = mode == ZeroPoint::Int ? hs.int_mode : hs.float_mode;
      IntSpec spec = hand_spec(Grouping::PerToken, Role::Value, 32, 32);
      spec.bits = hs.bits;
      spec.zero_point = mode;
      const CacheShape shape{1, 1, static_cast<int64_t>(hs.x.size())};
      SCOPED_TRACE(describe(spec, shape));
      const Tensor input(DType::F32, hs.x);
      const IntRun q = run_quantize_int(spec, shape, input);
      EXPECT_EQ(q.scales[0], want.scale);
      EXPECT_EQ(q.zeros[0], want.zero);
      const Tensor fake = run_fake_quant_int(spec, shape, input);
      for (size_t i = 0; i < hs.x.size(); ++i) {
        EXPECT_EQ(unpack_code(q.words.data(), static_cast<int64_t>(i), spec.bits,
                              q.layout.codes_per_word),
                  want.codes[i])
            << "x=" << hs.x[i];
        EXPECT_EQ(fake.at(i), want.out[i]) << "x=" << hs.x[i];
      }
    }
  }
}

// ===========================================================================
// 7. Packing.

// Code j of a word sits at bits [width * j, width * j + bits), width = bits
// (8 for 3-bit codes: one per byte).
size_t code_width(int bits) {
  return bits == 3 ? 8 : static_cast<size_t>(bits);
}
size_t codes_per_word(int bits) {
  return 32 / code_width(bits);
}

// The bits of word w that hold one of n codes.
uint32_t used_bits(int bits, size_t n, size_t w) {
  uint32_t mask = 0;
  for (size_t j = 0; j < codes_per_word(bits) && w * codes_per_word(bits) + j < n; ++j) {
    mask |= static_cast<uint32_t>((uint64_t{1} << bits) - 1) << (code_width(bits) * j);
  }
  return mask;
}

// Expects the packed words to hold `codes` as described above.
void expect_packed(const std::vector<uint32_t>& words, const std::vector<uint32_t>& codes, int bits,
                   bool check_padding) {
  const size_t per_word = codes_per_word(bits);
  const size_t n_words = (codes.size() + per_word - 1) / per_word;
  ASSERT_GE(words.size(), n_words);
  for (size_t w = 0; w < n_words; ++w) {
    uint32_t want = 0;
    for (size_t j = 0; j < per_word && w * per_word + j < codes.size(); ++j) {
      want |= codes[w * per_word + j] << (code_width(bits) * j);
    }
    const uint32_t mask = used_bits(bits, codes.size(), w);
    EXPECT_EQ(words[w] & mask, want) << "word " << w << " bits " << bits;
    if (check_padding) {
      EXPECT_EQ(words[w] & ~mask, 0u) << "padding of word " << w;
    }
  }
}

TEST(FormulaPacking, HandWorkedWords) {
  // The per-token [2, 2, 4] hand tensor in 2 bits: one word, bytes A B C D with
  // code j at bits [2j, 2j + 2): A = 0|1<<2|2<<4|3<<6 = 0xE4, B = 0xE0, C = 0x78,
  // D = 0x6C (int) or 0x2C (float).
  for (ZeroPoint mode : kModes) {
    const auto& groups = mode == ZeroPoint::Int ? hand_int2() : hand_float2();
    std::vector<float> x;
    for (const auto& g : groups) x.insert(x.end(), g.x.begin(), g.x.end());
    IntSpec spec = hand_spec(Grouping::PerToken, Role::Key, 32, 32);
    spec.zero_point = mode;
    const IntRun q = run_quantize_int(spec, CacheShape{2, 2, 4}, Tensor(DType::F32, x));
    ASSERT_EQ(q.layout.code_words, 1);
    EXPECT_EQ(q.words[0], mode == ZeroPoint::Int ? 0x6C78E0E4u : 0x2C78E0E4u);
  }
  // Single groups: 3-bit int codes [0, 7, 2, 4, 1] one per byte -> 0x04020700, 0x1;
  // 1-bit float codes [0, 1, 0, 1] -> 0b1010; 4-bit codes [0, 15, 8, 8, 1] ->
  // 0x000188F0; 8-bit codes [0, 255, 128, 128, 2] -> 0x8080FF00, 0x2.
  // (Padding bits are left to PaddingBitsAreZero; only code bits are compared.)
  const std::vector<std::pair<int, std::vector<uint32_t>>> want_words = {
      {3, {0x04020700u, 0x1u}}, {1, {0xAu}}, {4, {0x000188F0u}}, {8, {0x8080FF00u, 0x2u}}};
  const auto singles = hand_singles();
  ASSERT_EQ(singles.size(), want_words.size());
  for (size_t i = 0; i < singles.size(); ++i) {
    IntSpec spec = hand_spec(Grouping::PerToken, Role::Key, 32, 32);
    spec.bits = singles[i].bits;
    spec.zero_point = spec.bits == 1 ? ZeroPoint::Float : ZeroPoint::Int;
    ASSERT_EQ(want_words[i].first, spec.bits);
    const size_t n = singles[i].x.size();
    const IntRun q = run_quantize_int(spec, CacheShape{1, 1, static_cast<int64_t>(n)},
                                      Tensor(DType::F32, singles[i].x));
    const auto& want = want_words[i].second;
    ASSERT_EQ(q.layout.code_words, static_cast<int64_t>(want.size()));
    for (size_t w = 0; w < want.size(); ++w) {
      EXPECT_EQ(q.words[w] & used_bits(spec.bits, n, w), want[w])
          << "bits " << spec.bits << " word " << w;
    }
  }
}

TEST(FormulaPacking, RoundTripEveryWidth) {
  std::mt19937 rng(7);
  for (int bits : kBits) {
    for (ZeroPoint mode : kModes) {
      for (const auto& gr : kGroupings) {
        const IntCase c = random_int_case(rng, gr.grouping, gr.role, bits, mode);
        SCOPED_TRACE(describe(c.spec, c.shape));
        const Tensor x(DType::F32, random_values(rng, c.shape.elements(), 0));
        const RefInt ref = ref_quantize_int(c.spec, c.shape, x.values());
        const IntRun q = run_quantize_int(c.spec, c.shape, x);
        // Layout: 32 / bits codes per word, or four one-byte 3-bit codes.
        const int per_word = bits == 3 ? 4 : 32 / bits;
        EXPECT_EQ(q.layout.codes_per_word, per_word);
        EXPECT_EQ(q.layout.code_words, (ref.quantized_elements + per_word - 1) / per_word);
        expect_packed(q.words, ref.codes, bits, /*check_padding=*/false);
        for (int64_t e = 0; e < ref.quantized_elements; ++e) {
          ASSERT_EQ(unpack_code(q.words.data(), e, bits, per_word), ref.codes[e]) << e;
        }
        const Tensor deq = run_dequantize_int(c.spec, c.shape, q, DType::F32);
        const Tensor fake = run_fake_quant_int(c.spec, c.shape, x);
        for (int64_t e = 0; e < ref.quantized_elements; ++e) {
          ASSERT_EQ(bits_of(deq.at(e)), bits_of(fake.at(e))) << where(c.shape, e);
        }
      }
    }
  }
}

TEST(FormulaPacking, PaddingBitsAreZero) {
  // Bits that hold no code (the top 5 bits of each 3-bit byte, the tail of the
  // last word) are zero whatever the output buffer held before.
  std::mt19937 rng(8);
  for (int bits : kBits) {
    IntSpec spec;
    spec.bits = bits;
    const CacheShape shape{3, 1, 5};  // 15 codes: never a whole number of words
    const Tensor x(DType::F32, random_values(rng, shape.elements(), 0));
    const RefInt ref = ref_quantize_int(spec, shape, x.values());
    const IntRun q = run_quantize_int(spec, shape, x, 0xA5A5A5A5u);
    SCOPED_TRACE("bits " + std::to_string(bits));
    expect_packed(q.words, ref.codes, bits, /*check_padding=*/true);
  }
}

// ===========================================================================
// 2. Random tensors against the reference quantizer.

TEST(FormulaIntReference, RandomTensorsMatchExactly) {
  std::mt19937 rng(1);
  for (int bits : kBits) {
    for (ZeroPoint mode : kModes) {
      for (const auto& gr : kGroupings) {
        for (int trial = 0; trial < 12; ++trial) {
          const IntCase c = random_int_case(rng, gr.grouping, gr.role, bits, mode);
          const Tensor x(DType::F32, random_values(rng, c.shape.elements(), trial % 4));
          expect_int_matches_reference(c.spec, c.shape, x);
          // The kernel's own group numbering agrees with the one the reference uses.
          const IntLayout layout = int_layout(c.spec, c.shape);
          for (int64_t e = 0; e < layout.code_elements; ++e) {
            ASSERT_EQ(layout.groups.group_of(e), ref_group_of(c.spec, c.shape, e))
                << describe(c.spec, c.shape) << " " << where(c.shape, e);
          }
        }
      }
    }
  }
}

// 10. fp16 / bf16 input: the float path on the widened values, rounded back.
TEST(FormulaIntReference, LowPrecisionInputs) {
  std::mt19937 rng(2);
  for (DType dtype : {DType::F16, DType::BF16}) {
    for (int bits : kBits) {
      for (ZeroPoint mode : kModes) {
        for (const auto& gr : kGroupings) {
          const IntCase c = random_int_case(rng, gr.grouping, gr.role, bits, mode);
          std::vector<float> v = random_values(rng, c.shape.elements(), bits % 4);
          for (float& f : v) f = std::clamp(f, -6e4f, 6e4f);  // stay finite in fp16
          const Tensor x(dtype, v);
          expect_int_matches_reference(c.spec, c.shape, x);
          // And literally: fake-quantizing the widened floats, then storing as dtype.
          const Tensor widened(DType::F32, x.values());
          const Tensor via_float = run_fake_quant_int(c.spec, c.shape, widened);
          const Tensor direct = run_fake_quant_int(c.spec, c.shape, x);
          const Tensor rounded_back(dtype, via_float.values());
          Mismatches bad(describe(c.spec, c.shape, dtype) + " vs float path");
          for (size_t e = 0; e < x.size(); ++e) {
            if (direct.raw(e) != rounded_back.raw(e)) {
              bad.add(where(c.shape, static_cast<int64_t>(e)) + ": expected " +
                      fmt(rounded_back.at(e)) + ", got " + fmt(direct.at(e)));
            }
          }
        }
      }
    }
  }
}

TEST(FormulaIntReference, InPlaceEqualsOutOfPlace) {
  std::mt19937 rng(3);
  for (const auto& gr : kGroupings) {
    const IntCase c = random_int_case(rng, gr.grouping, gr.role, 4, ZeroPoint::Int);
    const std::vector<float> v = random_values(rng, c.shape.elements(), 0);
    const Tensor out_of_place = run_fake_quant_int(c.spec, c.shape, Tensor(DType::F32, v));
    Tensor in_place(DType::F32, v);
    cpu::fake_quant_int(c.spec, c.shape, DType::F32, in_place.data(), in_place.data());
    EXPECT_EQ(in_place.f32, out_of_place.f32) << describe(c.spec, c.shape);
  }
}

// ===========================================================================
// 8. |x - x'| <= scale / 2 for every value.

TEST(FormulaErrorBound, WithinHalfAScale) {
  std::mt19937 rng(9);
  for (int bits : kBits) {
    for (ZeroPoint mode : kModes) {
      for (const auto& gr : kGroupings) {
        for (int trial = 0; trial < 8; ++trial) {
          const IntCase c = random_int_case(rng, gr.grouping, gr.role, bits, mode);
          const std::vector<float> v = random_values(rng, c.shape.elements(), trial % 4);
          const Tensor x(DType::F32, v);
          const IntRun q = run_quantize_int(c.spec, c.shape, x);
          const Tensor deq = run_dequantize_int(c.spec, c.shape, q, DType::F32);
          const int64_t quantized = q.layout.code_elements;
          // Group magnitudes, for the float rounding allowance.
          std::vector<float> magnitude(std::max<int64_t>(q.layout.groups.count, 1), 0.0f);
          for (int64_t e = 0; e < quantized; ++e) {
            float& m = magnitude[ref_group_of(c.spec, c.shape, e)];
            m = std::max(m, std::fabs(v[e]));
          }
          Mismatches bad(describe(c.spec, c.shape));
          for (int64_t e = 0; e < quantized; ++e) {
            const int64_t g = ref_group_of(c.spec, c.shape, e);
            const double err = std::fabs(static_cast<double>(v[e]) - deq.at(e));
            const double bound = q.scales[g] / 2.0 + 1e-6 * magnitude[g] + 1e-7;
            if (!(err <= bound)) {
              bad.add(where(c.shape, e) + " x=" + fmt(v[e]) + " x'=" + fmt(deq.at(e)) +
                      " scale=" + fmt(q.scales[g]));
            }
          }
        }
      }
    }
  }
}

// ===========================================================================
// 9. Edge cases.

TEST(FormulaEdge, ConstantGroups) {
  const std::vector<float> constants = {0.0f, 5.0f, -3.25f, 1000.0f, 1e-3f, -7e4f, 1e-30f, 0.1f};
  const CacheShape shape{4, 2, 8};  // 8 per-token groups, one constant each
  std::vector<float> v;
  for (float k : constants) v.insert(v.end(), 8, k);
  const Tensor x(DType::F32, v);
  for (int bits : kBits) {
    for (ZeroPoint mode : kModes) {
      IntSpec spec;
      spec.bits = bits;
      spec.zero_point = mode;
      SCOPED_TRACE(describe(spec, shape));
      const IntRun q = run_quantize_int(spec, shape, x);
      const Tensor y = run_fake_quant_int(spec, shape, x);
      const float levels = static_cast<float>((1 << bits) - 1);
      for (int64_t e = 0; e < shape.elements(); ++e) {
        const int64_t g = e / 8;
        ASSERT_TRUE(std::isfinite(y.at(e))) << where(shape, e);
        if (mode == ZeroPoint::Float) {
          // scale 0, every code 0, and x' = 0 * 0 + mn = x exactly.
          EXPECT_EQ(q.scales[g], 0.0f);
          EXPECT_EQ(unpack_code(q.words.data(), e, bits, q.layout.codes_per_word), 0u);
          EXPECT_EQ(y.at(e), v[e]) << where(shape, e);
        } else {
          // The range floor: scale = 1e-5 / (2^b - 1).
          const float scale = 1e-5f / levels;
          EXPECT_EQ(q.scales[g], scale);
          EXPECT_LE(std::fabs(static_cast<double>(y.at(e)) - v[e]),
                    scale / 2.0 + 1e-6 * std::fabs(v[e]) + 1e-12)
              << where(shape, e) << " x=" << v[e] << " x'=" << y.at(e);
        }
      }
    }
  }
}

bool mentions_nonfinite(const std::string& message) {
  std::string lower = message;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return lower.find("nan") != std::string::npos || lower.find("inf") != std::string::npos ||
         lower.find("finite") != std::string::npos;
}

// Expects fn to throw std::invalid_argument; returns the message.
std::string expect_invalid(const std::function<void()>& fn, const std::string& what) {
  try {
    fn();
  } catch (const std::invalid_argument& ex) {
    return ex.what();
  } catch (const std::exception& ex) {
    ADD_FAILURE() << what << ": threw something other than std::invalid_argument: " << ex.what();
    return ex.what();
  }
  ADD_FAILURE() << what << ": did not throw";
  return "";
}

void expect_nonfinite_rejected(const std::function<void()>& fn, const std::string& what) {
  const std::string message = expect_invalid(fn, what);
  EXPECT_FALSE(message.empty()) << what;
  EXPECT_TRUE(mentions_nonfinite(message)) << what << ": message \"" << message << "\"";
}

TEST(FormulaEdge, NonFiniteInputThrows) {
  const CacheShape shape{4, 2, 8};
  const int64_t bad_element = (2 * 2 + 1) * 8 + 3;  // token 2, head 1, channel 3
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    for (float poison : {kNaN, kInf, -kInf}) {
      std::vector<float> v(shape.elements(), 0.5f);
      v[0] = -1.0f;
      v[bad_element] = poison;
      const Tensor x(dtype, v);
      ASSERT_FALSE(std::isfinite(x.at(bad_element)));
      const std::string what = std::string(dtype_name(dtype)) + " value " + fmt(poison);
      for (const auto& gr : kGroupings) {
        IntSpec spec;
        spec.grouping = gr.grouping;
        spec.role = gr.role;
        spec.group_size = 4;
        spec.residual = 4;
        Tensor y(dtype, v);
        std::vector<uint32_t> words(64);
        std::vector<float> scales(64), zeros(64);
        expect_nonfinite_rejected(
            [&] { cpu::fake_quant_int(spec, shape, dtype, x.data(), y.data()); },
            what + " fake_quant_int " + describe(spec, shape));
        expect_nonfinite_rejected(
            [&] {
              cpu::quantize_int(spec, shape, dtype, x.data(),
                                IntBuffers{words.data(), scales.data(), zeros.data()});
            },
            what + " quantize_int " + describe(spec, shape));
      }
      std::vector<float> amax(shape.heads, 0.0f);
      expect_nonfinite_rejected(
          [&] { cpu::accumulate_head_amax(shape, dtype, x.data(), amax.data()); },
          what + " accumulate_head_amax");
    }
  }
}

TEST(FormulaEdge, NonFiniteInputThrowsFp8AndNvfp4) {
  const CacheShape shape{3, 2, 16};
  std::vector<float> v(shape.elements(), 0.25f);
  v[40] = kNaN;
  const Tensor x(DType::F32, v);
  Tensor y(DType::F32, v);
  const std::vector<float> scales(shape.heads, 1.0f);
  std::vector<uint8_t> codes(shape.elements());
  std::vector<uint32_t> words(shape.elements());
  std::vector<uint8_t> blocks(shape.elements());
  expect_nonfinite_rejected(
      [&] { cpu::quantize_fp8(shape, DType::F32, x.data(), scales.data(), codes.data()); },
      "quantize_fp8");
  expect_nonfinite_rejected(
      [&] { cpu::fake_quant_fp8(shape, DType::F32, x.data(), scales.data(), y.data()); },
      "fake_quant_fp8");
  expect_nonfinite_rejected(
      [&] {
        cpu::quantize_nvfp4(shape, DType::F32, x.data(), scales.data(),
                            Nvfp4Buffers{words.data(), blocks.data()});
      },
      "quantize_nvfp4");
  expect_nonfinite_rejected(
      [&] { cpu::fake_quant_nvfp4(shape, DType::F32, x.data(), scales.data(), y.data()); },
      "fake_quant_nvfp4");
}

TEST(FormulaEdge, ZeroSizedShapesThrow) {
  std::vector<float> buffer(4096, 1.0f), out(4096), scales(64, 1.0f), zeros(64), amax(64);
  std::vector<uint32_t> words(4096);
  std::vector<uint8_t> bytes(4096);
  for (const CacheShape& shape :
       {CacheShape{0, 2, 8}, CacheShape{4, 0, 8}, CacheShape{4, 2, 0}, CacheShape{-1, 2, 8}}) {
    const std::string s = shape.str();
    IntSpec spec;
    expect_invalid([&] { int_layout(spec, shape); }, "int_layout " + s);
    expect_invalid([&] { int_storage_bits(spec, shape); }, "int_storage_bits " + s);
    expect_invalid([&] { cpu::fake_quant_int(spec, shape, DType::F32, buffer.data(), out.data()); },
                   "fake_quant_int " + s);
    expect_invalid(
        [&] {
          cpu::quantize_int(spec, shape, DType::F32, buffer.data(),
                            IntBuffers{words.data(), scales.data(), zeros.data()});
        },
        "quantize_int " + s);
    expect_invalid(
        [&] { cpu::accumulate_head_amax(shape, DType::F32, buffer.data(), amax.data()); },
        "accumulate_head_amax " + s);
    expect_invalid(
        [&] { cpu::fake_quant_fp8(shape, DType::F32, buffer.data(), scales.data(), out.data()); },
        "fake_quant_fp8 " + s);
    expect_invalid(
        [&] { cpu::quantize_fp8(shape, DType::F32, buffer.data(), scales.data(), bytes.data()); },
        "quantize_fp8 " + s);
    expect_invalid(
        [&] { cpu::fake_quant_nvfp4(shape, DType::F32, buffer.data(), scales.data(), out.data()); },
        "fake_quant_nvfp4 " + s);
    expect_invalid([&] { fp8_storage_bits(shape); }, "fp8_storage_bits " + s);
    expect_invalid([&] { nvfp4_storage_bits(shape); }, "nvfp4_storage_bits " + s);
  }
}

TEST(FormulaEdge, UnsupportedBitsThrow) {
  const CacheShape shape{4, 2, 8};
  std::vector<float> x(shape.elements(), 1.0f), y(shape.elements()), scales(64), zeros(64);
  std::vector<uint32_t> words(256);
  for (int bits : {0, 5, 6, 7, 16, -1, 32}) {
    IntSpec spec;
    spec.bits = bits;
    const std::string what = "bits " + std::to_string(bits);
    expect_invalid([&] { int_layout(spec, shape); }, what + " int_layout");
    expect_invalid([&] { cpu::fake_quant_int(spec, shape, DType::F32, x.data(), y.data()); },
                   what + " fake_quant_int");
    expect_invalid(
        [&] {
          cpu::quantize_int(spec, shape, DType::F32, x.data(),
                            IntBuffers{words.data(), scales.data(), zeros.data()});
        },
        what + " quantize_int");
  }
}

TEST(FormulaEdge, KiviResidualMustBeMultipleOfGroup) {
  const CacheShape shape{64, 2, 32};
  std::vector<float> x(shape.elements(), 1.0f), y(shape.elements());
  for (auto [g, r] :
       std::vector<std::pair<int, int>>{{32, 48}, {32, 16}, {32, 0}, {32, -32}, {0, 32}, {8, 12}}) {
    for (Role role : {Role::Key, Role::Value}) {
      IntSpec spec;
      spec.grouping = Grouping::Kivi;
      spec.role = role;
      spec.group_size = g;
      spec.residual = r;
      const std::string what = "G=" + std::to_string(g) + " R=" + std::to_string(r);
      expect_invalid([&] { int_layout(spec, shape); }, what + " int_layout");
      expect_invalid([&] { cpu::fake_quant_int(spec, shape, DType::F32, x.data(), y.data()); },
                     what + " fake_quant_int");
    }
  }
}

TEST(FormulaEdge, KiviValueGroupMustDivideHeadDim) {
  const CacheShape shape{64, 2, 48};
  std::vector<float> x(shape.elements(), 1.0f), y(shape.elements());
  IntSpec spec;
  spec.grouping = Grouping::Kivi;
  spec.role = Role::Value;
  spec.group_size = 32;
  spec.residual = 32;
  expect_invalid([&] { int_layout(spec, shape); }, "values G=32 head_dim=48 int_layout");
  expect_invalid([&] { cpu::fake_quant_int(spec, shape, DType::F32, x.data(), y.data()); },
                 "values G=32 head_dim=48 fake_quant_int");
  // Keys group along tokens, so any head_dim works.
  spec.role = Role::Key;
  EXPECT_NO_THROW(cpu::fake_quant_int(spec, shape, DType::F32, x.data(), y.data()));
}

TEST(FormulaEdge, Nvfp4HeadDimMustFitBlocks) {
  const CacheShape shape{4, 2, 24};
  std::vector<float> x(shape.elements(), 1.0f), y(shape.elements());
  const std::vector<float> scales(2, 1.0f);
  std::vector<uint32_t> words(shape.elements());
  std::vector<uint8_t> blocks(shape.elements());
  expect_invalid([] { nvfp4_block(24); }, "nvfp4_block(24)");
  expect_invalid([&] { nvfp4_storage_bits(shape); }, "nvfp4_storage_bits head_dim 24");
  expect_invalid(
      [&] { cpu::fake_quant_nvfp4(shape, DType::F32, x.data(), scales.data(), y.data()); },
      "fake_quant_nvfp4 head_dim 24");
  expect_invalid(
      [&] {
        cpu::quantize_nvfp4(shape, DType::F32, x.data(), scales.data(),
                            Nvfp4Buffers{words.data(), blocks.data()});
      },
      "quantize_nvfp4 head_dim 24");
  EXPECT_EQ(nvfp4_block(8), 8);  // below 16: the block is head_dim
  EXPECT_EQ(nvfp4_block(1), 1);
  EXPECT_EQ(nvfp4_block(16), 16);
  EXPECT_EQ(nvfp4_block(48), 16);
  EXPECT_EQ(nvfp4_block(128), 16);
}

TEST(FormulaEdge, KiviTrailingTokensPassThrough) {
  std::mt19937 rng(10);
  for (Role role : {Role::Key, Role::Value}) {
    IntSpec spec;
    spec.grouping = Grouping::Kivi;
    spec.role = role;
    spec.bits = 2;
    spec.group_size = 16;
    spec.residual = 32;
    const CacheShape shape{70, 2, 32};  // 64 quantized tokens, 6 residual
    const IntLayout layout = int_layout(spec, shape);
    EXPECT_EQ(layout.quantized_tokens, 64);
    EXPECT_EQ(layout.residual_tokens, 6);
    const Tensor x(DType::F32, random_values(rng, shape.elements(), 0));
    const Tensor y = run_fake_quant_int(spec, shape, x);
    const int64_t first_residual = 64 * shape.heads * shape.head_dim;
    for (int64_t e = first_residual; e < shape.elements(); ++e) {
      ASSERT_EQ(y.raw(e), x.raw(e)) << where(shape, e);
    }
    int changed = 0;
    for (int64_t e = 0; e < first_residual; ++e) changed += y.raw(e) != x.raw(e);
    EXPECT_GT(changed, first_residual / 2) << "2-bit quantization changes most values";
    expect_int_matches_reference(spec, shape, x);
  }
}

TEST(FormulaEdge, KiviShortSequencePassesThrough) {
  // Fewer tokens than one residual window: nothing is quantized.
  std::mt19937 rng(11);
  IntSpec spec;
  spec.grouping = Grouping::Kivi;
  spec.group_size = 32;
  spec.residual = 32;
  const CacheShape shape{20, 2, 16};
  const IntLayout layout = int_layout(spec, shape);
  EXPECT_EQ(layout.quantized_tokens, 0);
  EXPECT_EQ(layout.residual_tokens, 20);
  EXPECT_EQ(layout.groups.count, 0);
  const Tensor x(DType::F32, random_values(rng, shape.elements(), 0));
  const Tensor y = run_fake_quant_int(spec, shape, x);
  EXPECT_EQ(y.f32, x.f32);
  EXPECT_NO_THROW(run_quantize_int(spec, shape, x));
  EXPECT_DOUBLE_EQ(int_storage_bits(spec, shape), 16.0);
}

// ===========================================================================
// 6. fp8 and nvfp4.

std::vector<float> ref_head_amax(const CacheShape& s, const std::vector<float>& x) {
  std::vector<float> amax(s.heads, 0.0f);
  for (int64_t e = 0; e < s.elements(); ++e) {
    float& a = amax[(e / s.head_dim) % s.heads];
    a = std::max(a, std::fabs(x[e]));
  }
  return amax;
}

// Per head: amax with some heads all zero and some tiny (subnormal E4M3 codes).
std::vector<float> fp_test_values(std::mt19937& rng, const CacheShape& s, float gain) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> head_scale(s.heads);
  for (auto& h : head_scale) {
    h = static_cast<float>(pick(rng, {0, 1, 2, 3}));
    h = h == 0 ? 0.0f : std::pow(10.0f, std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng));
  }
  std::vector<float> v(s.elements());
  for (int64_t e = 0; e < s.elements(); ++e) {
    const float spread = (e % 7 == 0) ? 1e-4f : 1.0f;  // some values deep in the subnormals
    v[e] = gain * head_scale[(e / s.head_dim) % s.heads] * normal(rng) * spread;
  }
  return v;
}

CacheShape random_fp_shape(std::mt19937& rng, std::initializer_list<int64_t> head_dims) {
  return CacheShape{std::uniform_int_distribution<int64_t>(1, 33)(rng), pick(rng, {1, 2, 3, 4}),
                    pick(rng, head_dims)};
}

struct MiniFloatRef {
  uint32_t code;  // sign bit | magnitude index
  float value;
};

MiniFloatRef ref_e4m3(float x) {
  const size_t i = nearest_index(e4m3_table(), std::fabs(x));
  return {(std::signbit(x) ? 0x80u : 0u) | static_cast<uint32_t>(i),
          std::copysign(e4m3_table()[i], x)};
}

MiniFloatRef ref_e2m1(float x) {
  const size_t i = nearest_index(e2m1_table(), std::fabs(x));
  return {(std::signbit(x) ? 0x8u : 0u) | static_cast<uint32_t>(i),
          std::copysign(e2m1_table()[i], x)};
}

// Codes that agree up to the sign of a zero.
bool same_code(uint32_t got, uint32_t want, uint32_t sign_bit) {
  return got == want || ((want & ~sign_bit) == 0 && (got & ~sign_bit) == 0);
}

TEST(FormulaFp8, HeadAmaxAccumulatesAndScales) {
  std::mt19937 rng(12);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    const CacheShape s = random_fp_shape(rng, {1, 8, 64});
    const Tensor x1(dtype, fp_test_values(rng, s, 1.0f));
    const Tensor x2(dtype, fp_test_values(rng, s, 1.0f));
    std::vector<float> amax(s.heads, 0.0f);
    cpu::accumulate_head_amax(s, dtype, x1.data(), amax.data());
    EXPECT_EQ(amax, ref_head_amax(s, x1.values()));
    cpu::accumulate_head_amax(s, dtype, x2.data(), amax.data());
    const auto a1 = ref_head_amax(s, x1.values());
    const auto a2 = ref_head_amax(s, x2.values());
    for (int64_t h = 0; h < s.heads; ++h) EXPECT_EQ(amax[h], std::max(a1[h], a2[h])) << h;
  }
  EXPECT_EQ(fp8_head_scale(448.0f), 1.0f);
  EXPECT_EQ(fp8_head_scale(3.5f), 3.5f / 448.0f);
  EXPECT_EQ(fp8_head_scale(0.0f), 1.0f);       // an all-zero head
  EXPECT_EQ(nvfp4_head_scale(2688.0f), 1.0f);  // 6 * 448
  EXPECT_EQ(nvfp4_head_scale(3.5f), 3.5f / 2688.0f);
  EXPECT_EQ(nvfp4_head_scale(0.0f), 1.0f);
}

// Checks quantize / dequantize / fake-quant fp8 of x with the given head scales.
void expect_fp8_matches_reference(const CacheShape& s, const Tensor& x,
                                  const std::vector<float>& head_scales) {
  const std::string context = "fp8 " + s.str() + " " + dtype_name(x.dtype);
  const int64_t n = s.elements();
  std::vector<uint32_t> want_codes(n);
  std::vector<float> want(n);
  for (int64_t e = 0; e < n; ++e) {
    const float scale = head_scales[(e / s.head_dim) % s.heads];
    const MiniFloatRef r = ref_e4m3(x.at(e) / scale);
    want_codes[e] = r.code;
    want[e] = r.value * scale;
  }
  std::vector<uint8_t> codes(n, 0x7f);
  cpu::quantize_fp8(s, x.dtype, x.data(), head_scales.data(), codes.data());
  {
    Mismatches bad(context + " codes");
    for (int64_t e = 0; e < n; ++e) {
      if (!same_code(codes[e], want_codes[e], 0x80u)) {
        bad.add(where(s, e) + " x=" + fmt(x.at(e)) + ": expected " + std::to_string(want_codes[e]) +
                ", got " + std::to_string(codes[e]));
      }
    }
  }
  Tensor fake(x.dtype, std::vector<float>(n, -1.0f));
  cpu::fake_quant_fp8(s, x.dtype, x.data(), head_scales.data(), fake.data());
  expect_values(fake, want, 0, n, s, context + " fake_quant_fp8");
  Tensor deq(x.dtype, std::vector<float>(n, -1.0f));
  cpu::dequantize_fp8(s, codes.data(), head_scales.data(), x.dtype, deq.data());
  expect_values(deq, want, 0, n, s, context + " dequantize_fp8");
}

TEST(FormulaFp8, MatchesNearestE4M3) {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 30; ++trial) {
    const DType dtype = std::array{DType::F32, DType::F16, DType::BF16}[trial % 3];
    const CacheShape s = random_fp_shape(rng, {1, 3, 8, 16, 64, 128});
    const Tensor x(dtype, fp_test_values(rng, s, 1.0f));
    std::vector<float> amax(s.heads, 0.0f);
    cpu::accumulate_head_amax(s, dtype, x.data(), amax.data());
    std::vector<float> scales(s.heads);
    for (int64_t h = 0; h < s.heads; ++h) {
      scales[h] = fp8_head_scale(amax[h]);
      EXPECT_EQ(scales[h], amax[h] > 0 ? amax[h] / 448.0f : 1.0f);
    }
    expect_fp8_matches_reference(s, x, scales);
  }
}

TEST(FormulaFp8, SaturatesOutsideTheCalibratedRange) {
  // Scales calibrated on x1, applied to x2 = 4 * x1: most of x2 exceeds 448 * scale.
  std::mt19937 rng(14);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    const CacheShape s = random_fp_shape(rng, {16, 64});
    const std::vector<float> v1 = fp_test_values(rng, s, 1.0f);
    std::vector<float> v2 = v1;
    for (float& f : v2) f *= 4.0f;
    const Tensor x1(dtype, v1), x2(dtype, v2);
    std::vector<float> amax(s.heads, 0.0f);
    cpu::accumulate_head_amax(s, dtype, x1.data(), amax.data());
    std::vector<float> scales(s.heads);
    for (int64_t h = 0; h < s.heads; ++h) scales[h] = fp8_head_scale(amax[h]);
    expect_fp8_matches_reference(s, x2, scales);
  }
}

// Checks nvfp4 against: per block of `block` head_dim elements, code
// e4m3((block_amax / 6) / head_scale), s = e4m3 value * head_scale, and each
// element the nearest E2M1 value of x / s, times s (0 when s is 0).
void expect_nvfp4_matches_reference(const CacheShape& s, const Tensor& x,
                                    const std::vector<float>& head_scales) {
  const std::string context = "nvfp4 " + s.str() + " " + dtype_name(x.dtype);
  const int64_t n = s.elements();
  const int64_t block = s.head_dim < 16 ? s.head_dim : 16;
  const int64_t blocks = n / block;
  std::vector<uint32_t> want_block_codes(blocks), want_codes(n);
  std::vector<float> want(n);
  for (int64_t b = 0; b < blocks; ++b) {
    const float head_scale = head_scales[(b * block / s.head_dim) % s.heads];
    float block_amax = 0.0f;
    for (int64_t e = b * block; e < (b + 1) * block; ++e) {
      block_amax = std::max(block_amax, std::fabs(x.at(e)));
    }
    const MiniFloatRef bs = ref_e4m3((block_amax / 6.0f) / head_scale);
    want_block_codes[b] = bs.code;
    const float scale = bs.value * head_scale;
    for (int64_t e = b * block; e < (b + 1) * block; ++e) {
      if (scale == 0.0f) {
        want_codes[e] = 0;
        want[e] = 0.0f;
      } else {
        const MiniFloatRef r = ref_e2m1(x.at(e) / scale);
        want_codes[e] = r.code;
        want[e] = r.value * scale;
      }
    }
  }
  std::vector<uint32_t> words((n + 7) / 8, 0xFFFFFFFFu);
  std::vector<uint8_t> block_codes(blocks, 0x7f);
  cpu::quantize_nvfp4(s, x.dtype, x.data(), head_scales.data(),
                      Nvfp4Buffers{words.data(), block_codes.data()});
  {
    Mismatches bad(context + " block scales");
    for (int64_t b = 0; b < blocks; ++b) {
      if (block_codes[b] != want_block_codes[b]) {
        bad.add("block " + std::to_string(b) + ": expected " + std::to_string(want_block_codes[b]) +
                ", got " + std::to_string(block_codes[b]));
      }
    }
  }
  {
    // Element e is the 4-bit code at bits [4 * (e % 8), 4 * (e % 8) + 4) of word e / 8.
    Mismatches bad(context + " codes");
    for (int64_t e = 0; e < n; ++e) {
      const uint32_t got = (words[e / 8] >> (4 * (e % 8))) & 0xfu;
      if (!same_code(got, want_codes[e], 0x8u)) {
        bad.add(where(s, e) + " x=" + fmt(x.at(e)) + ": expected " + std::to_string(want_codes[e]) +
                ", got " + std::to_string(got));
      }
    }
  }
  Tensor fake(x.dtype, std::vector<float>(n, -1.0f));
  cpu::fake_quant_nvfp4(s, x.dtype, x.data(), head_scales.data(), fake.data());
  expect_values(fake, want, 0, n, s, context + " fake_quant_nvfp4");
  Tensor deq(x.dtype, std::vector<float>(n, -1.0f));
  cpu::dequantize_nvfp4(s, ConstNvfp4Buffers{words.data(), block_codes.data()}, head_scales.data(),
                        x.dtype, deq.data());
  expect_values(deq, want, 0, n, s, context + " dequantize_nvfp4");
}

TEST(FormulaNvfp4, MatchesReference) {
  std::mt19937 rng(15);
  for (int trial = 0; trial < 30; ++trial) {
    const DType dtype = std::array{DType::F32, DType::F16, DType::BF16}[trial % 3];
    const CacheShape s = random_fp_shape(rng, {1, 4, 8, 16, 32, 64, 128});
    std::vector<float> v = fp_test_values(rng, s, 1.0f);
    // Zero a few whole blocks: their scale is 0 and they decode to zeros.
    const int64_t block = s.head_dim < 16 ? s.head_dim : 16;
    for (int64_t b = 0; b * block < s.elements(); b += 5) {
      std::fill_n(v.begin() + b * block, block, 0.0f);
    }
    const Tensor x(dtype, v);
    std::vector<float> amax(s.heads, 0.0f);
    cpu::accumulate_head_amax(s, dtype, x.data(), amax.data());
    std::vector<float> scales(s.heads);
    for (int64_t h = 0; h < s.heads; ++h) {
      scales[h] = nvfp4_head_scale(amax[h]);
      EXPECT_EQ(scales[h], amax[h] > 0 ? amax[h] / 2688.0f : 1.0f);
    }
    expect_nvfp4_matches_reference(s, x, scales);
  }
}

TEST(FormulaNvfp4, SaturatesOutsideTheCalibratedRange) {
  std::mt19937 rng(16);
  const CacheShape s{9, 2, 32};
  const std::vector<float> v1 = fp_test_values(rng, s, 1.0f);
  std::vector<float> v2 = v1;
  for (float& f : v2) f *= 1000.0f;  // block scales saturate at 448
  std::vector<float> amax(s.heads, 0.0f);
  cpu::accumulate_head_amax(s, DType::F32, v1.data(), amax.data());
  std::vector<float> scales(s.heads);
  for (int64_t h = 0; h < s.heads; ++h) scales[h] = nvfp4_head_scale(amax[h]);
  expect_nvfp4_matches_reference(s, Tensor(DType::F32, v2), scales);
}

TEST(FormulaNvfp4, HandWorkedBlock) {
  // One head, one block of 16 with amax 6 and head scale 2^-8: the block scale is
  // (6 / 6) / 2^-8 = 256 = E4M3 code 0x78 (exponent 15 - 7 = 8, mantissa 0), so
  // s = 256 * 2^-8 = 1 and each x is rounded to E2M1 directly: the midpoints
  // 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5 go to the even mantissa.
  const CacheShape s{1, 1, 16};
  const std::vector<float> v = {6, -6, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f,
                                5, -5, 0.3f,  -0.2f, 2.9f,  4.4f,  1.0f, -1.5f};
  const std::vector<float> want = {6, -6, 0, 1, 1, 2, 2, 4, 4, -4, 0.5f, 0, 3, 4, 1, -1.5f};
  const std::vector<float> scales = {0.00390625f};
  std::vector<uint32_t> words(2);
  std::vector<uint8_t> block(1);
  cpu::quantize_nvfp4(s, DType::F32, v.data(), scales.data(),
                      Nvfp4Buffers{words.data(), block.data()});
  EXPECT_EQ(block[0], 0x78);
  // Codes of the first 8: 6 -> 7, -6 -> 0xF, 0 -> 0, 1 -> 2, 1 -> 2, 2 -> 4, 2 -> 4, 4 -> 6.
  EXPECT_EQ(words[0], 0x644220F7u);
  std::vector<float> y(16);
  cpu::fake_quant_nvfp4(s, DType::F32, v.data(), scales.data(), y.data());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(y[i], want[i]) << "x=" << v[i];
}

// ===========================================================================
// Tensors large enough for the CPU reference to split them across threads.

TEST(FormulaThreads, LargeTensorsMatchReference) {
  const int saved = cpu::num_threads();
  cpu::set_num_threads(4);
  std::mt19937 rng(17);
  const CacheShape shape{300, 4, 128};
  for (const auto& gr : kGroupings) {
    for (ZeroPoint mode : kModes) {
      IntSpec spec;
      spec.grouping = gr.grouping;
      spec.role = gr.role;
      spec.bits = 4;
      spec.zero_point = mode;
      expect_int_matches_reference(spec, shape,
                                   Tensor(DType::F32, random_values(rng, shape.elements(), 0)));
    }
  }
  const Tensor x(DType::BF16, fp_test_values(rng, shape, 1.0f));
  std::vector<float> amax(shape.heads, 0.0f);
  cpu::accumulate_head_amax(shape, x.dtype, x.data(), amax.data());
  EXPECT_EQ(amax, ref_head_amax(shape, x.values()));
  std::vector<float> fp8_scales(shape.heads), nvfp4_scales(shape.heads);
  for (int64_t h = 0; h < shape.heads; ++h) {
    fp8_scales[h] = fp8_head_scale(amax[h]);
    nvfp4_scales[h] = nvfp4_head_scale(amax[h]);
  }
  expect_fp8_matches_reference(shape, x, fp8_scales);
  expect_nvfp4_matches_reference(shape, x, nvfp4_scales);
  cpu::set_num_threads(saved);
}

// ===========================================================================
// Storage costs, computed by hand.

TEST(FormulaStorage, BitsPerElement) {
  // fp8: 8 bits + one fp32 scale per head over tokens * head_dim elements.
  EXPECT_DOUBLE_EQ(fp8_storage_bits(CacheShape{1024, 8, 128}), 8.0 + 32.0 / 131072.0);
  // nvfp4: 4 bits + an 8-bit scale per 16 + the fp32 head scale.
  EXPECT_DOUBLE_EQ(nvfp4_storage_bits(CacheShape{1024, 8, 128}), 4.5 + 32.0 / 131072.0);
  // head_dim 8: the block is 8 elements, 4 + 8 / 8 + 32 / 800.
  EXPECT_DOUBLE_EQ(nvfp4_storage_bits(CacheShape{100, 2, 8}), 5.04);
  IntSpec spec;
  spec.bits = 4;
  // per-token: 4 bits + fp16 scale and zero (32 bits) per 128-value group.
  EXPECT_DOUBLE_EQ(int_storage_bits(spec, CacheShape{10, 2, 128}), 4.25);
  // kivi keys, 2 bits, G = R = 32, [100, 2, 64]: 96 tokens quantized.
  //   codes 96 * 128 * 2 = 24576, groups 3 * 128 = 384 -> 12288, residual
  //   4 * 128 * 16 = 8192; (24576 + 12288 + 8192) / 12800 = 3.52.
  spec.grouping = Grouping::Kivi;
  spec.role = Role::Key;
  spec.bits = 2;
  EXPECT_DOUBLE_EQ(int_storage_bits(spec, CacheShape{100, 2, 64}), 3.52);
  // kivi values the same shape: 96 * 2 * 2 = 384 groups of 32 channels, same cost.
  spec.role = Role::Value;
  EXPECT_DOUBLE_EQ(int_storage_bits(spec, CacheShape{100, 2, 64}), 3.52);
  // kivi values, head_dim 16 < G: groups of 16 -> 4 + 32 / 16 = 6 bits.
  spec.bits = 4;
  EXPECT_DOUBLE_EQ(int_storage_bits(spec, CacheShape{64, 1, 16}), 6.0);
}

}  // namespace
}  // namespace kvtune::kernels
