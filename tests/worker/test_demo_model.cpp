// The built-in demo model: deterministic, fast to make, a usable language
// model, and with layers that differ in KV sensitivity as trained models do.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <set>

#include "calibration.h"
#include "demo_model.h"
#include "llama.h"

namespace kvtune::worker {
namespace {

std::vector<torch::Tensor> all_tensors(const Model& m) {
  std::vector<torch::Tensor> out = {m.embedding, m.final_norm, m.classifier};
  for (const LayerWeights& w : m.layers) {
    for (const auto& t : {w.attn_norm, w.wq, w.wk, w.wv, w.wo, w.ffn_norm, w.w1, w.w2, w.w3}) {
      out.push_back(t);
    }
  }
  return out;
}

torch::Tensor to_tensor(const std::vector<std::vector<int64_t>>& sequences) {
  std::vector<torch::Tensor> rows;
  for (const auto& s : sequences) rows.push_back(torch::tensor(s, torch::kInt64));
  return torch::stack(rows);
}

// Mean over positions of KL(p_ref || p) in nats per token.
double mean_kl(const torch::Tensor& ref_logits, const torch::Tensor& logits) {
  const torch::Tensor log_ref = torch::log_softmax(ref_logits.to(torch::kFloat64), -1);
  const torch::Tensor log_p = torch::log_softmax(logits.to(torch::kFloat64), -1);
  return (log_ref.exp() * (log_ref - log_p)).sum(-1).mean().item<double>();
}

// Gaussian noise with `relative` times each key vector's RMS, on layer
// `target`'s keys only: quantization-like error of a fixed relative size.
AttentionFn noisy_keys(int64_t target, double relative) {
  return
      [=](int64_t layer, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
        if (layer != target) return causal_attention(q, k, v);
        at::Generator gen = at::detail::createCPUGenerator(1234);
        const torch::Tensor rms = k.pow(2).mean(-1, true).sqrt();
        const torch::Tensor noise = torch::randn(k.sizes(), gen, k.options()) * rms * relative;
        return causal_attention(q, k + noise, v);
      };
}

// Per-token asymmetric min/max quantization of layer `target`'s keys to
// `bits` (one group per token and kv head), as a per-token-asym cache does.
AttentionFn quantized_keys(int64_t target, int bits) {
  return
      [=](int64_t layer, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
        if (layer != target) return causal_attention(q, k, v);
        const torch::Tensor mn = std::get<0>(k.min(-1, true));
        const torch::Tensor mx = std::get<0>(k.max(-1, true));
        const torch::Tensor scale = ((mx - mn) / ((1 << bits) - 1)).clamp_min(1e-8);
        const torch::Tensor kq = torch::round((k - mn) / scale) * scale + mn;
        return causal_attention(q, kq, v);
      };
}

TEST(DemoModel, IsDeterministic) {
  const Model a = make_demo_model();
  const Model b = make_demo_model();
  const auto ta = all_tensors(a), tb = all_tensors(b);
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) EXPECT_TRUE(torch::equal(ta[i], tb[i])) << "tensor " << i;
}

TEST(DemoModel, IsMadeQuickly) {
  const auto start = std::chrono::steady_clock::now();
  const Model m = make_demo_model();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "make_demo_model took " << seconds * 1000 << " ms\n";
  EXPECT_LT(seconds, 5.0);
}

TEST(DemoModel, DescribesItselfAsSyntheticLlama) {
  const Model m = make_demo_model();
  const ModelConfig& c = m.config;
  EXPECT_TRUE(c.synthetic);
  EXPECT_EQ(c.name, "builtin:demo");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.n_layers, static_cast<int64_t>(m.layers.size()));
  EXPECT_EQ(c.dim, c.n_heads * c.head_dim);
  EXPECT_EQ(c.n_heads % c.n_kv_heads, 0);
  EXPECT_EQ(m.embedding.sizes(), (std::vector<int64_t>{c.vocab_size, c.dim}));
  EXPECT_EQ(m.layers[0].wk.sizes(), (std::vector<int64_t>{c.n_kv_heads * c.head_dim, c.dim}));
  EXPECT_TRUE(c.tied_embeddings);
}

TEST(DemoModel, Hd64IsTheSameRecipeAtHeadDim64) {
  const Model m = make_demo_model("builtin:demo-hd64");
  EXPECT_EQ(m.config.name, "builtin:demo-hd64");
  EXPECT_EQ(m.config.head_dim, 64);  // llama.cpp rotates its cache at head_dim % 64 == 0
  EXPECT_EQ(m.config.n_kv_heads * m.config.head_dim, 128);
  EXPECT_EQ(m.layers.size(), make_demo_model().layers.size());
  EXPECT_TRUE(is_demo_model("builtin:demo-hd64"));
  EXPECT_FALSE(is_demo_model("builtin:other"));
  EXPECT_NE(demo_model_recipe("builtin:demo-hd64"), demo_model_recipe("builtin:demo"));
  // builtin:demo's recipe (its fingerprint, and every stored result of it) is as before.
  EXPECT_EQ(demo_model_recipe("builtin:demo").rfind("kvtune-demo-v1 seed=", 0), 0u);
  EXPECT_NE(demo_model_recipe("builtin:demo").find(" dim=128 heads=8 kv_heads=4 hidden=344 "),
            std::string::npos);
  EXPECT_THROW(make_demo_model("builtin:other"), std::invalid_argument);
  const Transformer t(m);
  const torch::Tensor logits = t.forward(torch::arange(16, torch::kLong).unsqueeze(0));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

TEST(DemoModel, LogitsAreFiniteAndPeaked) {
  const Model m = make_demo_model();
  const Transformer t(m);
  const auto data = load_calibration("sample:4:64:3", 0, m);
  const torch::Tensor logits = t.forward(to_tensor(data.sequences));
  ASSERT_TRUE(torch::isfinite(logits).all().item<bool>());
  const torch::Tensor log_p = torch::log_softmax(logits.to(torch::kFloat64), -1);
  const double entropy = -(log_p.exp() * log_p).sum(-1).mean().item<double>();
  std::cout << "mean next-token entropy " << entropy
            << " nats (uniform: " << std::log(static_cast<double>(m.config.vocab_size)) << ")\n";
  EXPECT_LT(entropy, std::log(static_cast<double>(m.config.vocab_size)) - 1.5);
  EXPECT_GT(entropy, 0.5) << "a model that always predicts one token is no test of a cache";
  // Samples wander over the vocabulary instead of repeating one token.
  std::set<int64_t> distinct;
  for (const auto& seq : data.sequences) distinct.insert(seq.begin(), seq.end());
  std::cout << distinct.size() << " distinct tokens in 4 sampled sequences of 64\n";
  EXPECT_GT(distinct.size(), 40u);
}

class DemoModelSensitivity : public ::testing::Test {
 protected:
  void SetUp() override {
    tokens_ = to_tensor(load_calibration("sample:4:64:11", 0, model_).sequences);
    reference_ = transformer_.forward(tokens_);
  }
  double kl_with(const AttentionFn& attention) const {
    return mean_kl(reference_, transformer_.forward(tokens_, attention));
  }
  int64_t last_layer() const { return model_.config.n_layers - 1; }

  const Model model_ = make_demo_model();
  const Transformer transformer_{model_};
  torch::Tensor tokens_, reference_;
};

// The same relative key error hurts layer 0 far more than the last layer:
// the model's structure, not the error's size, makes the difference.
TEST_F(DemoModelSensitivity, EarlyLayersSufferMoreFromKeyNoise) {
  const double first = kl_with(noisy_keys(0, 0.1));
  const double middle = kl_with(noisy_keys(last_layer() / 2, 0.1));
  const double last = kl_with(noisy_keys(last_layer(), 0.1));
  std::cout << "KL from 10% key noise: layer 0 " << first << ", layer " << last_layer() / 2 << " "
            << middle << ", layer " << last_layer() << " " << last << "\n";
  EXPECT_GT(first, 5 * last);
  EXPECT_GT(first, middle);
  EXPECT_GT(last, 0.0);
}

// What a search sees: 2-bit per-token keys in layer 0 alone cost far more than
// in the last layer alone (compare stories260K, whose K2V2 costs 2.27 nats in
// layer 0 and 0.14 in layer 4).
TEST_F(DemoModelSensitivity, EarlyLayersSufferMoreFromKeyQuantization) {
  const double first = kl_with(quantized_keys(0, 2));
  const double last = kl_with(quantized_keys(last_layer(), 2));
  std::cout << "KL from K2 in one layer: layer 0 " << first << ", layer " << last_layer() << " "
            << last << "\n";
  EXPECT_GT(first, 5 * last);
  EXPECT_GT(first, 0.5) << "2-bit keys should visibly hurt the most sensitive layer";
}

}  // namespace
}  // namespace kvtune::worker
