// The KV formats of released engines (../shared/ENGINES.md) as the kernels
// emulate them, on blocks worked by hand: saturation and NaN, the scale
// floors, E2M1 ties (nearest-even for NVFP4, upward for SGLang's midpoint
// count), truncation versus rounding, the shape rules and storage cost.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "kvtune/kernels/engine.h"

namespace kvtune::kernels {
namespace {

struct Result {
  std::vector<float> y;
  int64_t overflow;
};

Result run(EngineArith arith, float scale, const CacheShape& shape, const std::vector<float>& x) {
  Result r{std::vector<float>(x.size()), 0};
  r.overflow = cpu::fake_quant_engine({arith, scale}, shape, DType::F32, x.data(), r.y.data());
  return r;
}

// A [1, 1, n] tensor: the per-layer-scale formats act element by element.
CacheShape row(size_t n) {
  return {1, 1, static_cast<int64_t>(n)};
}

TEST(EngineFormats, VllmFp8SaturatesAndRoundsTiesToEven) {
  // scale 0.5: x / 0.5 = {2, 600, -500, 0.2, 2000, 17, 19, 1.5 * 2^-9}.
  // 600, -500 and 2000 saturate at +-448 (-> +-224); 0.2 has spacing 2^-6
  // -> 13 * 2^-6 = 0.203125; 17 and 19 lie halfway on spacing 2 and go to
  // the even 16 and 20; 1.5 * 2^-9 is a subnormal tie and goes to 2 * 2^-9.
  const std::vector<float> x = {1.0f, 300.0f, -250.0f, 0.1f, 1000.0f, 8.5f, 9.5f, 0.00146484375f};
  const Result r = run(EngineArith::E4m3Scaled, 0.5f, row(x.size()), x);
  const std::vector<float> want = {1.0f,   224.0f, -224.0f, 0.1015625f,
                                   224.0f, 8.0f,   10.0f,   0.001953125f};
  EXPECT_EQ(r.y, want);
  EXPECT_EQ(r.overflow, 0);
}

TEST(EngineFormats, VllmFp8E5m2SaturatesAt57344) {
  // Spacing 1 on [4, 8): 5.5 -> 6, 4.5 -> 4 (ties to even); 0.3 on spacing
  // 2^-4 -> 0.3125; 3 * 2^-17 is a tie between subnormals 1 and 2 of 2^-16.
  const std::vector<float> x = {60000.0f, -70000.0f, 5.0f, 5.5f, 4.5f, 0.3f, 2.288818359375e-05f};
  const Result r = run(EngineArith::E5m2Scaled, 1.0f, row(x.size()), x);
  const std::vector<float> want = {57344.0f, -57344.0f,        5.0f, 6.0f, 4.0f,
                                   0.3125f,  3.0517578125e-05f};
  EXPECT_EQ(r.y, want);
}

TEST(EngineFormats, SglangFp8StoresNanBeyondTheRangeAndCountsIt) {
  // PyTorch's cast: 450 -> 448; 464 is the tie between 448 and the NaN
  // pattern and goes to the even 448; anything above 464 is NaN.
  const std::vector<float> x = {450.0f, 464.0f, 465.0f, -1000.0f, 3.0f};
  const Result r = run(EngineArith::E4m3Cast, 1.0f, row(x.size()), x);
  EXPECT_EQ(r.y[0], 448.0f);
  EXPECT_EQ(r.y[1], 448.0f);
  EXPECT_TRUE(std::isnan(r.y[2]));
  EXPECT_TRUE(std::isnan(r.y[3]));
  EXPECT_EQ(r.y[4], 3.0f);
  EXPECT_EQ(r.overflow, 2);
  // The same values with a scale of 4 fit: 1000 / 4 = 250 -> 256 (spacing 32).
  const Result scaled = run(EngineArith::E4m3Cast, 4.0f, row(x.size()), x);
  EXPECT_EQ(scaled.overflow, 0);
  EXPECT_EQ(scaled.y[3], -1024.0f);
  // vLLM's saturating fp8 keeps them at 448.
  EXPECT_EQ(run(EngineArith::E4m3Scaled, 1.0f, row(x.size()), x).y[3], -448.0f);
}

TEST(EngineFormats, SglangFp8E5m2OverflowsToInfinity) {
  // 61440 is the tie between 57344 and 65536 (which is inf): it goes to the
  // even one, inf; 61000 rounds down to 57344.
  const std::vector<float> x = {61000.0f, 61440.0f, -1e6f};
  const Result r = run(EngineArith::E5m2Cast, 1.0f, row(x.size()), x);
  EXPECT_EQ(r.y[0], 57344.0f);
  EXPECT_EQ(r.y[1], INFINITY);
  EXPECT_EQ(r.y[2], -INFINITY);
  EXPECT_EQ(r.overflow, 2);
}

TEST(EngineFormats, SglangFp8DividesInTheModelDtype) {
  // bf16 tensors: the scale 1.97 is rounded to bf16 (1.96875) and x / scale
  // is a bf16 op. x = 2.09375: 2.09375 / 1.96875 = 1.06349 lies above E4M3's
  // midpoint 1.0625 but rounds to it in bf16, a tie that goes to the even
  // 1.0: the cache holds 1.0 * 1.96875.
  const uint16_t x = float_to_bf16(2.09375f);
  uint16_t y = 0;
  cpu::fake_quant_engine({EngineArith::E4m3Cast, 1.97f}, row(1), DType::BF16, &x, &y);
  EXPECT_EQ(bf16_to_float(y), 1.96875f);
  // In float32 it stays above the midpoint: 1.125 * 1.97.
  float xf = 2.09375f, yf = 0;
  cpu::fake_quant_engine({EngineArith::E4m3Cast, 1.97f}, row(1), DType::F32, &xf, &yf);
  EXPECT_EQ(yf, 1.125f * 1.97f);
}

TEST(EngineFormats, Fp8PerTokenHeadScalesEachHeadAndFloorsTheScale) {
  // Head 0: amax 28 -> s = 28 / 448 = 2^-4; x / s = {448, 50, 100, 0.2,
  // -448}: 50 and 100 are ties (spacing 4 and 8) -> 48 and 96 (even).
  // Head 1: amax 1e-5 -> 1e-5 / 448 is below the floor, s = 1e-6; x / s =
  // {10, 3.3} -> {10, 3.25} (spacing 0.25), not the {448, 144} of an unfloored scale.
  const std::vector<float> x = {28.0f, 3.125f,  6.25f, 0.0125f, -28.0f,
                                1e-5f, 3.3e-6f, 0.0f,  0.0f,    0.0f};
  const Result r = run(EngineArith::Fp8PerTokenHead, 1.0f, {1, 2, 5}, x);
  EXPECT_EQ(r.y[0], 28.0f);
  EXPECT_EQ(r.y[1], 3.0f);
  EXPECT_EQ(r.y[2], 6.0f);
  EXPECT_EQ(r.y[3], 0.0126953125f);
  EXPECT_EQ(r.y[4], -28.0f);
  EXPECT_FLOAT_EQ(r.y[5], 1e-5f);
  EXPECT_FLOAT_EQ(r.y[6], 3.25e-6f);
  EXPECT_EQ(r.y[7], 0.0f);
}

TEST(EngineFormats, Int8PerTokenHeadTruncatesTowardZero) {
  // amax 15.875 -> s = 0.125: 1.33 * (1 / s) = 10.64 truncates to 10
  // (rounding would give 11), -10.64 to -10, 0.48 to 0. Head 1: the 1e-6
  // floor, 2.5 -> 2.
  const std::vector<float> x = {15.875f, -15.875f, 1.33f, -1.33f, 0.06f,
                                1e-5f,   2.5e-6f,  0.0f,  0.0f,   0.0f};
  const Result r = run(EngineArith::Int8PerTokenHead, 1.0f, {1, 2, 5}, x);
  const std::vector<float> head0(r.y.begin(), r.y.begin() + 5);
  EXPECT_EQ(head0, (std::vector<float>{15.875f, -15.875f, 1.25f, -1.25f, 0.0f}));
  EXPECT_FLOAT_EQ(r.y[5], 10.0f * 1e-6f);
  EXPECT_FLOAT_EQ(r.y[6], 2.0f * 1e-6f);
  // vLLM multiplies by the reciprocal of s = 600 / 127: 600 * (1 / s) is
  // 126.99999 in float32 and truncates to 126, so the amax itself comes back
  // as 126 * s (division would give exactly 127).
  const float big = 600.0f;
  float back = 0;
  cpu::fake_quant_engine({EngineArith::Int8PerTokenHead, 1.0f}, row(1), DType::F32, &big, &back);
  EXPECT_EQ(back, 126.0f * (600.0f / 127.0f));
}

std::vector<float> block16(std::vector<float> head) {
  head.resize(16, 0.0f);
  return head;
}

TEST(EngineFormats, VllmNvfp4UsesTheLayerScaleAndRoundsTiesToEven) {
  // k_scale 0.5 -> g = 2. Head 0: amax 3 -> SF = e4m3(2 * 3 / 6) = 1, block
  // scale SF / g = 0.5; x / 0.5 = {6, 2.5, 0.75, 0.25, 4.5, -5}: the ties 2.5,
  // 0.75, 0.25 and -5 go to the even 2, 1, 0 and -4. Head 1: amax 3.3 ->
  // 2 * 3.3 / 6 = 1.1 -> SF = 1.125, block scale 0.5625; 3.3 / 0.5625 =
  // 5.87 -> 6. Head 2: zeros.
  std::vector<float> x = block16({3.0f, 1.25f, 0.375f, 0.125f, 2.25f, -2.5f});
  const std::vector<float> h1 = block16({3.3f, 1.0f});
  x.insert(x.end(), h1.begin(), h1.end());
  x.resize(48, 0.0f);
  const Result r = run(EngineArith::Nvfp4Layer, 0.5f, {1, 3, 16}, x);
  const std::vector<float> head0(r.y.begin(), r.y.begin() + 6);
  EXPECT_EQ(head0, (std::vector<float>{3.0f, 1.0f, 0.5f, 0.0f, 2.0f, -2.0f}));
  EXPECT_EQ(r.y[16], 6.0f * 0.5625f);
  EXPECT_EQ(r.y[17], 2.0f * 0.5625f);  // 1 / 0.5625 = 1.78 -> 2
  for (int i = 32; i < 48; ++i) EXPECT_EQ(r.y[i], 0.0f);
}

TEST(EngineFormats, SglangFp4UsesPowerOfTwoScalesAndRoundsMidpointsUp) {
  // One token of 2 heads x 8 channels = one block of 16. amax 3 -> 3 / 6 =
  // 0.5 = 2^-1 exactly: scale 0.5; x / 0.5 = {6, 2.5, 0.25, 1.48, -5, 3.5}:
  // the midpoints 2.5, 0.25, -5 and 3.5 go up to 3, 0.5, -6, 4 (NVFP4's
  // nearest-even would give 2, 0, -4, 4); 1.48 < 1.75 -> 1.5.
  const std::vector<float> x = block16({3.0f, 1.25f, 0.125f, 0.74f, -2.5f, 1.75f});
  const Result r = run(EngineArith::Fp4Pow2, 1.0f, {1, 2, 8}, x);
  const std::vector<float> got(r.y.begin(), r.y.begin() + 6);
  EXPECT_EQ(got, (std::vector<float>{3.0f, 1.5f, 0.25f, 0.75f, -3.0f, 2.0f}));
  // amax 3.3: 3.3 / 6 = 0.55 -> 2^ceil(log2 0.55) = 1; 3.3 -> 3 (never saturates).
  const Result r2 = run(EngineArith::Fp4Pow2, 1.0f, {1, 2, 8}, block16({3.3f, 0.2f}));
  EXPECT_EQ(r2.y[0], 3.0f);
  EXPECT_EQ(r2.y[1], 0.0f);
  // A zero block: the 1e-10 floor keeps the scale finite; zeros stay zeros.
  const Result r3 = run(EngineArith::Fp4Pow2, 1.0f, {1, 2, 8}, block16({}));
  for (float v : r3.y) EXPECT_EQ(v, 0.0f);
}

TEST(EngineFormats, RefusesShapesAndScalesTheEngineCannotRun) {
  std::vector<float> x(8, 1.0f), y(8);
  const auto fq = [&](EngineArith arith, float scale, const CacheShape& shape) {
    cpu::fake_quant_engine({arith, scale}, shape, DType::F32, x.data(), y.data());
  };
  EXPECT_THROW(fq(EngineArith::Nvfp4Layer, 1.0f, {1, 1, 8}), std::invalid_argument);
  EXPECT_THROW(fq(EngineArith::Fp4Pow2, 1.0f, {2, 1, 4}), std::invalid_argument);
  EXPECT_THROW(fq(EngineArith::E4m3Scaled, 0.0f, {1, 1, 8}), std::invalid_argument);
  EXPECT_THROW(fq(EngineArith::E4m3Scaled, -1.0f, {1, 1, 8}), std::invalid_argument);
  EXPECT_THROW(fq(EngineArith::E4m3Scaled, NAN, {1, 1, 8}), std::invalid_argument);
  EXPECT_NO_THROW(fq(EngineArith::Fp8PerTokenHead, 0.0f, {1, 1, 8}));  // takes no scale
  x[3] = NAN;
  try {
    fq(EngineArith::E4m3Scaled, 1.0f, {1, 2, 4});
    FAIL() << "non-finite input accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("head 0, channel 3"), std::string::npos) << e.what();
  }
}

TEST(EngineFormats, StorageBitsCountScalesAtTheirWidth) {
  const CacheShape s{4, 2, 16};  // 128 elements
  EXPECT_DOUBLE_EQ(engine_storage_bits({EngineArith::E4m3Scaled, 1.0f}, s), 8.0 + 32.0 / 128);
  EXPECT_DOUBLE_EQ(engine_storage_bits({EngineArith::Fp8PerTokenHead, 1.0f}, s), 8.0 + 2.0);
  EXPECT_DOUBLE_EQ(engine_storage_bits({EngineArith::Int8PerTokenHead, 1.0f}, s), 10.0);
  EXPECT_DOUBLE_EQ(engine_storage_bits({EngineArith::Nvfp4Layer, 1.0f}, s), 4.5 + 32.0 / 128);
  EXPECT_DOUBLE_EQ(engine_storage_bits({EngineArith::Fp4Pow2, 1.0f}, s), 4.5);
}

}  // namespace
}  // namespace kvtune::kernels
