// The built-in demo model: a generated Llama-architecture transformer for
// trying kvtune without a download. Its layers are built to differ in KV
// sensitivity the way trained models do (early layers far more sensitive), so
// that a search over it has something to find.
#include "demo_model.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

#include "llama.h"

namespace kvtune::worker {
namespace {

constexpr int64_t kLayers = 6;
constexpr int64_t kVocab = 512;
constexpr int64_t kMaxSeqLen = 512;
constexpr uint64_t kSeed = 0x6b7674756e65ULL;  // "kvtune"

// The demo models' shapes: builtin:demo (head_dim 16) and builtin:demo-hd64,
// the same recipe at head_dim 64, where llama.cpp's Hadamard rotation applies.
struct DemoShape {
  std::string_view name;
  int64_t dim, heads, kv_heads, hidden;
  int64_t head_dim() const { return dim / heads; }
};
constexpr std::array<DemoShape, 2> kShapes = {DemoShape{"builtin:demo", 128, 8, 4, 344},
                                              DemoShape{"builtin:demo-hd64", 256, 4, 2, 688}};

const DemoShape& shape_of(std::string_view name) {
  for (const DemoShape& d : kShapes) {
    if (d.name == name) return d;
  }
  throw std::invalid_argument(std::string(name) + " is not a built-in model");
}

// Per-layer character, earliest layer first. Tables rather than formulas so
// that no transcendental function (whose last bit may differ between libm
// versions) decides a weight: every host must build bitwise-identical weights,
// because the model's fingerprint is its recipe, not its bytes.
//
// Standard deviation of the attention scores q.k/sqrt(head_dim): sharp
// attention lets a small key error move the softmax a lot. Layer 0 is the
// sharpest; every layer's error also reaches all the layers after it, which is
// what makes early layers sensitive in trained models too.
constexpr std::array<double, kLayers> kScoreStd = {4.0, 3.5, 3.5, 3.5, 3.5, 3.5};
// Magnitude of a few outlier key channels relative to the rest (trained models
// have them, strongest early): they set the quantization range of every
// per-token group, so the ordinary channels get coarse steps.
constexpr std::array<double, kLayers> kKeyOutlier = {5.0, 3.0, 2.0, 2.0, 2.0, 2.0};
constexpr double kFeedForwardGain = 0.5;
// Small embeddings next to the layers' contributions keep the tied classifier
// from mostly predicting the current token again; the final norm's gain sets
// the spread of the logits (a peaked, far-from-uniform distribution).
constexpr double kEmbeddingStd = 0.25;
constexpr double kFinalNormGain = 1.2;
// The two lowest-frequency RoPE pairs of each key head carry the outliers:
// they barely rotate, like the outlier channels reported for trained models.
constexpr int64_t kOutlierChannels = 4;

// Deterministic, platform-independent samples: std::mt19937_64's output is
// fixed by the standard, and the conversion below uses only exact integer
// arithmetic and IEEE + and *, unlike std::normal_distribution.
class DemoRng {
 public:
  explicit DemoRng(uint64_t stream) : engine_(splitmix(kSeed + stream)) {}

  // Uniform in [0, 1) from the top 53 bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }

  // Approximately standard normal (Irwin-Hall: sum of four uniforms, rescaled
  // to unit variance); bounded at +-2*sqrt(3), so there are no freak weights.
  double normal() {
    const double sum = uniform() + uniform() + uniform() + uniform();
    return (sum - 2.0) * 1.7320508075688772;
  }

 private:
  // Spreads nearby stream numbers into unrelated seeds.
  static uint64_t splitmix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
  }

  std::mt19937_64 engine_;
};

// Each tensor has its own stream, so a tensor's values do not depend on which
// tensors were generated before it.
uint64_t stream_of(int64_t layer, int kind) {
  return static_cast<uint64_t>(layer + 1) * 16 + kind;
}

torch::Tensor normal_tensor(uint64_t stream, int64_t rows, int64_t cols, double std) {
  DemoRng rng(stream);
  torch::Tensor t = torch::empty({rows, cols}, torch::kFloat32);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < rows * cols; ++i) p[i] = static_cast<float>(std * rng.normal());
  return t;
}

torch::Tensor constant(int64_t size, double value) {
  return torch::full({size}, value, torch::kFloat32);
}

// Projection [out, in] whose outputs have standard deviation `gain` for unit
// RMS-normalized inputs.
torch::Tensor projection(int64_t layer, int kind, int64_t out, int64_t in, double gain) {
  return normal_tensor(stream_of(layer, kind), out, in, gain / std::sqrt(static_cast<double>(in)));
}

// Scales the outlier channels of every key head by `outlier` and the matching
// query channels by 1/outlier: the scores keep their spread, but the cached
// keys carry outliers that quantization has to cope with.
void add_key_outliers(const DemoShape& d, LayerWeights& w, double outlier) {
  const int64_t group = d.heads / d.kv_heads, hd = d.head_dim();
  for (int64_t kv = 0; kv < d.kv_heads; ++kv) {
    for (int64_t c = hd - kOutlierChannels; c < hd; ++c) {
      w.wk[kv * hd + c].mul_(outlier);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        w.wq[h * hd + c].div_(outlier);
      }
    }
  }
}

LayerWeights make_layer(const DemoShape& d, int64_t l) {
  const auto i = static_cast<size_t>(l);
  // Score std = gain_q * gain_k for independent q and k entries (q.k summed
  // over head_dim channels, divided by sqrt(head_dim)).
  const double qk_gain = std::sqrt(kScoreStd[i]);
  LayerWeights w;
  const int64_t hd = d.head_dim();
  w.attn_norm = constant(d.dim, 1.0);
  w.ffn_norm = constant(d.dim, 1.0);
  w.wq = projection(l, 0, d.heads * hd, d.dim, qk_gain);
  w.wk = projection(l, 1, d.kv_heads * hd, d.dim, qk_gain);
  w.wv = projection(l, 2, d.kv_heads * hd, d.dim, 1.0);
  w.wo = projection(l, 3, d.dim, d.heads * hd, 1.0);
  w.w1 = projection(l, 4, d.hidden, d.dim, 1.0);
  w.w3 = projection(l, 5, d.hidden, d.dim, 1.0);
  w.w2 = projection(l, 6, d.dim, d.hidden, kFeedForwardGain);
  add_key_outliers(d, w, kKeyOutlier[i]);
  return w;
}

ModelConfig demo_config(const DemoShape& d) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.name = std::string(d.name);
  c.synthetic = true;
  c.dim = d.dim;
  c.hidden_dim = d.hidden;
  c.n_layers = kLayers;
  c.n_heads = d.heads;
  c.n_kv_heads = d.kv_heads;
  c.vocab_size = kVocab;
  c.max_seq_len = kMaxSeqLen;
  c.head_dim = d.head_dim();
  c.rope_style = RopeStyle::Interleaved;
  c.tied_embeddings = true;
  return c;
}

}  // namespace

// Everything the weights depend on; model_fingerprint("builtin:demo") hashes
// it, so a change to the generator must change this text (bump the version
// when changing code rather than a constant).
bool is_demo_model(std::string_view spec) {
  for (const DemoShape& d : kShapes) {
    if (d.name == spec) return true;
  }
  return false;
}

std::string demo_model_recipe(std::string_view spec) {
  const DemoShape& d = shape_of(spec);
  std::ostringstream s;
  s.precision(17);
  s << "kvtune-demo-v1 seed=" << kSeed << " layers=" << kLayers << " dim=" << d.dim
    << " heads=" << d.heads << " kv_heads=" << d.kv_heads << " hidden=" << d.hidden
    << " vocab=" << kVocab << " max_seq_len=" << kMaxSeqLen << " rope=interleaved"
    << " embedding_std=" << kEmbeddingStd << " final_norm=" << kFinalNormGain
    << " ffn_gain=" << kFeedForwardGain << " outlier_channels=" << kOutlierChannels;
  for (size_t l = 0; l < kLayers; ++l) {
    s << " layer" << l << "=" << kScoreStd[l] << "/" << kKeyOutlier[l];
  }
  return s.str();
}

Model make_demo_model(std::string_view spec) {
  const DemoShape& d = shape_of(spec);
  Model m;
  m.config = demo_config(d);
  m.embedding = normal_tensor(0, kVocab, d.dim, kEmbeddingStd);
  for (int64_t l = 0; l < kLayers; ++l) m.layers.push_back(make_layer(d, l));
  m.final_norm = constant(d.dim, kFinalNormGain);
  m.classifier = m.embedding;
  return m;
}

}  // namespace kvtune::worker
