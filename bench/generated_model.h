// The configuration of the generated (synthetic) Llama-architecture models the
// benchmarks build; each benchmark fills the weights its own way.
#pragma once

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

}  // namespace kvtune::bench
