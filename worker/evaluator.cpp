#include "evaluator.h"

#include <cmath>

#if defined(KVTUNE_TORCH_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif

#include "kvtune/common/error.h"

namespace kvtune::worker {
namespace kk = kvtune::kernels;

// ---------------------------------------------------------------------------
// TensorQuantizer

TensorQuantizer::TensorQuantizer(KvFormat format, kk::Role role, const Scheme& scheme,
                                 std::vector<float> head_amax)
    : format_(format), role_(role), scheme_(scheme) {
  for (float a : head_amax) {
    head_scales_.push_back(format.kind == KvFormat::Kind::Nvfp4 ? kk::nvfp4_head_scale(a)
                                                                : kk::fp8_head_scale(a));
  }
}

kk::IntSpec TensorQuantizer::int_spec() const {
  return scheme_.int_spec(role_, format_.bits);
}

int64_t TensorQuantizer::full_precision_window() const {
  const bool kivi = format_.kind == KvFormat::Kind::Int && scheme_.grouping == kk::Grouping::Kivi;
  return kivi ? scheme_.residual : 1;
}

int64_t TensorQuantizer::quantized_before(int64_t i) const {
  if (!active()) return 0;
  const int64_t w = full_precision_window();
  return (i / w) * w;
}

namespace {

kk::CacheShape shape_of(const torch::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2)};
}

// x as the kernels take it: contiguous, in a dtype they read.
torch::Tensor kernel_input(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  const bool native = t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16;
  return (native ? x : x.to(torch::kFloat32)).contiguous();
}

kk::DType kernel_dtype(const torch::Tensor& x) {
  if (x.scalar_type() == torch::kFloat16) return kk::DType::F16;
  if (x.scalar_type() == torch::kBFloat16) return kk::DType::BF16;
  return kk::DType::F32;
}

}  // namespace

torch::Tensor TensorQuantizer::fake_quant(const torch::Tensor& x) const {
  if (!active()) return x;
  const torch::Tensor in = kernel_input(x);
  torch::Tensor out = torch::empty_like(in);
  const kk::CacheShape shape = shape_of(in);
  const kk::DType dtype = kernel_dtype(in);
  if (in.is_cuda()) {
    fake_quant_cuda(in, out);
    return out.to(x.dtype());
  }
  switch (format_.kind) {
    case KvFormat::Kind::Int:
      kk::cpu::fake_quant_int(int_spec(), shape, dtype, in.data_ptr(), out.data_ptr());
      break;
    case KvFormat::Kind::Fp8:
      kk::cpu::fake_quant_fp8(shape, dtype, in.data_ptr(), head_scales_.data(), out.data_ptr());
      break;
    case KvFormat::Kind::Nvfp4:
      kk::cpu::fake_quant_nvfp4(shape, dtype, in.data_ptr(), head_scales_.data(), out.data_ptr());
      break;
    case KvFormat::Kind::Full:
      break;
  }
  return out.to(x.dtype());
}

#if defined(KVTUNE_TORCH_CUDA)
void TensorQuantizer::fake_quant_cuda(const torch::Tensor& in, torch::Tensor& out) const {
  // The kernels run on the stream LibTorch uses for this device.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.device().index()).stream();
  const kk::CacheShape shape = shape_of(in);
  const kk::DType dtype = kernel_dtype(in);
  if (format_.kind == KvFormat::Kind::Int) {
    kk::cuda::fake_quant_int(int_spec(), shape, dtype, in.data_ptr(), out.data_ptr(), stream);
    return;
  }
  const torch::Tensor scales = torch::tensor(head_scales_).to(in.device());
  if (format_.kind == KvFormat::Kind::Fp8) {
    kk::cuda::fake_quant_fp8(shape, dtype, in.data_ptr(), scales.data_ptr<float>(), out.data_ptr(),
                             stream);
  } else {
    kk::cuda::fake_quant_nvfp4(shape, dtype, in.data_ptr(), scales.data_ptr<float>(),
                               out.data_ptr(), stream);
  }
}
#else
void TensorQuantizer::fake_quant_cuda(const torch::Tensor& in, torch::Tensor&) const {
  throw Error("KV quantization of " + in.device().str() +
              " tensors needs kvtune built with CUDA against a CUDA LibTorch");
}
#endif

torch::Tensor TensorQuantizer::quantize_dequantize(const torch::Tensor& x) const {
  if (!active()) return x;
  // The decoding cache quantizes a window at a time; on a GPU it round-trips
  // through the CPU reference, which gives the same codes.
  if (!x.device().is_cpu()) return quantize_dequantize(x.cpu()).to(x.device());
  const torch::Tensor in = kernel_input(x);
  torch::Tensor out = in.clone();  // residual tokens, if any, stay as they are
  const kk::CacheShape shape = shape_of(in);
  const kk::DType dtype = kernel_dtype(in);
  const void* src = in.data_ptr();
  void* dst = out.data_ptr();
  if (format_.kind == KvFormat::Kind::Int) {
    const kk::IntSpec spec = int_spec();
    const kk::IntLayout layout = kk::int_layout(spec, shape);
    std::vector<uint32_t> codes(static_cast<size_t>(layout.code_words));
    std::vector<float> scales(static_cast<size_t>(layout.groups.count)), zeros(scales.size());
    kk::cpu::quantize_int(spec, shape, dtype, src, {codes.data(), scales.data(), zeros.data()});
    kk::cpu::dequantize_int(spec, shape, {codes.data(), scales.data(), zeros.data()}, dtype, dst);
  } else if (format_.kind == KvFormat::Kind::Fp8) {
    std::vector<uint8_t> codes(static_cast<size_t>(shape.elements()));
    kk::cpu::quantize_fp8(shape, dtype, src, head_scales_.data(), codes.data());
    kk::cpu::dequantize_fp8(shape, codes.data(), head_scales_.data(), dtype, dst);
  } else {
    const auto n = static_cast<size_t>(shape.elements());
    std::vector<uint32_t> codes((n + 7) / 8);
    std::vector<uint8_t> blocks(n / static_cast<size_t>(kk::nvfp4_block(shape.head_dim)));
    kk::cpu::quantize_nvfp4(shape, dtype, src, head_scales_.data(), {codes.data(), blocks.data()});
    kk::cpu::dequantize_nvfp4(shape, {codes.data(), blocks.data()}, head_scales_.data(), dtype,
                              dst);
  }
  return out.to(x.dtype());
}

double TensorQuantizer::storage_bits(int64_t tokens, int64_t kv_heads, int64_t head_dim) const {
  const kk::CacheShape shape{tokens, kv_heads, head_dim};
  switch (format_.kind) {
    case KvFormat::Kind::Int:
      return kk::int_storage_bits(int_spec(), shape);
    case KvFormat::Kind::Fp8:
      return kk::fp8_storage_bits(shape);
    case KvFormat::Kind::Nvfp4:
      return kk::nvfp4_storage_bits(shape);
    case KvFormat::Kind::Full:
      break;
  }
  return 16.0;
}

// ---------------------------------------------------------------------------
// Emulated attention

namespace {

// Fake-quantizes each sequence of x [B, T, KVH, hd].
torch::Tensor fake_quant_batch(const TensorQuantizer& q, const torch::Tensor& x) {
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < x.size(0); ++b) parts.push_back(q.fake_quant(x[b]));
  return torch::stack(parts);
}

// The w x w diagonal blocks of the last two dims of a contiguous x [B, H, T, T]
// that cover [0, (T / w) * w), as a view [B, H, T / w, w, w].
torch::Tensor diagonal_blocks(const torch::Tensor& x, int64_t w) {
  const int64_t t = x.size(-1);
  return x.as_strided({x.size(0), x.size(1), t / w, w, w},
                      {x.stride(0), x.stride(1), w * t + w, t, 1}, x.storage_offset());
}

// a [B, H, T, d] -> the same split into full blocks [B, H, T / w, w, d] and the rest.
std::pair<torch::Tensor, torch::Tensor> split_blocks(const torch::Tensor& a, int64_t w) {
  const int64_t full = (a.size(2) / w) * w;
  return {a.slice(2, 0, full).reshape({a.size(0), a.size(1), a.size(2) / w, w, a.size(3)}),
          a.slice(2, full)};
}

}  // namespace

// Query i reads token j in full precision iff j is in i's window block
// [W*floor(i/W), i] (W = 1 for per-token formats, R for kivi), and quantized
// otherwise. So the scores and outputs are those of the fully quantized cache,
// corrected on the diagonal blocks: O(T*W) extra work instead of O(T^2).
torch::Tensor quantized_attention(const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, const TensorQuantizer& keys,
                                  const TensorQuantizer& values) {
  if (!keys.active() && !values.active()) return causal_attention(q, k, v);
  const int64_t len = q.size(1);
  const int64_t group = q.size(2) / k.size(2);
  const auto heads = [group](const torch::Tensor& x) {  // [B, T, KVH, hd] -> [B, H, T, hd]
    return x.transpose(1, 2).repeat_interleave(group, 1);
  };
  const torch::Tensor qh = q.transpose(1, 2) / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor scores;
  if (!keys.active()) {
    scores = torch::matmul(qh, heads(k).transpose(-2, -1));
  } else {
    const torch::Tensor kh = heads(k);
    scores = torch::matmul(qh, heads(fake_quant_batch(keys, k)).transpose(-2, -1)).contiguous();
    const int64_t w = keys.full_precision_window();
    const int64_t full = (len / w) * w;
    const auto [q_blocks, q_rest] = split_blocks(qh, w);
    const auto [k_blocks, k_rest] = split_blocks(kh, w);
    diagonal_blocks(scores, w).copy_(torch::matmul(q_blocks, k_blocks.transpose(-2, -1)));
    if (full < len) {
      scores.slice(2, full).slice(3, full).copy_(torch::matmul(q_rest, k_rest.transpose(-2, -1)));
    }
  }
  const torch::Tensor future = torch::ones({len, len}, q.options().dtype(torch::kBool)).triu(1);
  const torch::Tensor p =
      softmax_f32(scores.masked_fill(future, -std::numeric_limits<float>::infinity())).contiguous();
  if (!values.active()) return torch::matmul(p, heads(v)).transpose(1, 2);

  const torch::Tensor vq = heads(fake_quant_batch(values, v));
  torch::Tensor out = torch::matmul(p, vq);
  // Add back, on the diagonal blocks, what full precision changes.
  const int64_t w = values.full_precision_window();
  const int64_t full = (len / w) * w;
  const auto [d_blocks, d_rest] = split_blocks(heads(v) - vq, w);
  out.slice(2, 0, full) += torch::matmul(diagonal_blocks(p, w), d_blocks)
                               .reshape({out.size(0), out.size(1), full, out.size(3)});
  if (full < len) out.slice(2, full) += torch::matmul(p.slice(2, full).slice(3, full), d_rest);
  return out.transpose(1, 2);
}

// ---------------------------------------------------------------------------
// QuantizedKvCache

QuantizedKvCache::QuantizedKvCache(LayerQuantizers layers)
    : quantizers_(std::move(layers)), streams_(quantizers_.size()) {}

torch::Tensor QuantizedKvCache::push(Stream& s, const TensorQuantizer& q,
                                     const torch::Tensor& x) const {
  const int64_t flushed = s.quantized.defined() ? s.quantized.size(0) : 0;
  const int64_t recent = s.recent.defined() ? s.recent.size(0) : 0;
  const int64_t position = flushed + recent;  // of the token being appended
  const int64_t due = q.quantized_before(position) - flushed;
  if (due > 0) {
    // Tokens leaving the full-precision window are quantized once, as a chunk
    // (a whole kivi window, or one token), and read back from their codes.
    const torch::Tensor chunk = q.quantize_dequantize(s.recent.slice(0, 0, due));
    s.quantized = s.quantized.defined() ? torch::cat({s.quantized, chunk}) : chunk;
    s.recent = s.recent.slice(0, due);
  }
  s.recent = s.recent.defined() ? torch::cat({s.recent, x.unsqueeze(0)}) : x.unsqueeze(0);
  return s.quantized.defined() ? torch::cat({s.quantized, s.recent}) : s.recent;
}

std::pair<torch::Tensor, torch::Tensor> QuantizedKvCache::append(int64_t layer,
                                                                 const torch::Tensor& k,
                                                                 const torch::Tensor& v) {
  const auto l = static_cast<size_t>(layer);
  if (l >= quantizers_.size()) {
    throw Error("QuantizedKvCache has " + std::to_string(quantizers_.size()) + " layers; layer " +
                std::to_string(layer) + " was appended");
  }
  auto& [ks, vs] = streams_[l];
  torch::Tensor keys = push(ks, quantizers_[l].first, k);
  torch::Tensor values = push(vs, quantizers_[l].second, v);
  if (l == 0) length_ = keys.size(0);
  return {keys, values};
}

// ---------------------------------------------------------------------------
// Metrics and Evaluator

nlohmann::json Metrics::to_json() const {
  return {{"kl", kl},
          {"delta_nll", delta_nll},
          {"ppl_fp", ppl_fp},
          {"ppl_q", ppl_q},
          {"top1_agreement", top1_agreement},
          {"avg_bits", avg_bits},
          {"bytes_per_token", bytes_per_token},
          {"attn_rel_err", attn_rel_err},
          {"tokens", tokens}};
}

Evaluator::Evaluator(const Model& model, std::vector<std::vector<int64_t>> sequences)
    : model_(model), transformer_(model) {
  const ModelConfig& c = model.config;
  if (sequences.empty()) throw Error("the calibration data holds no sequences");
  std::map<int64_t, std::vector<torch::Tensor>> by_length;
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
    by_length[static_cast<int64_t>(seq.size())].push_back(torch::tensor(seq, torch::kInt64));
    longest_ = std::max(longest_, static_cast<int64_t>(seq.size()));
  }
  amax_ = KvAmax::zeros(c);
  const AttentionFn record_amax = amax_.recording_attention();
  for (auto& [len, seqs] : by_length) {
    Batch b;
    b.tokens = torch::stack(seqs).to(model.embedding.device());
    b.ref_logp =
        torch::log_softmax(transformer_.forward(b.tokens, record_amax), -1, torch::kFloat32);
    batches_.push_back(std::move(b));
  }
}

KvAmax KvAmax::zeros(const ModelConfig& config) {
  KvAmax a;
  a.keys.assign(static_cast<size_t>(config.n_layers),
                std::vector<float>(static_cast<size_t>(config.n_kv_heads), 0.0f));
  a.values = a.keys;
  return a;
}

AttentionFn KvAmax::recording_attention() {
  return [this](int64_t l, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
    const auto update = [](std::vector<float>& acc, const torch::Tensor& x) {
      const torch::Tensor m = x.abs().amax({0, 1, 3}).to(torch::kCPU, torch::kFloat32).contiguous();
      for (size_t h = 0; h < acc.size(); ++h) {
        acc[h] = std::max(acc[h], m[static_cast<int64_t>(h)].item<float>());
      }
    };
    update(keys[static_cast<size_t>(l)], k);
    update(values[static_cast<size_t>(l)], v);
    return causal_attention(q, k, v);
  };
}

LayerQuantizers make_quantizers(const ModelConfig& c, const std::vector<PrecisionPair>& layers,
                                const Scheme& scheme, const KvAmax& amax) {
  if (static_cast<int64_t>(layers.size()) != c.n_layers) {
    throw Error("the config has " + std::to_string(layers.size()) + " layers but the model has " +
                std::to_string(c.n_layers));
  }
  LayerQuantizers out;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].key.kind == KvFormat::Kind::Nvfp4 ||
        layers[l].value.kind == KvFormat::Kind::Nvfp4) {
      kk::nvfp4_block(c.head_dim);  // throws when head_dim does not fit NVFP4 blocks
    }
    out.emplace_back(TensorQuantizer(layers[l].key, kk::Role::Key, scheme, amax.keys[l]),
                     TensorQuantizer(layers[l].value, kk::Role::Value, scheme, amax.values[l]));
  }
  return out;
}

void Evaluator::fill_attention_errors(const std::vector<PrecisionPair>& layers,
                                      const Scheme& scheme, const LayerQuantizers& qs) {
  std::vector<std::string> keys;
  std::vector<bool> needed;
  bool any = false;
  for (size_t l = 0; l < layers.size(); ++l) {
    keys.push_back(scheme.key() + "|" + std::to_string(l) + "|" + layers[l].name());
    const bool active = qs[l].first.active() || qs[l].second.active();
    if (!active) attn_err_memo_[keys.back()] = 0.0;
    needed.push_back(!attn_err_memo_.contains(keys.back()));
    any = any || needed.back();
  }
  if (!any) return;
  // Replay the unquantized model; at each layer compare its own attention
  // output with the one read through that layer's quantized cache.
  std::vector<double> num(layers.size(), 0.0), den(layers.size(), 0.0);
  const AttentionFn compare = [&](int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v) {
    const auto l = static_cast<size_t>(layer);
    torch::Tensor out = causal_attention(q, k, v);
    if (needed[l]) {
      const torch::Tensor diff = quantized_attention(q, k, v, qs[l].first, qs[l].second) - out;
      num[l] += diff.pow(2).sum().item<double>();
      den[l] += out.pow(2).sum().item<double>();
    }
    return out;
  };
  for (const Batch& b : batches_) transformer_.forward(b.tokens, compare);
  for (size_t l = 0; l < layers.size(); ++l) {
    if (needed[l]) attn_err_memo_[keys[l]] = den[l] > 0 ? std::sqrt(num[l] / den[l]) : 0.0;
  }
}

Metrics Evaluator::evaluate(const std::vector<PrecisionPair>& layers, const Scheme& scheme) {
  const ModelConfig& c = model_.config;
  const auto qs = quantizers(layers, scheme);
  fill_attention_errors(layers, scheme, qs);
  const AttentionFn attention = [&qs](int64_t l, const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v) {
    const auto& [kq, vq] = qs[static_cast<size_t>(l)];
    return quantized_attention(q, k, v, kq, vq);
  };
  double kl = 0, nll_fp = 0, nll_q = 0, agree = 0;
  int64_t positions = 0, predicted = 0;
  for (const Batch& b : batches_) {
    const torch::Tensor logp =
        torch::log_softmax(transformer_.forward(b.tokens, attention), -1, torch::kFloat32);
    kl += (b.ref_logp.exp() * (b.ref_logp - logp)).sum().to(torch::kFloat64).item<double>();
    agree += (b.ref_logp.argmax(-1) == logp.argmax(-1)).sum().item<double>();
    positions += b.tokens.numel();
    const int64_t len = b.tokens.size(1);
    const torch::Tensor next = b.tokens.slice(1, 1).unsqueeze(-1);
    nll_fp -=
        b.ref_logp.slice(1, 0, len - 1).gather(-1, next).sum().to(torch::kFloat64).item<double>();
    nll_q -= logp.slice(1, 0, len - 1).gather(-1, next).sum().to(torch::kFloat64).item<double>();
    predicted += next.numel();
  }
  if (!std::isfinite(kl) || !std::isfinite(nll_q)) {
    throw Error("the quantized evaluation of " + format_layer_config(layers) +
                " produced non-finite log-probabilities (NaN or Inf activations)");
  }
  Metrics m;
  m.tokens = positions;
  m.kl = kl / static_cast<double>(positions);
  m.top1_agreement = agree / static_cast<double>(positions);
  m.delta_nll = (nll_q - nll_fp) / static_cast<double>(predicted);
  m.ppl_fp = std::exp(nll_fp / static_cast<double>(predicted));
  m.ppl_q = std::exp(nll_q / static_cast<double>(predicted));
  m.avg_bits = average_bits(layers);
  for (size_t l = 0; l < layers.size(); ++l) {
    const double bits = qs[l].first.storage_bits(longest_, c.n_kv_heads, c.head_dim) +
                        qs[l].second.storage_bits(longest_, c.n_kv_heads, c.head_dim);
    m.bytes_per_token += bits * static_cast<double>(c.n_kv_heads * c.head_dim) / 8.0;
    m.attn_rel_err.push_back(
        attn_err_memo_.at(scheme.key() + "|" + std::to_string(l) + "|" + layers[l].name()));
  }
  return m;
}

}  // namespace kvtune::worker
