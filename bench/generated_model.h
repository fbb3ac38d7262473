// The configuration of the generated (synthetic) Llama-architecture models the
// benchmarks build, and a model of random weights on it.
#pragma once

#include <cmath>
#include <string>

#include "llama.h"

namespace kvtune::bench {

inline worker::ModelConfig generated_config(int64_t layers, int64_t dim, int64_t heads,
                                            int64_t kv_heads, int64_t vocab, int64_t context) {
  worker::ModelConfig c;
  c.architecture = "generated";
  c.name = "generated-" + std::to_string(layers) + "x" + std::to_string(dim);
  c.synthetic = true;
  c.dim = dim;
  c.hidden_dim = dim * 8 / 3;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = dim / heads;
  c.vocab_size = vocab;
  c.max_seq_len = context;
  return c;
}

// Random weights (seed 0) made directly on `options`' device and dtype;
// hidden_dim 0: 8/3 of dim.
inline worker::Model random_model(int64_t layers, int64_t dim, int64_t heads, int64_t kv_heads,
                                  int64_t vocab, int64_t context, int64_t hidden_dim = 0,
                                  torch::TensorOptions options = {}) {
  torch::manual_seed(0);
  worker::Model m;
  m.config = generated_config(layers, dim, heads, kv_heads, vocab, context);
  if (hidden_dim > 0) m.config.hidden_dim = hidden_dim;
  const worker::ModelConfig& c = m.config;
  const double s = 1.0 / std::sqrt(static_cast<double>(dim));
  m.embedding = torch::randn({vocab, dim}, options);
  m.classifier = m.embedding;
  m.final_norm = torch::ones({dim}, options);
  for (int64_t l = 0; l < layers; ++l) {
    worker::LayerWeights& w = m.layers.emplace_back();
    w.attn_norm = torch::ones({dim}, options);
    w.ffn_norm = torch::ones({dim}, options);
    w.wq = torch::randn({dim, dim}, options) * s;
    w.wk = torch::randn({kv_heads * c.head_dim, dim}, options) * s;
    w.wv = torch::randn({kv_heads * c.head_dim, dim}, options) * s;
    w.wo = torch::randn({dim, dim}, options) * s;
    w.w1 = torch::randn({c.hidden_dim, dim}, options) * s;
    w.w3 = torch::randn({c.hidden_dim, dim}, options) * s;
    w.w2 = torch::randn({dim, c.hidden_dim}, options) * s;
  }
  if (options.dtype() == torch::kBFloat16) m.config.weight_dtype = "bfloat16";
  return m;
}

}  // namespace kvtune::bench
