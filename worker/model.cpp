// Model loading and the transformer forward pass (LibTorch).
#include <cmath>
#include <cstring>

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
    m.layers.push_back(
        {attn_norm[l], wq[l], wk[l], wv[l], wo[l], ffn_norm[l], w1[l], w2[l], w3[l]});
  }
  return m;
}

Transformer::Transformer(const Model& model) : model_(model) {
  const int64_t half = model.config.head_dim / 2;
  // run.c: freq = 1 / theta^(2j / head_dim), in float32.
  inv_freq_ = 1.0 / torch::pow(torch::tensor(model.config.rope_theta, torch::kFloat32),
                               torch::arange(0, half, torch::kFloat32) * 2.0 /
                                   static_cast<double>(model.config.head_dim));
}

torch::Tensor Transformer::rms_norm(const torch::Tensor& x, const torch::Tensor& weight) const {
  const torch::Tensor ms = x.pow(2).mean(-1, true);
  return weight * (x * torch::rsqrt(ms + model_.config.norm_eps));
}

// Rotates interleaved channel pairs (2j, 2j+1) by position * inv_freq[j], as
// run.c does. x: [..., tokens, heads, head_dim]; positions: [tokens].
torch::Tensor Transformer::rope(const torch::Tensor& x, const torch::Tensor& positions) const {
  const torch::Tensor angles = positions.to(torch::kFloat32).unsqueeze(1) * inv_freq_;  // [T, hd/2]
  const torch::Tensor cos = angles.cos().unsqueeze(1);  // [T, 1, hd/2]
  const torch::Tensor sin = angles.sin().unsqueeze(1);
  auto sizes = x.sizes().vec();
  sizes.back() /= 2;
  sizes.push_back(2);
  const torch::Tensor pairs = x.reshape(sizes);
  const torch::Tensor x0 = pairs.select(-1, 0);
  const torch::Tensor x1 = pairs.select(-1, 1);
  return torch::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).reshape(x.sizes());
}

torch::Tensor Transformer::feed_forward(const LayerWeights& w, const torch::Tensor& x) const {
  const torch::Tensor gate = torch::silu(torch::matmul(x, w.w1.t()));
  return torch::matmul(gate * torch::matmul(x, w.w3.t()), w.w2.t());
}

torch::Tensor Transformer::forward(const torch::Tensor& tokens) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model_.config;
  const int64_t batch = tokens.size(0), len = tokens.size(1);
  const int64_t group = c.n_heads / c.n_kv_heads;
  torch::Tensor x = model_.embedding.index_select(0, tokens.reshape(-1)).view({batch, len, c.dim});
  const torch::Tensor positions = torch::arange(len, torch::kInt64);
  const torch::Tensor future =
      torch::ones({len, len}, torch::kBool).triu(1);  // key j > query i is masked
  for (const LayerWeights& w : model_.layers) {
    const torch::Tensor h = rms_norm(x, w.attn_norm);
    const torch::Tensor q =
        rope(torch::matmul(h, w.wq.t()).view({batch, len, c.n_heads, c.head_dim}), positions);
    const torch::Tensor k =
        rope(torch::matmul(h, w.wk.t()).view({batch, len, c.n_kv_heads, c.head_dim}), positions);
    const torch::Tensor v = torch::matmul(h, w.wv.t()).view({batch, len, c.n_kv_heads, c.head_dim});
    const torch::Tensor qh = q.transpose(1, 2);                              // [B, H, T, hd]
    const torch::Tensor kh = k.transpose(1, 2).repeat_interleave(group, 1);  // [B, H, T, hd]
    const torch::Tensor vh = v.transpose(1, 2).repeat_interleave(group, 1);
    torch::Tensor scores =
        torch::matmul(qh, kh.transpose(-2, -1)) / std::sqrt(static_cast<double>(c.head_dim));
    scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
    const torch::Tensor attn = torch::matmul(torch::softmax(scores, -1), vh);  // [B, H, T, hd]
    x = x + torch::matmul(attn.transpose(1, 2).reshape({batch, len, c.dim}), w.wo.t());
    x = x + feed_forward(w, rms_norm(x, w.ffn_norm));
  }
  return torch::matmul(rms_norm(x, model_.final_norm), model_.classifier.t());
}

torch::Tensor Transformer::step(int64_t token, std::vector<LayerCache>& cache) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = model_.config;
  if (token < 0 || token >= c.vocab_size) {
    throw Error("token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                std::to_string(c.vocab_size) + ")");
  }
  cache.resize(static_cast<size_t>(c.n_layers));
  const int64_t pos = cache[0].keys.defined() ? cache[0].keys.size(0) : 0;
  if (pos >= c.max_seq_len) {
    throw Error("position " + std::to_string(pos) + " is beyond the model's context of " +
                std::to_string(c.max_seq_len) + " tokens");
  }
  const int64_t group = c.n_heads / c.n_kv_heads;
  const torch::Tensor positions = torch::full({1}, pos, torch::kInt64);
  torch::Tensor x = model_.embedding[token].unsqueeze(0);  // [1, dim]
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    const LayerWeights& w = model_.layers[l];
    const torch::Tensor h = rms_norm(x, w.attn_norm);
    const torch::Tensor q =
        rope(torch::matmul(h, w.wq.t()).view({1, c.n_heads, c.head_dim}), positions);
    const torch::Tensor k =
        rope(torch::matmul(h, w.wk.t()).view({1, c.n_kv_heads, c.head_dim}), positions);
    const torch::Tensor v = torch::matmul(h, w.wv.t()).view({1, c.n_kv_heads, c.head_dim});
    LayerCache& lc = cache[l];
    lc.keys = lc.keys.defined() ? torch::cat({lc.keys, k}) : k;
    lc.values = lc.values.defined() ? torch::cat({lc.values, v}) : v;
    const torch::Tensor kh = lc.keys.transpose(0, 1).repeat_interleave(group, 0);  // [H, T, hd]
    const torch::Tensor vh = lc.values.transpose(0, 1).repeat_interleave(group, 0);
    const torch::Tensor qh = q.transpose(0, 1);  // [H, 1, hd]
    const torch::Tensor scores =
        torch::matmul(qh, kh.transpose(-2, -1)) / std::sqrt(static_cast<double>(c.head_dim));
    const torch::Tensor attn = torch::matmul(torch::softmax(scores, -1), vh);  // [H, 1, hd]
    x = x + torch::matmul(attn.transpose(0, 1).reshape({1, c.dim}), w.wo.t());
    x = x + feed_forward(w, rms_norm(x, w.ffn_norm));
  }
  return torch::matmul(rms_norm(x, model_.final_norm), model_.classifier.t()).squeeze(0);
}

}  // namespace kvtune::worker
