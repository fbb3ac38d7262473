// The evaluation engine: emulates decoding with a quantized KV cache over
// whole calibration sequences in one teacher-forced pass, and measures how
// much it changes the model's predictions (../shared/DESIGN.md, "Evaluation
// semantics").
#pragma once

#include <array>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvtune/common/precision.h"
#include "kvtune/common/read_rule.h"
#include "kvtune/common/scheme.h"
#include "kvtune/kernels/quant.h"
#include "llama.h"

namespace kvtune::worker {

// How the sequences of one batch are read: the prompt length T0 (prefilled
// in one step; the rest is decoded a token at a time) and the read rule.
struct ReadPlan {
  int64_t prompt_tokens = 0;
  ReadRule rule;
};

// One layer's keys or values under one format: what the emulated cache holds.
// Integer formats follow the scheme's grouping and full-precision window; fp8
// and nvfp4 quantize every token once it is no longer the current one (as the
// per-token scheme does), with static per-head scales from calibration amax.
// Under the kvtuner target integer formats are KVTuner's quantizer instead
// (requantizes(): the cache is re-quantized whole at every flush).
class TensorQuantizer {
 public:
  // `layer` only names the tensor in errors (-1: unknown).
  TensorQuantizer(KvFormat format, kernels::Role role, const Scheme& scheme,
                  std::vector<float> head_amax, int layer = -1);

  bool active() const { return format_.kind != KvFormat::Kind::Full; }
  // The kvtuner target: KVTuner's cache, which re-quantizes at each flush.
  bool requantizes() const { return active() && scheme_.target == Scheme::Target::Kvtuner; }
  // Kvtuner: decoded tokens between two flushes.
  int64_t flush_period() const { return scheme_.flush_period(); }
  // Kvtuner: whether every group lies within one token's head (per-token
  // groups of head_dim or a divisor of it), so tokens re-quantize independently.
  bool groups_within_tokens(int64_t head_dim) const;
  // The query at position i reads tokens [this, i] in full precision and the
  // earlier ones quantized (i + 1: it reads every token quantized). Prompt
  // queries (i < T0) read the prompt fresh or from the cache as the rule
  // says; a decoded token reads W * floor(i / W) onwards in full precision
  // (W below), or, when the rule reads the current token from the cache,
  // nothing.
  int64_t first_full_precision(int64_t i, const ReadPlan& plan) const;
  // R for kivi integer formats (whole windows are flushed), else 1.
  int64_t full_precision_window() const;
  // Fake-quantizes one sequence's x [tokens, kv_heads, head_dim] in one pass.
  torch::Tensor fake_quant(const torch::Tensor& x) const;
  // Quantizes x to codes and dequantizes them (the real cache's path; engine
  // dtypes are emulated value for value, without codes: fake_quant).
  torch::Tensor quantize_dequantize(const torch::Tensor& x) const;
  // Storage bits per element for a cache of `tokens` tokens.
  double storage_bits(int64_t tokens, int64_t kv_heads, int64_t head_dim) const;
  // The per-layer k_scale / v_scale an engine dtype applies (EngineDtype::Scale::Layer,
  // from the job's KvScales and this calibration's amax); 0 for other formats.
  float layer_scale() const;

 private:
  kernels::IntSpec int_spec() const;
  kernels::KvtunerSpec kvtuner_spec() const;
  void fake_quant_cuda(const torch::Tensor& in, torch::Tensor& out) const;
  // Engine dtypes: throws naming the tensor when the engine's cache would
  // hold NaN or inf for `overflow` of x's values.
  void check_engine_overflow(int64_t overflow, const torch::Tensor& x) const;
  KvFormat format_;
  kernels::Role role_;
  Scheme scheme_;
  std::vector<float> head_scales_;
  // The engine spec of a tensor of this shape (its rotation follows head_dim).
  kernels::EngineSpec engine_spec(const kernels::CacheShape& shape) const;
  kernels::EngineSpec engine_spec_;  // engine dtypes, without the rotation
  int layer_ = -1;
};

// One (keys, values) quantizer per layer of a model.
using LayerQuantizers = std::vector<std::pair<TensorQuantizer, TensorQuantizer>>;

// Causal attention of q [B, T, H, hd] over k, v [B, T, KVH, hd] where query i
// reads key/value j quantized iff j < first_full_precision(i, plan) of its
// quantizer; under the kvtuner target, as KVTuner's cache reads them: the
// prompt fresh, then periods of flush_period() tokens reading the cache as
// re-quantized at the end of the previous period (quantized_attention.cpp).
torch::Tensor quantized_attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const TensorQuantizer& keys,
                                  const TensorQuantizer& values, const ReadPlan& plan = {});

// Throws kvtune::Error when a layer's format cannot be read by `rule`: kivi
// windows are read in full precision, never back from the cache.
void check_read_rule(const LayerQuantizers& layers, const ReadRule& rule);

// A real decoding cache: tokens leaving the full-precision window are
// quantized to codes and read back dequantized. With a prompt (T0 > 0) the
// first append is the prefill of all T0 tokens at once; every later append
// is one decoded token. Under the kvtuner target it is KVTuner's update(),
// step for step (its first append, whatever its size, is the prefill).
class QuantizedKvCache : public KvCache {
 public:
  // One quantizer pair per layer.
  explicit QuantizedKvCache(LayerQuantizers layers, ReadPlan plan = {});
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k,
                                                 const torch::Tensor& v) override;
  int64_t length() const override { return length_; }

 private:
  struct Stream {
    torch::Tensor quantized;  // dequantized values of flushed tokens
    torch::Tensor recent;     // full-precision tokens not yet flushed
  };
  torch::Tensor push(Stream& s, const TensorQuantizer& q, const torch::Tensor& x) const;
  LayerQuantizers quantizers_;
  ReadPlan plan_;
  std::vector<std::pair<Stream, Stream>> streams_;
  int64_t length_ = 0;
  int64_t position_ = 0;  // position of the token being appended
};

// Over the continuation positions i >= T0 (every position when T0 = 0).
struct Metrics {
  double kl = 0;         // mean KL(fp || quantized), nats/token
  double kl_all = 0;     // the same over every position, the prompt's included
  double delta_nll = 0;  // mean NLL change over positions that have a next token
  double ppl_fp = 0;
  double ppl_q = 0;
  double top1_agreement = 0;
  double avg_bits = 0;               // KVTuner's equivalent bits, mean over layers
  double bytes_per_token = 0;        // KV cache bytes per token, all layers, metadata included
  std::vector<double> attn_rel_err;  // per layer, layer-local
  int64_t tokens = 0;

  nlohmann::json to_json() const;
};

// Per (layer, kv head) max |x| of the unquantized keys and values over the
// calibration data: the static fp8/nvfp4 scales.
struct KvAmax {
  std::vector<std::vector<float>> keys, values;  // [layer][head]

  // All zeros for a model: no calibration seen yet.
  static KvAmax zeros(const ModelConfig& config);
  // Causal attention that also folds each layer's K/V amax into this.
  AttentionFn recording_attention();
};

// One (keys, values) quantizer per layer; static fp8/nvfp4 scales from `amax`.
// Throws kvtune::Error when the config does not fit the model.
LayerQuantizers make_quantizers(const ModelConfig& config, const std::vector<PrecisionPair>& layers,
                                const Scheme& scheme, const KvAmax& amax);

// Free-running greedy generation (teacher-forced KL does not see errors
// compound): from each prompt, the unquantized model and the model reading a
// real quantized decode cache each generate their own greedy continuation.
struct FreeRun {
  int64_t prompts = 0, prompt_tokens = 0, new_tokens = 0;
  double agreement = 0;         // share of new positions where the two tokens agree
  double first_divergence = 0;  // mean index of the first differing new token (new_tokens: none)

  nlohmann::json to_json() const;
};

// How an Evaluator keeps its unquantized reference.
struct EvaluatorOptions {
  // Bytes of hidden states kept at layer boundaries (prefix reuse). The
  // unquantized ones: an evaluation whose first quantized layer is f starts
  // from the nearest kept boundary at or before f. When the budget holds
  // every boundary twice, also the last evaluation's own (its trail): the
  // next one starts after the leading layers it shares with it (configs in
  // lexicographic order share long prefixes). -1: up to a quarter of the
  // memory free on the model's device; 0: none (every evaluation runs from
  // layer 0).
  int64_t prefix_cache_bytes = -1;
  // Whether the reference log-probabilities (tokens x vocab float32) are
  // kept, or recomputed chunk by chunk from the final hidden states at each
  // evaluation (bounded). Auto keeps them when they take at most
  // `full_reference_limit` bytes (small vocabularies: it saves the
  // reference's output head per evaluation).
  enum class Reference { Auto, Full, Bounded };
  Reference reference = Reference::Auto;
  int64_t full_reference_limit = int64_t{64} << 20;
  // A profile evaluation (one quantized layer, its attention error not yet
  // measured) measures that error in its own pass; false: by a replay of the
  // unquantized model first (kvtune before prefix reuse; for benchmarks).
  bool attention_error_in_pass = true;
  // Floats of one chunk's logits in the metrics (a chunk is a run of positions
  // of every sequence of a batch): bounds the metrics' working memory.
  int64_t chunk_floats = int64_t{16} << 20;
};

// Evaluates per-layer KV configurations of one model on one calibration set.
// The unquantized reference (final hidden states, layer-boundary checkpoints
// and amax) is computed once; its memory is O(tokens x dim) per kept boundary.
class Evaluator {
 public:
  // `prompts`: each sequence's prompt length T0 (empty: 0 for every one);
  // each leaves at least two continuation tokens.
  Evaluator(const Model& model, std::vector<std::vector<int64_t>> sequences,
            const std::vector<int64_t>& prompts = {}, const EvaluatorOptions& options = {});

  Metrics evaluate(const std::vector<PrecisionPair>& layers, const Scheme& scheme,
                   const ReadRule& rule = {});

  // FreeRun from the first `prompt_tokens` tokens of each of the first
  // `prompts` sequences, `new_tokens` tokens each (the prompt prefilled at
  // once, then a token at a time, read as `rule` says). The unquantized
  // continuations are computed once per (prompts, prompt_tokens, new_tokens).
  // Throws kvtune::Error naming the value that does not fit the data or model.
  FreeRun free_run(const std::vector<PrecisionPair>& layers, const Scheme& scheme,
                   const ReadRule& rule, int64_t prompts, int64_t prompt_tokens,
                   int64_t new_tokens);

  // The quantizers of a configuration, scaled by this calibration set's amax.
  LayerQuantizers quantizers(const std::vector<PrecisionPair>& layers, const Scheme& scheme) const {
    return make_quantizers(model_.config, layers, scheme, amax_);
  }
  const KvAmax& amax() const { return amax_; }
  const Transformer& transformer() const { return transformer_; }
  // Bytes of the reference state this evaluator holds on the model's device.
  int64_t reference_bytes() const;
  // Layer boundaries kept for prefix reuse: every `checkpoint_stride()`
  // layers from layer 0 (0: none).
  int64_t checkpoint_stride() const { return stride_; }
  // Whether the last evaluation's boundaries are kept for the next one.
  bool keeps_trail() const { return keep_trail_; }
  // Layers run by evaluations and attention-error replays so far (a full
  // forward counts n_layers): what prefix reuse saves.
  int64_t layers_run() const { return layers_run_; }

 private:
  struct Batch {
    torch::Tensor tokens;                    // [B, T]
    std::vector<torch::Tensor> checkpoints;  // input of layer i * stride_, [B, T, dim]
    torch::Tensor final_hidden;              // output of the last layer, [B, T, dim]
    torch::Tensor ref_logp;                  // [B, T, V], when the reference is kept in full
    int64_t prompt_tokens = 0;
  };
  // Sums of one batch's metric terms.
  struct Sums {
    double kl = 0, kl_all = 0, nll_fp = 0, nll_q = 0, agree = 0;
    Sums& operator+=(const Sums& o) {
      kl += o.kl, kl_all += o.kl_all, nll_fp += o.nll_fp, nll_q += o.nll_q, agree += o.agree;
      return *this;
    }
  };
  // Measures the layer-local attention errors not memoized yet by replaying
  // the unquantized model; when the only one missing is `inline_layer`'s,
  // returns it instead, for the evaluation to measure (-1 otherwise).
  int64_t fill_attention_errors(const std::vector<PrecisionPair>& layers, const Scheme& scheme,
                                const ReadRule& rule, const LayerQuantizers& qs,
                                int64_t inline_layer);
  // The nearest kept unquantized boundary at or before `layer` (0: the
  // embedding, recomputed), and the hidden states entering it.
  int64_t kept_boundary(int64_t layer) const {
    return stride_ == 0 ? 0 : layer / stride_ * stride_;
  }
  torch::Tensor hidden_at(const Batch& b, int64_t boundary) const;
  // The last evaluation's hidden states entering layers [from, n_layers),
  // per batch, under its config, scheme and read rule.
  struct Trail {
    std::string key;  // scheme and rule
    std::vector<PrecisionPair> layers;
    int64_t from = 0;
    std::vector<std::vector<torch::Tensor>> hidden;
  };
  // KL, NLL and top-1 terms of final hidden states `x` against the reference.
  Sums compare(const Batch& b, const torch::Tensor& x) const;

  const Model& model_;
  Transformer transformer_;
  std::vector<std::vector<int64_t>> sequences_;  // as given
  std::vector<Batch> batches_;                   // sequences grouped by length
  int64_t longest_ = 0;
  int64_t stride_ = 0;
  bool keep_trail_ = false;
  bool error_in_pass_ = true;
  Trail trail_;
  int64_t chunk_floats_ = 0;
  int64_t layers_run_ = 0;
  KvAmax amax_;
  std::map<std::string, double> attn_err_memo_;  // (scheme, rule, layer, pair) -> relative error
  // (prompts, prompt_tokens, new_tokens) -> the unquantized continuations.
  std::map<std::array<int64_t, 3>, std::vector<std::vector<int64_t>>> free_run_memo_;
};

}  // namespace kvtune::worker
