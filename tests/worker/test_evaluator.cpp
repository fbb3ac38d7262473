// The evaluation engine on the real stories260K model: the one-pass emulation
// equals decoding with a real quantized cache, and the metrics behave as the
// users of a search rely on.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../support/shared_files.h"
#include "evaluator.h"
#include "kvtune/common/error.h"

namespace kvtune::worker {
namespace {

using kvtune::testing::kStoriesModel;
using kvtune::testing::kStoriesReference;

// BOS followed by the reference greedy continuation: real text of the model.
std::vector<int64_t> reference_tokens(size_t n) {
  auto ids = nlohmann::json::parse(std::ifstream(kStoriesReference))["greedy_next_ids"]
                 .get<std::vector<int64_t>>();
  ids.insert(ids.begin(), 1);
  ids.resize(n);
  return ids;
}

Model to_double(const Model& m) {
  return to_device(m, torch::kCPU, torch::kFloat64);
}

std::vector<PrecisionPair> config(const std::string& text) {
  return parse_layer_config(text, 5);
}

struct EmulationCase {
  std::string scheme;
  int group_size, residual;
  std::string zero_point;
  std::string layers;
};

void PrintTo(const EmulationCase& c, std::ostream* os) {
  *os << c.scheme << " G=" << c.group_size << " R=" << c.residual << " zp=" << c.zero_point << " "
      << c.layers;
}

class EmulationVsDecode : public ::testing::TestWithParam<EmulationCase> {};

TEST_P(EmulationVsDecode, OnePassEqualsTokenByTokenQuantizedDecode) {
  SKIP_WITHOUT_SHARED();
  const EmulationCase& p = GetParam();
  // float64 activations so that only quantization, not summation order, could differ.
  const Model model = to_double(load_llama2c(kStoriesModel));
  const std::vector<int64_t> ids = reference_tokens(75);
  Evaluator ev(model, {ids});
  const Scheme scheme = Scheme::parse(p.scheme, p.group_size, p.residual, p.zero_point);
  const auto qs = ev.quantizers(config(p.layers), scheme);

  const AttentionFn emulate = [&qs](int64_t l, const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v) {
    return quantized_attention(q, k, v, qs[static_cast<size_t>(l)].first,
                               qs[static_cast<size_t>(l)].second);
  };
  const torch::Tensor one_pass =
      ev.transformer().forward(torch::tensor(ids, torch::kInt64).unsqueeze(0), emulate)[0];

  QuantizedKvCache cache(qs);
  const torch::Tensor fp_pass =
      ev.transformer().forward(torch::tensor(ids, torch::kInt64).unsqueeze(0))[0];
  double max_diff = 0, quant_effect = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const torch::Tensor step = ev.transformer().step(ids[i], cache);
    const auto row = static_cast<int64_t>(i);
    max_diff = std::max(max_diff, (step - one_pass[row]).abs().max().item<double>());
    quant_effect = std::max(quant_effect, (step - fp_pass[row]).abs().max().item<double>());
  }
  EXPECT_LT(max_diff, 1e-5);
  EXPECT_GT(quant_effect, 1e-2) << "the config should change the logits";
  EXPECT_EQ(cache.length(), static_cast<int64_t>(ids.size()));
}

INSTANTIATE_TEST_SUITE_P(
    SchemesAndMixedPairs, EmulationVsDecode,
    ::testing::Values(EmulationCase{"per-token-asym", 32, 32, "int", "K8V4,KV2,K4V2,K2V8,KV4"},
                      EmulationCase{"per-token-asym", 32, 32, "float", "KV2,KV16,K2V4,K4V8,KV8"},
                      EmulationCase{"kivi", 32, 32, "int", "K8V4,KV2,K4V2,K2V8,KV4"},
                      EmulationCase{"kivi", 4, 8, "float", "KV2,K2V4,KV16,K4V2,KV3"},
                      EmulationCase{"kivi", 8, 16, "int", "Kfp8Vnvfp4,KV2,KVfp8,K4Vnvfp4,KV1"}));

// --- read rules and prompts ---------------------------------------------------

struct ReadCase {
  std::string model;  // "stories" or "demo" (the generated built-in model)
  std::string scheme;
  std::string rule;
  int64_t prompt;
  std::string layers;  // a pair per layer of the model, or one for all
};

void PrintTo(const ReadCase& c, std::ostream* os) {
  *os << c.model << " " << c.scheme << " read=" << c.rule << " T0=" << c.prompt << " " << c.layers;
}

class ReadRuleVsDecode : public ::testing::TestWithParam<ReadCase> {};

// The literal decode of a prompt and its continuation: the prompt prefilled
// in one step through the cache, then one token at a time.
TEST_P(ReadRuleVsDecode, OnePassEqualsPrefillThenTokenByTokenDecode) {
  const ReadCase& p = GetParam();
  if (p.model == "stories") SKIP_WITHOUT_SHARED();
  const Model model =
      to_double(p.model == "stories" ? load_llama2c(kStoriesModel) : make_demo_model());
  std::vector<int64_t> ids = reference_tokens(75);
  if (p.model != "stories") {
    for (size_t i = 1; i < ids.size(); ++i) ids[i] = (ids[i] * 7 + 3) % model.config.vocab_size;
  }
  Evaluator ev(model, {ids});
  const Scheme scheme = Scheme::parse(p.scheme, 8, 16, "int");
  const ReadPlan plan{p.prompt, ReadRule::parse(p.rule)};
  const auto qs =
      ev.quantizers(parse_layer_config(p.layers, static_cast<int>(model.config.n_layers)), scheme);

  const AttentionFn emulate = [&](int64_t l, const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v) {
    return quantized_attention(q, k, v, qs[static_cast<size_t>(l)].first,
                               qs[static_cast<size_t>(l)].second, plan);
  };
  const torch::Tensor tokens = torch::tensor(ids, torch::kInt64).unsqueeze(0);
  const torch::Tensor one_pass = ev.transformer().forward(tokens, emulate)[0];
  const torch::Tensor fp_pass = ev.transformer().forward(tokens)[0];

  QuantizedKvCache cache(qs, plan);
  std::vector<torch::Tensor> rows;
  if (p.prompt > 0) {
    rows.push_back(ev.transformer().extend({ids.begin(), ids.begin() + p.prompt}, cache));
  }
  for (size_t i = static_cast<size_t>(p.prompt); i < ids.size(); ++i) {
    rows.push_back(ev.transformer().step(ids[i], cache).unsqueeze(0));
  }
  const torch::Tensor literal = torch::cat(rows);
  EXPECT_LT((literal - one_pass).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(cache.length(), static_cast<int64_t>(ids.size()));
  // The quantization shows in the continuation; a fresh prompt reads nothing quantized.
  EXPECT_GT((literal - fp_pass).slice(0, p.prompt).abs().max().item<double>(), 1e-3);
  if (p.prompt > 0) {
    const double prompt_effect =
        (literal - fp_pass).slice(0, 0, p.prompt).abs().max().item<double>();
    if (plan.rule.prefill == ReadRule::Source::Fresh) {
      EXPECT_LT(prompt_effect, 1e-9);
    } else {
      EXPECT_GT(prompt_effect, 1e-3);
    }
  }
}

std::vector<ReadCase> read_cases() {
  std::vector<ReadCase> out;
  for (const std::string model : {"stories", "demo"}) {
    const std::string mixed = model == "stories" ? "K8V4,KV2,K4V2,K2V8,KV4" : "K4V2";
    const std::string formats = model == "stories" ? "Kfp8Vnvfp4,KV2,KVfp8,K4Vnvfp4,KV3" : "KVfp8";
    for (int64_t t0 : {0, 17, 64}) {
      for (const std::string rule :
           {"fresh", "cache", "fresh-prefill", "prefill=cache,current=fresh"}) {
        out.push_back({model, "per-token-asym", rule, t0, mixed});
      }
      out.push_back({model, "per-token-asym", "cache", t0, formats});
      out.push_back({model, "kivi", "fresh", t0, mixed});  // R = 16: T0 = 17 ends mid-window
      out.push_back({model, "kivi", "fresh", t0, formats});
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(RulesPromptsAndModels, ReadRuleVsDecode,
                         ::testing::ValuesIn(read_cases()));

TEST(ReadRules, KiviRefusesRulesThatReadTheCache) {
  const Model model = make_demo_model();
  Evaluator ev(model, {{1, 2, 3, 4, 5, 6}});
  const Scheme kivi = Scheme::parse("kivi", 8, 16, "int");
  const auto layers = parse_layer_config("KV4", static_cast<int>(model.config.n_layers));
  const std::string message =
      testing::message_of([&] { ev.evaluate(layers, kivi, ReadRule::parse("cache")); });
  EXPECT_NE(message.find("read rule 'cache' reads tokens back from the quantized cache"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("kivi takes the fresh rule"), std::string::npos) << message;
  // fp8 under a kivi scheme is per-token: the rule applies to it.
  EXPECT_NO_THROW(ev.evaluate(parse_layer_config("KVfp8", static_cast<int>(model.config.n_layers)),
                              kivi, ReadRule::parse("cache")));
  EXPECT_THROW(ReadRule::parse("prefill=cache,current=stale"), Error);
  EXPECT_THROW(ReadRule::parse("prefill=fresh,prefill=cache"), Error);
  EXPECT_EQ(ReadRule::parse("prefill=fresh,current=cache").name(), "fresh-prefill");
  EXPECT_EQ(ReadRule::parse("prefill=cache,current=fresh").name(), "prefill=cache,current=fresh");
}

TEST(ReadRules, PromptsMustLeaveAContinuation) {
  const Model model = make_demo_model();
  const std::string message = testing::message_of([&] {
    Evaluator(model, {{1, 2, 3, 4}, {1, 2, 3}}, {0, 2});
  });
  EXPECT_EQ(message,
            "calibration sequence 1 has 3 tokens and a prompt of 2; the prompt must leave at least "
            "2 tokens to continue");
  EXPECT_THROW(Evaluator(model, {{1, 2, 3, 4}}, {0, 0}), Error);
}

class Stories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kStoriesModel) || !std::filesystem::exists(kStoriesReference))
      return;
    model_ = std::make_unique<Model>(load_llama2c(kStoriesModel));
    evaluator_ = std::make_unique<Evaluator>(
        *model_, std::vector<std::vector<int64_t>>{reference_tokens(257)});
  }
  static void TearDownTestSuite() {
    evaluator_.reset();
    model_.reset();
  }
  Metrics eval(const std::string& layers, const std::string& scheme = "per-token-asym") {
    return evaluator_->evaluate(config(layers), Scheme::parse(scheme, 32, 32, "int"));
  }
  static std::unique_ptr<Model> model_;
  static std::unique_ptr<Evaluator> evaluator_;
};
std::unique_ptr<Model> Stories::model_;
std::unique_ptr<Evaluator> Stories::evaluator_;

TEST_F(Stories, UnquantizedCacheHasZeroKlAndFullAgreement) {
  SKIP_WITHOUT_SHARED();
  const Metrics m = eval("KV16");
  EXPECT_EQ(m.kl, 0.0);
  EXPECT_EQ(m.delta_nll, 0.0);
  EXPECT_EQ(m.top1_agreement, 1.0);
  EXPECT_EQ(m.ppl_q, m.ppl_fp);
  EXPECT_EQ(m.tokens, 257);
  EXPECT_DOUBLE_EQ(m.avg_bits, 16.0);
  // 5 layers x (K + V) x 4 kv heads x 8 dims x 2 bytes.
  EXPECT_DOUBLE_EQ(m.bytes_per_token, 640.0);
  for (double e : m.attn_rel_err) EXPECT_EQ(e, 0.0);
  // The model predicts its own greedy text well.
  EXPECT_GT(m.ppl_fp, 1.0);
  EXPECT_LT(m.ppl_fp, 3.0);
}

TEST_F(Stories, KlGrowsAsBitsFall) {
  SKIP_WITHOUT_SHARED();
  for (const char* scheme : {"per-token-asym", "kivi"}) {
    const Metrics kv8 = eval("KV8", scheme), kv4 = eval("KV4", scheme), kv2 = eval("KV2", scheme);
    EXPECT_GT(kv8.kl, 0.0) << scheme;
    EXPECT_LT(kv8.kl, kv4.kl) << scheme;
    EXPECT_LT(kv4.kl, kv2.kl) << scheme;
    EXPECT_GT(kv8.top1_agreement, kv2.top1_agreement) << scheme;
    EXPECT_GT(kv2.ppl_q, kv2.ppl_fp) << scheme;
    EXPECT_GT(kv2.bytes_per_token, 0.0);
    EXPECT_LT(kv2.bytes_per_token, kv4.bytes_per_token);
    for (size_t l = 0; l < 5; ++l) EXPECT_LT(kv8.attn_rel_err[l], kv2.attn_rel_err[l]);
  }
}

TEST_F(Stories, FirstLayerIsMoreSensitiveThanLast) {
  SKIP_WITHOUT_SHARED();
  const Metrics first = eval("KV2,KV16,KV16,KV16,KV16");
  const Metrics last = eval("KV16,KV16,KV16,KV16,KV2");
  // ../shared/models/README.md measured 2.27 vs 0.14 nats/token with run.c.
  EXPECT_GT(first.kl, 3 * last.kl);
  EXPECT_NEAR(first.kl, 2.27, 0.5);
  EXPECT_NEAR(last.kl, 0.14, 0.1);
  // The layer-local attention error is reported only for the quantized layer.
  EXPECT_GT(first.attn_rel_err[0], 0.0);
  EXPECT_EQ(first.attn_rel_err[4], 0.0);
  EXPECT_DOUBLE_EQ(first.avg_bits, (2.0 + 4 * 16.0) / 5.0);
}

TEST_F(Stories, KeysMatterMoreThanValuesOnLayerZero) {
  SKIP_WITHOUT_SHARED();
  // README: K8V2 on layer 0 costs 1.09 nats/token, K2V8 1.84.
  const Metrics k8v2 = eval("K8V2,KV16,KV16,KV16,KV16");
  const Metrics k2v8 = eval("K2V8,KV16,KV16,KV16,KV16");
  EXPECT_LT(k8v2.kl, k2v8.kl);
}

TEST_F(Stories, HardwareFormatsAreOrderedByPrecision) {
  SKIP_WITHOUT_SHARED();
  const Metrics fp8 = eval("KVfp8"), nvfp4 = eval("KVnvfp4");
  EXPECT_GT(fp8.kl, 0.0);
  EXPECT_LT(fp8.kl, nvfp4.kl);
  // head_dim 8: NVFP4 blocks of 8 values share an E4M3 scale (4 + 8/8 bits).
  EXPECT_LT(nvfp4.bytes_per_token, fp8.bytes_per_token);
}

TEST_F(Stories, ContinuationKlIsReportedBesideTheAllPositionsKl) {
  SKIP_WITHOUT_SHARED();
  const auto layers = config("KV2");
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  const Metrics today = evaluator_->evaluate(layers, scheme);
  // T0 = 0 is today's evaluation exactly, whatever the prompt rule.
  Evaluator no_prompt(*model_, {reference_tokens(257)}, {0});
  const Metrics zero =
      no_prompt.evaluate(layers, scheme, ReadRule::parse("prefill=cache,current=fresh"));
  EXPECT_EQ(zero.kl, today.kl);
  EXPECT_EQ(zero.kl_all, today.kl);
  EXPECT_EQ(zero.delta_nll, today.delta_nll);
  EXPECT_EQ(zero.top1_agreement, today.top1_agreement);
  EXPECT_EQ(zero.attn_rel_err, today.attn_rel_err);
  EXPECT_EQ(today.kl_all, today.kl);

  Evaluator prompted(*model_, {reference_tokens(257)}, {128});
  const Metrics fresh = prompted.evaluate(layers, scheme);
  EXPECT_EQ(fresh.tokens, 257 - 128);
  EXPECT_GT(fresh.kl, 0.0);
  // The fresh prompt adds 128 positions of zero KL to the all-positions mean.
  EXPECT_NEAR(fresh.kl_all, fresh.kl * (257.0 - 128.0) / 257.0, 1e-5);
  EXPECT_NE(fresh.kl, today.kl);
  // Sequences with and without a prompt in one calibration set: each mean
  // weighs the positions it covers.
  Evaluator mixed(*model_, {reference_tokens(257), reference_tokens(200)}, {128, 0});
  Evaluator short_one(*model_, {reference_tokens(200)});
  const Metrics both = mixed.evaluate(layers, scheme);
  const Metrics second = short_one.evaluate(layers, scheme);
  EXPECT_EQ(both.tokens, (257 - 128) + 200);
  EXPECT_NEAR(both.kl_all, (fresh.kl_all * 257 + second.kl * 200) / (257 + 200), 1e-5);
  EXPECT_NEAR(both.kl, (fresh.kl * (257 - 128) + second.kl * 200) / both.tokens, 1e-5);
  // Reading the prompt from the cache perturbs the prompt positions too.
  const Metrics cache = prompted.evaluate(layers, scheme, ReadRule::parse("cache"));
  EXPECT_GT(cache.kl_all, fresh.kl_all);
  EXPECT_NE(cache.kl, fresh.kl);
}

TEST_F(Stories, WrongLayerCountIsAnError) {
  SKIP_WITHOUT_SHARED();
  EXPECT_THROW(evaluator_->evaluate(parse_layer_config("KV4,KV4", 2), Scheme{}), Error);
}

TEST(EvaluatorInput, BadSequencesAreNamed) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kStoriesModel);
  try {
    Evaluator ev(model, {{1, 2, 3}, {1, 600}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 1, position 1: token id 600"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Evaluator(model, {{1}}), Error);
  EXPECT_THROW(Evaluator(model, {}), Error);
}

}  // namespace
}  // namespace kvtune::worker
