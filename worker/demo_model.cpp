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
#include <string>

#include "llama.h"

namespace kvtune::worker {
namespace {

constexpr int64_t kLayers = 6;
constexpr int64_t kDim = 128;
constexpr int64_t kHeads = 8;
constexpr int64_t kKvHeads = 4;
constexpr int64_t kHeadDim = kDim / kHeads;
constexpr int64_t kHidden = 344;
constexpr int64_t kVocab = 512;
constexpr int64_t kMaxSeqLen = 512;
constexpr uint64_t kSeed = 0x6b7674756e65ULL;  // "kvtune"

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
void add_key_outliers(LayerWeights& w, double outlier) {
  const int64_t group = kHeads / kKvHeads;
  for (int64_t kv = 0; kv < kKvHeads; ++kv) {
    for (int64_t c = kHeadDim - kOutlierChannels; c < kHeadDim; ++c) {
      w.wk[kv * kHeadDim + c].mul_(outlier);
      for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
        w.wq[h * kHeadDim + c].div_(outlier);
      }
    }
  }
}

LayerWeights make_layer(int64_t l) {
  const auto i = static_cast<size_t>(l);
  // Score std = gain_q * gain_k for independent q and k entries (q.k summed
  // over head_dim channels, divided by sqrt(head_dim)).
  const double qk_gain = std::sqrt(kScoreStd[i]);
  LayerWeights w;
  w.attn_norm = constant(kDim, 1.0);
  w.ffn_norm = constant(kDim, 1.0);
  w.wq = projection(l, 0, kHeads * kHeadDim, kDim, qk_gain);
  w.wk = projection(l, 1, kKvHeads * kHeadDim, kDim, qk_gain);
  w.wv = projection(l, 2, kKvHeads * kHeadDim, kDim, 1.0);
  w.wo = projection(l, 3, kDim, kHeads * kHeadDim, 1.0);
  w.w1 = projection(l, 4, kHidden, kDim, 1.0);
  w.w3 = projection(l, 5, kHidden, kDim, 1.0);
  w.w2 = projection(l, 6, kDim, kHidden, kFeedForwardGain);
  add_key_outliers(w, kKeyOutlier[i]);
  return w;
}

ModelConfig demo_config() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.name = "builtin:demo";
  c.synthetic = true;
  c.dim = kDim;
  c.hidden_dim = kHidden;
  c.n_layers = kLayers;
  c.n_heads = kHeads;
  c.n_kv_heads = kKvHeads;
  c.vocab_size = kVocab;
  c.max_seq_len = kMaxSeqLen;
  c.head_dim = kHeadDim;
  c.rope_style = RopeStyle::Interleaved;
  c.tied_embeddings = true;
  return c;
}

}  // namespace

// Everything the weights depend on; model_fingerprint("builtin:demo") hashes
// it, so a change to the generator must change this text (bump the version
// when changing code rather than a constant).
std::string demo_model_recipe() {
  std::ostringstream s;
  s.precision(17);
  s << "kvtune-demo-v1 seed=" << kSeed << " layers=" << kLayers << " dim=" << kDim
    << " heads=" << kHeads << " kv_heads=" << kKvHeads << " hidden=" << kHidden
    << " vocab=" << kVocab << " max_seq_len=" << kMaxSeqLen << " rope=interleaved"
    << " embedding_std=" << kEmbeddingStd << " final_norm=" << kFinalNormGain
    << " ffn_gain=" << kFeedForwardGain << " outlier_channels=" << kOutlierChannels;
  for (size_t l = 0; l < kLayers; ++l) {
    s << " layer" << l << "=" << kScoreStd[l] << "/" << kKeyOutlier[l];
  }
  return s.str();
}

Model make_demo_model() {
  Model m;
  m.config = demo_config();
  m.embedding = normal_tensor(0, kVocab, kDim, kEmbeddingStd);
  for (int64_t l = 0; l < kLayers; ++l) m.layers.push_back(make_layer(l));
  m.final_norm = constant(kDim, kFinalNormGain);
  m.classifier = m.embedding;
  return m;
}

}  // namespace kvtune::worker
