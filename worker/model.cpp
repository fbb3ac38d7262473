// Model loading and the transformer forward pass (LibTorch).
#include <cmath>
#include <cstring>
#include <limits>

#include "kvtune/common/error.h"
#include "llama.h"
#include "mapped_file.h"

namespace kvtune::worker {
namespace {

// Hands out consecutive float32 tensors of a mapped llama2.c checkpoint,
// viewing the mapping in place.
class Llama2cReader {
 public:
  Llama2cReader(std::shared_ptr<const MappedFile> file, size_t offset)
      : file_(std::move(file)), offset_(offset) {}

  torch::Tensor next(const std::string& name, std::vector<int64_t> shape) {
    int64_t count = 1;
    for (int64_t s : shape) count *= s;
    const size_t bytes = static_cast<size_t>(count) * sizeof(float);
    if (offset_ + bytes > file_->size()) {
      throw Error(file_->path() + ": truncated: tensor '" + name + "' needs bytes [" +
                  std::to_string(offset_) + ", " + std::to_string(offset_ + bytes) +
                  ") but the file has " + std::to_string(file_->size()));
    }
    auto keep_alive = file_;
    void* data = const_cast<std::byte*>(file_->data() + offset_);
    offset_ += bytes;
    return torch::from_blob(
        data, shape, [keep_alive](void*) {}, torch::kFloat32);
  }
  void skip(size_t bytes) { offset_ += bytes; }
  size_t offset() const { return offset_; }

 private:
  std::shared_ptr<const MappedFile> file_;
  size_t offset_;
};

}  // namespace

Model load_llama2c(const std::string& path) {
  const auto file = MappedFile::open(path);
  constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);
  if (file->size() < kHeaderBytes) {
    throw Error(path + ": bad header: " + std::to_string(file->size()) +
                " bytes is shorter than the 28-byte llama2.c header");
  }
  int32_t h[7];
  std::memcpy(h, file->data(), kHeaderBytes);
  const char* names[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                          "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    if (h[i] == 0 || (i != 5 && h[i] < 0) || std::abs(h[i]) > (1 << 24)) {
      throw Error(path + ": bad header: " + names[i] + " = " + std::to_string(h[i]) +
                  " (is this a llama2.c checkpoint?)");
    }
  }
  ModelConfig c;
  c.architecture = "llama2c";
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_embeddings = h[5] > 0;
  c.vocab_size = std::abs(h[5]);
  c.max_seq_len = h[6];
  if (c.dim % c.n_heads != 0 || c.n_heads % c.n_kv_heads != 0) {
    throw Error(path + ": bad header: dim " + std::to_string(c.dim) + ", n_heads " +
                std::to_string(c.n_heads) + " and n_kv_heads " + std::to_string(c.n_kv_heads) +
                " do not divide");
  }
  c.head_dim = c.dim / c.n_heads;
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;

  Model m;
  m.config = c;
  Llama2cReader r(file, kHeaderBytes);
  m.embedding = r.next("token_embedding_table", {c.vocab_size, c.dim});
  // llama2.c stores each weight kind for all layers contiguously.
  const auto per_layer = [&](const std::string& name, std::vector<int64_t> shape) {
    shape.insert(shape.begin(), c.n_layers);
    return r.next(name, shape);
  };
  const torch::Tensor attn_norm = per_layer("rms_att_weight", {c.dim});
  const torch::Tensor wq = per_layer("wq", {c.dim, c.dim});
  const torch::Tensor wk = per_layer("wk", {kv_dim, c.dim});
  const torch::Tensor wv = per_layer("wv", {kv_dim, c.dim});
  const torch::Tensor wo = per_layer("wo", {c.dim, c.dim});
  const torch::Tensor ffn_norm = per_layer("rms_ffn_weight", {c.dim});
  const torch::Tensor w1 = per_layer("w1", {c.hidden_dim, c.dim});
  const torch::Tensor w2 = per_layer("w2", {c.dim, c.hidden_dim});
  const torch::Tensor w3 = per_layer("w3", {c.hidden_dim, c.dim});
  m.final_norm = r.next("rms_final_weight", {c.dim});
  // run.c skips the precomputed RoPE tables (freq_cis_real, freq_cis_imag).
  r.skip(static_cast<size_t>(c.max_seq_len * c.head_dim) * sizeof(float));
  m.classifier = c.tied_embeddings ? m.embedding : r.next("wcls", {c.vocab_size, c.dim});
  if (r.offset() > file->size()) {
    throw Error(path + ": truncated: the RoPE tables end at byte " + std::to_string(r.offset()) +
                " but the file has " + std::to_string(file->size()));
  }
  if (r.offset() != file->size()) {
    throw Error(path + ": " + std::to_string(file->size() - r.offset()) +
                " unexpected bytes after the last tensor: the header does not describe this file");
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights& w = m.layers.emplace_back();
    w.attn_norm = attn_norm[l];
    w.wq = wq[l];
    w.wk = wk[l];
    w.wv = wv[l];
    w.wo = wo[l];
    w.ffn_norm = ffn_norm[l];
    w.w1 = w1[l];
    w.w2 = w2[l];
    w.w3 = w3[l];
  }
  return m;
}

namespace {

// RoPE inverse frequencies theta^(-2j / head_dim), with Llama 3.1's scaling:
// long wavelengths are divided by `factor`, short ones kept, and the band
// between interpolated smoothly.
torch::Tensor rope_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  torch::Tensor inv_freq = 1.0 / torch::pow(torch::tensor(c.rope_theta, torch::kFloat32),
                                            torch::arange(0, half, torch::kFloat32) * 2.0 /
                                                static_cast<double>(c.head_dim));
  const RopeScaling& rs = c.rope_scaling;
  if (!rs.enabled) return inv_freq;
  const double low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor;
  const double high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor;
  const torch::Tensor wavelen = 2.0 * M_PI / inv_freq;
  const torch::Tensor smooth =
      (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) /
      (rs.high_freq_factor - rs.low_freq_factor);
  const torch::Tensor scaled = inv_freq / rs.factor;
  const torch::Tensor mid = (1.0 - smooth) * scaled + smooth * inv_freq;
  return torch::where(wavelen < high_wavelen, inv_freq,
                      torch::where(wavelen > low_wavelen, scaled, mid));
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  const torch::Tensor y = torch::matmul(x, w.t());
  return b.defined() ? y + b : y;
}

}  // namespace

namespace {
// float32 for reduced-precision tensors; wider types stay as they are.
torch::ScalarType at_least_f32(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}
}  // namespace

torch::Tensor softmax_f32(const torch::Tensor& scores) {
  return torch::softmax(scores, -1, at_least_f32(scores)).to(scores.dtype());
}

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v) {
  const int64_t len = q.size(1), kv_len = k.size(1);
  const int64_t group = q.size(2) / k.size(2);
  const torch::Tensor qh = q.transpose(1, 2);                              // [B, H, T, hd]
  const torch::Tensor kh = k.transpose(1, 2).repeat_interleave(group, 1);  // [B, H, S, hd]
  const torch::Tensor vh = v.transpose(1, 2).repeat_interleave(group, 1);
  torch::Tensor scores =
      torch::matmul(qh, kh.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(3)));
  // Query i (the last `len` of `kv_len` positions) sees keys j <= i.
  const torch::Tensor future =
      torch::ones({len, kv_len}, scores.options().dtype(torch::kBool)).triu(kv_len - len + 1);
  scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  return torch::matmul(softmax_f32(scores), vh).transpose(1, 2);  // [B, T, H, hd]
}

std::pair<torch::Tensor, torch::Tensor> FullPrecisionCache::append(int64_t layer,
                                                                   const torch::Tensor& k,
                                                                   const torch::Tensor& v) {
  const auto l = static_cast<size_t>(layer);
  if (keys_.size() <= l) {
    keys_.resize(l + 1);
    values_.resize(l + 1);
  }
  keys_[l] = keys_[l].defined() ? torch::cat({keys_[l], k}) : k;
  values_[l] = values_[l].defined() ? torch::cat({values_[l], v}) : v;
  return {keys_[l], values_[l]};
}

int64_t FullPrecisionCache::length() const {
  return keys_.empty() || !keys_[0].defined() ? 0 : keys_[0].size(0);
}

Model to_device(const Model& model, const torch::Device& device, torch::ScalarType dtype) {
  Model out = model;
  const auto move = [&](torch::Tensor& t) {
    if (t.defined()) t = t.to(device, dtype);
  };
  move(out.embedding);
  move(out.final_norm);
  out.classifier = model.config.tied_embeddings ? out.embedding : out.classifier.to(device, dtype);
  for (LayerWeights& w : out.layers) {
    for (torch::Tensor* t : {&w.attn_norm, &w.wq, &w.wk, &w.wv, &w.wo, &w.ffn_norm, &w.w1, &w.w2,
                             &w.w3, &w.bq, &w.bk, &w.bv}) {
      move(*t);
    }
  }
  return out;
}

Transformer::Transformer(const Model& model)
    : model_(model), inv_freq_(rope_inv_freq(model.config).to(model.embedding.device())) {}

torch::Tensor Transformer::rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const {
  // In float32 whatever the model's dtype, as Hugging Face does.
  const torch::Tensor xf = x.to(at_least_f32(x));
  const torch::Tensor ms = xf.pow(2).mean(-1, true);
  return weight * (xf * torch::rsqrt(ms + model_.config.norm_eps)).to(x.dtype());
}

torch::Tensor Transformer::rope(const torch::Tensor& x, const torch::Tensor& positions) const {
  // float64 models take the angles in float64: a float32 cos differs by an
  // ulp between devices (CUDA's cosf and glibc's), enough to flip a code at a
  // rounding boundary when a GPU evaluation is compared with the CPU's.
  const torch::ScalarType angle_type = at_least_f32(x);
  const torch::Tensor angles =
      positions.to(angle_type).unsqueeze(1) * inv_freq_.to(angle_type);  // [T, hd/2]
  // In x's dtype, as Hugging Face casts them: bf16/fp16 queries and keys stay
  // in their dtype (float32 and float64 ones see the same values as before).
  const torch::Tensor cos = angles.cos().unsqueeze(1).to(x.scalar_type());  // [T, 1, hd/2]
  const torch::Tensor sin = angles.sin().unsqueeze(1).to(x.scalar_type());
  torch::Tensor x0, x1;
  if (model_.config.rope_style == RopeStyle::Interleaved) {
    // llama2.c: pairs (2j, 2j+1).
    auto sizes = x.sizes().vec();
    sizes.back() /= 2;
    sizes.push_back(2);
    const torch::Tensor pairs = x.reshape(sizes);
    x0 = pairs.select(-1, 0);
    x1 = pairs.select(-1, 1);
    return torch::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).reshape(x.sizes());
  }
  // Hugging Face: pairs (j, j + head_dim/2) ("rotate_half").
  const auto halves = x.chunk(2, -1);
  x0 = halves[0];
  x1 = halves[1];
  return torch::cat({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1);
}

torch::Tensor Transformer::feed_forward(const LayerWeights& w, const torch::Tensor& x) const {
  const torch::Tensor gate = torch::silu(torch::matmul(x, w.w1.t()));
  return torch::matmul(gate * torch::matmul(x, w.w3.t()), w.w2.t());
}

std::array<torch::Tensor, 3> Transformer::project_qkv(const LayerWeights& w, const torch::Tensor& h,
                                                      const torch::Tensor& positions) const {
  const ModelConfig& c = model_.config;
  auto shape = [&](int64_t heads) {
    auto sizes = h.sizes().vec();
    sizes.back() = heads;
    sizes.push_back(c.head_dim);
    return sizes;
  };
  const torch::Tensor q = rope(linear(h, w.wq, w.bq).view(shape(c.n_heads)), positions);
  const torch::Tensor k = rope(linear(h, w.wk, w.bk).view(shape(c.n_kv_heads)), positions);
  const torch::Tensor v = linear(h, w.wv, w.bv).view(shape(c.n_kv_heads));
  return {q, k, v};
}

torch::Tensor Transformer::forward(const torch::Tensor& tokens,
                                   const AttentionFn& attention) const {
  torch::NoGradGuard no_grad;
  return head(run_layers(embed(tokens), 0, model_.config.n_layers, attention));
}

torch::Tensor Transformer::embed(const torch::Tensor& tokens) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model_.config;
  const int64_t batch = tokens.size(0), len = tokens.size(1);
  if (len > c.max_seq_len) {
    throw Error("a sequence of " + std::to_string(len) + " tokens is longer than the model's " +
                "context of " + std::to_string(c.max_seq_len));
  }
  return model_.embedding.index_select(0, tokens.reshape(-1).to(model_.embedding.device()))
      .view({batch, len, c.dim});
}

torch::Tensor Transformer::run_layers(torch::Tensor x, int64_t first, int64_t last,
                                      const AttentionFn& attention) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model_.config;
  const int64_t batch = x.size(0), len = x.size(1);
  const torch::Tensor positions =
      torch::arange(len, model_.embedding.options().dtype(torch::kInt64));
  for (int64_t l = first; l < last; ++l) {
    const LayerWeights& w = model_.layers[static_cast<size_t>(l)];
    const auto [q, k, v] = project_qkv(w, rms_norm(x, w.attn_norm), positions);
    const torch::Tensor attn = attention ? attention(l, q, k, v) : causal_attention(q, k, v);
    x = x + torch::matmul(attn.reshape({batch, len, c.n_heads * c.head_dim}), w.wo.t());
    x = x + feed_forward(w, rms_norm(x, w.ffn_norm));
  }
  return x;
}

torch::Tensor Transformer::head(const torch::Tensor& x) const {
  torch::NoGradGuard no_grad;
  return torch::matmul(rms_norm(x, model_.final_norm), model_.classifier.t());
}

torch::Tensor Transformer::step(int64_t token, KvCache& cache) const {
  return extend({token}, cache).view({model_.config.vocab_size});
}

torch::Tensor Transformer::extend(const std::vector<int64_t>& tokens, KvCache& cache) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model_.config;
  for (const int64_t token : tokens) {
    if (token < 0 || token >= c.vocab_size) {
      throw Error("token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                  std::to_string(c.vocab_size) + ")");
    }
  }
  const int64_t pos = cache.length();
  const auto n = static_cast<int64_t>(tokens.size());
  if (pos + n > c.max_seq_len) {
    throw Error("position " + std::to_string(pos + n - 1) + " is beyond the model's context of " +
                std::to_string(c.max_seq_len) + " tokens");
  }
  const auto device = model_.embedding.device();
  const torch::Tensor positions =
      torch::arange(pos, pos + n, model_.embedding.options().dtype(torch::kInt64));
  torch::Tensor x =
      model_.embedding.index_select(0, torch::tensor(tokens, torch::kInt64).to(device))
          .view({1, n, c.dim});  // [batch 1, n tokens, dim]
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    const LayerWeights& w = model_.layers[l];
    const auto [q, k, v] = project_qkv(w, rms_norm(x, w.attn_norm), positions);
    const auto [keys, values] = cache.append(static_cast<int64_t>(l), k[0], v[0]);
    const torch::Tensor attn = causal_attention(q, keys.unsqueeze(0), values.unsqueeze(0));
    x = x + torch::matmul(attn.reshape({1, n, c.n_heads * c.head_dim}), w.wo.t());
    x = x + feed_forward(w, rms_norm(x, w.ffn_norm));
  }
  return torch::matmul(rms_norm(x, model_.final_norm), model_.classifier.t())
      .view({n, c.vocab_size});
}

}  // namespace kvtune::worker
