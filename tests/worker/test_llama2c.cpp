// The LibTorch runtime on the real stories260K checkpoint, against the
// llama2.c reference decode in ../shared/reference.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../support/shared_files.h"
#include "kvtune/common/error.h"
#include "llama.h"

namespace kvtune::worker {
namespace {

using kvtune::testing::kStoriesModel;
using kvtune::testing::kStoriesReference;
using kvtune::testing::message_of;

TEST(Llama2c, ReadsTheHeader) {
  SKIP_WITHOUT_SHARED();
  const Model m = load_llama2c(kStoriesModel);
  EXPECT_EQ(m.config.dim, 64);
  EXPECT_EQ(m.config.n_layers, 5);
  EXPECT_EQ(m.config.n_heads, 8);
  EXPECT_EQ(m.config.n_kv_heads, 4);
  EXPECT_EQ(m.config.head_dim, 8);
  EXPECT_EQ(m.config.vocab_size, 512);
  EXPECT_TRUE(m.config.tied_embeddings);
}

TEST(Llama2c, GreedyDecodeEqualsTheReferenceImplementation) {
  SKIP_WITHOUT_SHARED();
  const auto ref = nlohmann::json::parse(std::ifstream(kStoriesReference));
  const auto expected = ref["greedy_next_ids"].get<std::vector<int64_t>>();
  ASSERT_EQ(expected.size(), 256u);
  std::map<int64_t, nlohmann::json> checkpoints;
  for (const auto& at : ref["logits_at"]) checkpoints[at["pos"].get<int64_t>()] = at;

  const Model model = load_llama2c(kStoriesModel);
  const Transformer t(model);
  FullPrecisionCache cache;
  int64_t token = ref["prompt"][0].get<int64_t>();
  for (size_t pos = 0; pos < expected.size(); ++pos) {
    const torch::Tensor logits = t.step(token, cache);
    const int64_t next = logits.argmax().item<int64_t>();
    ASSERT_EQ(next, expected[pos]) << "position " << pos;
    if (const auto it = checkpoints.find(static_cast<int64_t>(pos)); it != checkpoints.end()) {
      EXPECT_NEAR(logits[0].item<float>(), it->second["logit0"].get<double>(), 1e-4);
      EXPECT_NEAR(logits[1].item<float>(), it->second["logit1"].get<double>(), 1e-4);
      EXPECT_NEAR(logits[next].item<float>(), it->second["logit_next"].get<double>(), 1e-4);
    }
    token = next;
  }
  EXPECT_GE(checkpoints.size(), 2u);
}

TEST(Llama2c, TeacherForcedForwardEqualsStepByStep) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kStoriesModel);
  const Transformer t(model);
  const auto ref = nlohmann::json::parse(std::ifstream(kStoriesReference));
  auto ids = ref["greedy_next_ids"].get<std::vector<int64_t>>();
  ids.insert(ids.begin(), 1);
  ids.resize(40);
  const torch::Tensor batch = torch::tensor(ids, torch::kInt64).unsqueeze(0);
  const torch::Tensor all = t.forward(batch)[0];
  FullPrecisionCache cache;
  for (size_t i = 0; i < ids.size(); ++i) {
    const torch::Tensor one = t.step(ids[i], cache);
    const double diff = (all[static_cast<int64_t>(i)] - one).abs().max().item<double>();
    ASSERT_LT(diff, 1e-4) << "position " << i;
  }
}

TEST(Llama2c, HalfPrecisionForwardStaysInItsDtypeAndTracksFloat32) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kStoriesModel);
  const auto ref = nlohmann::json::parse(std::ifstream(kStoriesReference));
  auto ids = ref["greedy_next_ids"].get<std::vector<int64_t>>();
  ids.insert(ids.begin(), 1);
  ids.resize(40);
  const torch::Tensor batch = torch::tensor(ids, torch::kInt64).unsqueeze(0);
  const torch::Tensor f32 = Transformer(model).forward(batch)[0];
  // Every matmul of a bf16 model multiplies bf16 by bf16 (queries and keys
  // after RoPE included), and its predictions are the float32 model's.
  const Model bf16 = to_device(model, torch::kCPU, torch::kBFloat16);
  const torch::Tensor half = Transformer(bf16).forward(batch)[0];
  ASSERT_EQ(half.scalar_type(), torch::kBFloat16);
  const double agree =
      (half.argmax(-1) == f32.argmax(-1)).to(torch::kFloat64).mean().item<double>();
  EXPECT_GE(agree, 0.9);
  FullPrecisionCache cache;
  EXPECT_EQ(Transformer(bf16).step(ids[0], cache).scalar_type(), torch::kBFloat16);
}

class BadCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() / ("kvtune_bad_" + std::to_string(::getpid()));
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void write(const std::string& bytes) { std::ofstream(path_, std::ios::binary) << bytes; }
  std::filesystem::path path_;
};

TEST_F(BadCheckpoint, MissingFileIsNamed) {
  const std::string m = message_of([] { load_llama2c("/nonexistent/model.bin"); });
  EXPECT_NE(m.find("/nonexistent/model.bin"), std::string::npos) << m;
}

TEST_F(BadCheckpoint, ShortHeaderIsNamed) {
  write("abc");
  const std::string m = message_of([&] { load_llama2c(path_.string()); });
  EXPECT_NE(m.find("bad header"), std::string::npos) << m;
  EXPECT_NE(m.find(path_.string()), std::string::npos) << m;
}

TEST_F(BadCheckpoint, NonsenseHeaderNamesTheField) {
  const int32_t header[7] = {64, 172, 5, 0, 4, 512, 512};  // n_heads = 0
  write(std::string(reinterpret_cast<const char*>(header), sizeof header));
  const std::string m = message_of([&] { load_llama2c(path_.string()); });
  EXPECT_NE(m.find("n_heads = 0"), std::string::npos) << m;
}

TEST_F(BadCheckpoint, TruncatedWeightsNameTheTensor) {
  SKIP_WITHOUT_SHARED();
  std::ifstream in(kStoriesModel, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write(bytes.substr(0, 400000));  // ends inside the layer weights
  const std::string m = message_of([&] { load_llama2c(path_.string()); });
  EXPECT_NE(m.find("truncated"), std::string::npos) << m;
  EXPECT_NE(m.find("tensor 'w"), std::string::npos) << m;
}

TEST_F(BadCheckpoint, TrailingBytesAreRefused) {
  SKIP_WITHOUT_SHARED();
  std::ifstream in(kStoriesModel, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write(bytes + std::string(64, '\0'));
  const std::string m = message_of([&] { load_llama2c(path_.string()); });
  EXPECT_NE(m.find("unexpected bytes"), std::string::npos) << m;
}

}  // namespace
}  // namespace kvtune::worker
