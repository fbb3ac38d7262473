// The evaluator's reference on stories260K: evaluations that start from a
// kept layer boundary equal full forwards, the metrics recomputed chunk by
// chunk from final hidden states equal those of the full tokens x vocab
// log-probabilities (and of an independent full-tensor computation here), and
// what prefix reuse saves is counted.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../support/stories_reference.h"
#include "evaluator.h"

namespace kvtune::worker {
namespace {

// Four windows of the reference greedy text, of two lengths (two batches).
std::vector<std::vector<int64_t>> prefix_case_sequences() {
  const std::vector<int64_t> ids = kvtune::testing::stories_reference_ids();
  std::vector<std::vector<int64_t>> out;
  for (size_t s = 0; s < 4; ++s) {
    const size_t len = s < 2 ? 64 : 41;
    out.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(s * 23),
                     ids.begin() + static_cast<std::ptrdiff_t>(s * 23 + len));
  }
  return out;
}

const std::vector<int64_t> kPrefixPrompts = {0, 0, 9, 9};

// Single-layer profile configs, a late pair, uniform configs of each kind.
const char* const kPrefixConfigs[] = {
    "KV2,KV16,KV16,KV16,KV16",
    "KV16,KV16,KV4,KV16,KV16",
    "KV16,KV16,KV16,KV16,K4V2",
    "KV16,KV8,KV16,KV2,KV16",
    "KV4",
    "KVvllm:fp8",
    "KV16",
};

void expect_same_metrics(const Metrics& a, const Metrics& b, double rel, const std::string& what) {
  EXPECT_NEAR(b.kl, a.kl, rel * a.kl) << what;
  EXPECT_NEAR(b.kl_all, a.kl_all, rel * a.kl_all) << what;
  // ΔNLL is the difference of two NLLs (~1 nat/token here), each within
  // `rel` of the other path's: relative to the NLL, not to the difference.
  EXPECT_NEAR(b.delta_nll, a.delta_nll, rel * std::log(a.ppl_q)) << what;
  EXPECT_NEAR(b.ppl_q, a.ppl_q, rel * a.ppl_q) << what;
  EXPECT_EQ(b.top1_agreement, a.top1_agreement) << what;
  EXPECT_EQ(b.tokens, a.tokens) << what;
  ASSERT_EQ(b.attn_rel_err.size(), a.attn_rel_err.size());
  for (size_t l = 0; l < a.attn_rel_err.size(); ++l) {
    EXPECT_NEAR(b.attn_rel_err[l], a.attn_rel_err[l], rel * a.attn_rel_err[l]) << what;
  }
}

TEST(PrefixReuse, EvaluationsFromKeptBoundariesEqualFullForwards) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kvtune::testing::kStoriesModel);
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  EvaluatorOptions none;
  none.prefix_cache_bytes = 0;
  Evaluator full(model, prefix_case_sequences(), kPrefixPrompts, none);
  EXPECT_EQ(full.checkpoint_stride(), 0);
  Evaluator every(model, prefix_case_sequences(), kPrefixPrompts);  // memory for every boundary
  EXPECT_EQ(every.checkpoint_stride(), 1);
  // Room for two of the four boundaries: layers 2 and 4 are kept.
  EvaluatorOptions two;
  two.prefix_cache_bytes = 2 * (2 * 64 + 2 * 41) * model.config.dim * 4;
  Evaluator alternate(model, prefix_case_sequences(), kPrefixPrompts, two);
  EXPECT_EQ(alternate.checkpoint_stride(), 2);
  for (const char* text : kPrefixConfigs) {
    const auto layers = parse_layer_config(text, 5);
    const Metrics a = full.evaluate(layers, scheme);
    expect_same_metrics(a, every.evaluate(layers, scheme), 1e-9, text);
    expect_same_metrics(a, alternate.evaluate(layers, scheme), 1e-9, text);
  }
}

TEST(PrefixReuse, AProfileEvaluationRunsOnlyTheLayersFromItsLayer) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kvtune::testing::kStoriesModel);
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  EvaluatorOptions none;
  none.prefix_cache_bytes = 0;
  Evaluator full(model, prefix_case_sequences(), {}, none);
  Evaluator reuse(model, prefix_case_sequences());
  const auto last = parse_layer_config("KV16,KV16,KV16,KV16,KV2", 5);
  full.evaluate(last, scheme);
  reuse.evaluate(last, scheme);
  // Two batches; without reuse the evaluation runs all 5 layers, with it
  // layer 4 alone; either measures layer 4's attention error as it passes
  // (no replay: its inputs there are the unquantized ones).
  EXPECT_EQ(full.layers_run(), 2 * 5);
  EXPECT_EQ(reuse.layers_run(), 2 * 1);
  // A config with nothing quantized reads the reference and runs nothing.
  reuse.evaluate(parse_layer_config("KV16", 5), scheme);
  EXPECT_EQ(reuse.layers_run(), 2 * 1);
  // Two quantized layers: layer 3's error needs a replay of layers 1-3
  // (from the boundary at layer 1) besides the evaluation's layers 1-4.
  reuse.evaluate(parse_layer_config("KV16,KV2,KV16,KV4,KV16", 5), scheme);
  EXPECT_EQ(reuse.layers_run(), 2 * 1 + 2 * (3 + 4));
}

TEST(PrefixReuse, ConsecutiveConfigsStartAfterTheLayersTheyShare) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kvtune::testing::kStoriesModel);
  const Scheme per_token = Scheme::parse("per-token-asym", 32, 32, "int");
  const Scheme kivi = Scheme::parse("kivi", 32, 32, "int");
  EvaluatorOptions none;
  none.prefix_cache_bytes = 0;
  Evaluator full(model, prefix_case_sequences(), kPrefixPrompts, none);
  Evaluator reuse(model, prefix_case_sequences(), kPrefixPrompts);
  ASSERT_TRUE(reuse.keeps_trail());
  // Every layer's attention error for KV4 and KV2 measured first, so that
  // what each evaluation below runs is its own forward alone.
  for (const char* warm : {"KV4", "KV2"}) {
    for (Evaluator* ev : {&full, &reuse}) {
      ev->evaluate(parse_layer_config(warm, 5), per_token);
      ev->evaluate(parse_layer_config(warm, 5), kivi);
    }
  }
  struct Step {
    const char* layers;
    const Scheme* scheme;
    int64_t layers_per_batch;  // layers run from the trail or a kept boundary
  };
  const Step steps[] = {
      {"KV4,KV4,KV4,KV4,KV4", &per_token, 5},    // shares nothing with KV2 (kivi)
      {"KV4,KV4,KV4,KV4,KV2", &per_token, 1},    // shares layers 0-3
      {"KV4,KV4,KV4,KV2,KV2", &per_token, 2},    // shares 0-2
      {"KV4,KV2,KV4,KV4,KV4", &per_token, 4},    // shares layer 0 (kept from two steps back)
      {"KV4,KV2,KV4,KV4,KV4", &kivi, 5},         // another scheme: nothing shared
      {"KV16,KV16,KV4,KV4,KV4", &per_token, 3},  // the unquantized boundary at layer 2
  };
  for (const Step& step : steps) {
    const auto layers = parse_layer_config(step.layers, 5);
    const int64_t before = reuse.layers_run();
    const Metrics b = reuse.evaluate(layers, *step.scheme);
    EXPECT_EQ(reuse.layers_run() - before, 2 * step.layers_per_batch) << step.layers;
    expect_same_metrics(full.evaluate(layers, *step.scheme), b, 1e-9, step.layers);
  }
}

TEST(BoundedReference, ChunkedMetricsEqualFullLogProbabilities) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kvtune::testing::kStoriesModel);
  const int64_t vocab = model.config.vocab_size;
  using Reference = EvaluatorOptions::Reference;
  EvaluatorOptions full_options;
  full_options.reference = Reference::Full;
  Evaluator full(model, prefix_case_sequences(), kPrefixPrompts, full_options);
  // Chunks of 7 positions: prompt ends and sequence ends fall inside chunks.
  EvaluatorOptions chunked_options;
  chunked_options.reference = Reference::Bounded;
  chunked_options.chunk_floats = 2 * 7 * vocab;
  Evaluator chunked(model, prefix_case_sequences(), kPrefixPrompts, chunked_options);
  EvaluatorOptions bounded;
  bounded.reference = Reference::Bounded;
  Evaluator plain(model, prefix_case_sequences(), kPrefixPrompts, bounded);
  // Auto keeps this small vocabulary's log-probabilities.
  Evaluator automatic(model, prefix_case_sequences(), kPrefixPrompts);
  // Memory: the full reference holds tokens x vocab floats; the bounded one
  // the final hidden states and four boundaries, tokens x dim each, and,
  // once it has evaluated, at most five more: the last evaluation's trail.
  const int64_t tokens = 2 * 64 + 2 * 41, dim = model.config.dim;
  EXPECT_EQ(plain.reference_bytes(), 5 * tokens * dim * 4);
  EXPECT_GE(full.reference_bytes(), tokens * vocab * 4);
  EXPECT_EQ(automatic.reference_bytes(), full.reference_bytes());
  for (const char* scheme_name : {"per-token-asym", "kivi"}) {
    const Scheme scheme = Scheme::parse(scheme_name, 32, 32, "int");
    for (const char* text : kPrefixConfigs) {
      const auto layers = parse_layer_config(text, 5);
      const Metrics a = full.evaluate(layers, scheme);
      const std::string what = std::string(text) + " " + scheme_name;
      expect_same_metrics(a, chunked.evaluate(layers, scheme), 1e-6, what);
      expect_same_metrics(a, plain.evaluate(layers, scheme), 1e-6, what);
    }
  }
  EXPECT_GT(plain.reference_bytes(), 5 * tokens * dim * 4);
  EXPECT_LE(plain.reference_bytes(), 10 * tokens * dim * 4);
}

TEST(BoundedReference, KlEqualsAFullTensorComputation) {
  SKIP_WITHOUT_SHARED();
  // Today's arithmetic, written out here: the full [T, vocab] log-probs of
  // the unquantized and the quantized forward, KL summed over positions.
  const Model model = load_llama2c(kvtune::testing::kStoriesModel);
  const std::vector<int64_t> seq = prefix_case_sequences()[0];
  EvaluatorOptions bounded;
  bounded.reference = EvaluatorOptions::Reference::Bounded;
  Evaluator ev(model, {seq}, {}, bounded);
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  const auto layers = parse_layer_config("KV16,K4V2,KV16,KV8,KV16", 5);
  const Metrics m = ev.evaluate(layers, scheme);
  const auto qs = ev.quantizers(layers, scheme);
  const AttentionFn attention = [&qs](int64_t l, const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v) {
    return quantized_attention(q, k, v, qs[static_cast<size_t>(l)].first,
                               qs[static_cast<size_t>(l)].second);
  };
  const torch::Tensor tokens = torch::tensor(seq, torch::kInt64).unsqueeze(0);
  const torch::Tensor ref =
      torch::log_softmax(ev.transformer().forward(tokens), -1).to(torch::kFloat64);
  const torch::Tensor q =
      torch::log_softmax(ev.transformer().forward(tokens, attention), -1).to(torch::kFloat64);
  const double kl = (ref.exp() * (ref - q)).sum().item<double>() / static_cast<double>(seq.size());
  EXPECT_NEAR(m.kl, kl, 1e-6 * kl);
  // The logits themselves: the evaluation from layer 1 equals the full forward.
  const torch::Tensor from_layer_1 = ev.transformer().head(ev.transformer().run_layers(
      ev.transformer().run_layers(ev.transformer().embed(tokens), 0, 1), 1, 5, attention));
  EXPECT_LE((from_layer_1 - ev.transformer().forward(tokens, attention)).abs().max().item<double>(),
            1e-5);
}

}  // namespace
}  // namespace kvtune::worker
