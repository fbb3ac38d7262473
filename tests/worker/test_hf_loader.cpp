// Hugging Face checkpoints: the tests write config.json and safetensors files
// themselves (a llama2.c model converted as Transformers' conversion script
// does, and small random Qwen2/Llama models) and compare load_hf's logits with
// load_llama2c's, with in-memory models and with an independent reference
// forward pass.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../support/shared_files.h"
#include "../support/temp_dir.h"
#include "kvtune/common/error.h"
#include "llama.h"

namespace kvtune::worker {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

using kvtune::testing::kStoriesModel;
using kvtune::testing::message_of;
using kvtune::testing::TempDir;

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string safetensors_dtype(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return "F32";
    case torch::kFloat16:
      return "F16";
    case torch::kBFloat16:
      return "BF16";
    case torch::kInt64:
      return "I64";
    default:
      throw std::runtime_error("the test writer has no safetensors dtype for this tensor");
  }
}

// A safetensors file: an 8-byte little-endian header length, the JSON header,
// then the tensors' bytes in order. Without `align` the header is left at its
// natural length, so the data may start at any byte offset (the format allows
// it, and the loader must cope); with it the header is space-padded to a
// multiple of 8, as the reference (Rust) writer does.
std::string safetensors_bytes(const Tensors& tensors, bool align = false) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const auto& [name, tensor] : tensors) {
    const torch::Tensor t = tensor.contiguous();
    const size_t begin = data.size();
    data.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
    header[name] = {{"dtype", safetensors_dtype(t)},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  if (align) text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);  // the test hosts are little-endian, as the format
  return out + text + data;
}

// ---------------------------------------------------------------------------
// Checkpoints as Transformers names them.

// Transformers' convert_llama_weights_to_hf.py: llama (Meta / llama2.c) rotates
// interleaved pairs (2j, 2j+1) of each head; Transformers rotates halves
// (j, j + head_dim/2). Reordering the rows of wq and wk turns one into the
// other, and the attention scores (dot products of q and k) are unchanged.
torch::Tensor permute(const torch::Tensor& w, int64_t n_heads) {
  const int64_t dim1 = w.size(0), dim2 = w.size(1);
  return w.view({n_heads, dim1 / n_heads / 2, 2, dim2}).transpose(1, 2).reshape({dim1, dim2});
}

// The tensors of a llama2.c model in a Transformers LlamaForCausalLM checkpoint.
Tensors hf_tensors_of_llama2c(const Model& m) {
  const ModelConfig& c = m.config;
  Tensors t{{"model.embed_tokens.weight", m.embedding}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& w = m.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "input_layernorm.weight", w.attn_norm);
    t.emplace_back(p + "self_attn.q_proj.weight", permute(w.wq, c.n_heads));
    t.emplace_back(p + "self_attn.k_proj.weight", permute(w.wk, c.n_kv_heads));
    t.emplace_back(p + "self_attn.v_proj.weight", w.wv);
    t.emplace_back(p + "self_attn.o_proj.weight", w.wo);
    t.emplace_back(p + "post_attention_layernorm.weight", w.ffn_norm);
    t.emplace_back(p + "mlp.gate_proj.weight", w.w1);
    t.emplace_back(p + "mlp.up_proj.weight", w.w3);
    t.emplace_back(p + "mlp.down_proj.weight", w.w2);
  }
  t.emplace_back("model.norm.weight", m.final_norm);
  if (!c.tied_embeddings) t.emplace_back("lm_head.weight", m.classifier);
  return t;
}

json config_json(const ModelConfig& c) {
  json j = {{"architectures", {c.architecture}},
            {"model_type", c.architecture == "Qwen2ForCausalLM" ? "qwen2" : "llama"},
            {"hidden_size", c.dim},
            {"intermediate_size", c.hidden_dim},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"vocab_size", c.vocab_size},
            {"max_position_embeddings", c.max_seq_len},
            {"rms_norm_eps", c.norm_eps},
            {"rope_theta", c.rope_theta},
            {"hidden_act", "silu"},
            {"tie_word_embeddings", c.tied_embeddings},
            {"rope_scaling", nullptr},
            {"torch_dtype", "float32"}};
  return j;
}

void write_config(const std::string& dir, const json& config) {
  write_file(dir + "/config.json", config.dump(2));
}

// config.json plus model.safetensors.
void write_checkpoint(const std::string& dir, const json& config, const Tensors& t,
                      bool align = false) {
  write_config(dir, config);
  write_file(dir + "/model.safetensors", safetensors_bytes(t, align));
}

// config.json plus two shards and model.safetensors.index.json.
void write_sharded_checkpoint(const std::string& dir, const json& config, const Tensors& t) {
  write_config(dir, config);
  const size_t half = t.size() / 2;
  const Tensors first(t.begin(), t.begin() + static_cast<ptrdiff_t>(half));
  const Tensors second(t.begin() + static_cast<ptrdiff_t>(half), t.end());
  json weight_map = json::object();
  const std::string names[2] = {"model-00001-of-00002.safetensors",
                                "model-00002-of-00002.safetensors"};
  for (int i = 0; i < 2; ++i) {
    const Tensors& shard = i == 0 ? first : second;
    write_file(dir + "/" + names[i], safetensors_bytes(shard));
    for (const auto& [name, tensor] : shard) weight_map[name] = names[i];
  }
  write_file(dir + "/model.safetensors.index.json",
             json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2));
}

const torch::Tensor& find(const Tensors& t, const std::string& name) {
  for (const auto& [n, tensor] : t) {
    if (n == name) return tensor;
  }
  throw std::runtime_error("test checkpoint has no " + name);
}

// The Model a checkpoint's tensors describe, assembled directly in memory.
Model assemble(const ModelConfig& c, const Tensors& t) {
  Model m;
  m.config = c;
  m.embedding = find(t, "model.embed_tokens.weight");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights w;
    w.attn_norm = find(t, p + "input_layernorm.weight");
    w.wq = find(t, p + "self_attn.q_proj.weight");
    w.wk = find(t, p + "self_attn.k_proj.weight");
    w.wv = find(t, p + "self_attn.v_proj.weight");
    w.wo = find(t, p + "self_attn.o_proj.weight");
    w.ffn_norm = find(t, p + "post_attention_layernorm.weight");
    w.w1 = find(t, p + "mlp.gate_proj.weight");
    w.w3 = find(t, p + "mlp.up_proj.weight");
    w.w2 = find(t, p + "mlp.down_proj.weight");
    if (c.attention_bias) {
      w.bq = find(t, p + "self_attn.q_proj.bias");
      w.bk = find(t, p + "self_attn.k_proj.bias");
      w.bv = find(t, p + "self_attn.v_proj.bias");
    }
    m.layers.push_back(w);
  }
  m.final_norm = find(t, "model.norm.weight");
  m.classifier = c.tied_embeddings ? m.embedding : find(t, "lm_head.weight");
  return m;
}

// A small seeded random model in Transformers' layout.
ModelConfig tiny_config(const std::string& architecture) {
  ModelConfig c;
  c.architecture = architecture;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 97;
  c.max_seq_len = 128;
  c.rope_theta = 1e6;
  c.norm_eps = 1e-6;
  c.rope_style = RopeStyle::HalfSplit;
  c.tied_embeddings = false;
  c.attention_bias = architecture == "Qwen2ForCausalLM";
  return c;
}

Tensors random_tensors(const ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  const auto rand = [](std::vector<int64_t> shape, double scale) {
    return torch::randn(shape, torch::kFloat32) * scale;
  };
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  Tensors t{{"model.embed_tokens.weight", rand({c.vocab_size, c.dim}, 1.0)}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.emplace_back(p + "input_layernorm.weight", 1.0 + rand({c.dim}, 0.1));
    t.emplace_back(p + "self_attn.q_proj.weight", rand({q, c.dim}, 0.2));
    t.emplace_back(p + "self_attn.k_proj.weight", rand({kv, c.dim}, 0.2));
    t.emplace_back(p + "self_attn.v_proj.weight", rand({kv, c.dim}, 0.2));
    if (c.attention_bias) {
      // Large enough that a dropped or misplaced bias changes the logits a lot.
      t.emplace_back(p + "self_attn.q_proj.bias", rand({q}, 0.5));
      t.emplace_back(p + "self_attn.k_proj.bias", rand({kv}, 0.5));
      t.emplace_back(p + "self_attn.v_proj.bias", rand({kv}, 0.5));
    }
    t.emplace_back(p + "self_attn.o_proj.weight", rand({c.dim, q}, 0.2));
    t.emplace_back(p + "post_attention_layernorm.weight", 1.0 + rand({c.dim}, 0.1));
    t.emplace_back(p + "mlp.gate_proj.weight", rand({c.hidden_dim, c.dim}, 0.2));
    t.emplace_back(p + "mlp.up_proj.weight", rand({c.hidden_dim, c.dim}, 0.2));
    t.emplace_back(p + "mlp.down_proj.weight", rand({c.dim, c.hidden_dim}, 0.2));
  }
  t.emplace_back("model.norm.weight", 1.0 + rand({c.dim}, 0.1));
  if (!c.tied_embeddings) t.emplace_back("lm_head.weight", rand({c.vocab_size, c.dim}, 0.3));
  return t;
}

torch::Tensor random_tokens(int64_t batch, int64_t len, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randint(vocab, {batch, len}, torch::kInt64);
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

// The model with every weight in float64 (the Transformer computes in the
// weights' precision), to tell a wrong conversion from float32 rounding.
Model in_float64(const Model& m) {
  return to_device(m, torch::kCPU, torch::kFloat64);
}

// ---------------------------------------------------------------------------
// An independent reference forward pass, written from Transformers'
// modeling_qwen2.py / modeling_llama.py with plain loops in double precision:
// RMSNorm, q/k/v projections with bias, RoPE by rotate_half on
// cat(freqs, freqs), grouped-query causal softmax attention, SwiGLU.

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // [rows][cols]

Vec to_vec(const torch::Tensor& t) {
  const torch::Tensor d = t.to(torch::kFloat64).contiguous();
  return Vec(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}
Mat to_mat(const torch::Tensor& t) {
  Mat m;
  for (int64_t r = 0; r < t.size(0); ++r) m.push_back(to_vec(t[r]));
  return m;
}
Vec matvec(const Mat& w, const Vec& x) {  // y = W x, W [out, in]
  Vec y(w.size(), 0.0);
  for (size_t o = 0; o < w.size(); ++o) {
    for (size_t i = 0; i < x.size(); ++i) y[o] += w[o][i] * x[i];
  }
  return y;
}
Vec rms_norm(const Vec& x, const Vec& weight, double eps) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = weight[i] * x[i] * inv;
  return y;
}
// Transformers' apply_rotary_pos_emb on one head: x*cos + rotate_half(x)*sin
// with cos/sin of cat(freqs, freqs) and rotate_half(x) = cat(-x2, x1).
void rotate_half_rope(double* x, int64_t head_dim, int64_t pos, double theta) {
  const int64_t half = head_dim / 2;
  Vec rotated(head_dim), cos(head_dim), sin(head_dim);
  for (int64_t i = 0; i < head_dim; ++i) {
    const int64_t j = i % half;
    const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(j) / head_dim);
    cos[i] = std::cos(pos * inv_freq);
    sin[i] = std::sin(pos * inv_freq);
    rotated[i] = i < half ? -x[i + half] : x[i - half];
  }
  for (int64_t i = 0; i < head_dim; ++i) x[i] = x[i] * cos[i] + rotated[i] * sin[i];
}

// Logits [tokens][vocab] of one sequence.
Mat reference_forward(const ModelConfig& c, const Tensors& t, const std::vector<int64_t>& tokens) {
  const auto n = static_cast<int64_t>(tokens.size());
  const int64_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
  const Mat embedding = to_mat(find(t, "model.embed_tokens.weight"));
  Mat x;
  for (int64_t tok : tokens) x.push_back(embedding[tok]);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const auto w = [&](const std::string& name) { return to_mat(find(t, p + name)); };
    const auto v = [&](const std::string& name) { return to_vec(find(t, p + name)); };
    const Mat wq = w("self_attn.q_proj.weight"), wk = w("self_attn.k_proj.weight"),
              wv = w("self_attn.v_proj.weight"), wo = w("self_attn.o_proj.weight");
    const Vec bq = v("self_attn.q_proj.bias"), bk = v("self_attn.k_proj.bias"),
              bv = v("self_attn.v_proj.bias");
    Mat q(n), k(n), val(n);
    for (int64_t i = 0; i < n; ++i) {
      const Vec h = rms_norm(x[i], v("input_layernorm.weight"), c.norm_eps);
      q[i] = matvec(wq, h);
      k[i] = matvec(wk, h);
      val[i] = matvec(wv, h);
      for (size_t j = 0; j < q[i].size(); ++j) q[i][j] += bq[j];
      for (size_t j = 0; j < k[i].size(); ++j) k[i][j] += bk[j], val[i][j] += bv[j];
      for (int64_t head = 0; head < c.n_heads; ++head) {
        rotate_half_rope(&q[i][head * hd], hd, i, c.rope_theta);
      }
      for (int64_t head = 0; head < c.n_kv_heads; ++head) {
        rotate_half_rope(&k[i][head * hd], hd, i, c.rope_theta);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      Vec attn(c.n_heads * hd, 0.0);
      for (int64_t head = 0; head < c.n_heads; ++head) {
        const int64_t kvh = head / group;  // repeat_kv: head h reads kv head h / group
        Vec scores(i + 1);
        double top = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          double s = 0;
          for (int64_t d = 0; d < hd; ++d) s += q[i][head * hd + d] * k[j][kvh * hd + d];
          scores[j] = s / std::sqrt(static_cast<double>(hd));
          top = std::max(top, scores[j]);
        }
        double total = 0;
        for (double& s : scores) total += (s = std::exp(s - top));
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t d = 0; d < hd; ++d) {
            attn[head * hd + d] += scores[j] / total * val[j][kvh * hd + d];
          }
        }
      }
      const Vec o = matvec(wo, attn);
      for (int64_t d = 0; d < c.dim; ++d) x[i][d] += o[d];
      const Vec h = rms_norm(x[i], v("post_attention_layernorm.weight"), c.norm_eps);
      const Vec gate = matvec(w("mlp.gate_proj.weight"), h),
                up = matvec(w("mlp.up_proj.weight"), h);
      Vec act(gate.size());
      for (size_t j = 0; j < gate.size(); ++j)
        act[j] = gate[j] / (1.0 + std::exp(-gate[j])) * up[j];
      const Vec down = matvec(w("mlp.down_proj.weight"), act);
      for (int64_t d = 0; d < c.dim; ++d) x[i][d] += down[d];
    }
  }
  const Vec final_norm = to_vec(find(t, "model.norm.weight"));
  const Mat lm_head = to_mat(find(t, "lm_head.weight"));
  Mat logits;
  for (int64_t i = 0; i < n; ++i)
    logits.push_back(matvec(lm_head, rms_norm(x[i], final_norm, c.norm_eps)));
  return logits;
}

// ---------------------------------------------------------------------------
// a. Llama: stories260K converted as Transformers converts Meta checkpoints.

TEST(HfLlama, ConvertedLlama2cCheckpointGivesTheSameLogits) {
  SKIP_WITHOUT_STORIES();
  const Model original = load_llama2c(kStoriesModel);
  TempDir tmp;
  const std::string dir = tmp.sub("stories260K-hf");
  ModelConfig c = original.config;
  c.architecture = "LlamaForCausalLM";
  write_checkpoint(dir, config_json(c), hf_tensors_of_llama2c(original));

  const Model hf = load_hf(dir);
  EXPECT_EQ(hf.config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(hf.config.name, "stories260K-hf");
  EXPECT_EQ(hf.config.rope_style, RopeStyle::HalfSplit);
  EXPECT_EQ(hf.config.dim, original.config.dim);
  EXPECT_EQ(hf.config.hidden_dim, original.config.hidden_dim);
  EXPECT_EQ(hf.config.n_layers, original.config.n_layers);
  EXPECT_EQ(hf.config.n_heads, original.config.n_heads);
  EXPECT_EQ(hf.config.n_kv_heads, original.config.n_kv_heads);
  EXPECT_EQ(hf.config.head_dim, original.config.head_dim);
  EXPECT_EQ(hf.config.vocab_size, original.config.vocab_size);
  EXPECT_EQ(hf.config.max_seq_len, original.config.max_seq_len);
  EXPECT_TRUE(hf.config.tied_embeddings);
  EXPECT_FALSE(hf.config.attention_bias);
  EXPECT_FALSE(hf.config.rope_scaling.enabled);
  EXPECT_EQ(hf.config.weight_dtype, "float32");
  EXPECT_TRUE(hf.classifier.is_same(hf.embedding));

  const torch::Tensor tokens = random_tokens(3, 48, c.vocab_size, 7);
  const torch::Tensor expected = Transformer(original).forward(tokens);
  const torch::Tensor got = Transformer(hf).forward(tokens);
  ASSERT_EQ(got.sizes(), expected.sizes());
  // In float32 the two models differ only in summation order (RoPE pairs and
  // q.k sums are permuted), yet after five layers each is ~1e-4 from the
  // float64 result at this length (measured: 9e-5, logits up to 16), so they
  // can be 1.4e-4 apart. In float64 the conversion must be exact to rounding.
  EXPECT_LT(max_abs_diff(got, expected), 5e-4);
  EXPECT_LT(max_abs_diff(Transformer(in_float64(hf)).forward(tokens),
                         Transformer(in_float64(original)).forward(tokens)),
            1e-9);
  // A short sequence stays within the 1e-4 float32 budget.
  const torch::Tensor prefix = tokens.narrow(1, 0, 8);
  EXPECT_LT(max_abs_diff(Transformer(hf).forward(prefix), Transformer(original).forward(prefix)),
            1e-4);
  // The permutation matters: without it the half-split RoPE pairs the wrong
  // channels and the logits differ (so the comparison above is not vacuous).
  Tensors unpermuted = hf_tensors_of_llama2c(original);
  for (auto& [name, tensor] : unpermuted) {
    if (name.find("q_proj") != std::string::npos) {
      tensor = original.layers[std::stoi(name.substr(13))].wq;
    }
    if (name.find("k_proj") != std::string::npos) {
      tensor = original.layers[std::stoi(name.substr(13))].wk;
    }
  }
  const std::string wrong = tmp.sub("unpermuted");
  write_checkpoint(wrong, config_json(c), unpermuted);
  EXPECT_GT(max_abs_diff(Transformer(load_hf(wrong)).forward(tokens), expected), 1e-2);
}

TEST(HfLlama, ShardedCheckpointEqualsSingleFile) {
  SKIP_WITHOUT_STORIES();
  const Model original = load_llama2c(kStoriesModel);
  TempDir tmp;
  ModelConfig c = original.config;
  c.architecture = "LlamaForCausalLM";
  const Tensors t = hf_tensors_of_llama2c(original);
  const std::string single = tmp.sub("single"), sharded = tmp.sub("sharded");
  write_checkpoint(single, config_json(c), t);
  write_sharded_checkpoint(sharded, config_json(c), t);
  ASSERT_FALSE(fs::exists(sharded + "/model.safetensors"));

  const torch::Tensor tokens = random_tokens(2, 32, c.vocab_size, 11);
  const Model a = load_hf(single), b = load_hf(sharded);
  EXPECT_TRUE(torch::equal(Transformer(a).forward(tokens), Transformer(b).forward(tokens)));
  EXPECT_EQ(b.config.name, "sharded");
}

// ---------------------------------------------------------------------------
// b. Qwen2: q/k/v biases, untied lm_head, grouped KV heads.

TEST(HfQwen2, BiasedModelMatchesInMemoryModelAndReferenceForward) {
  const ModelConfig c = tiny_config("Qwen2ForCausalLM");
  const Tensors t = random_tensors(c, 1234);
  TempDir tmp;
  const std::string dir = tmp.sub("qwen2-tiny");
  // Aligned header: the float32 tensors are viewed in place in the mapping.
  write_checkpoint(dir, config_json(c), t, /*align=*/true);

  const Model hf = load_hf(dir);
  EXPECT_EQ(hf.config.architecture, "Qwen2ForCausalLM");
  EXPECT_TRUE(hf.config.attention_bias);
  EXPECT_FALSE(hf.config.tied_embeddings);
  EXPECT_EQ(hf.config.rope_style, RopeStyle::HalfSplit);
  EXPECT_DOUBLE_EQ(hf.config.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(hf.config.norm_eps, 1e-6);
  EXPECT_EQ(hf.config.head_dim, 16);
  EXPECT_EQ(hf.config.n_kv_heads, 2);
  ASSERT_EQ(hf.layers.size(), 2u);
  EXPECT_TRUE(hf.layers[1].bk.defined());
  EXPECT_TRUE(torch::equal(hf.layers[1].bk, find(t, "model.layers.1.self_attn.k_proj.bias")));
  EXPECT_TRUE(torch::equal(hf.classifier, find(t, "lm_head.weight")));

  const torch::Tensor tokens = random_tokens(3, 20, c.vocab_size, 5);
  const torch::Tensor got = Transformer(hf).forward(tokens);
  const Model in_memory = assemble(c, t);
  EXPECT_LT(max_abs_diff(got, Transformer(in_memory).forward(tokens)), 1e-5);

  // The Transformer's bias and half-split RoPE against an independent reference.
  const std::vector<int64_t> seq = {3, 96, 41, 0, 58, 41, 17, 80, 22};
  const Mat ref = reference_forward(c, t, seq);
  const torch::Tensor one = Transformer(hf).forward(torch::tensor(seq).unsqueeze(0))[0];
  double worst = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(seq.size()); ++i) {
    for (int64_t v = 0; v < c.vocab_size; ++v) {
      worst = std::max(worst, std::abs(one[i][v].item<double>() - ref[i][v]));
    }
  }
  EXPECT_LT(worst, 1e-4);
  // The biases are large enough to matter: dropping them moves the logits.
  Model no_bias = assemble(c, t);
  no_bias.config.attention_bias = false;
  for (auto& w : no_bias.layers) w.bq = w.bk = w.bv = torch::Tensor();
  EXPECT_GT(max_abs_diff(Transformer(no_bias).forward(tokens), got), 1e-2);
}

// ---------------------------------------------------------------------------
// c. Half-precision checkpoints are widened to float32 on load.

void expect_half_precision_checkpoint(torch::ScalarType dtype, const std::string& name,
                                      bool align) {
  SKIP_WITHOUT_STORIES();
  const Model original = load_llama2c(kStoriesModel);
  ModelConfig c = original.config;
  c.architecture = "LlamaForCausalLM";
  c.rope_style = RopeStyle::HalfSplit;
  Tensors stored = hf_tensors_of_llama2c(original), rounded;
  for (auto& [n, tensor] : stored) {
    tensor = tensor.to(dtype);
    rounded.emplace_back(n, tensor.to(torch::kFloat32));
  }
  TempDir tmp;
  const std::string dir = tmp.sub(name);
  json config = config_json(c);
  config["torch_dtype"] = name;
  write_checkpoint(dir, config, stored, align);

  const Model hf = load_hf(dir);
  EXPECT_EQ(hf.config.weight_dtype, name);
  EXPECT_EQ(hf.embedding.scalar_type(), torch::kFloat32);
  EXPECT_EQ(hf.layers[0].wq.scalar_type(), torch::kFloat32);
  const torch::Tensor tokens = random_tokens(2, 40, c.vocab_size, 3);
  c.weight_dtype = name;
  const Model in_memory = assemble(c, rounded);
  EXPECT_LT(max_abs_diff(Transformer(hf).forward(tokens), Transformer(in_memory).forward(tokens)),
            1e-5);
}

TEST(HfHalfPrecision, Bfloat16CheckpointEqualsRoundedWeights) {
  expect_half_precision_checkpoint(torch::kBFloat16, "bfloat16", /*align=*/false);
}

TEST(HfHalfPrecision, Float16CheckpointEqualsRoundedWeights) {
  expect_half_precision_checkpoint(torch::kFloat16, "float16", /*align=*/true);
}

// ---------------------------------------------------------------------------
// d. rope_scaling.

TEST(HfConfig, ParsesLlama3RopeScaling) {
  ModelConfig c = tiny_config("LlamaForCausalLM");
  const Tensors t = random_tensors(c, 9);
  for (const char* key : {"rope_type", "type"}) {
    TempDir tmp;
    const std::string dir = tmp.sub("llama3");
    json config = config_json(c);
    config["rope_scaling"] = {{key, "llama3"},
                              {"factor", 8.0},
                              {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 8192}};
    write_checkpoint(dir, config, t);
    const Model m = load_hf(dir);
    const RopeScaling& rs = m.config.rope_scaling;
    EXPECT_TRUE(rs.enabled) << key;
    EXPECT_DOUBLE_EQ(rs.factor, 8.0);
    EXPECT_DOUBLE_EQ(rs.low_freq_factor, 1.0);
    EXPECT_DOUBLE_EQ(rs.high_freq_factor, 4.0);
    EXPECT_DOUBLE_EQ(rs.original_max_position_embeddings, 8192.0);
    EXPECT_FALSE(m.config.attention_bias);
    EXPECT_EQ(Transformer(m).forward(random_tokens(1, 8, c.vocab_size, 1)).size(2), c.vocab_size);
  }
}

TEST(HfConfig, UnsupportedRopeScalingIsAnError) {
  ModelConfig c = tiny_config("LlamaForCausalLM");
  TempDir tmp;
  const std::string dir = tmp.sub("yarn");
  json config = config_json(c);
  config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  write_checkpoint(dir, config, random_tensors(c, 9));
  const std::string msg = message_of([&] { load_hf(dir); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rope_scaling"), std::string::npos) << msg;
  EXPECT_NE(msg.find("yarn"), std::string::npos) << msg;
}

TEST(HfConfig, DefaultsAndMistral) {
  ModelConfig c = tiny_config("MistralForCausalLM");
  TempDir tmp;
  const std::string dir = tmp.sub("mistral");
  json config = config_json(c);
  // Absent fields take Transformers' defaults.
  config.erase("num_key_value_heads");
  config.erase("rope_theta");
  config.erase("tie_word_embeddings");
  config["sliding_window"] = 64;
  c.n_kv_heads = c.n_heads;
  write_checkpoint(dir, config, random_tensors(c, 4));
  const Model m = load_hf(dir);
  EXPECT_EQ(m.config.architecture, "MistralForCausalLM");
  EXPECT_EQ(m.config.n_kv_heads, c.n_heads);
  EXPECT_DOUBLE_EQ(m.config.rope_theta, 10000.0);
  EXPECT_FALSE(m.config.tied_embeddings);
  // The context is capped at the window, where full attention is exact.
  EXPECT_EQ(m.config.max_seq_len, 64);
}

TEST(HfConfig, LoadModelDispatches) {
  ModelConfig c = tiny_config("LlamaForCausalLM");
  TempDir tmp;
  const std::string dir = tmp.sub("tiny-llama");
  write_checkpoint(dir, config_json(c), random_tensors(c, 2));
  EXPECT_EQ(load_model(dir).config.name, "tiny-llama");
  EXPECT_EQ(load_model(dir + "/").config.name, "tiny-llama");
  const std::string msg = message_of([&] { load_model(tmp.sub("empty")); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  if (fs::exists(kStoriesModel)) {
    const Model m = load_model(kStoriesModel);
    EXPECT_EQ(m.config.architecture, "llama2c");
    EXPECT_EQ(m.config.name, "stories260K.bin");
  }
}

// ---------------------------------------------------------------------------
// e. Errors name the file and the tensor or field at fault.

class HfErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.sub("broken");
    config_ = config_json(c_);
  }
  std::string load_error() {
    return message_of([&] { load_hf(dir_); });
  }
  std::string weights() const { return dir_ + "/model.safetensors"; }

  ModelConfig c_ = tiny_config("LlamaForCausalLM");
  Tensors t_ = random_tensors(c_, 77);
  TempDir tmp_;
  std::string dir_;
  json config_;
};

#define EXPECT_MENTIONS(msg, text) \
  EXPECT_NE((msg).find(text), std::string::npos) << "'" << (text) << "' not in: " << (msg)

TEST_F(HfErrors, UnsupportedArchitecture) {
  config_["architectures"] = {"GPT2LMHeadModel"};
  write_checkpoint(dir_, config_, t_);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "config.json");
  EXPECT_MENTIONS(msg, "architectures");
  EXPECT_MENTIONS(msg, "GPT2LMHeadModel");
}

TEST_F(HfErrors, MissingConfigField) {
  config_.erase("hidden_size");
  write_checkpoint(dir_, config_, t_);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "config.json");
  EXPECT_MENTIONS(msg, "hidden_size");
}

TEST_F(HfErrors, WrongConfigFieldType) {
  config_["num_hidden_layers"] = "two";
  write_checkpoint(dir_, config_, t_);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "config.json");
  EXPECT_MENTIONS(msg, "num_hidden_layers");
}

TEST_F(HfErrors, MissingConfigFile) {
  write_file(weights(), safetensors_bytes(t_));
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, dir_ + "/config.json");
}

TEST_F(HfErrors, MissingTensor) {
  Tensors t;
  for (const auto& entry : t_) {
    if (entry.first != "model.layers.1.mlp.up_proj.weight") t.push_back(entry);
  }
  write_checkpoint(dir_, config_, t);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "model.layers.1.mlp.up_proj.weight");
  EXPECT_MENTIONS(msg, weights());
}

TEST_F(HfErrors, MissingTensorInShardedCheckpoint) {
  Tensors t;
  for (const auto& entry : t_) {
    if (entry.first != "model.norm.weight") t.push_back(entry);
  }
  write_sharded_checkpoint(dir_, config_, t);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "model.norm.weight");
  EXPECT_MENTIONS(msg, "model.safetensors.index.json");
}

TEST_F(HfErrors, MissingUntiedLmHead) {
  t_.pop_back();  // lm_head.weight, while tie_word_embeddings is false
  write_checkpoint(dir_, config_, t_);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "lm_head.weight");
  EXPECT_MENTIONS(msg, weights());
}

TEST_F(HfErrors, MisShapedTensor) {
  for (auto& [name, tensor] : t_) {
    if (name == "model.layers.0.self_attn.k_proj.weight") tensor = torch::zeros({48, 64});
  }
  write_checkpoint(dir_, config_, t_);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_MENTIONS(msg, weights());
  EXPECT_MENTIONS(msg, "[32, 64]");                                                   // actual
  EXPECT_MENTIONS(msg, "[" + std::to_string(c_.n_kv_heads * c_.head_dim) + ", 64]");  // expected
}

TEST_F(HfErrors, UnsupportedDtype) {
  for (auto& [name, tensor] : t_) {
    if (name == "model.norm.weight") tensor = torch::ones({c_.dim}, torch::kInt64);
  }
  write_checkpoint(dir_, config_, t_);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, "model.norm.weight");
  EXPECT_MENTIONS(msg, weights());
  EXPECT_MENTIONS(msg, "I64");
}

TEST_F(HfErrors, TruncatedFile) {
  write_checkpoint(dir_, config_, t_);
  std::string bytes = read_file(weights());
  bytes.resize(bytes.size() - 100);
  write_file(weights(), bytes);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, weights());
  EXPECT_MENTIONS(msg, t_.back().first);  // the last tensor in the buffer is cut short
}

TEST_F(HfErrors, BadHeaderLength) {
  write_checkpoint(dir_, config_, t_);
  std::string bytes = read_file(weights());
  const uint64_t too_long = bytes.size();
  std::memcpy(bytes.data(), &too_long, 8);
  write_file(weights(), bytes);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, weights());
  EXPECT_MENTIONS(msg, "header length");
  write_file(weights(), "abc");
  EXPECT_MENTIONS(load_error(), weights());
}

TEST_F(HfErrors, MalformedHeaderJson) {
  write_checkpoint(dir_, config_, t_);
  std::string bytes = read_file(weights());
  bytes[8 + 1] = '!';  // right after the opening brace
  write_file(weights(), bytes);
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, weights());
  EXPECT_MENTIONS(msg, "header");
}

TEST_F(HfErrors, DataOffsetsDisagreeWithShape) {
  config_["tie_word_embeddings"] = true;
  Tensors t;
  for (const auto& entry : t_) {
    if (entry.first != "lm_head.weight") t.push_back(entry);
  }
  std::string bytes = safetensors_bytes(t);
  // Rewrite the header with model.norm.weight claiming one element too few.
  uint64_t old_len = 0;
  std::memcpy(&old_len, bytes.data(), 8);
  json header = json::parse(bytes.substr(8, old_len));
  header["model.norm.weight"]["shape"] = {c_.dim - 1};
  const std::string text = header.dump();
  const uint64_t new_len = text.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &new_len, 8);
  write_config(dir_, config_);
  write_file(weights(), out + text + bytes.substr(8 + old_len));
  const std::string msg = load_error();
  EXPECT_MENTIONS(msg, weights());
  EXPECT_MENTIONS(msg, "model.norm.weight");
}

}  // namespace
}  // namespace kvtune::worker
