#include "evaluator.h"

#include <algorithm>
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
                                 std::vector<float> head_amax, int layer)
    : format_(format), role_(role), scheme_(scheme), layer_(layer) {
  float layer_amax = 0.0f;
  for (float a : head_amax) {
    head_scales_.push_back(format.kind == KvFormat::Kind::Nvfp4 ? kk::nvfp4_head_scale(a)
                                                                : kk::fp8_head_scale(a));
    layer_amax = std::max(layer_amax, a);
  }
  if (format.kind == KvFormat::Kind::Engine) {
    engine_spec_ = scheme.engine_spec(format, role, layer_amax, 0);  // rotation: engine_spec()
  }
}

void TensorQuantizer::check_engine_overflow(int64_t overflow, const torch::Tensor& x) const {
  if (overflow == 0) return;
  const EngineDtype& d = format_.engine_dtype();
  const bool e4m3 = d.arith == kk::EngineArith::E4m3Cast;
  const float amax = x.abs().max().item<float>();
  const std::string tensor = (layer_ >= 0 ? "layer " + std::to_string(layer_) + " " : "") +
                             (role_ == kk::Role::Key ? "keys" : "values");
  throw Error(
      tensor + " in " + format_.name() + " at " +
      (role_ == kk::Role::Key ? "k_scale " : "v_scale ") + std::to_string(engine_spec_.scale) +
      ": " + std::to_string(overflow) + " values with |x / scale| " +
      (e4m3 ? "> 464" : ">= 61440") + " (max |x| " + std::to_string(amax) + ") become " +
      (e4m3 ? "NaN" : "inf") + " in " + std::string(d.engine) +
      "'s cache, whose fp8 cast does not saturate; a scale of at least " +
      std::to_string(amax / (e4m3 ? 448.0f : 57344.0f)) + " fits them (kv_scales calibrated)");
}

kk::EngineSpec TensorQuantizer::engine_spec(const kk::CacheShape& shape) const {
  kk::EngineSpec spec = engine_spec_;
  spec.rotate_chunk = scheme_.rotate_chunk(format_, role_, shape.head_dim);
  return spec;
}

float TensorQuantizer::layer_scale() const {
  return format_.takes_layer_scale() ? engine_spec_.scale : 0.0f;
}

kk::IntSpec TensorQuantizer::int_spec() const {
  return scheme_.int_spec(role_, format_.bits);
}

kk::KvtunerSpec TensorQuantizer::kvtuner_spec() const {
  return scheme_.kvtuner_spec(role_, format_.bits);
}

bool TensorQuantizer::groups_within_tokens(int64_t head_dim) const {
  const kk::KvtunerSpec spec = kvtuner_spec();
  return requantizes() && spec.axis == kk::KvtunerAxis::Token &&
         (spec.group_size == 0 || head_dim % spec.group_size == 0);
}

int64_t TensorQuantizer::full_precision_window() const {
  const bool kivi = format_.kind == KvFormat::Kind::Int && scheme_.grouping == kk::Grouping::Kivi &&
                    scheme_.target == Scheme::Target::Kvtune;
  return kivi ? scheme_.residual : 1;
}

int64_t TensorQuantizer::first_full_precision(int64_t i, const ReadPlan& plan) const {
  if (!active()) return 0;
  using Source = ReadRule::Source;
  if (i < plan.prompt_tokens) return plan.rule.prefill == Source::Fresh ? 0 : i + 1;
  if (plan.rule.current == Source::Cache) return i + 1;
  const int64_t w = full_precision_window();
  return (i / w) * w;
}

void check_read_rule(const LayerQuantizers& layers, const ReadRule& rule) {
  if (!rule.reads_cache()) return;
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l].first.requantizes() || layers[l].second.requantizes()) {
      throw Error("the read rule '" + rule.name() +
                  "' reads tokens back from the quantized cache, but the kvtuner target is "
                  "KVTuner's cache, which reads the prompt and each new token fresh: it takes the "
                  "fresh rule");
    }
    for (const TensorQuantizer* q : {&layers[l].first, &layers[l].second}) {
      if (q->active() && q->full_precision_window() > 1) {
        throw Error("the read rule '" + rule.name() +
                    "' reads tokens back from the quantized cache, but layer " + std::to_string(l) +
                    "'s kivi format keeps a window of " +
                    std::to_string(q->full_precision_window()) +
                    " tokens in full precision: kivi takes the fresh rule");
      }
    }
  }
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
      if (requantizes()) {
        kk::cpu::fake_quant_kvtuner(kvtuner_spec(), shape, dtype, in.data_ptr(), out.data_ptr());
      } else {
        kk::cpu::fake_quant_int(int_spec(), shape, dtype, in.data_ptr(), out.data_ptr());
      }
      break;
    case KvFormat::Kind::Fp8:
      kk::cpu::fake_quant_fp8(shape, dtype, in.data_ptr(), head_scales_.data(), out.data_ptr());
      break;
    case KvFormat::Kind::Nvfp4:
      kk::cpu::fake_quant_nvfp4(shape, dtype, in.data_ptr(), head_scales_.data(), out.data_ptr());
      break;
    case KvFormat::Kind::Engine:
      check_engine_overflow(kk::cpu::fake_quant_engine(engine_spec(shape), shape, dtype,
                                                       in.data_ptr(), out.data_ptr()),
                            in);
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
  if (requantizes()) {
    kk::cuda::fake_quant_kvtuner(kvtuner_spec(), shape, dtype, in.data_ptr(), out.data_ptr(),
                                 stream);
    return;
  }
  if (format_.kind == KvFormat::Kind::Int) {
    kk::cuda::fake_quant_int(int_spec(), shape, dtype, in.data_ptr(), out.data_ptr(), stream);
    return;
  }
  if (format_.kind == KvFormat::Kind::Engine) {
    // [0] non-finite inputs, [1] values the engine stores as NaN or inf.
    torch::Tensor counts = torch::zeros({2}, in.options().dtype(torch::kInt64));
    kk::cuda::fake_quant_engine(engine_spec(shape), shape, dtype, in.data_ptr(), out.data_ptr(),
                                stream,
                                reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()));
    const torch::Tensor host = counts.cpu();
    if (host[0].item<int64_t>() > 0) {
      throw Error("KV tensor " + shape.str() + " holds NaN or inf (non-finite model activations)");
    }
    check_engine_overflow(host[1].item<int64_t>(), in);
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
  // KVTuner's cache stores int8 codes with bf16 scales and zero points and
  // reads them back with the same arithmetic: its round trip is fake_quant.
  // Engine dtypes are emulated value for value (engine_math.h).
  if (requantizes() || format_.kind == KvFormat::Kind::Engine) return fake_quant(x);
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
      if (requantizes()) return kk::kvtuner_storage_bits(kvtuner_spec(), shape, scheme_.residual);
      return kk::int_storage_bits(int_spec(), shape);
    case KvFormat::Kind::Fp8:
      return kk::fp8_storage_bits(shape);
    case KvFormat::Kind::Nvfp4:
      return kk::nvfp4_storage_bits(shape);
    case KvFormat::Kind::Engine:
      return kk::engine_storage_bits(engine_spec(shape), shape);
    case KvFormat::Kind::Full:
      break;
  }
  return 16.0;
}

// ---------------------------------------------------------------------------
// QuantizedKvCache

QuantizedKvCache::QuantizedKvCache(LayerQuantizers layers, ReadPlan plan)
    : quantizers_(std::move(layers)), plan_(plan), streams_(quantizers_.size()) {
  check_read_rule(quantizers_, plan_.rule);
}

// Appends x [n, KVH, hd] and returns what the query of this step reads. The
// bookkeeping is the cache's own: which tokens it holds quantized, and what
// it hands the attention, step by step.
torch::Tensor QuantizedKvCache::push(Stream& s, const TensorQuantizer& q,
                                     const torch::Tensor& x) const {
  const auto join = [](const torch::Tensor& a, const torch::Tensor& b) {
    return a.defined() ? torch::cat({a, b}) : b;
  };
  if (q.requantizes()) {
    // KVTuner's update(), step for step. Its first call quantizes what it is
    // given (the prompt) and returns it fresh; `recent` is undefined where
    // KVTuner holds its 1-D empty tensor, which its flush condition skips.
    if (!s.quantized.defined()) {
      s.quantized = q.quantize_dequantize(x);
      return x;
    }
    torch::Tensor read = torch::cat({s.quantized, join(s.recent, x)});
    if (s.recent.defined() && s.recent.size(0) + 1 >= q.flush_period()) {
      s.quantized = q.quantize_dequantize(read);
      s.recent = torch::Tensor();
    } else {
      s.recent = join(s.recent, x);
    }
    return read;
  }
  const int64_t flushed = s.quantized.defined() ? s.quantized.size(0) : 0;
  const int64_t recent = s.recent.defined() ? s.recent.size(0) : 0;
  const int64_t position = flushed + recent;  // of the first token being appended
  const int64_t t0 = plan_.prompt_tokens;
  const int64_t w = q.full_precision_window();
  if (!q.active()) {
    s.recent = join(s.recent, x);
    return s.recent;
  }
  if (position < t0) {
    // The prefill: all T0 prompt tokens in one step. The cache keeps whole
    // windows from position 0 quantized; the prompt's own attention reads
    // the fresh K/V or what was just written.
    if (position != 0 || x.size(0) != t0) {
      throw Error("QuantizedKvCache: the prompt of " + std::to_string(t0) +
                  " tokens must be appended in one step, not " + std::to_string(x.size(0)) +
                  " at position " + std::to_string(position));
    }
    const int64_t stored = (t0 / w) * w;
    s.quantized = q.quantize_dequantize(x.slice(0, 0, stored));
    s.recent = x.slice(0, stored);
    if (plan_.rule.prefill == ReadRule::Source::Fresh) return x;
    return torch::cat({s.quantized, s.recent});
  }
  if (x.size(0) != 1) {
    throw Error("QuantizedKvCache: decoding appends one token at a time, not " +
                std::to_string(x.size(0)) + " at position " + std::to_string(position));
  }
  const int64_t due = (position / w) * w - flushed;
  if (due > 0) {
    // Tokens leaving the full-precision window are quantized once, as a chunk
    // (a whole kivi window, or one token), and read back from their codes.
    s.quantized = join(s.quantized, q.quantize_dequantize(s.recent.slice(0, 0, due)));
    s.recent = s.recent.slice(0, due);
  }
  if (plan_.rule.current == ReadRule::Source::Cache) {
    // Written to the cache first, then read back quantized like the rest
    // (check_read_rule allows this for W = 1 only, so nothing is recent).
    s.quantized = join(s.quantized, q.quantize_dequantize(x));
    return s.quantized;
  }
  s.recent = join(s.recent, x);
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
          {"kl_all", kl_all},
          {"delta_nll", delta_nll},
          {"ppl_fp", ppl_fp},
          {"ppl_q", ppl_q},
          {"top1_agreement", top1_agreement},
          {"avg_bits", avg_bits},
          {"bytes_per_token", bytes_per_token},
          {"attn_rel_err", attn_rel_err},
          {"tokens", tokens}};
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
    for (const KvFormat& f : {layers[l].key, layers[l].value}) {
      if (const std::string why = scheme.refusal(f); !why.empty()) {
        throw Error("layer " + std::to_string(l) + " (" + layers[l].name() + "): " + why);
      }
    }
    if (layers[l].key.kind == KvFormat::Kind::Nvfp4 ||
        layers[l].value.kind == KvFormat::Kind::Nvfp4) {
      kk::nvfp4_block(c.head_dim);  // throws when head_dim does not fit NVFP4 blocks
    }
    const int layer = static_cast<int>(l);
    TensorQuantizer keys(layers[l].key, kk::Role::Key, scheme, amax.keys[l], layer);
    TensorQuantizer values(layers[l].value, kk::Role::Value, scheme, amax.values[l], layer);
    for (const KvFormat& f : {layers[l].key, layers[l].value}) {
      if (f.kind != KvFormat::Kind::Engine) continue;
      try {  // the engine's shape rules (nvfp4 and fp4 blocks)
        kk::validate_engine({f.engine_dtype().arith}, {1, c.n_kv_heads, c.head_dim});
      } catch (const std::invalid_argument& e) {
        throw Error("layer " + std::to_string(l) + " (" + layers[l].name() + "): " + e.what());
      }
    }
    out.emplace_back(std::move(keys), std::move(values));
  }
  return out;
}

}  // namespace kvtune::worker
