// A Llama-architecture transformer on LibTorch: the weights, and a forward
// pass over whole sequences (teacher forcing) or one token at a time with a
// KV cache. One header for the model runtime; it includes LibTorch, so only
// the few runtime translation units include it.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kvtune::worker {

// How RoPE pairs channels: llama2.c rotates interleaved pairs (2j, 2j+1);
// Hugging Face checkpoints rotate halves (j, j + head_dim/2).
enum class RopeStyle { Interleaved, HalfSplit };

// Llama 3.1's frequency-dependent RoPE scaling (rope_scaling.rope_type "llama3").
struct RopeScaling {
  bool enabled = false;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192.0;
};

struct ModelConfig {
  std::string architecture;  // "llama2c", "LlamaForCausalLM", "Qwen2ForCausalLM", ...
  std::string name;          // file or directory name, or "builtin:demo"
  bool synthetic = false;    // generated weights (the built-in demo model)
  int64_t dim = 0;
  int64_t hidden_dim = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t vocab_size = 0;
  int64_t max_seq_len = 0;
  int64_t head_dim = 0;
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::Interleaved;
  RopeScaling rope_scaling;
  double norm_eps = 1e-5;
  bool tied_embeddings = true;
  bool attention_bias = false;           // q/k/v projection biases (Qwen2)
  std::string weight_dtype = "float32";  // as stored: float32, float16, bfloat16
};

// Projection weights are [out, in] as in Hugging Face (y = x W^T + b).
// w1 = gate_proj, w3 = up_proj, w2 = down_proj. bq/bk/bv are undefined
// tensors unless config.attention_bias.
struct LayerWeights {
  torch::Tensor attn_norm, wq, wk, wv, wo, ffn_norm, w1, w2, w3;
  torch::Tensor bq, bk, bv;
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

// Loads a Hugging Face model directory: config.json plus model.safetensors or
// a sharded model.safetensors.index.json; LlamaForCausalLM (with llama3
// rope_scaling), MistralForCausalLM and Qwen2ForCausalLM; f32, f16 or bf16.
// float32 tensors are used in place from the memory map; f16/bf16 ones are
// widened to float32 once. Throws kvtune::Error naming the file and the tensor
// or field.
Model load_hf(const std::string& directory);

// The built-in demo model: a deterministic, generated (synthetic)
// Llama-architecture model whose layers differ in KV sensitivity, made in
// well under 5 s with no download.
// `spec` is builtin:demo or builtin:demo-hd64 (demo_model.h).
Model make_demo_model(std::string_view spec = "builtin:demo");

// The model's tensors on `device` in `dtype` (float32, bfloat16, float16).
Model to_device(const Model& model, const torch::Device& device, torch::ScalarType dtype);

// Dispatches on `spec`: a built-in demo model, a Hugging Face directory, or a
// llama2.c .bin file.
Model load_model(const std::string& spec);

// Computes one layer's attention output [batch, tokens, heads, head_dim] from
// its queries [batch, tokens, heads, head_dim] and keys and values [batch,
// tokens, kv_heads, head_dim] (RoPE applied). The evaluator replaces the
// default causal attention with one that reads an emulated quantized cache.
using AttentionFn = std::function<torch::Tensor(int64_t layer, const torch::Tensor& q,
                                                const torch::Tensor& k, const torch::Tensor& v)>;

// Softmax over the last dim computed in at least float32, returned in the input dtype.
torch::Tensor softmax_f32(const torch::Tensor& scores);

// Plain causal softmax attention with grouped KV heads.
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v);

// A decoding KV cache: stores what each layer appends and returns what the
// next query reads.
class KvCache {
 public:
  virtual ~KvCache() = default;
  // Appends the step's keys and values [n, kv_heads, head_dim] (n tokens: a
  // prefill, or one decoded token) at `layer`; returns the keys and values
  // the step's queries read, [tokens, kv_heads, head_dim] each, oldest first
  // and the step's tokens last.
  virtual std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k,
                                                         const torch::Tensor& v) = 0;
  // Tokens cached so far (all layers hold the same number after a step).
  virtual int64_t length() const = 0;
};

// The unquantized cache.
class FullPrecisionCache : public KvCache {
 public:
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k,
                                                 const torch::Tensor& v) override;
  int64_t length() const override;

 private:
  std::vector<torch::Tensor> keys_, values_;
};

// The forward pass on the model's device, in its dtype (norms and softmax in float32).
class Transformer {
 public:
  explicit Transformer(const Model& model);

  // Logits [batch, tokens, vocab] of every position of `tokens` [batch,
  // tokens]; `attention` defaults to causal_attention.
  torch::Tensor forward(const torch::Tensor& tokens, const AttentionFn& attention = {}) const;

  // The forward in parts: forward(t, a) = head(run_layers(embed(t), 0, n_layers, a)).
  // Hidden states [batch, tokens, dim] of `tokens` [batch, tokens].
  torch::Tensor embed(const torch::Tensor& tokens) const;
  // Layers [first, last) over hidden states x [batch, tokens, dim] at positions 0..tokens-1.
  torch::Tensor run_layers(torch::Tensor x, int64_t first, int64_t last,
                           const AttentionFn& attention = {}) const;
  // Logits [..., vocab] of hidden states [..., dim]: the final norm and the output head.
  torch::Tensor head(const torch::Tensor& x) const;

  // Logits [vocab] of the next token after appending `token` at position
  // cache.length(); appends its keys and values to `cache`.
  torch::Tensor step(int64_t token, KvCache& cache) const;
  // The same for several tokens in one step (a prefill): logits [n, vocab],
  // each position attending causally to the cache and the earlier tokens.
  torch::Tensor extend(const std::vector<int64_t>& tokens, KvCache& cache) const;

  const ModelConfig& config() const { return model_.config; }

 private:
  // Applies RoPE to x [..., tokens, heads, head_dim] at `positions` [tokens].
  torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& positions) const;
  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const;
  torch::Tensor feed_forward(const LayerWeights& w, const torch::Tensor& x) const;
  // q, k, v projections of h [..., dim] with RoPE at `positions`, shaped
  // [..., tokens, heads, head_dim].
  std::array<torch::Tensor, 3> project_qkv(const LayerWeights& w, const torch::Tensor& h,
                                           const torch::Tensor& positions) const;

  const Model& model_;
  torch::Tensor inv_freq_;  // [head_dim / 2]
};

}  // namespace kvtune::worker
