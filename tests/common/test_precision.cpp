#include <gtest/gtest.h>

#include "kvtune/common/error.h"
#include "kvtune/common/precision.h"
#include "kvtune/common/scheme.h"

namespace kvtune {
namespace {

TEST(PrecisionPair, ParsesKvtunerNames) {
  const PrecisionPair k8v4 = PrecisionPair::parse("K8V4");
  EXPECT_EQ(k8v4.key, KvFormat::integer(8));
  EXPECT_EQ(k8v4.value, KvFormat::integer(4));
  EXPECT_DOUBLE_EQ(k8v4.equivalent_bits(), 6.0);

  const PrecisionPair kv2 = PrecisionPair::parse("KV2");
  EXPECT_EQ(kv2.key, kv2.value);
  EXPECT_EQ(kv2.key.bits, 2);

  const PrecisionPair full = PrecisionPair::parse("KV16");
  EXPECT_EQ(full.key.kind, KvFormat::Kind::Full);
  EXPECT_DOUBLE_EQ(full.equivalent_bits(), 16.0);
}

TEST(PrecisionPair, ParsesHardwareFormats) {
  const PrecisionPair p = PrecisionPair::parse("Kfp8Vnvfp4");
  EXPECT_EQ(p.key.kind, KvFormat::Kind::Fp8);
  EXPECT_EQ(p.value.kind, KvFormat::Kind::Nvfp4);
  EXPECT_DOUBLE_EQ(p.equivalent_bits(), 6.0);
  EXPECT_EQ(PrecisionPair::parse("KVfp8").value.kind, KvFormat::Kind::Fp8);
}

TEST(PrecisionPair, NameRoundTrips) {
  for (const char* name :
       {"KV8", "K8V4", "K4V2", "KV16", "Kfp8Vnvfp4", "KVnvfp4", "K16V8", "K3V1"}) {
    EXPECT_EQ(PrecisionPair::parse(name).name(), name);
  }
  EXPECT_EQ(PrecisionPair::parse("K4V4").name(), "KV4");
}

TEST(PrecisionPair, RejectsBadNamesWithTheText) {
  for (const char* bad : {"", "K", "KV", "K5V4", "K8", "V4", "K8V", "Kfp16V8", "KV4x", "kv4"}) {
    try {
      PrecisionPair::parse(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos)
          << e.what();
    }
  }
}

TEST(PrecisionPair, KvtunerCandidatesAreTheNinePairs) {
  const auto pairs = kvtuner_candidates();
  ASSERT_EQ(pairs.size(), 9u);
  EXPECT_EQ(pairs.front().name(), "KV8");
  EXPECT_EQ(pairs[1].name(), "K8V4");
  EXPECT_EQ(pairs.back().name(), "KV2");
}

TEST(LayerConfig, OnePairBroadcastsToEveryLayer) {
  const auto layers = parse_layer_config("K8V4", 5);
  ASSERT_EQ(layers.size(), 5u);
  EXPECT_EQ(format_layer_config(layers), "K8V4,K8V4,K8V4,K8V4,K8V4");
  EXPECT_DOUBLE_EQ(average_bits(layers), 6.0);
}

TEST(LayerConfig, PerLayerPairsAndAverageBits) {
  const auto layers = parse_layer_config("KV8,KV4,KV2", 3);
  EXPECT_DOUBLE_EQ(average_bits(layers), (8.0 + 4.0 + 2.0) / 3.0);
}

TEST(LayerConfig, WrongCountAndBadEntryAreNamed) {
  EXPECT_THROW(parse_layer_config("KV8,KV4", 3), Error);
  try {
    parse_layer_config("KV8,K9V4,KV2", 3);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("entry 1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'K9V4'"), std::string::npos) << e.what();
  }
}

TEST(Scheme, ParsesAndNamesTheBadOption) {
  const Scheme kivi = Scheme::parse("kivi", 16, 32, "float");
  EXPECT_EQ(kivi.key(), "kivi/G=16/R=32/zp=float");
  EXPECT_EQ(kivi.int_spec(kernels::Role::Value, 2).group_size, 16);
  EXPECT_EQ(kivi.int_spec(kernels::Role::Value, 2).bits, 2);
  EXPECT_EQ(Scheme::parse("per-token-asym", 32, 32, "int").key(), "per-token-asym/zp=int");
  const auto message = [](const char* name, int g, int r, const char* zp) -> std::string {
    try {
      Scheme::parse(name, g, r, zp);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message("kivi", 32, 48, "int").find("residual 48"), std::string::npos);
  EXPECT_NE(message("awq", 32, 32, "int").find("'awq'"), std::string::npos);
  EXPECT_NE(message("kivi", 32, 32, "half").find("'half'"), std::string::npos);
  EXPECT_NE(message("kivi", 0, 32, "int").find("group size 0"), std::string::npos);
}

}  // namespace
}  // namespace kvtune

namespace kvtune {
namespace {

TEST(Scheme, FromOptionsFillsEachTargetsDefaults) {
  EXPECT_EQ(Scheme::from_options("kvtune", "kivi", std::nullopt, std::nullopt, "int").key(),
            "kivi/G=32/R=32/zp=int");
  EXPECT_EQ(Scheme::from_options("kvtune", "kivi", 16, 0, "float").key(),
            "kivi/G=16/R=16/zp=float");
  EXPECT_EQ(Scheme::from_options("kvtune", "kivi", 16, 64, "int").key(), "kivi/G=16/R=64/zp=int");
  EXPECT_EQ(
      Scheme::from_options("kvtuner", "per-channel-asym", std::nullopt, std::nullopt, "int").key(),
      "kvtuner:per-channel-asym/G=32/R=32");
  EXPECT_EQ(Scheme::from_options("kvtuner", "per-token-asym", -1, 4, "int").key(),
            "kvtuner:per-token-asym/G=0/R=4");
  EXPECT_THROW(Scheme::from_options("kvtuner", "per-token-asym", -7, std::nullopt, "int"), Error);
  EXPECT_THROW(Scheme::from_options("kvtuner", "kivi", std::nullopt, std::nullopt, "int"), Error);
  EXPECT_THROW(Scheme::from_options("vllm", "kivi", std::nullopt, std::nullopt, "int"), Error);
}

}  // namespace
}  // namespace kvtune
