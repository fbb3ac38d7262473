// The Evaluator: the unquantized reference pass (amax, final hidden states and
// the hidden states kept at layer boundaries), evaluations that start from the
// boundary nearest their first quantized layer, and the metrics, computed
// chunk by chunk of positions so that no tokens x vocab tensor is kept.
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "evaluator.h"

#if defined(KVTUNE_TORCH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#endif

#include "kvtune/common/error.h"

namespace kvtune::worker {

namespace {

int64_t free_memory_bytes(const torch::Device& device) {
#if defined(KVTUNE_TORCH_CUDA)
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device.index());
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
    return static_cast<int64_t>(free);
  }
#endif
  if (!device.is_cpu()) return 0;
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

// The smallest stride whose kept boundaries (layers stride, 2 stride, ... <
// n_layers; layer 0's input is the embedding, recomputed) fit `budget`.
int64_t stride_for_budget(int64_t n_layers, int64_t boundary_bytes, int64_t budget) {
  if (n_layers <= 1 || boundary_bytes <= 0) return 1;
  const int64_t kept = budget / boundary_bytes;
  for (int64_t stride = 1; stride < n_layers; ++stride) {
    if ((n_layers - 1) / stride <= kept) return stride;
  }
  return 0;  // not even one boundary fits
}

// Adds one batch's layer-local attention error terms, over the continuation
// rows (t0 onwards) as the other metrics.
void add_attention_error(const torch::Tensor& quantized, const torch::Tensor& exact, int64_t t0,
                         double& num, double& den) {
  num += (quantized - exact).slice(1, t0).pow(2).sum().item<double>();
  den += exact.slice(1, t0).pow(2).sum().item<double>();
}

std::string attention_error_key(const Scheme& scheme, const ReadRule& rule, size_t layer,
                                const PrecisionPair& pair) {
  return scheme.key() + "|" + rule.name() + "|" + std::to_string(layer) + "|" + pair.name();
}

}  // namespace

Evaluator::Evaluator(const Model& model, std::vector<std::vector<int64_t>> sequences,
                     const std::vector<int64_t>& prompts, const EvaluatorOptions& options)
    : model_(model),
      transformer_(model),
      chunk_floats_(std::max<int64_t>(1, options.chunk_floats)) {
  const ModelConfig& c = model.config;
  if (sequences.empty()) throw Error("the calibration data holds no sequences");
  if (!prompts.empty() && prompts.size() != sequences.size()) {
    throw Error("the calibration data has " + std::to_string(sequences.size()) + " sequences but " +
                std::to_string(prompts.size()) + " prompt lengths");
  }
  // Sequences of one length and one prompt length form a batch.
  std::map<std::pair<int64_t, int64_t>, std::vector<torch::Tensor>> by_shape;
  int64_t total_tokens = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto& seq = sequences[s];
    if (seq.size() < 2 || static_cast<int64_t>(seq.size()) > c.max_seq_len) {
      throw Error("calibration sequence " + std::to_string(s) + " has " +
                  std::to_string(seq.size()) + " tokens; it needs 2 to " +
                  std::to_string(c.max_seq_len) + " (the model's context)");
    }
    for (size_t i = 0; i < seq.size(); ++i) {
      if (seq[i] < 0 || seq[i] >= c.vocab_size) {
        throw Error("calibration sequence " + std::to_string(s) + ", position " +
                    std::to_string(i) + ": token id " + std::to_string(seq[i]) +
                    " is outside the vocabulary of " + std::to_string(c.vocab_size));
      }
    }
    const int64_t t0 = prompts.empty() ? 0 : prompts[s];
    const auto len = static_cast<int64_t>(seq.size());
    if (t0 < 0 || t0 > len - 2) {
      throw Error("calibration sequence " + std::to_string(s) + " has " + std::to_string(len) +
                  " tokens and a prompt of " + std::to_string(t0) +
                  "; the prompt must leave at least 2 tokens to continue");
    }
    by_shape[{len, t0}].push_back(torch::tensor(seq, torch::kInt64));
    longest_ = std::max(longest_, len);
    total_tokens += len;
  }
  sequences_ = std::move(sequences);  // kept for free-running generation
  const torch::Device device = model.embedding.device();
  const int64_t budget =
      options.prefix_cache_bytes >= 0 ? options.prefix_cache_bytes : free_memory_bytes(device) / 4;
  const int64_t boundary_bytes = total_tokens * c.dim * model.embedding.element_size();
  stride_ = stride_for_budget(c.n_layers, boundary_bytes, budget);
  keep_trail_ = stride_ == 1 && budget >= 2 * c.n_layers * boundary_bytes;
  error_in_pass_ = options.attention_error_in_pass;
  using Reference = EvaluatorOptions::Reference;
  const bool keep_logp = options.reference == Reference::Full ||
                         (options.reference == Reference::Auto &&
                          total_tokens * c.vocab_size * 4 <= options.full_reference_limit);
  amax_ = KvAmax::zeros(c);
  const AttentionFn record_amax = amax_.recording_attention();
  for (auto& [shape, seqs] : by_shape) {
    Batch b;
    b.prompt_tokens = shape.second;
    b.tokens = torch::stack(seqs).to(device);
    torch::Tensor x = transformer_.embed(b.tokens);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      if (stride_ > 0 && l > 0 && l % stride_ == 0) b.checkpoints.push_back(x);
      x = transformer_.run_layers(x, l, l + 1, record_amax);
    }
    b.final_hidden = x;
    if (keep_logp) {
      b.ref_logp = torch::log_softmax(transformer_.head(x), -1, torch::kFloat32);
    }
    batches_.push_back(std::move(b));
  }
}

int64_t Evaluator::reference_bytes() const {
  int64_t bytes = 0;
  const auto add = [&bytes](const torch::Tensor& t) {
    if (t.defined()) bytes += static_cast<int64_t>(t.nbytes());
  };
  for (const Batch& b : batches_) {
    for (const torch::Tensor& t : b.checkpoints) add(t);
    add(b.final_hidden);
    add(b.ref_logp);
  }
  for (const auto& batch : trail_.hidden) {
    for (const torch::Tensor& t : batch) add(t);
  }
  return bytes;
}

torch::Tensor Evaluator::hidden_at(const Batch& b, int64_t boundary) const {
  if (boundary == 0) return transformer_.embed(b.tokens);
  return b.checkpoints[static_cast<size_t>(boundary / stride_ - 1)];
}

Evaluator::Sums Evaluator::compare(const Batch& b, const torch::Tensor& x) const {
  const int64_t batch = b.tokens.size(0), len = b.tokens.size(1), t0 = b.prompt_tokens;
  const int64_t chunk = std::max<int64_t>(1, chunk_floats_ / (batch * model_.config.vocab_size));
  const auto logp = [this](const torch::Tensor& h) {
    return torch::log_softmax(transformer_.head(h), -1, torch::kFloat32);
  };
  // Accumulated on the device; read once at the end.
  torch::Tensor kl = torch::zeros({}, b.final_hidden.options().dtype(torch::kFloat64));
  torch::Tensor kl_all = kl.clone(), nll_fp = kl.clone(), nll_q = kl.clone(), agree = kl.clone();
  for (int64_t p0 = 0; p0 < len; p0 += chunk) {
    const int64_t p1 = std::min(len, p0 + chunk);
    const torch::Tensor ref =
        b.ref_logp.defined() ? b.ref_logp.slice(1, p0, p1) : logp(b.final_hidden.slice(1, p0, p1));
    const torch::Tensor q = logp(x.slice(1, p0, p1));
    const torch::Tensor terms =
        (ref.exp() * (ref - q)).sum({-1}, false, torch::kFloat64);  // [B, n]
    kl_all += terms.sum();
    const int64_t c0 = std::max(p0, t0);  // the chunk's continuation positions: [c0, p1)
    if (c0 < p1) {
      kl += terms.slice(1, c0 - p0).sum();
      agree += (ref.slice(1, c0 - p0).argmax(-1) == q.slice(1, c0 - p0).argmax(-1)).sum();
    }
    const int64_t n1 = std::min(p1, len - 1);  // positions with a next token: [c0, n1)
    if (c0 < n1) {
      const torch::Tensor next = b.tokens.slice(1, c0 + 1, n1 + 1).unsqueeze(-1);
      nll_fp -= ref.slice(1, c0 - p0, n1 - p0).gather(-1, next).sum(torch::kFloat64);
      nll_q -= q.slice(1, c0 - p0, n1 - p0).gather(-1, next).sum(torch::kFloat64);
    }
  }
  const torch::Tensor all = torch::stack({kl, kl_all, nll_fp, nll_q, agree}).cpu();
  const auto* v = all.data_ptr<double>();
  return {v[0], v[1], v[2], v[3], v[4]};
}

int64_t Evaluator::fill_attention_errors(const std::vector<PrecisionPair>& layers,
                                         const Scheme& scheme, const ReadRule& rule,
                                         const LayerQuantizers& qs, int64_t inline_layer) {
  std::vector<std::string> keys;
  std::vector<bool> needed;
  int64_t lo = -1, hi = -1;
  for (size_t l = 0; l < layers.size(); ++l) {
    keys.push_back(attention_error_key(scheme, rule, l, layers[l]));
    const bool active = qs[l].first.active() || qs[l].second.active();
    if (!active) attn_err_memo_[keys.back()] = 0.0;
    needed.push_back(!attn_err_memo_.contains(keys.back()));
    if (needed.back()) {
      if (lo < 0) lo = static_cast<int64_t>(l);
      hi = static_cast<int64_t>(l);
    }
  }
  if (lo < 0) return -1;
  // Only the evaluation's own first quantized layer: its inputs there are the
  // unquantized ones, so the evaluation measures it (no replay).
  if (lo == hi && lo == inline_layer) return lo;
  // Replay the unquantized model over layers [lo, hi], from the nearest kept
  // boundary; at each needed layer compare its own attention output with the
  // one read through that layer's quantized cache.
  std::vector<double> num(layers.size(), 0.0), den(layers.size(), 0.0);
  ReadPlan plan{0, rule};
  const AttentionFn compare_layer = [&](int64_t layer, const torch::Tensor& q,
                                        const torch::Tensor& k, const torch::Tensor& v) {
    const auto l = static_cast<size_t>(layer);
    torch::Tensor out = causal_attention(q, k, v);
    if (needed[l]) {
      add_attention_error(quantized_attention(q, k, v, qs[l].first, qs[l].second, plan), out,
                          plan.prompt_tokens, num[l], den[l]);
    }
    return out;
  };
  for (const Batch& b : batches_) {
    plan.prompt_tokens = b.prompt_tokens;
    const int64_t from = kept_boundary(lo);
    transformer_.run_layers(hidden_at(b, from), from, hi + 1, compare_layer);
    layers_run_ += hi + 1 - from;
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    if (needed[l]) attn_err_memo_[keys[l]] = den[l] > 0 ? std::sqrt(num[l] / den[l]) : 0.0;
  }
  return -1;
}

Metrics Evaluator::evaluate(const std::vector<PrecisionPair>& layers, const Scheme& scheme,
                            const ReadRule& rule) {
  const ModelConfig& c = model_.config;
  const auto qs = quantizers(layers, scheme);
  check_read_rule(qs, rule);
  // Layers before the first quantized one compute what the reference did.
  int64_t first = c.n_layers;
  for (size_t l = 0; l < qs.size(); ++l) {
    if (qs[l].first.active() || qs[l].second.active()) {
      first = static_cast<int64_t>(l);
      break;
    }
  }
  // Where to start: the kept unquantized boundary at or before `first`, or,
  // when later, the last boundary the last evaluation shares with this one
  // (layers [0, shared) equal under the same scheme and rule).
  const std::string key = scheme.key() + "|" + rule.name();
  int64_t from = kept_boundary(first);
  bool from_trail = false;
  if (keep_trail_ && first < c.n_layers && trail_.key == key) {
    int64_t shared = 0;
    while (shared < c.n_layers && layers[static_cast<size_t>(shared)].name() ==
                                      trail_.layers[static_cast<size_t>(shared)].name()) {
      ++shared;
    }
    const int64_t at = std::min(shared, c.n_layers - 1);
    if (at >= trail_.from && at > from) {
      from = at;
      from_trail = true;
    }
  }
  // The layer-local attention errors not measured yet: by a replay of the
  // unquantized model, or, when only layer `first` lacks one and this
  // evaluation runs it, by the evaluation itself.
  const int64_t measure =
      fill_attention_errors(layers, scheme, rule, qs, error_in_pass_ && from <= first ? first : -1);
  double measure_num = 0, measure_den = 0;
  ReadPlan plan{0, rule};
  const AttentionFn attention = [&](int64_t l, const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v) {
    const auto& [kq, vq] = qs[static_cast<size_t>(l)];
    torch::Tensor out = quantized_attention(q, k, v, kq, vq, plan);
    if (l == measure) {
      add_attention_error(out, causal_attention(q, k, v), plan.prompt_tokens, measure_num,
                          measure_den);
    }
    return out;
  };
  // The new trail (when kept) keeps the shared boundaries it started after.
  const bool record = keep_trail_ && first < c.n_layers;
  Trail next;
  if (record) next = {key, layers, from_trail ? trail_.from : from, {}};
  Sums total;
  int64_t positions = 0, all_positions = 0, predicted = 0;
  for (size_t bi = 0; bi < batches_.size(); ++bi) {
    const Batch& b = batches_[bi];
    plan.prompt_tokens = b.prompt_tokens;
    torch::Tensor x = b.final_hidden;
    if (first < c.n_layers) {
      x = from_trail ? trail_.hidden[bi][static_cast<size_t>(from - trail_.from)]
                     : hidden_at(b, from);
      std::vector<torch::Tensor> kept;
      if (from_trail) {
        const auto& shared = trail_.hidden[bi];
        kept.assign(shared.begin(), shared.begin() + (from - trail_.from));
      }
      for (int64_t l = from; l < c.n_layers; ++l) {
        if (record) kept.push_back(x);
        x = transformer_.run_layers(x, l, l + 1, attention);
      }
      if (record) next.hidden.push_back(std::move(kept));
      layers_run_ += c.n_layers - from;
    }
    total += compare(b, x);
    const int64_t t0 = b.prompt_tokens, rows = b.tokens.size(0), len = b.tokens.size(1);
    positions += rows * (len - t0);
    all_positions += rows * len;
    predicted += rows * (len - t0 - 1);
  }
  if (record) trail_ = std::move(next);
  if (measure >= 0) {
    attn_err_memo_[attention_error_key(scheme, rule, static_cast<size_t>(measure),
                                       layers[static_cast<size_t>(measure)])] =
        measure_den > 0 ? std::sqrt(measure_num / measure_den) : 0.0;
  }
  if (!std::isfinite(total.kl) || !std::isfinite(total.nll_q)) {
    throw Error("the quantized evaluation of " + format_layer_config(layers) +
                " produced non-finite log-probabilities (NaN or Inf activations)");
  }
  Metrics m;
  m.tokens = positions;
  m.kl = total.kl / static_cast<double>(positions);
  // With no prompt anywhere the two are one sum (T0 = 0 is today's metric exactly).
  m.kl_all =
      all_positions == positions ? m.kl : (total.kl_all / static_cast<double>(all_positions));
  m.top1_agreement = total.agree / static_cast<double>(positions);
  m.delta_nll = (total.nll_q - total.nll_fp) / static_cast<double>(predicted);
  m.ppl_fp = std::exp(total.nll_fp / static_cast<double>(predicted));
  m.ppl_q = std::exp(total.nll_q / static_cast<double>(predicted));
  m.avg_bits = average_bits(layers);
  for (size_t l = 0; l < layers.size(); ++l) {
    const double bits = qs[l].first.storage_bits(longest_, c.n_kv_heads, c.head_dim) +
                        qs[l].second.storage_bits(longest_, c.n_kv_heads, c.head_dim);
    m.bytes_per_token += bits * static_cast<double>(c.n_kv_heads * c.head_dim) / 8.0;
    m.attn_rel_err.push_back(attn_err_memo_.at(attention_error_key(scheme, rule, l, layers[l])));
  }
  return m;
}

}  // namespace kvtune::worker
