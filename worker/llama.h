// A Llama-architecture transformer on LibTorch: the weights, and a forward
// pass over whole sequences (teacher forcing) or one token at a time with a
// KV cache. One header for the model runtime; it includes LibTorch, so only
// the few runtime translation units include it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace kvtune::worker {

struct ModelConfig {
  std::string architecture;  // "llama2c", "LlamaForCausalLM", ...
  int64_t dim = 0;
  int64_t hidden_dim = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  int64_t head_dim = 0;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tied_embeddings = true;
};

struct LayerWeights {
  torch::Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3;
};

struct Model {
  ModelConfig config;
  torch::Tensor embedding;  // [vocab, dim]
  std::vector<LayerWeights> layers;
  torch::Tensor final_norm;  // [dim]
  torch::Tensor classifier;  // [vocab, dim]; the embedding when tied
};

// Loads a llama2.c checkpoint (run.c's format). Throws kvtune::Error naming the
// file and the field or tensor that is wrong.
Model load_llama2c(const std::string& path);

// One layer's cache of keys and values, [tokens, kv_heads, head_dim] each.
struct LayerCache {
  torch::Tensor keys, values;
};

// The forward pass in float32 on the model's device.
class Transformer {
 public:
  explicit Transformer(const Model& model);

  // Logits [batch, tokens, vocab] of every position of `tokens` [batch, tokens].
  torch::Tensor forward(const torch::Tensor& tokens) const;

  // Logits [vocab] of the next token after appending `token` at position
  // `cache[0].keys.size(0)`; appends its keys and values to `cache`.
  torch::Tensor step(int64_t token, std::vector<LayerCache>& cache) const;

  const ModelConfig& config() const { return model_.config; }

 private:
  torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& positions) const;
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const;
  torch::Tensor feed_forward(const LayerWeights& w, const torch::Tensor& x) const;

  const Model& model_;
  torch::Tensor inv_freq_;  // [head_dim / 2]
};

}  // namespace kvtune::worker
