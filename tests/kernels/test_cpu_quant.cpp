// Properties of the CPU reference that users of the API rely on: results do
// not depend on the thread count, in-place equals out-of-place, fake-quant
// equals dequantize(quantize()), and every dtype takes the same path.
#include <gtest/gtest.h>

#include <vector>

#include "../support/normal_tensor.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {
namespace {

std::vector<IntSpec> all_int_specs() {
  std::vector<IntSpec> specs;
  for (Grouping g : {Grouping::PerToken, Grouping::Kivi}) {
    for (Role r : {Role::Key, Role::Value}) {
      for (int bits : {1, 2, 3, 4, 8}) {
        for (ZeroPoint z : {ZeroPoint::Int, ZeroPoint::Float}) {
          IntSpec s;
          s.grouping = g;
          s.role = r;
          s.bits = bits;
          s.zero_point = z;
          s.group_size = 16;
          s.residual = 32;
          specs.push_back(s);
        }
      }
    }
  }
  return specs;
}

class ThreadCount : public ::testing::Test {
 protected:
  void TearDown() override { cpu::set_num_threads(saved_); }
  int saved_ = cpu::num_threads();
};

TEST_F(ThreadCount, ResultsDoNotDependOnThreads) {
  const CacheShape shape{300, 4, 64};
  const auto x = testing::normal_tensor(shape, 1, 2.0f);
  for (const IntSpec& spec : all_int_specs()) {
    std::vector<float> one(x.size()), many(x.size());
    cpu::set_num_threads(1);
    cpu::fake_quant_int(spec, shape, DType::F32, x.data(), one.data());
    cpu::set_num_threads(7);
    cpu::fake_quant_int(spec, shape, DType::F32, x.data(), many.data());
    ASSERT_EQ(one, many) << "bits " << spec.bits;
  }
}

TEST(CpuQuant, InPlaceEqualsOutOfPlace) {
  const CacheShape shape{77, 2, 32};
  const auto x = testing::normal_tensor(shape, 2, 2.0f);
  for (const IntSpec& spec : all_int_specs()) {
    std::vector<float> out(x.size());
    cpu::fake_quant_int(spec, shape, DType::F32, x.data(), out.data());
    std::vector<float> inplace = x;
    cpu::fake_quant_int(spec, shape, DType::F32, inplace.data(), inplace.data());
    ASSERT_EQ(out, inplace);
  }
}

TEST(CpuQuant, FakeQuantEqualsDequantizeOfQuantize) {
  const CacheShape shape{70, 3, 32};
  const auto x = testing::normal_tensor(shape, 3, 2.0f);
  for (const IntSpec& spec : all_int_specs()) {
    const IntLayout layout = int_layout(spec, shape);
    std::vector<uint32_t> codes(static_cast<size_t>(layout.code_words));
    std::vector<float> scales(static_cast<size_t>(layout.groups.count)), zeros(scales.size());
    cpu::quantize_int(spec, shape, DType::F32, x.data(),
                      {codes.data(), scales.data(), zeros.data()});
    std::vector<float> deq = x;  // residual tokens stay as they are
    cpu::dequantize_int(spec, shape, {codes.data(), scales.data(), zeros.data()}, DType::F32,
                        deq.data());
    std::vector<float> fake(x.size());
    cpu::fake_quant_int(spec, shape, DType::F32, x.data(), fake.data());
    ASSERT_EQ(deq, fake) << "bits " << spec.bits;
  }
}

TEST(CpuQuant, KiviQuantizesOnlyWholeResidualWindows) {
  IntSpec spec;
  spec.grouping = Grouping::Kivi;
  spec.bits = 2;
  const CacheShape shape{40, 1, 8};  // R = G = 32: tokens 32..39 stay full precision
  const auto x = testing::normal_tensor(shape, 4, 2.0f);
  std::vector<float> y(x.size());
  cpu::fake_quant_int(spec, shape, DType::F32, x.data(), y.data());
  int changed_in_prefix = 0;
  for (size_t i = 0; i < 32 * 8; ++i) changed_in_prefix += y[i] != x[i];
  EXPECT_GT(changed_in_prefix, 200);
  for (size_t i = 32 * 8; i < x.size(); ++i) ASSERT_EQ(y[i], x[i]) << i;
}

TEST(CpuQuant, Fp8AndNvfp4FakeQuantMatchQuantizeDequantize) {
  const CacheShape shape{33, 4, 32};
  const auto x = testing::normal_tensor(shape, 5, 2.0f);
  std::vector<float> amax(4, 0.0f);
  cpu::accumulate_head_amax(shape, DType::F32, x.data(), amax.data());
  std::vector<float> fp8(4), fp4(4);
  for (int h = 0; h < 4; ++h) {
    fp8[h] = fp8_head_scale(amax[h]);
    fp4[h] = nvfp4_head_scale(amax[h]);
  }
  std::vector<uint8_t> codes8(x.size());
  std::vector<float> a(x.size()), b(x.size());
  cpu::quantize_fp8(shape, DType::F32, x.data(), fp8.data(), codes8.data());
  cpu::dequantize_fp8(shape, codes8.data(), fp8.data(), DType::F32, a.data());
  cpu::fake_quant_fp8(shape, DType::F32, x.data(), fp8.data(), b.data());
  EXPECT_EQ(a, b);

  std::vector<uint32_t> codes4((x.size() + 7) / 8);
  std::vector<uint8_t> blocks(x.size() / 16);
  cpu::quantize_nvfp4(shape, DType::F32, x.data(), fp4.data(), {codes4.data(), blocks.data()});
  cpu::dequantize_nvfp4(shape, {codes4.data(), blocks.data()}, fp4.data(), DType::F32, a.data());
  cpu::fake_quant_nvfp4(shape, DType::F32, x.data(), fp4.data(), b.data());
  EXPECT_EQ(a, b);
}

TEST(CpuQuant, AmaxAccumulatesAcrossBatches) {
  const CacheShape shape{8, 2, 4};
  std::vector<float> x(static_cast<size_t>(shape.elements()), 0.5f);
  x[3] = -7.0f;  // head 0
  x[12] = 3.0f;  // head 1
  std::vector<float> amax = {10.0f, 0.0f};
  cpu::accumulate_head_amax(shape, DType::F32, x.data(), amax.data());
  EXPECT_EQ(amax[0], 10.0f);  // an earlier batch's larger amax is kept
  EXPECT_EQ(amax[1], 3.0f);
}

TEST(CpuQuant, NonFiniteInputNamesItsPosition) {
  const CacheShape shape{40, 2, 8};
  auto x = testing::normal_tensor(shape, 6, 2.0f);
  x[(33 * 2 + 1) * 8 + 5] = std::numeric_limits<float>::infinity();
  std::vector<float> y(x.size());
  try {
    cpu::fake_quant_int(IntSpec{}, shape, DType::F32, x.data(), y.data());
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("token 33, head 1, channel 5"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace kvtune::kernels
