#include <gtest/gtest.h>

#include <fstream>

#include "kvtune/common/config_file.h"
#include "kvtune/common/error.h"

namespace kvtune {
namespace {

std::string message_of(const std::string& text, int layers) {
  try {
    parse_layer_config_text(text, layers, "cfg.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigFile, ReadsKvtunerYaml) {
  const auto layers = parse_layer_config_text(
      "0:\n  nbits_key: 8\n  nbits_value: 4\n1:\n  nbits_key: 2\n  nbits_value: 2\n", 2, "x");
  EXPECT_EQ(format_layer_config(layers), "K8V4,KV2");
}

TEST(ConfigFile, ReadsJsonInEitherShape) {
  EXPECT_EQ(format_layer_config(parse_layer_config_text(R"(["K8V4", "KVfp8"])", 2, "x")),
            "K8V4,KVfp8");
  EXPECT_EQ(format_layer_config(parse_layer_config_text(R"({"layers": ["KV4"]})", 3, "x")),
            "KV4,KV4,KV4");
  EXPECT_EQ(
      format_layer_config(parse_layer_config_text(
          R"({"1": {"nbits_key": 4, "nbits_value": 2}, "0": {"nbits_key": 8, "nbits_value": 8}})",
          2, "x")),
      "KV8,K4V2");
}

TEST(ConfigFile, YamlRoundTrips) {
  const auto layers = parse_layer_config("K8V4,KV2,KV16", 3);
  EXPECT_EQ(parse_layer_config_text(to_kvtuner_yaml(layers), 3, "x"), layers);
  EXPECT_THROW(to_kvtuner_yaml(parse_layer_config("KVfp8", 1)), Error);
}

TEST(ConfigFile, ErrorsNameFileLayerAndField) {
  EXPECT_NE(message_of("0:\n  nbits_key: 8\n  nbits_value: 4\n", 2).find("no entry for layer(s) 1"),
            std::string::npos);
  EXPECT_NE(message_of("0:\n  nbits_key: 5\n  nbits_value: 4\n", 1).find("layer 0 nbits_key"),
            std::string::npos);
  EXPECT_NE(message_of("0:\n  nbits_value: 4\n", 1).find("nbits_key is missing"),
            std::string::npos);
  EXPECT_NE(message_of("7:\n  nbits_key: 8\n  nbits_value: 4\n", 2).find("layer 7 is outside"),
            std::string::npos);
  EXPECT_NE(message_of("[K8V4, K9V4]", 2).find("'K9V4'"), std::string::npos);
  EXPECT_NE(message_of("{unclosed", 2).find("cfg.yaml: not valid"), std::string::npos);
  EXPECT_THROW(load_layer_config_file("/nonexistent.yaml", 2), Error);
}

}  // namespace
}  // namespace kvtune

namespace kvtune {
namespace {

// A config file read without knowing the model: its own layer count.
TEST(ConfigFile, ReadsAFileAsALayerConfigString) {
  const std::string dir = ::testing::TempDir();
  const std::string yaml = dir + "/kvtune-preset.yaml";
  std::ofstream(yaml) << "0: {nbits_key: 8, nbits_value: 4}\n1: {nbits_key: 2, nbits_value: 2}\n"
                         "2: {nbits_key: 4, nbits_value: 4}\n";
  EXPECT_EQ(read_layer_config_file(yaml), "K8V4,KV2,KV4");
  const std::string list = dir + "/kvtune-list.json";
  std::ofstream(list) << R"({"layers": ["KV8", "Kfp8Vnvfp4"]})";
  EXPECT_EQ(read_layer_config_file(list), "KV8,Kfp8Vnvfp4");
  std::ofstream(yaml) << "0: {nbits_key: 8, nbits_value: 4}\n2: {nbits_key: 4, nbits_value: 4}\n";
  try {
    read_layer_config_file(yaml);
    FAIL() << "accepted a preset without layer 1";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(yaml), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_layer_config_file(dir + "/no-such-file.yaml"), Error);
}

}  // namespace
}  // namespace kvtune
