// KVTuner's vanilla quantizer (cmd2001/KVTuner, vanilla_quantizer.py) as the
// kernels emulate it: groups worked by hand in bf16 (computed independently,
// op by op, as PyTorch rounds them), the flattened grouping that straddles
// channels, its refusals, and its storage cost.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {
namespace {

std::vector<float> fake_quant(const KvtunerSpec& spec, const CacheShape& shape,
                              const std::vector<float>& x) {
  std::vector<float> y(x.size());
  cpu::fake_quant_kvtuner(spec, shape, DType::F32, x.data(), y.data());
  return y;
}

KvtunerSpec spec(KvtunerAxis axis, int bits, int group) {
  KvtunerSpec s;
  s.axis = axis;
  s.bits = bits;
  s.group_size = group;
  return s;
}

// One token's head of 8 channels, per-token with q_group_size -1. Inputs are
// rounded to bf16 first: 0.3 -> 0.30078125, -0.55 -> -0.55078125, 0.05 ->
// 0.050048828125, 1.23 -> 1.2265625.
const std::vector<float> kToken = {-1.0f, 0.3f, 0.7f, 1.5f, 2.0f, -0.55f, 0.05f, 1.23f};

TEST(KvtunerQuantizer, HandWorkedGroupAtEightBits) {
  // scale = bf16(3 / 255) = 0.01177978515625; min / scale = -84.89 -> bf16
  // -85 (spacing 0.5 above 64) -> zero = -85 + 128 = 43. For 0.30078125:
  // x / scale = 25.53 -> bf16 25.5; 25.5 - 43 = -17.5 -> round half even
  // -18 -> (-18 + 43) * scale = 0.294921875 (exact integer maths: q = -17,
  // 0.30588). 2.0 and -1.0 land on their codes exactly.
  const std::vector<float> y = fake_quant(spec(KvtunerAxis::Token, 8, 0), {1, 1, 8}, kToken);
  const std::vector<float> want = {-1.0f, 0.294921875f, 0.6953125f,      1.4921875f,
                                   2.0f,  -0.5546875f,  0.047119140625f, 1.2265625f};
  EXPECT_EQ(y, want);

  // kvtune's exact per-token-asym quantizer puts 0.3 on the next code: KV8
  // in bf16 is coarser than integer maths.
  IntSpec exact;
  exact.grouping = Grouping::PerToken;
  exact.bits = 8;
  exact.zero_point = ZeroPoint::Int;
  std::vector<float> rounded = {-1.0f, 0.30078125f,  0.69921875f,     1.5f,
                                2.0f,  -0.55078125f, 0.050048828125f, 1.2265625f};
  std::vector<float> z(rounded.size());
  cpu::fake_quant_int(exact, {1, 1, 8}, DType::F32, rounded.data(), z.data());
  EXPECT_NEAR(z[1], 0.3058824f, 1e-6f);
  EXPECT_NE(z[1], y[1]);
}

TEST(KvtunerQuantizer, HandWorkedGroupsAtFourAndTwoBits) {
  // 4 bits: scale = bf16(3 / 15) = 0.2001953125, zero = round(-4.995 -> bf16
  // -5) + 8 = 3; 0.30078125 / scale = 1.5025 -> bf16 1.5; 1.5 - 3 = -1.5 ->
  // -2 (half to even) -> (-2 + 3) * scale = 0.2001953125 (exact maths: 0.4).
  EXPECT_EQ(fake_quant(spec(KvtunerAxis::Token, 4, 0), {1, 1, 8}, kToken),
            (std::vector<float>{-1.0f, 0.2001953125f, 0.6015625f, 1.3984375f, 2.0f, -0.6015625f,
                                0.0f, 1.203125f}));
  // 2 bits: scale 1, zero 1: every value rounds to an integer.
  EXPECT_EQ(fake_quant(spec(KvtunerAxis::Token, 2, 0), {1, 1, 8}, kToken),
            (std::vector<float>{-1.0f, 0.0f, 1.0f, 1.0f, 2.0f, -1.0f, 0.0f, 1.0f}));
}

TEST(KvtunerQuantizer, PerChannelGroupsFollowTheFlattenedChannelTokenOrder) {
  // [12 tokens, 1 head, 8 channels], x = the channel index. KVTuner's
  // per-channel groups are 32 consecutive elements of (channel, token):
  // group 0 = channels 0, 1 and tokens 0-7 of channel 2; group 1 = channel
  // 2's tokens 8-11, channels 3, 4 and tokens 0-3 of channel 5; group 2 the rest.
  const CacheShape shape{12, 1, 8};
  EXPECT_EQ(kvtuner_offset(32, 12, 1, 8, KvtunerAxis::Channel), 8 * 8 + 2);  // token 8, channel 2
  EXPECT_EQ(kvtuner_offset(60, 12, 1, 8, KvtunerAxis::Channel), 0 * 8 + 5);  // token 0, channel 5
  EXPECT_EQ(kvtuner_offset(13, 12, 2, 8, KvtunerAxis::Token), (1 * 2 + 0) * 8 + 5);
  EXPECT_EQ(kvtuner_offset(100, 12, 2, 8, KvtunerAxis::Token), (0 * 2 + 1) * 8 + 4);
  std::vector<float> x(static_cast<size_t>(shape.elements()));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 8);
  const std::vector<float> y = fake_quant(spec(KvtunerAxis::Channel, 2, 32), shape, x);
  // Group 1 spans [2, 5]: scale bf16(3 / 3) = 1, zero 4, exact. Group 2
  // spans [5, 7]: scale bf16(2 / 3) = 0.66796875, zero 10, and 5 comes back
  // as 8 * 0.66796875 = 5.34375. So channel 5 changes value mid-channel.
  for (int64_t t = 0; t < 12; ++t) {
    EXPECT_EQ(y[static_cast<size_t>(t * 8 + 5)], t < 4 ? 5.0f : 5.34375f) << "token " << t;
    EXPECT_EQ(y[static_cast<size_t>(t * 8 + 3)], 3.0f) << "token " << t;
  }
  // Per-token groups of 32 over 8 channels span 4 tokens of one head.
  const std::vector<float> tokens = fake_quant(spec(KvtunerAxis::Token, 2, 32), shape, x);
  // [0, 7]: scale bf16(7 / 3) = 2.328125, zero 2; 5 / scale = 2.147 -> bf16
  // 2.140625 -> q = 0 -> 2 * scale.
  EXPECT_EQ(tokens[5], 4.65625f);
}

TEST(KvtunerQuantizer, RefusesWhatKvtunerCannotRun) {
  const std::vector<float> x(24, 1.0f);
  std::vector<float> y(24);
  const auto message = [&](const KvtunerSpec& s, const CacheShape& shape) {
    try {
      cpu::fake_quant_kvtuner(s, shape, DType::F32, x.data(), y.data());
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(spec(KvtunerAxis::Channel, 4, 32), {3, 1, 8}).find("reshape(-1, 32)"),
            std::string::npos);
  EXPECT_NE(message(spec(KvtunerAxis::Token, 3, 0), {3, 1, 8}).find("2, 4 or 8 bits, not 3"),
            std::string::npos);
  EXPECT_NE(message(spec(KvtunerAxis::Channel, 4, 0), {3, 1, 8}).find("needs a group size"),
            std::string::npos);
  EXPECT_EQ(message(spec(KvtunerAxis::Token, 4, 0), {3, 1, 8}), "no error");
}

TEST(KvtunerQuantizer, InPlaceAndEveryDtypeAgree) {
  const CacheShape shape{17, 4, 8};
  std::vector<float> x(static_cast<size_t>(shape.elements()));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 37) % 101) / 13.0f - 3.0f;
  const KvtunerSpec s = spec(KvtunerAxis::Channel, 4, 32);
  const std::vector<float> y = fake_quant(s, shape, x);
  std::vector<float> in_place = x;
  cpu::fake_quant_kvtuner(s, shape, DType::F32, in_place.data(), in_place.data());
  EXPECT_EQ(in_place, y);
  // bf16 input holds the values the quantizer rounds to anyway.
  std::vector<BFloat16> b(x.size()), by(x.size());
  for (size_t i = 0; i < x.size(); ++i) b[i] = from_float<BFloat16>(x[i]);
  cpu::fake_quant_kvtuner(s, shape, DType::BF16, b.data(), by.data());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_EQ(to_float(by[i]), y[i]) << i;
}

TEST(KvtunerQuantizer, StorageCountsCodesMetadataAndTheUnflushedTokens) {
  // Per-token, 4 bits, head_dim 8: 4 + 2 * 16 / 8 = 8 bits per flushed
  // element; R = 0 flushes every 2 steps, so of 128 tokens 1 + 2 * 63 = 127
  // are quantized and one stays at 16 bits.
  EXPECT_DOUBLE_EQ(kvtuner_storage_bits(spec(KvtunerAxis::Token, 4, 0), {128, 4, 8}, 0),
                   (127 * 8.0 + 16.0) / 128.0);
  // Per-channel, 2 bits, groups of 32, R = 32: 1 + 32 * 3 = 97 of 128 tokens.
  EXPECT_DOUBLE_EQ(kvtuner_storage_bits(spec(KvtunerAxis::Channel, 2, 32), {128, 4, 8}, 32),
                   (97 * 3.0 + 31 * 16.0) / 128.0);
}

}  // namespace
}  // namespace kvtune::kernels
