// Layouts, validation and storage costs of the integer formats.
#include <gtest/gtest.h>

#include <stdexcept>

#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {
namespace {

IntSpec kivi(Role role, int bits = 4, int g = 32, int r = 32) {
  IntSpec s;
  s.grouping = Grouping::Kivi;
  s.role = role;
  s.bits = bits;
  s.group_size = g;
  s.residual = r;
  return s;
}

TEST(Layout, PerTokenGroupsAreHeadVectors) {
  const IntLayout l = int_layout(IntSpec{}, {10, 4, 8});
  EXPECT_EQ(l.quantized_tokens, 10);
  EXPECT_EQ(l.residual_tokens, 0);
  EXPECT_EQ(l.groups.count, 40);
  EXPECT_EQ(l.groups.size, 8);
  EXPECT_EQ(l.codes_per_word, 8);
  EXPECT_EQ(l.code_words, 40);  // 320 four-bit codes
  EXPECT_EQ(l.groups.group_of(17), 2);
  EXPECT_EQ(l.groups.first_element(2), 16);
}

TEST(Layout, KiviKeysAreChannelsOverTokenGroups) {
  // 70 tokens with R = 32: 64 quantized, 6 residual.
  const IntLayout l = int_layout(kivi(Role::Key), {70, 2, 4});
  EXPECT_EQ(l.quantized_tokens, 64);
  EXPECT_EQ(l.residual_tokens, 6);
  EXPECT_EQ(l.groups.count, 2 * 8);  // two token blocks x 8 channels
  // Element (token 33, head 1, channel 2) is in block 1, channel 1*4+2.
  EXPECT_EQ(l.groups.group_of(33 * 8 + 6), 8 + 6);
  EXPECT_EQ(l.groups.first_element(8 + 6), 32 * 8 + 6);
  EXPECT_EQ(l.groups.stride, 8);
}

TEST(Layout, ResidualWindowLargerThanGroup) {
  // R = 64, G = 32: the quantized prefix is a multiple of R.
  const IntLayout l = int_layout(kivi(Role::Key, 2, 32, 64), {127, 1, 8});
  EXPECT_EQ(l.quantized_tokens, 64);
  EXPECT_EQ(l.residual_tokens, 63);
}

TEST(Layout, KiviValuesGroupChannels) {
  const IntLayout l = int_layout(kivi(Role::Value, 2, 32, 32), {32, 2, 128});
  EXPECT_EQ(l.groups.size, 32);
  EXPECT_EQ(l.groups.count, 32 * 2 * 4);
  // head_dim below G: one group per head vector.
  EXPECT_EQ(int_layout(kivi(Role::Value, 2, 32, 32), {32, 2, 8}).groups.size, 8);
}

TEST(Layout, GroupOfAndFirstElementAgree) {
  for (const IntSpec& spec : {IntSpec{}, kivi(Role::Key, 3, 4, 8), kivi(Role::Value, 2, 4, 4)}) {
    const IntLayout l = int_layout(spec, {40, 3, 8});
    for (int64_t g = 0; g < l.groups.count; ++g) {
      const int64_t first = l.groups.first_element(g);
      for (int64_t i = 0; i < l.groups.size; ++i) {
        ASSERT_EQ(l.groups.group_of(first + i * l.groups.stride), g) << "group " << g;
      }
    }
  }
}

TEST(Layout, ThreeBitCodesTakeOneByte) {
  IntSpec s;
  s.bits = 3;
  const IntLayout l = int_layout(s, {1, 1, 10});
  EXPECT_EQ(l.codes_per_word, 4);
  EXPECT_EQ(l.code_words, 3);
}

TEST(Layout, RejectsBadInputWithTheValue) {
  auto message = [](const IntSpec& s, const CacheShape& shape) -> std::string {
    try {
      int_layout(s, shape);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "";
  };
  IntSpec five;
  five.bits = 5;
  EXPECT_NE(message(five, {1, 1, 8}).find("bits 5"), std::string::npos);
  EXPECT_NE(message(IntSpec{}, {0, 1, 8}).find("tokens=0"), std::string::npos);
  EXPECT_NE(message(IntSpec{}, {4, 1, 0}).find("head_dim=0"), std::string::npos);
  EXPECT_NE(message(kivi(Role::Key, 4, 32, 48), {64, 1, 8}).find("residual 48"), std::string::npos);
  EXPECT_NE(message(kivi(Role::Key, 4, 0, 32), {64, 1, 8}).find("group_size 0"), std::string::npos);
  EXPECT_NE(message(kivi(Role::Value, 4, 32, 32), {64, 1, 48}).find("head_dim 48"),
            std::string::npos);
}

TEST(StorageBits, CountsMetadataAndResidualTokens) {
  // Per token, head_dim 128, 4 bits: 4 + 2 * 16 / 128.
  EXPECT_DOUBLE_EQ(int_storage_bits(IntSpec{}, {100, 8, 128}), 4.25);
  // Kivi keys, G = 32: 100 tokens -> 96 quantized at 2 + 32/32 bits, 4 at 16.
  EXPECT_DOUBLE_EQ(int_storage_bits(kivi(Role::Key, 2), {100, 8, 128}),
                   (96.0 * 3.0 + 4.0 * 16.0) / 100.0);
  EXPECT_DOUBLE_EQ(fp8_storage_bits({64, 8, 128}), 8.0 + 32.0 / (64.0 * 128.0));
  EXPECT_DOUBLE_EQ(nvfp4_storage_bits({64, 8, 128}), 4.5 + 32.0 / (64.0 * 128.0));
  // head_dim 8 < 16: one block per head vector, so 8 bits of scale per 8 values.
  EXPECT_DOUBLE_EQ(nvfp4_storage_bits({10, 4, 8}), 5.0 + 32.0 / 80.0);
}

TEST(Nvfp4Block, SixteenOrHeadDim) {
  EXPECT_EQ(nvfp4_block(128), 16);
  EXPECT_EQ(nvfp4_block(8), 8);
  EXPECT_THROW(nvfp4_block(24), std::invalid_argument);
}

TEST(HeadScales, ZeroAmaxGetsUnitScale) {
  EXPECT_FLOAT_EQ(fp8_head_scale(896.0f), 2.0f);
  EXPECT_FLOAT_EQ(nvfp4_head_scale(6.0f * 448.0f), 1.0f);
  EXPECT_EQ(fp8_head_scale(0.0f), 1.0f);
  EXPECT_EQ(nvfp4_head_scale(0.0f), 1.0f);
}

}  // namespace
}  // namespace kvtune::kernels
