// Free-running greedy generation on stories260K: with nothing quantized the
// two continuations are one; agreement with the unquantized model's own
// continuation falls as bits fall; bad sizes are named.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../support/shared_files.h"
#include "calibration.h"
#include "evaluator.h"
#include "kvtune/common/error.h"

namespace kvtune::worker {
namespace {

TEST(FreeRun, AgreementFallsAsBitsFall) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kvtune::testing::kStoriesModel);
  // Six sequences the model wrote itself from BOS with seeds: realistic prompts.
  Evaluator ev(model, load_calibration("sample:6:64:3", 64, model).sequences);
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  const auto run = [&](const char* layers) {
    return ev.free_run(parse_layer_config(layers, 5), scheme, ReadRule{}, 6, 8, 48);
  };
  const FreeRun kv16 = run("KV16");
  EXPECT_EQ(kv16.agreement, 1.0);
  EXPECT_EQ(kv16.first_divergence, 48.0);
  EXPECT_EQ(kv16.prompts, 6);
  const FreeRun kv8 = run("KV8"), kv4 = run("KV4"), kv2 = run("KV2");
  EXPECT_GE(kv8.agreement, kv4.agreement);
  EXPECT_GE(kv4.agreement, kv2.agreement);
  EXPECT_LT(kv2.agreement, 0.9);  // 2-bit caches do diverge
  EXPECT_LT(kv2.first_divergence, kv8.first_divergence);
  EXPECT_GE(kv8.first_divergence, kv4.first_divergence);
}

TEST(FreeRun, SizesThatDoNotFitAreNamed) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kvtune::testing::kStoriesModel);
  Evaluator ev(model, {{1, 2, 3, 4, 5, 6, 7, 8}, {1, 9, 10, 11}});
  const auto layers = parse_layer_config("KV4", 5);
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  const auto message = [&](int64_t prompts, int64_t prompt_tokens, int64_t new_tokens) {
    return kvtune::testing::message_of(
        [&] { ev.free_run(layers, scheme, ReadRule{}, prompts, prompt_tokens, new_tokens); });
  };
  EXPECT_NE(message(3, 2, 4).find("3 prompts asked; the data holds 2"), std::string::npos);
  EXPECT_NE(message(2, 5, 4).find("does not fit sequence 1 of 4 tokens"), std::string::npos);
  EXPECT_NE(message(1, 2, 0).find("at least 1"), std::string::npos);
  EXPECT_NE(message(1, 2, 100000).find("context"), std::string::npos);
  EXPECT_EQ(message(2, 4, 4), "(no kvtune::Error thrown)");
}

}  // namespace
}  // namespace kvtune::worker
