// llama.cpp's KV-cache types (ggml block types, ../shared/ENGINES.md) as the
// kernels emulate them, on blocks worked by hand from ggml's reference
// quantizers (ggml-quants.c quantize_row_*_ref, dequantize_row_*): the fp16
// block scale read back against the unrounded one quantized with, q4_0/q5_0's
// signed maximum and their trunc(x * id + 8.5) rounding points, roundf's ties
// away for q8_0, q4_1/q5_1's fp16 minimum, iq4_nl's nearest index (ties up)
// and refitted scale; fp16 and bf16 ties; the Hadamard rotation against a
// matrix built here; storage bits and the shapes refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../support/normal_tensor.h"
#include "kvtune/kernels/engine.h"

namespace kvtune::kernels {
namespace {

struct Result {
  std::vector<float> y;
  int64_t overflow = 0;
};

Result run(EngineArith arith, const std::vector<float>& x, const CacheShape& shape,
           int rotate = 0) {
  Result r{std::vector<float>(x.size()), 0};
  EngineSpec spec{arith, 1.0f};
  spec.rotate_chunk = rotate;
  r.overflow = cpu::fake_quant_engine(spec, shape, DType::F32, x.data(), r.y.data());
  return r;
}

// One block of 32: `head` then zeros, as a [1, 1, 32] tensor.
const CacheShape kBlock{1, 1, 32};
std::vector<float> block(std::vector<float> head) {
  head.resize(32, 0.0f);
  return head;
}
std::vector<float> constant(float v) {
  return std::vector<float>(32, v);
}
std::vector<float> first(const std::vector<float>& y, size_t n) {
  return {y.begin(), y.begin() + static_cast<std::ptrdiff_t>(n)};
}

TEST(GgmlFormats, Q8_0RoundsTiesAwayFromZero) {
  // amax 127 (a negative element) -> d = 1, id = 1, fp16(d) = 1: q = roundf(x).
  // 0.5, -0.5, 2.5 and 63.5 are ties: away from zero (nearest-even would
  // give 0, 0, 2, 64).
  const Result r = run(EngineArith::GgmlQ8_0,
                       block({-127.0f, 0.5f, -0.5f, 1.5f, 2.5f, 63.5f, 100.2f, -3.49f}), kBlock);
  EXPECT_EQ(first(r.y, 8),
            (std::vector<float>{-127.0f, 1.0f, -1.0f, 2.0f, 3.0f, 64.0f, 100.0f, -3.0f}));
  for (size_t i = 8; i < 32; ++i) EXPECT_EQ(r.y[i], 0.0f);
  EXPECT_EQ(r.overflow, 0);
}

TEST(GgmlFormats, Q8_0QuantizesWithTheUnroundedScaleAndReadsBackTheFp16One) {
  // amax 100: d = 100/127 = 0.7874016; fp16(d) = 1613 * 2^-11 = 0.78759765625
  // (spacing 2^-11 on [0.5, 1); 1612.6 -> 1613). id = 1/d = 1.27.
  // 99.6142 * 1.27 = 126.51 -> 127 (with 1/fp16(d) it would be 126.48 -> 126);
  // 10 * 1.27 = 12.7 -> 13.
  const float dh = 1613.0f / 2048.0f;
  const Result r = run(EngineArith::GgmlQ8_0, block({100.0f, 99.6142f, 10.0f, -10.0f}), kBlock);
  EXPECT_EQ(first(r.y, 4), (std::vector<float>{127 * dh, 127 * dh, 13 * dh, -13 * dh}));
  EXPECT_EQ(r.y[0], 100.02490234375f);
}

TEST(GgmlFormats, Q8_0ConstantAndZeroBlocks) {
  // 3 / 127 = 0.0236220; fp16: spacing 2^-16 on [2^-6, 2^-5): 1548.09 -> 1548;
  // 3 * id = 127 -> 127 * 1548 / 65536 = 2.99981689453125.
  const Result c = run(EngineArith::GgmlQ8_0, constant(3.0f), kBlock);
  for (float v : c.y) EXPECT_EQ(v, 2.99981689453125f);
  // A zero block: d = 0, id = 0 (not 1/0), q = 0: +0.
  const Result z = run(EngineArith::GgmlQ8_0, constant(0.0f), kBlock);
  for (float v : z.y) {
    EXPECT_EQ(v, 0.0f);
    EXPECT_FALSE(std::signbit(v));
  }
}

TEST(GgmlFormats, Q8_0ScaleBeyondFp16IsStoredAsInfinity) {
  // amax 1e7: d = 78740 rounds past fp16's 65504 to inf; q * inf is +-inf
  // (NaN for q = 0): all 32 values stored non-finite.
  const Result r = run(EngineArith::GgmlQ8_0, block({1e7f, 5e6f}), kBlock);
  EXPECT_EQ(r.overflow, 32);
  EXPECT_EQ(r.y[0], INFINITY);
  EXPECT_TRUE(std::isnan(r.y[5]));
}

TEST(GgmlFormats, Q4_0UsesTheSignedMaximum) {
  // Largest |x| negative: max = -8 -> d = -8 / -8 = 1, id = 1; q = min(15,
  // trunc(x + 8.5)); value (q - 8). x + 8.5 integral at 2.5, -2.5, 7.5 and
  // -0.5: 2.5 -> 11 -> 3 and -2.5 -> 6 -> -2 (half up), 7.5 -> 16 -> 15 -> 7
  // (clamped), -0.5 -> 8 -> 0; 0.49 -> 8.99 -> 0.
  const Result neg =
      run(EngineArith::GgmlQ4_0, block({-8.0f, 2.5f, -2.5f, 7.5f, -0.5f, 0.49f, 1.0f}), kBlock);
  EXPECT_EQ(first(neg.y, 7), (std::vector<float>{-8.0f, 3.0f, -2.0f, 7.0f, 0.0f, 0.0f, 1.0f}));
  // Largest |x| positive: d = 8 / -8 = -1, id = -1: 2.5 -> -2.5 + 8.5 = 6 ->
  // (6 - 8) * -1 = 2; -2.5 -> 11 -> -3; -7.5 -> 16 -> 15 -> -7.
  const Result pos = run(EngineArith::GgmlQ4_0, block({8.0f, 2.5f, -2.5f, -7.5f}), kBlock);
  EXPECT_EQ(first(pos.y, 4), (std::vector<float>{8.0f, 2.0f, -3.0f, -7.0f}));
  // Equal |x| of both signs: the first one is the maximum. {3, -3}: d =
  // -0.375, 3 -> code 0 -> 3; -3 -> 16.5 -> 15 -> 7 * -0.375 = -2.625.
  // {-3, 3}: d = 0.375, the other way round.
  EXPECT_EQ(first(run(EngineArith::GgmlQ4_0, block({3.0f, -3.0f}), kBlock).y, 2),
            (std::vector<float>{3.0f, -2.625f}));
  EXPECT_EQ(first(run(EngineArith::GgmlQ4_0, block({-3.0f, 3.0f}), kBlock).y, 2),
            (std::vector<float>{-3.0f, 2.625f}));
}

TEST(GgmlFormats, Q4_0ConstantAndZeroBlocks) {
  // Constant 5: d = -0.625 (an fp16), every x maps to code 0: (0 - 8) * -0.625 = 5.
  for (float v : run(EngineArith::GgmlQ4_0, constant(5.0f), kBlock).y) EXPECT_EQ(v, 5.0f);
  // Zero block: max = +0, d = 0 / -8 = -0, id = 0, code 8: (8 - 8) * -0 = -0.
  for (float v : run(EngineArith::GgmlQ4_0, constant(0.0f), kBlock).y) {
    EXPECT_EQ(v, 0.0f);
    EXPECT_TRUE(std::signbit(v));
  }
  // fp16 scale: max -10 -> d = 1.25, id = 0.8: 3 -> 10.9 -> 10 -> 2.5.
  EXPECT_EQ(run(EngineArith::GgmlQ4_0, block({-10.0f, 3.0f}), kBlock).y[1], 2.5f);
}

TEST(GgmlFormats, Q5_0UsesTheSignedMaximum) {
  // max -16 -> d = 1: code trunc(x + 16.5), value code - 16; 2.5 -> 19 -> 3,
  // -2.5 -> 14 -> -2, 15.5 -> 32 -> 31 -> 15, 0.4 -> 16.9 -> 0.
  const Result neg =
      run(EngineArith::GgmlQ5_0, block({-16.0f, 2.5f, -2.5f, 15.5f, 0.4f, 1.0f}), kBlock);
  EXPECT_EQ(first(neg.y, 6), (std::vector<float>{-16.0f, 3.0f, -2.0f, 15.0f, 0.0f, 1.0f}));
  // max 16 -> d = -1: 2.5 -> 14 -> 2, -2.5 -> 19 -> -3, -15.5 -> 32 -> 31 -> -15.
  const Result pos = run(EngineArith::GgmlQ5_0, block({16.0f, 2.5f, -2.5f, -15.5f}), kBlock);
  EXPECT_EQ(first(pos.y, 4), (std::vector<float>{16.0f, 2.0f, -3.0f, -15.0f}));
  // Constant 0.3: d = 0.3 / -16 = -0.01875, fp16 -1229 * 2^-16 (1228.8 -> 1229);
  // code 0: -16 * d = 1229 / 4096 = 0.300048828125.
  for (float v : run(EngineArith::GgmlQ5_0, constant(0.3f), kBlock).y) {
    EXPECT_EQ(v, 0.300048828125f);
  }
  for (float v : run(EngineArith::GgmlQ5_0, constant(0.0f), kBlock).y) {
    EXPECT_EQ(v, 0.0f);
    EXPECT_TRUE(std::signbit(v));
  }
}

TEST(GgmlFormats, Q4_1StoresTheMinimumAndScaleInFp16) {
  // min -1, max 2 (the zeros lie between): d = 3/15 = 0.2, id = 5; fp16(0.2) =
  // 1638 * 2^-13 = 0.199951171875 (1638.4 -> 1638). code trunc((x + 1) * 5 +
  // 0.5): -1 -> 0, 2 -> 15.5 -> 15, 0 -> 5.5 -> 5, 0.5 -> 8 (integral), -0.5 -> 3.
  const float d = 1638.0f / 8192.0f;
  const Result r = run(EngineArith::GgmlQ4_1, block({-1.0f, 2.0f, 0.5f, -0.5f}), kBlock);
  EXPECT_EQ(first(r.y, 5), (std::vector<float>{-1.0f, 1.999267578125f, 0.599609375f,
                                               -0.400146484375f, -0.000244140625f}));
  EXPECT_EQ(r.y[1], 15 * d - 1.0f);
  // The minimum read back in fp16: -1.0001 -> -1 (spacing 2^-10).
  EXPECT_EQ(run(EngineArith::GgmlQ4_1, block({-1.0001f, 2.0f}), kBlock).y[0], -1.0f);
  // Largest |x| negative: min -3.75, max 0: d = 0.25, id = 4. -1.125 -> 11 (integral) ->
  // -1; -1.2 -> 10.7 -> 10 -> -1.25; -3.7 -> 0.7 -> 0 -> -3.75.
  const Result neg = run(EngineArith::GgmlQ4_1, block({-3.75f, -1.125f, -1.2f, -3.7f}), kBlock);
  EXPECT_EQ(first(neg.y, 5), (std::vector<float>{-3.75f, -1.0f, -1.25f, -3.75f, 0.0f}));
  // Constant 0.7: d = 0, id = 0, code 0: fp16(0.7) = 1434 * 2^-11 = 0.7001953125.
  for (float v : run(EngineArith::GgmlQ4_1, constant(0.7f), kBlock).y) EXPECT_EQ(v, 0.7001953125f);
  for (float v : run(EngineArith::GgmlQ4_1, constant(0.0f), kBlock).y) EXPECT_EQ(v, 0.0f);
}

TEST(GgmlFormats, Q5_1StoresTheMinimumAndScaleInFp16) {
  // min -3.875, max 0: d = 3.875 / 31 = 0.125, id = 8. -1.9375 -> 15.5 + 0.5 =
  // 16 (integral) -> 2 - 3.875 = -1.875; -1.95 -> 15.9 -> 15 -> -2; 0 -> 31 -> 0.
  const Result r = run(EngineArith::GgmlQ5_1, block({-3.875f, -1.9375f, -1.95f}), kBlock);
  EXPECT_EQ(first(r.y, 4), (std::vector<float>{-3.875f, -1.875f, -2.0f, 0.0f}));
  // Constant -2.3: fp16(-2.3) = -1178 * 2^-9 = -2.30078125 (1177.6 -> 1178).
  for (float v : run(EngineArith::GgmlQ5_1, constant(-2.3f), kBlock).y) {
    EXPECT_EQ(v, -2.30078125f);
  }
  for (float v : run(EngineArith::GgmlQ5_1, constant(0.0f), kBlock).y) EXPECT_EQ(v, 0.0f);
}

TEST(GgmlFormats, Iq4NlRefitsTheScale) {
  // max -127 -> d0 = -127 / -127 = 1, id = 1: 100 -> nearest of {89, 113}
  // (2 * 100 = 200 < 89 + 113) -> 89; the zeros -> 1 (no zero level). With w =
  // x^2 (0 for the zeros): sum w K x = 127^4 + 89 * 10^6 = 349144641, sum w K^2 =
  // 127^4 + 89^2 * 10^4 = 339354641 (as float sums 349144640 / 339354624):
  // d = 1.02885, fp16: 1053.54 / 1024 -> 1054 / 1024 = 1.029296875 (d0 would
  // give 1: values -127, 89, 1).
  const float d = 1054.0f / 1024.0f;
  const Result r = run(EngineArith::GgmlIq4Nl, block({-127.0f, 100.0f}), kBlock);
  EXPECT_EQ(first(r.y, 3), (std::vector<float>{-127 * d, 89 * d, d}));
  EXPECT_EQ(r.y[0], -130.720703125f);
  // Largest |x| positive: d0 = 127 / -127 = -1: 127 -> index 0 (-127); zeros ->
  // 2 * -0 >= -10 + 1 -> index 8 (1); d = -1: values 127 and -1.
  const Result pos = run(EngineArith::GgmlIq4Nl, block({127.0f}), kBlock);
  EXPECT_EQ(first(pos.y, 2), (std::vector<float>{127.0f, -1.0f}));
  // A midpoint goes up: -4.5 lies halfway between -10 and 1 -> 1 (d stays 1 in fp16).
  EXPECT_EQ(first(run(EngineArith::GgmlIq4Nl, block({-127.0f, -4.5f, -4.51f}), kBlock).y, 3),
            (std::vector<float>{-127.0f, 1.0f, -10.0f}));
}

// Every level boundary, at it and an ulp either side, and the edges of the
// buckets the fast path looks levels up in (multiples of 8 +- 4, up to +-124):
// in blocks led by -127, so that the first scale is 1 and x itself is
// compared with the midpoints. Each value's level (its output over the
// block's scale) is the count of midpoints K[i-1] + K[i] <= 2x, counted here.
TEST(GgmlFormats, Iq4NlLevelsAtEveryBoundary) {
  const float k[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  std::vector<float> values;
  const auto around = [&](float v) {
    for (const float u : {std::nextafter(v, -INFINITY), v, std::nextafter(v, INFINITY)}) {
      values.push_back(u);
      values.push_back(-u);
    }
  };
  for (int i = 1; i < 16; ++i) around((k[i - 1] + k[i]) / 2.0f);
  for (int e = 4; e <= 124; e += 8) around(static_cast<float>(e));
  for (const float v : {0.0f, 125.0f, 126.5f, 63.99f}) around(v);
  std::vector<float> x;
  for (size_t i = 0; i < values.size(); i += 31) {
    x.push_back(-127.0f);
    for (size_t j = i; j < i + 31; ++j) x.push_back(j < values.size() ? values[j] : 0.0f);
  }
  x.resize(32 * 32, 0.5f);  // sixteen-block batches
  const CacheShape shape{32, 1, 32};
  const Result r = run(EngineArith::GgmlIq4Nl, x, shape);
  for (size_t b = 0; b < x.size(); b += 32) {
    std::vector<float> want(x.begin() + static_cast<std::ptrdiff_t>(b),
                            x.begin() + static_cast<std::ptrdiff_t>(b + 32));
    ggml_iq4_nl(want.data());
    ASSERT_EQ(0, std::memcmp(want.data(), r.y.data() + b, sizeof(float) * 32))
        << "block " << b / 32;
    if (x[b] != -127.0f) continue;
    const float scale = r.y[b] / -127.0f;
    for (size_t j = 1; j < 32; ++j) {
      const float v = x[b + j];
      int level = 0;
      for (int i = 1; i < 16; ++i) level += 2.0f * v >= k[i - 1] + k[i] ? 1 : 0;
      EXPECT_EQ(r.y[b + j], k[level] * scale) << "x = " << v;
    }
  }
}

TEST(GgmlFormats, Iq4NlConstantAndZeroBlocks) {
  // Constant 2: d0 = 2 / -127, every x -> index 0 (-127): d = sum(4 * -127 * 2)
  // / sum(4 * 127^2) = -2/127 = -0.0157480; fp16: 1032.06 * 2^-16 -> -1032 / 65536;
  // value -127 * d = 131064 / 65536 = 1.9998779296875.
  for (float v : run(EngineArith::GgmlIq4Nl, constant(2.0f), kBlock).y) {
    EXPECT_EQ(v, 1.9998779296875f);
  }
  // amax < 1e-15: scale 0 and index 0, read back as 0 * -127 = -0.
  for (const float c : {0.0f, 1e-16f}) {
    for (float v : run(EngineArith::GgmlIq4Nl, constant(c), kBlock).y) {
      EXPECT_EQ(v, 0.0f);
      EXPECT_TRUE(std::signbit(v));
    }
  }
}

TEST(GgmlFormats, Fp16AndBf16RoundTiesToEven) {
  const CacheShape s{1, 1, 7};
  // fp16: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 -> 1; 1 + 3 * 2^-11 ->
  // 1 + 2^-9 (even); 65519 -> 65504; 65520 -> inf (a value the cache stores
  // non-finite); 2^-25 -> 0 and 3 * 2^-25 -> 2^-23 (subnormal ties).
  const std::vector<float> x = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65519.0f, 65520.0f,
                                0x1p-25f,        3 * 0x1p-25f,        -0.1f};
  const Result h = run(EngineArith::GgmlF16, x, s);
  EXPECT_EQ(h.y, (std::vector<float>{1.0f, 1.0f + 0x1p-9f, 65504.0f, INFINITY, 0.0f, 0x1p-23f,
                                     -0.0999755859375f}));
  EXPECT_EQ(h.overflow, 1);
  // bf16 (ggml's GGML_FP32_TO_BF16): 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6;
  // 65520 -> 65536; subnormals are kept, not flushed: 2^-130 stays.
  const std::vector<float> xb = {
      1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 65520.0f, 0x1p-130f, -0.1f, 3.0e38f, 1.0f};
  const Result b = run(EngineArith::GgmlBf16, xb, s);
  EXPECT_EQ(b.y, (std::vector<float>{1.0f, 1.0f + 0x1p-6f, 65536.0f, 0x1p-130f, -0.10009765625f,
                                     0x1.c4p+127f, 1.0f}));
  EXPECT_EQ(b.overflow, 0);
  // f32: the identity.
  EXPECT_EQ(run(EngineArith::GgmlF32, x, s).y, x);
}

TEST(GgmlFormats, TensorDtypes) {
  // The q4_1 block of Q4_1StoresTheMinimumAndScaleInFp16 (inputs exact in
  // fp16 and bf16), read back rounded to the tensor's dtype: fp16 1.999267578125
  // = 2047.25 * 2^-10 -> 1.9990234375; bf16 -> 2, 0.599609375 -> 153.5 * 2^-8 ->
  // 154 * 2^-8 (even) = 0.6015625, -0.400146484375 -> -205 * 2^-9.
  const std::vector<float> x = block({-1.0f, 2.0f, 0.5f, -0.5f});
  std::vector<uint16_t> xh, xb, yh(32), yb(32);
  for (float v : x) {
    xh.push_back(float_to_half(v));
    xb.push_back(float_to_bf16(v));
  }
  const EngineSpec spec{EngineArith::GgmlQ4_1, 1.0f};
  cpu::fake_quant_engine(spec, kBlock, DType::F16, xh.data(), yh.data());
  cpu::fake_quant_engine(spec, kBlock, DType::BF16, xb.data(), yb.data());
  const std::vector<float> want_h = {-1.0f, 1.9990234375f, 0.599609375f, -0.400146484375f,
                                     -0.000244140625f};
  const std::vector<float> want_b = {-1.0f, 2.0f, 0.6015625f, -0.400390625f, -0.000244140625f};
  for (size_t i = 0; i < want_h.size(); ++i) {
    EXPECT_EQ(half_to_float(yh[i]), want_h[i]) << i;
    EXPECT_EQ(bf16_to_float(yb[i]), want_b[i]) << i;
  }
  // The same in place.
  cpu::fake_quant_engine(spec, kBlock, DType::F16, xh.data(), xh.data());
  EXPECT_EQ(xh, yh);
}

TEST(GgmlFormats, BlocksAreConsecutiveElementsOfATokenRow) {
  // head_dim 16, 2 heads: one block spans both heads of a token. Token 0:
  // head 0 holds -8 (the block's maximum), head 1 holds 2.5 -> q4_0 d = 1 ->
  // 3. Token 1 is its own block: max 2.5 -> d = -0.3125 -> 2.5.
  std::vector<float> x(64, 0.0f);
  x[0] = -8.0f;
  x[16] = 2.5f;
  x[48] = 2.5f;
  const Result r = run(EngineArith::GgmlQ4_0, x, {2, 2, 16});
  EXPECT_EQ(r.y[0], -8.0f);
  EXPECT_EQ(r.y[16], 3.0f);
  EXPECT_EQ(r.y[48], 2.5f);
}

// H_n / sqrt(n) (Sylvester: H_2m = [[H, H], [H, -H]]), built here in double.
std::vector<double> hadamard(int n) {
  std::vector<double> h(static_cast<size_t>(n * n), 0.0);
  h[0] = 1.0 / std::sqrt(static_cast<double>(n));
  for (int s = 1; s < n; s *= 2) {
    for (int i = 0; i < s; ++i) {
      for (int j = 0; j < s; ++j) {
        const double v = h[static_cast<size_t>(i * n + j)];
        h[static_cast<size_t>((i + s) * n + j)] = v;
        h[static_cast<size_t>(i * n + j + s)] = v;
        h[static_cast<size_t>((i + s) * n + j + s)] = -v;
      }
    }
  }
  return h;
}

// Each n-chunk of x multiplied by H (in double, rounded to float).
std::vector<float> rotate(const std::vector<float>& x, int n) {
  const std::vector<double> h = hadamard(n);
  std::vector<float> y(x.size());
  for (size_t c = 0; c < x.size(); c += static_cast<size_t>(n)) {
    for (int i = 0; i < n; ++i) {
      double s = 0.0;
      for (int k = 0; k < n; ++k) s += h[static_cast<size_t>(i * n + k)] * x[c + k];
      y[c + static_cast<size_t>(i)] = static_cast<float>(s);
    }
  }
  return y;
}

TEST(GgmlFormats, RotationIsHadamardQuantizeAndBack) {
  // Chunks of 64 (1/sqrt(64) = 1/8): choose the rotated values z (halves of a
  // 64-chunk each with amax 127, so q8_0's d = 1 and q = roundf(z)) and store
  // x = H z, exact in float. The cache then holds H^T round(z), exact too.
  const CacheShape shape{2, 2, 64};
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> halves(-40, 40);
  std::vector<float> z(256);
  for (float& v : z) v = static_cast<float>(halves(rng)) * 0.5f;
  for (size_t c = 0; c < z.size(); c += 32) z[c + 3] = c % 64 == 0 ? 127.0f : -127.0f;
  const std::vector<float> x = rotate(z, 64);
  ASSERT_EQ(rotate(x, 64), z);  // H is its own inverse
  std::vector<float> q(z.size());
  for (size_t i = 0; i < z.size(); ++i) q[i] = std::round(z[i]);  // ties away, like roundf
  const Result r = run(EngineArith::GgmlQ8_0, x, shape, 64);
  EXPECT_EQ(r.y, rotate(q, 64));
  // Without the rotation the cache holds q8_0 of x itself.
  EXPECT_NE(run(EngineArith::GgmlQ8_0, x, shape).y, r.y);
}

TEST(GgmlFormats, RotationOfRealisticDataMatchesTheExplicitPipeline) {
  // Random heads of 128: rotate with this file's matrix, quantize unrotated,
  // rotate back; the kernel's butterflies round differently from the matrix
  // product only in the last bit, far below a quantization step.
  const CacheShape shape{8, 4, 128};
  const std::vector<float> x = testing::normal_tensor(shape, 11);
  for (const EngineArith arith : {EngineArith::GgmlQ4_0, EngineArith::GgmlIq4Nl}) {
    for (const int n : {64, 128}) {
      const std::vector<float> direct = rotate(run(arith, rotate(x, n), shape).y, n);
      const Result r = run(arith, x, shape, n);
      for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(r.y[i], direct[i], 1e-5f) << i;
    }
  }
}

TEST(GgmlFormats, RotatedFp16StaysWithinFp16Rounding) {
  // f16 has no block scale: rotating around it only moves where the fp16
  // rounding happens, |H^T fp16(H x) - x| <= 2^-11 * max|H x| * sqrt(n).
  const CacheShape shape{4, 2, 64};
  const std::vector<float> x = testing::normal_tensor(shape, 3);
  const Result plain = run(EngineArith::GgmlF16, x, shape);
  const Result rotated = run(EngineArith::GgmlF16, x, shape, 64);
  float max_rotated = 0.0f;
  for (float v : rotate(x, 64)) max_rotated = std::max(max_rotated, std::fabs(v));
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LE(std::fabs(plain.y[i] - x[i]), std::fabs(x[i]) * 0x1p-11f);
    EXPECT_LE(std::fabs(rotated.y[i] - x[i]), max_rotated * 0x1p-11f * 8.0f);
  }
  EXPECT_NE(plain.y, rotated.y);
}

TEST(GgmlFormats, NoRotationByDefault) {
  EXPECT_EQ(EngineSpec{}.rotate_chunk, 0);
  const std::vector<float> x = block({-127.0f, 100.0f, 3.3f});
  std::vector<float> y(32);
  cpu::fake_quant_engine({EngineArith::GgmlIq4Nl, 1.0f}, kBlock, DType::F32, x.data(), y.data());
  // What the cache holds without a rotation, not with one.
  EXPECT_EQ(y, run(EngineArith::GgmlIq4Nl, x, kBlock, 0).y);
  EXPECT_NE(y, run(EngineArith::GgmlIq4Nl, x, kBlock, 32).y);
}

TEST(GgmlFormats, LlamaCppRotationChunks) {
  // Keys: the largest power of two >= 64 dividing head_dim; values: 64; none
  // unless head_dim % 64 == 0, and none for the unquantized types.
  EXPECT_EQ(ggml_rotation_chunk(Role::Key, 64), 64);
  EXPECT_EQ(ggml_rotation_chunk(Role::Key, 128), 128);
  EXPECT_EQ(ggml_rotation_chunk(Role::Key, 192), 64);
  EXPECT_EQ(ggml_rotation_chunk(Role::Key, 256), 256);
  EXPECT_EQ(ggml_rotation_chunk(Role::Key, 576), 64);
  EXPECT_EQ(ggml_rotation_chunk(Role::Key, 96), 0);
  EXPECT_EQ(ggml_rotation_chunk(Role::Value, 128), 64);
  EXPECT_EQ(ggml_rotation_chunk(Role::Value, 80), 0);
  EXPECT_EQ(ggml_rotation_chunk(EngineArith::GgmlQ4_0, Role::Key, 128), 128);
  EXPECT_EQ(ggml_rotation_chunk(EngineArith::GgmlF16, Role::Key, 128), 0);
  EXPECT_EQ(ggml_rotation_chunk(EngineArith::E4m3Scaled, Role::Key, 128), 0);
}

// KVTUNE_CPU_NO_AVX512 keeps the kernels to AVX2 (ctest runs these tests both ways).
TEST(GgmlFormats, VectorIsaFollowsTheMachineAndTheEnvironment) {
  const std::string isa = cpu::vector_isa();
  const char* off = std::getenv("KVTUNE_CPU_NO_AVX512");
  if (off != nullptr && *off != '\0' && std::string(off) != "0") {
    EXPECT_NE(isa, "avx512");
  } else {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    EXPECT_EQ(isa, __builtin_cpu_supports("avx512f") ? "avx512"
                   : __builtin_cpu_supports("avx2")  ? "avx2"
                                                     : "baseline");
#endif
  }
}

TEST(GgmlFormats, StorageBits) {
  const CacheShape s{4, 2, 64};
  const auto bits = [&](EngineArith a) { return engine_storage_bits({a, 1.0f}, s); };
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlQ8_0), 8.5);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlQ4_0), 4.5);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlQ4_1), 5.0);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlQ5_0), 5.5);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlQ5_1), 6.0);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlIq4Nl), 4.5);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlF16), 16.0);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlBf16), 16.0);
  EXPECT_DOUBLE_EQ(bits(EngineArith::GgmlF32), 32.0);
  EngineSpec rotated{EngineArith::GgmlQ4_0, 1.0f};
  rotated.rotate_chunk = 64;
  EXPECT_DOUBLE_EQ(engine_storage_bits(rotated, s), 4.5);
}

void expect_refused(const EngineSpec& spec, const CacheShape& shape,
                    const std::vector<std::string>& mentions) {
  std::vector<float> x(static_cast<size_t>(shape.elements()), 1.0f), y(x.size());
  try {
    cpu::fake_quant_engine(spec, shape, DType::F32, x.data(), y.data());
    FAIL() << "accepted " << shape.str();
  } catch (const std::invalid_argument& e) {
    for (const std::string& m : mentions) {
      EXPECT_NE(std::string(e.what()).find(m), std::string::npos) << e.what();
    }
  }
}

TEST(GgmlFormats, RefusesShapesAndRotationsItCannotRun) {
  // Blocks of 32 must not straddle tokens: heads x head_dim a multiple of 32.
  expect_refused({EngineArith::GgmlQ8_0, 1.0f}, {2, 3, 8}, {"heads (3)", "head_dim (8)", "24"});
  expect_refused({EngineArith::GgmlIq4Nl, 1.0f}, {2, 1, 16}, {"16"});
  std::vector<float> x(64, 1.0f), y(64);
  EXPECT_NO_THROW(cpu::fake_quant_engine({EngineArith::GgmlQ4_0, 1.0f}, {2, 2, 16}, DType::F32,
                                         x.data(), y.data()));
  // The unquantized types take any shape.
  EXPECT_NO_THROW(cpu::fake_quant_engine({EngineArith::GgmlF16, 1.0f}, {3, 1, 5}, DType::F32,
                                         x.data(), y.data()));
  const auto spec = [](EngineArith a, int n) {
    EngineSpec s{a, 1.0f};
    s.rotate_chunk = n;
    return s;
  };
  expect_refused(spec(EngineArith::E4m3Scaled, 64), {1, 1, 64}, {"llama.cpp", "64"});
  expect_refused(spec(EngineArith::GgmlQ8_0, 48), {1, 1, 96}, {"48", "power of two"});
  expect_refused(spec(EngineArith::GgmlQ8_0, 128), {1, 1, 64}, {"128", "head_dim 64"});
  expect_refused(spec(EngineArith::GgmlQ8_0, 1), {1, 1, 64}, {"rotate_chunk 1"});
  expect_refused(spec(EngineArith::GgmlQ8_0, 2048), {1, 1, 2048}, {"2048", "1024"});
  EXPECT_NO_THROW(cpu::fake_quant_engine(spec(EngineArith::GgmlQ8_0, 4), {2, 1, 32}, DType::F32,
                                         x.data(), y.data()));
}

// Data that reaches every path: tokens of normal values at scales from
// subnormal (block scales whose reciprocal overflows) to beyond fp16 (scales
// stored as inf), half-integers (rounding ties), small integers, zeros.
template <class T>
std::vector<T> varied(const CacheShape& shape, uint32_t seed, float max_scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> small(-12, 12);
  const int64_t row = shape.heads * shape.head_dim;
  std::vector<T> x(static_cast<size_t>(shape.elements()));
  for (int64_t t = 0; t < shape.tokens; ++t) {
    const int kind = static_cast<int>(rng() % 5);
    const float scale = std::min(max_scale, std::pow(10.0f, static_cast<float>(rng() % 85) - 42));
    for (int64_t i = 0; i < row; ++i) {
      float v = normal(rng) * scale;
      if (kind == 1) v = static_cast<float>(small(rng)) * 0.5f;
      if (kind == 2) v = static_cast<float>(small(rng));
      if (kind == 3) v = i % 7 == 0 ? normal(rng) : 0.0f;
      x[static_cast<size_t>(t * row + i)] = from_float<T>(v);
    }
  }
  return x;
}

// The CPU reference's sixteen-block vector paths give, bit for bit, what the
// scalar per-unit definition shared with CUDA (ggml_fake_quant_unit) gives,
// with the same count of values stored non-finite: every type, dtype,
// rotation, short batches, in place.
template <class T>
void expect_cpu_matches_unit_math(DType dtype, float max_scale) {
  const EngineArith ariths[] = {
      EngineArith::GgmlQ8_0, EngineArith::GgmlQ4_0, EngineArith::GgmlQ4_1,
      EngineArith::GgmlQ5_0, EngineArith::GgmlQ5_1, EngineArith::GgmlIq4Nl,
      EngineArith::GgmlF16,  EngineArith::GgmlBf16, EngineArith::GgmlF32};
  const CacheShape shapes[] = {{37, 8, 128}, {5, 3, 32}, {9, 2, 16}, {3, 1, 1024}, {6, 4, 192}};
  uint32_t seed = 40;
  std::vector<float> buf(kGgmlMaxRotation);
  for (const CacheShape& shape : shapes) {
    const auto x = varied<T>(shape, seed++, max_scale);
    for (const EngineArith arith : ariths) {
      for (const int chunk : {0, 8, 64, 128, 1024}) {
        EngineSpec spec{arith, 1.0f};
        spec.rotate_chunk = chunk;
        try {
          validate_engine(spec, shape);
        } catch (const std::invalid_argument&) {
          continue;
        }
        SCOPED_TRACE(shape.str() + " arith " + std::to_string(static_cast<int>(arith)) + " chunk " +
                     std::to_string(chunk));
        const int64_t unit = engine_unit_size(arith, chunk, shape.head_dim);
        std::vector<T> want(x.size());
        int64_t want_overflow = 0;
        for (int64_t u = 0; u < shape.elements(); u += unit) {
          int64_t first_bad = -1;
          want_overflow += ggml_fake_quant_unit(arith, chunk, x.data() + u, want.data() + u, unit,
                                                buf.data(), &first_bad);
          ASSERT_EQ(first_bad, -1);
        }
        std::vector<T> got(x.size());
        EXPECT_EQ(cpu::fake_quant_engine(spec, shape, dtype, x.data(), got.data()), want_overflow);
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), x.size() * sizeof(T)));
        std::vector<T> inplace = x;
        cpu::fake_quant_engine(spec, shape, dtype, inplace.data(), inplace.data());
        ASSERT_EQ(0, std::memcmp(inplace.data(), want.data(), x.size() * sizeof(T)));
      }
    }
  }
}

// Finite blocks whose range passes the largest float: q4_1/q5_1's scale is
// inf and its reciprocal 0, so (x - min) * 0 is NaN for the top element,
// whose code ggml_code takes as 0; the vector path stores what the scalar does.
TEST(GgmlFormats, BlocksWhoseRangePassesTheLargestFloat) {
  std::vector<float> x(16 * 32, 1.0f);
  for (size_t b = 0; b < 16; ++b) {
    x[b * 32] = 3e38f;
    x[b * 32 + 1 + b] = -3e38f;
  }
  std::vector<float> buf(kGgmlMaxRotation);
  for (const EngineArith arith :
       {EngineArith::GgmlQ8_0, EngineArith::GgmlQ4_0, EngineArith::GgmlQ4_1, EngineArith::GgmlQ5_0,
        EngineArith::GgmlQ5_1, EngineArith::GgmlIq4Nl}) {
    std::vector<float> want(x.size());
    int64_t want_overflow = 0;
    for (size_t u = 0; u < x.size(); u += 32) {
      want_overflow +=
          ggml_fake_quant_unit(arith, 0, x.data() + u, want.data() + u, 32, buf.data(), nullptr);
    }
    const Result r = run(arith, x, {16, 1, 32});
    EXPECT_EQ(r.overflow, want_overflow) << static_cast<int>(arith);
    EXPECT_EQ(0, std::memcmp(r.y.data(), want.data(), x.size() * sizeof(float)))
        << static_cast<int>(arith);
  }
}

TEST(GgmlFormats, CpuMatchesTheSharedUnitMath) {
  expect_cpu_matches_unit_math<float>(DType::F32, 1e30f);
  expect_cpu_matches_unit_math<BFloat16>(DType::BF16, 1e30f);
  expect_cpu_matches_unit_math<Half>(DType::F16, 1000.0f);
}

TEST(GgmlFormats, NonFiniteInputIsReported) {
  std::vector<float> x(128, 1.0f), y(128);
  x[70] = INFINITY;
  for (const int n : {0, 64}) {
    EngineSpec spec{EngineArith::GgmlIq4Nl, 1.0f};
    spec.rotate_chunk = n;
    try {
      cpu::fake_quant_engine(spec, {1, 2, 64}, DType::F32, x.data(), y.data());
      FAIL() << "non-finite input accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("head 1, channel 6"), std::string::npos) << e.what();
    }
  }
  x[70] = NAN;
  EXPECT_THROW(cpu::fake_quant_engine({EngineArith::GgmlF16, 1.0f}, {1, 2, 64}, DType::F32,
                                      x.data(), y.data()),
               std::invalid_argument);
}

}  // namespace
}  // namespace kvtune::kernels
