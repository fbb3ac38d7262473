// The evaluation engine: emulates decoding with a quantized KV cache over
// whole calibration sequences in one teacher-forced pass, and measures how
// much it changes the model's predictions (../shared/DESIGN.md, "Evaluation
// semantics").
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvtune/common/precision.h"
#include "kvtune/common/scheme.h"
#include "kvtune/kernels/quant.h"
#include "llama.h"

namespace kvtune::worker {

// One layer's keys or values under one format: what the emulated cache holds.
// Integer formats follow the scheme's grouping and full-precision window; fp8
// and nvfp4 quantize every token once it is no longer the current one (as the
// per-token scheme does), with static per-head scales from calibration amax.
class TensorQuantizer {
 public:
  TensorQuantizer(KvFormat format, kernels::Role role, const Scheme& scheme,
                  std::vector<float> head_amax);

  bool active() const { return format_.kind != KvFormat::Kind::Full; }
  // Tokens the query at position i reads in quantized form: j < this, which
  // is W * floor(i / W) for the window W below.
  int64_t quantized_before(int64_t i) const;
  // R for kivi integer formats (whole windows are flushed), else 1.
  int64_t full_precision_window() const;
  // Fake-quantizes one sequence's x [tokens, kv_heads, head_dim] in one pass.
  torch::Tensor fake_quant(const torch::Tensor& x) const;
  // Quantizes x to codes and dequantizes them (the real cache's path).
  torch::Tensor quantize_dequantize(const torch::Tensor& x) const;
  // Storage bits per element for a cache of `tokens` tokens.
  double storage_bits(int64_t tokens, int64_t kv_heads, int64_t head_dim) const;

 private:
  kernels::IntSpec int_spec() const;
  void fake_quant_cuda(const torch::Tensor& in, torch::Tensor& out) const;
  KvFormat format_;
  kernels::Role role_;
  Scheme scheme_;
  std::vector<float> head_scales_;
};

// One (keys, values) quantizer per layer of a model.
using LayerQuantizers = std::vector<std::pair<TensorQuantizer, TensorQuantizer>>;

// Causal attention of q [B, T, H, hd] over k, v [B, T, KVH, hd] where query i
// reads key/value j quantized iff j < quantized_before(i) of its quantizer.
torch::Tensor quantized_attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const TensorQuantizer& keys,
                                  const TensorQuantizer& values);

// A real decoding cache: tokens leaving the full-precision window are
// quantized to codes and read back dequantized.
class QuantizedKvCache : public KvCache {
 public:
  // One quantizer pair per layer.
  explicit QuantizedKvCache(LayerQuantizers layers);
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
  std::vector<std::pair<Stream, Stream>> streams_;
  int64_t length_ = 0;
  int64_t position_ = 0;  // position of the token being appended
};

struct Metrics {
  double kl = 0;         // mean KL(fp || quantized), nats/token, over every position
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

// Evaluates per-layer KV configurations of one model on one calibration set.
// The unquantized reference (log-probabilities and amax) is computed once.
class Evaluator {
 public:
  Evaluator(const Model& model, std::vector<std::vector<int64_t>> sequences);

  Metrics evaluate(const std::vector<PrecisionPair>& layers, const Scheme& scheme);

  // The quantizers of a configuration, scaled by this calibration set's amax.
  LayerQuantizers quantizers(const std::vector<PrecisionPair>& layers, const Scheme& scheme) const {
    return make_quantizers(model_.config, layers, scheme, amax_);
  }
  const KvAmax& amax() const { return amax_; }
  const Transformer& transformer() const { return transformer_; }

 private:
  struct Batch {
    torch::Tensor tokens;    // [B, T]
    torch::Tensor ref_logp;  // [B, T, V]
  };
  void fill_attention_errors(const std::vector<PrecisionPair>& layers, const Scheme& scheme,
                             const LayerQuantizers& qs);

  const Model& model_;
  Transformer transformer_;
  std::vector<Batch> batches_;  // sequences grouped by length
  int64_t longest_ = 0;
  KvAmax amax_;
  std::map<std::string, double> attn_err_memo_;  // (scheme, layer, pair) -> relative error
};

}  // namespace kvtune::worker
