// The evaluation engine on the real stories260K model: the one-pass emulation
// equals decoding with a real quantized cache, and the metrics behave as the
// users of a search rely on.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <optional>

#include "../support/stories_reference.h"
#include "evaluator.h"
#include "kvtune/common/error.h"

namespace kvtune::worker {
namespace {

using kvtune::testing::kStoriesModel;
using kvtune::testing::kStoriesReference;

// The first n tokens of the reference text.
std::vector<int64_t> reference_tokens(size_t n) {
  auto ids = kvtune::testing::stories_reference_ids();
  ids.resize(n);
  return ids;
}

Model to_double(const Model& m) {
  return to_device(m, torch::kCPU, torch::kFloat64);
}

std::vector<PrecisionPair> config(const std::string& text) {
  return parse_layer_config(text, 5);
}

struct EmulationCase {
  std::string scheme;
  int group_size, residual;
  std::string zero_point;
  std::string layers;
};

void PrintTo(const EmulationCase& c, std::ostream* os) {
  *os << c.scheme << " G=" << c.group_size << " R=" << c.residual << " zp=" << c.zero_point << " "
      << c.layers;
}

class EmulationVsDecode : public ::testing::TestWithParam<EmulationCase> {};

TEST_P(EmulationVsDecode, OnePassEqualsTokenByTokenQuantizedDecode) {
  SKIP_WITHOUT_SHARED();
  const EmulationCase& p = GetParam();
  // float64 activations so that only quantization, not summation order, could differ.
  const Model model = to_double(load_llama2c(kStoriesModel));
  const std::vector<int64_t> ids = reference_tokens(75);
  Evaluator ev(model, {ids});
  const Scheme scheme = Scheme::parse(p.scheme, p.group_size, p.residual, p.zero_point);
  const auto qs = ev.quantizers(config(p.layers), scheme);

  const AttentionFn emulate = [&qs](int64_t l, const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v) {
    return quantized_attention(q, k, v, qs[static_cast<size_t>(l)].first,
                               qs[static_cast<size_t>(l)].second);
  };
  const torch::Tensor one_pass =
      ev.transformer().forward(torch::tensor(ids, torch::kInt64).unsqueeze(0), emulate)[0];

  QuantizedKvCache cache(qs);
  const torch::Tensor fp_pass =
      ev.transformer().forward(torch::tensor(ids, torch::kInt64).unsqueeze(0))[0];
  double max_diff = 0, quant_effect = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const torch::Tensor step = ev.transformer().step(ids[i], cache);
    const auto row = static_cast<int64_t>(i);
    max_diff = std::max(max_diff, (step - one_pass[row]).abs().max().item<double>());
    quant_effect = std::max(quant_effect, (step - fp_pass[row]).abs().max().item<double>());
  }
  EXPECT_LT(max_diff, 1e-5);
  EXPECT_GT(quant_effect, 1e-2) << "the config should change the logits";
  EXPECT_EQ(cache.length(), static_cast<int64_t>(ids.size()));
}

INSTANTIATE_TEST_SUITE_P(
    SchemesAndMixedPairs, EmulationVsDecode,
    ::testing::Values(EmulationCase{"per-token-asym", 32, 32, "int", "K8V4,KV2,K4V2,K2V8,KV4"},
                      EmulationCase{"per-token-asym", 32, 32, "float", "KV2,KV16,K2V4,K4V8,KV8"},
                      EmulationCase{"kivi", 32, 32, "int", "K8V4,KV2,K4V2,K2V8,KV4"},
                      EmulationCase{"kivi", 4, 8, "float", "KV2,K2V4,KV16,K4V2,KV3"},
                      EmulationCase{"kivi", 8, 16, "int", "Kfp8Vnvfp4,KV2,KVfp8,K4Vnvfp4,KV1"}));

// --- read rules and prompts ---------------------------------------------------

// A case's model: stories260K or the generated demo model, in float64 so that
// only quantization, not summation order, could differ.
Model case_model(const std::string& name) {
  return to_double(name == "stories" ? load_llama2c(kStoriesModel) : make_demo_model());
}

// BOS and the reference continuation; for the demo model the ids are spread
// over its vocabulary.
std::vector<int64_t> case_tokens(const std::string& model, size_t n, int64_t vocab) {
  std::vector<int64_t> ids = reference_tokens(n);
  if (model != "stories") {
    for (size_t i = 1; i < ids.size(); ++i) ids[i] = (ids[i] * 7 + 3) % vocab;
  }
  return ids;
}

// Logits [T, V] of one teacher-forced pass through the emulated attention.
torch::Tensor one_pass_logits(const Evaluator& ev, const std::vector<int64_t>& ids,
                              const LayerQuantizers& qs, const ReadPlan& plan) {
  const AttentionFn emulate = [&](int64_t l, const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v) {
    return quantized_attention(q, k, v, qs[static_cast<size_t>(l)].first,
                               qs[static_cast<size_t>(l)].second, plan);
  };
  return ev.transformer().forward(torch::tensor(ids, torch::kInt64).unsqueeze(0), emulate)[0];
}

// Logits [T, V] of the literal decode through `cache`: the prompt prefilled
// in one step, then one token at a time.
torch::Tensor decode_logits(const Evaluator& ev, const std::vector<int64_t>& ids, int64_t prompt,
                            KvCache& cache) {
  std::vector<torch::Tensor> rows;
  if (prompt > 0)
    rows.push_back(ev.transformer().extend({ids.begin(), ids.begin() + prompt}, cache));
  for (size_t i = static_cast<size_t>(prompt); i < ids.size(); ++i) {
    rows.push_back(ev.transformer().step(ids[i], cache).unsqueeze(0));
  }
  EXPECT_EQ(cache.length(), static_cast<int64_t>(ids.size()));
  return torch::cat(rows);
}

struct ReadCase {
  std::string model;  // "stories" or "demo" (the generated built-in model)
  std::string scheme;
  std::string rule;
  int64_t prompt;
  std::string layers;  // a pair per layer of the model, or one for all
};

void PrintTo(const ReadCase& c, std::ostream* os) {
  *os << c.model << " " << c.scheme << " read=" << c.rule << " T0=" << c.prompt << " " << c.layers;
}

class ReadRuleVsDecode : public ::testing::TestWithParam<ReadCase> {};

// The literal decode of a prompt and its continuation: the prompt prefilled
// in one step through the cache, then one token at a time.
TEST_P(ReadRuleVsDecode, OnePassEqualsPrefillThenTokenByTokenDecode) {
  const ReadCase& p = GetParam();
  if (p.model == "stories") SKIP_WITHOUT_SHARED();
  const Model model = case_model(p.model);
  const std::vector<int64_t> ids = case_tokens(p.model, 75, model.config.vocab_size);
  Evaluator ev(model, {ids});
  const Scheme scheme = Scheme::parse(p.scheme, 8, 16, "int");
  const ReadPlan plan{p.prompt, ReadRule::parse(p.rule)};
  const auto qs =
      ev.quantizers(parse_layer_config(p.layers, static_cast<int>(model.config.n_layers)), scheme);
  const torch::Tensor one_pass = one_pass_logits(ev, ids, qs, plan);
  const torch::Tensor fp_pass =
      ev.transformer().forward(torch::tensor(ids, torch::kInt64).unsqueeze(0))[0];
  QuantizedKvCache cache(qs, plan);
  const torch::Tensor literal = decode_logits(ev, ids, p.prompt, cache);
  EXPECT_LT((literal - one_pass).abs().max().item<double>(), 1e-5);
  // The quantization shows in the continuation; a fresh prompt reads nothing quantized.
  EXPECT_GT((literal - fp_pass).slice(0, p.prompt).abs().max().item<double>(), 1e-3);
  if (p.prompt > 0) {
    const double prompt_effect =
        (literal - fp_pass).slice(0, 0, p.prompt).abs().max().item<double>();
    if (plan.rule.prefill == ReadRule::Source::Fresh) {
      EXPECT_LT(prompt_effect, 1e-9);
    } else {
      EXPECT_GT(prompt_effect, 1e-3);
    }
  }
}

std::vector<ReadCase> read_cases() {
  std::vector<ReadCase> out;
  for (const std::string model : {"stories", "demo"}) {
    const std::string mixed = model == "stories" ? "K8V4,KV2,K4V2,K2V8,KV4" : "K4V2";
    const std::string formats = model == "stories" ? "Kfp8Vnvfp4,KV2,KVfp8,K4Vnvfp4,KV3" : "KVfp8";
    for (int64_t t0 : {0, 17, 64}) {
      for (const std::string rule :
           {"fresh", "cache", "fresh-prefill", "prefill=cache,current=fresh"}) {
        out.push_back({model, "per-token-asym", rule, t0, mixed});
      }
      out.push_back({model, "per-token-asym", "cache", t0, formats});
      out.push_back({model, "kivi", "fresh", t0, mixed});  // R = 16: T0 = 17 ends mid-window
      out.push_back({model, "kivi", "fresh", t0, formats});
      // Released engines' dtypes, read as vLLM (cache) and SGLang FlashInfer
      // (fresh-prefill) read them.
      const std::string engines = model == "stories"
                                      ? "KVvllm:fp8,KVsglang:fp4_e2m1,KVvllm:int8_per_token_head,"
                                        "Kvllm:fp8_per_token_headVtrtllm:fp8,KVsglang:fp8_e5m2"
                                      : "KVvllm:nvfp4,KVsglang:fp4_e2m1,KVvllm:fp8,KVtrtllm:nvfp4,"
                                        "KVvllm:int8_per_token_head,KV16";
      for (const std::string rule : {"cache", "fresh-prefill"}) {
        out.push_back({model, "per-token-asym", rule, t0, engines});
      }
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(RulesPromptsAndModels, ReadRuleVsDecode,
                         ::testing::ValuesIn(read_cases()));

TEST(ReadRules, KiviRefusesRulesThatReadTheCache) {
  const Model model = make_demo_model();
  Evaluator ev(model, {{1, 2, 3, 4, 5, 6}});
  const Scheme kivi = Scheme::parse("kivi", 8, 16, "int");
  const auto layers = parse_layer_config("KV4", static_cast<int>(model.config.n_layers));
  const std::string message =
      testing::message_of([&] { ev.evaluate(layers, kivi, ReadRule::parse("cache")); });
  EXPECT_NE(message.find("read rule 'cache' reads tokens back from the quantized cache"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("kivi takes the fresh rule"), std::string::npos) << message;
  // fp8 under a kivi scheme is per-token: the rule applies to it.
  EXPECT_NO_THROW(ev.evaluate(parse_layer_config("KVfp8", static_cast<int>(model.config.n_layers)),
                              kivi, ReadRule::parse("cache")));
  EXPECT_THROW(ReadRule::parse("prefill=cache,current=stale"), Error);
  EXPECT_THROW(ReadRule::parse("prefill=fresh,prefill=cache"), Error);
  EXPECT_EQ(ReadRule::parse("prefill=fresh,current=cache").name(), "fresh-prefill");
  EXPECT_EQ(ReadRule::parse("prefill=cache,current=fresh").name(), "prefill=cache,current=fresh");
}

TEST(ReadRules, PromptsMustLeaveAContinuation) {
  const Model model = make_demo_model();
  const std::string message = testing::message_of([&] {
    Evaluator(model, {{1, 2, 3, 4}, {1, 2, 3}}, {0, 2});
  });
  EXPECT_EQ(message,
            "calibration sequence 1 has 3 tokens and a prompt of 2; the prompt must leave at least "
            "2 tokens to continue");
  EXPECT_THROW(Evaluator(model, {{1, 2, 3, 4}}, {0, 0}), Error);
}

// --- KVTuner's own cache --------------------------------------------------------
//
// A literal transcription of KVTuner's code (cmd2001/KVTuner:
// flexible_quant/vanilla_quantizer.py, and FlexibleQuantizedCache.update with
// the vanilla backend, asym=True, force_quant=False, compute_dtype bf16) in
// LibTorch ops, the ATen operators its Python calls. kvtune's kernels and its
// one-pass emulation are checked against it.

struct VanillaQuantized {
  torch::Tensor tensor, scaling, zeros;
  std::vector<int64_t> original_shape;
  int axis = 0;

  torch::Tensor dequantize() const {
    torch::Tensor dequant =
        (tensor + zeros.unsqueeze(1)) * scaling.unsqueeze(1).to(torch::kBFloat16);
    dequant = dequant.view(original_shape);
    if (axis == 1) dequant = dequant.transpose(-2, -1);
    return dequant;
  }
};

VanillaQuantized vanilla_quantize(torch::Tensor tensor, int64_t q_group_size, int axis, int nbits) {
  if (axis == 1) tensor = tensor.transpose(-2, -1);
  if (q_group_size == -1) q_group_size = tensor.size(-1);
  const torch::Tensor rs = tensor.reshape({-1, q_group_size});
  const int64_t q_max = (1 << (nbits - 1)) - 1, q_min = -(1 << (nbits - 1));
  const torch::Tensor max = std::get<0>(rs.max(1)), min = std::get<0>(rs.min(1));
  const torch::Tensor scale = (max - min).clamp(1e-5).div(q_max - q_min);
  const torch::Tensor zeros = (min / scale).round() - q_min;
  const torch::Tensor quant = torch::round(rs / scale.unsqueeze(1) - zeros.unsqueeze(1))
                                  .clip(q_min, q_max)
                                  .to(torch::kInt8);
  return {quant, scale, zeros, tensor.sizes().vec(), axis};
}

// KVTuner's setting as its search runs it (search_optuna_adaptive.py).
struct KvtunerSetting {
  std::string name;
  int residual_length, q_group_size, axis_key, axis_value;
};
const KvtunerSetting kPerToken{"per-token-asym", 0, -1, 0, 0};
const KvtunerSetting kPerChannel{"per-channel-asym", 32, 32, 1, 0};

// FlexibleQuantizedCache.update(), one layer's keys or values at a time, in
// HF's [batch, heads, tokens, head_dim] layout. An unquantized tensor (KV16,
// a kvtune extension KVTuner's configs never use) is a DynamicCache.
class LiteralKvtunerCache : public KvCache {
 public:
  LiteralKvtunerCache(std::vector<PrecisionPair> layers, KvtunerSetting setting)
      : layers_(std::move(layers)), setting_(std::move(setting)), streams_(layers_.size()) {}

  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k,
                                                 const torch::Tensor& v) override {
    auto& [ks, vs] = streams_[static_cast<size_t>(layer)];
    const PrecisionPair& p = layers_[static_cast<size_t>(layer)];
    torch::Tensor keys = update(ks, hf(k), p.key, setting_.axis_key);
    torch::Tensor values = update(vs, hf(v), p.value, setting_.axis_value);
    if (layer == 0) length_ = keys.size(2);
    return {back(keys), back(values)};
  }
  int64_t length() const override { return length_; }

 private:
  struct Stream {
    std::optional<VanillaQuantized> quantized;
    torch::Tensor cache;  // KVTuner's key_cache[layer_idx]
  };
  static torch::Tensor hf(const torch::Tensor& x) { return x.permute({1, 0, 2}).unsqueeze(0); }
  static torch::Tensor back(const torch::Tensor& x) {
    return x.squeeze(0).permute({1, 0, 2}).contiguous();
  }
  VanillaQuantized quantize(const torch::Tensor& x, const KvFormat& f, int axis) const {
    // KVTuner's states are the bf16 model's.
    return vanilla_quantize(x.to(torch::kFloat32).to(torch::kBFloat16).contiguous(),
                            setting_.q_group_size, axis, f.bits);
  }
  torch::Tensor update(Stream& s, const torch::Tensor& states, const KvFormat& f, int axis) const {
    if (f.kind == KvFormat::Kind::Full) {
      s.cache = s.cache.defined() ? torch::cat({s.cache, states}, -2) : states;
      return s.cache;
    }
    const auto empty = torch::zeros({0}, states.options());
    if (!s.quantized) {  // len(self.key_cache) == layer_idx: the prefill
      s.quantized = quantize(states, f, axis);
      s.cache = empty;
      return states;
    }
    const torch::Tensor dequant = s.quantized->dequantize().to(states.dtype());
    const torch::Tensor to_return = torch::cat({dequant, s.cache, states}, -2);
    if (s.cache.dim() == 4 && s.cache.size(-2) + 1 >= setting_.residual_length) {
      s.quantized = quantize(to_return, f, axis);
      s.cache = empty;
    } else {
      s.cache = torch::cat({s.cache, states}, -2);
    }
    return to_return;
  }

  std::vector<PrecisionPair> layers_;
  KvtunerSetting setting_;
  std::vector<std::pair<Stream, Stream>> streams_;
  int64_t length_ = 0;
};

TEST(KvtunerQuantizer, KernelEqualsVanillaQuantizerOps) {
  torch::manual_seed(3);
  for (const int64_t tokens : {1, 17, 64}) {
    for (const auto& [heads, head_dim] : {std::pair<int64_t, int64_t>{4, 8}, {2, 64}}) {
      const torch::Tensor x = torch::randn({tokens, heads, head_dim}) * 3.0 + 0.5;
      for (const int bits : {2, 4, 8}) {
        for (const auto& [axis, group] : {std::pair<int, int>{0, -1}, {0, 32}, {1, 32}}) {
          SCOPED_TRACE("T=" + std::to_string(tokens) + " hd=" + std::to_string(head_dim) +
                       " bits " + std::to_string(bits) + " axis " + std::to_string(axis) +
                       " group " + std::to_string(group));
          kernels::KvtunerSpec spec;
          spec.axis = axis == 1 ? kernels::KvtunerAxis::Channel : kernels::KvtunerAxis::Token;
          spec.bits = bits;
          spec.group_size = std::max(group, 0);
          torch::Tensor y = torch::empty_like(x);
          kernels::cpu::fake_quant_kvtuner(spec, {tokens, heads, head_dim}, kernels::DType::F32,
                                           x.data_ptr(), y.data_ptr());
          const torch::Tensor literal =
              vanilla_quantize(x.permute({1, 0, 2}).unsqueeze(0).to(torch::kBFloat16), group, axis,
                               bits)
                  .dequantize()
                  .squeeze(0)
                  .permute({1, 0, 2})
                  .to(torch::kFloat32);
          EXPECT_TRUE(torch::equal(y, literal))
              << "max diff " << (y - literal).abs().max().item<double>();
        }
      }
    }
  }
}

// kvtune's idealized scheme that a KVTuner setting corresponds to.
Scheme idealized_scheme(const std::string& kvtuner_setting) {
  return kvtuner_setting == "per-token-asym" ? Scheme::parse("per-token-asym", 32, 32, "int")
                                             : Scheme::parse("kivi", 32, 32, "int");
}

struct KvtunerCase {
  std::string model;  // "stories" or "demo"
  KvtunerSetting setting;
  int64_t prompt;
  std::string layers;
};

void PrintTo(const KvtunerCase& c, std::ostream* os) {
  *os << c.model << " " << c.setting.name << " T0=" << c.prompt << " " << c.layers;
}

class KvtunerVsLiteral : public ::testing::TestWithParam<KvtunerCase> {};

// The kvtuner target's one pass, and its decoding cache, against KVTuner's
// bookkeeping run literally: the prompt prefilled in one step, then a token
// at a time, flushes and whole-cache re-quantizations as its code does them.
TEST_P(KvtunerVsLiteral, OnePassEqualsKvtunersOwnCacheDecoding) {
  const KvtunerCase& p = GetParam();
  if (p.model == "stories") SKIP_WITHOUT_SHARED();
  const Model model = case_model(p.model);
  const std::vector<int64_t> ids = case_tokens(p.model, 140, model.config.vocab_size);
  Evaluator ev(model, {ids});
  const auto layers = parse_layer_config(p.layers, static_cast<int>(model.config.n_layers));
  const ReadPlan plan{p.prompt, ReadRule{}};
  const auto qs = ev.quantizers(layers, Scheme::kvtuner(p.setting.name));
  const torch::Tensor one_pass = one_pass_logits(ev, ids, qs, plan);
  LiteralKvtunerCache literal_cache(layers, p.setting);
  const torch::Tensor literal = decode_logits(ev, ids, p.prompt, literal_cache);
  QuantizedKvCache product_cache(qs, plan);
  const torch::Tensor product = decode_logits(ev, ids, p.prompt, product_cache);
  EXPECT_LT((literal - one_pass).abs().max().item<double>(), 1e-5);
  EXPECT_LT((literal - product).abs().max().item<double>(), 1e-5);

  // The prompt reads itself fresh; the continuation is perturbed, and not as
  // kvtune's idealized scheme of the same name perturbs it.
  const torch::Tensor fp_pass =
      ev.transformer().forward(torch::tensor(ids, torch::kInt64).unsqueeze(0))[0];
  const int64_t t0 = std::max<int64_t>(p.prompt, 1);
  EXPECT_LT((literal - fp_pass).slice(0, 0, t0).abs().max().item<double>(), 1e-9);
  EXPECT_GT((literal - fp_pass).slice(0, t0).abs().max().item<double>(), 1e-3);
  const auto idealized = ev.quantizers(layers, idealized_scheme(p.setting.name));
  EXPECT_GT((one_pass_logits(ev, ids, idealized, plan) - one_pass).abs().max().item<double>(),
            1e-4);
}

std::vector<KvtunerCase> kvtuner_cases() {
  std::vector<KvtunerCase> out;
  for (const std::string model : {"stories", "demo"}) {
    const std::string mixed =
        model == "stories" ? "K8V4,KV2,K16V4,K2V8,KV4" : "K8V4,KV2,K4V16,K2V8,KV4,KV8";
    for (const KvtunerSetting& setting : {kPerToken, kPerChannel}) {
      for (int64_t t0 : {0, 17, 64}) out.push_back({model, setting, t0, mixed});
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(SettingsPromptsAndModels, KvtunerVsLiteral,
                         ::testing::ValuesIn(kvtuner_cases()));

TEST(KvtunerTarget, RefusesFormatsAndRulesKvtunerDoesNotHave) {
  const Model model = make_demo_model();
  Evaluator ev(model, {{1, 2, 3, 4, 5, 6}});
  const Scheme scheme = Scheme::kvtuner("per-channel-asym");
  const int n = static_cast<int>(model.config.n_layers);
  EXPECT_NE(testing::message_of([&] {
              ev.evaluate(parse_layer_config("KV3", n), scheme);
            }).find("format 3 is not KVTuner's"),
            std::string::npos);
  EXPECT_NE(testing::message_of([&] {
              ev.evaluate(parse_layer_config("KVfp8", n), scheme);
            }).find("layer 0 (KVfp8)"),
            std::string::npos);
  EXPECT_NE(testing::message_of([&] {
              ev.evaluate(parse_layer_config("KV4", n), scheme, ReadRule::parse("cache"));
            }).find("it takes the fresh rule"),
            std::string::npos);
  EXPECT_NO_THROW(ev.evaluate(parse_layer_config("K8V2", n), scheme));
}

class Stories : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(kStoriesModel) || !std::filesystem::exists(kStoriesReference))
      return;
    model_ = std::make_unique<Model>(load_llama2c(kStoriesModel));
    evaluator_ = std::make_unique<Evaluator>(
        *model_, std::vector<std::vector<int64_t>>{reference_tokens(257)});
  }
  static void TearDownTestSuite() {
    evaluator_.reset();
    model_.reset();
  }
  Metrics eval(const std::string& layers, const std::string& scheme = "per-token-asym") {
    return evaluator_->evaluate(config(layers), Scheme::parse(scheme, 32, 32, "int"));
  }
  static std::unique_ptr<Model> model_;
  static std::unique_ptr<Evaluator> evaluator_;
};
std::unique_ptr<Model> Stories::model_;
std::unique_ptr<Evaluator> Stories::evaluator_;

TEST_F(Stories, UnquantizedCacheHasZeroKlAndFullAgreement) {
  SKIP_WITHOUT_SHARED();
  const Metrics m = eval("KV16");
  EXPECT_EQ(m.kl, 0.0);
  EXPECT_EQ(m.delta_nll, 0.0);
  EXPECT_EQ(m.top1_agreement, 1.0);
  EXPECT_EQ(m.ppl_q, m.ppl_fp);
  EXPECT_EQ(m.tokens, 257);
  EXPECT_DOUBLE_EQ(m.avg_bits, 16.0);
  // 5 layers x (K + V) x 4 kv heads x 8 dims x 2 bytes.
  EXPECT_DOUBLE_EQ(m.bytes_per_token, 640.0);
  for (double e : m.attn_rel_err) EXPECT_EQ(e, 0.0);
  // The model predicts its own greedy text well.
  EXPECT_GT(m.ppl_fp, 1.0);
  EXPECT_LT(m.ppl_fp, 3.0);
}

TEST_F(Stories, KlGrowsAsBitsFall) {
  SKIP_WITHOUT_SHARED();
  for (const char* scheme : {"per-token-asym", "kivi"}) {
    const Metrics kv8 = eval("KV8", scheme), kv4 = eval("KV4", scheme), kv2 = eval("KV2", scheme);
    EXPECT_GT(kv8.kl, 0.0) << scheme;
    EXPECT_LT(kv8.kl, kv4.kl) << scheme;
    EXPECT_LT(kv4.kl, kv2.kl) << scheme;
    EXPECT_GT(kv8.top1_agreement, kv2.top1_agreement) << scheme;
    EXPECT_GT(kv2.ppl_q, kv2.ppl_fp) << scheme;
    EXPECT_GT(kv2.bytes_per_token, 0.0);
    EXPECT_LT(kv2.bytes_per_token, kv4.bytes_per_token);
    for (size_t l = 0; l < 5; ++l) EXPECT_LT(kv8.attn_rel_err[l], kv2.attn_rel_err[l]);
  }
}

TEST_F(Stories, FirstLayerIsMoreSensitiveThanLast) {
  SKIP_WITHOUT_SHARED();
  const Metrics first = eval("KV2,KV16,KV16,KV16,KV16");
  const Metrics last = eval("KV16,KV16,KV16,KV16,KV2");
  // ../shared/models/README.md measured 2.27 vs 0.14 nats/token with run.c.
  EXPECT_GT(first.kl, 3 * last.kl);
  EXPECT_NEAR(first.kl, 2.27, 0.5);
  EXPECT_NEAR(last.kl, 0.14, 0.1);
  // The layer-local attention error is reported only for the quantized layer.
  EXPECT_GT(first.attn_rel_err[0], 0.0);
  EXPECT_EQ(first.attn_rel_err[4], 0.0);
  EXPECT_DOUBLE_EQ(first.avg_bits, (2.0 + 4 * 16.0) / 5.0);
}

TEST_F(Stories, KeysMatterMoreThanValuesOnLayerZero) {
  SKIP_WITHOUT_SHARED();
  // README: K8V2 on layer 0 costs 1.09 nats/token, K2V8 1.84.
  const Metrics k8v2 = eval("K8V2,KV16,KV16,KV16,KV16");
  const Metrics k2v8 = eval("K2V8,KV16,KV16,KV16,KV16");
  EXPECT_LT(k8v2.kl, k2v8.kl);
}

TEST_F(Stories, HardwareFormatsAreOrderedByPrecision) {
  SKIP_WITHOUT_SHARED();
  const Metrics fp8 = eval("KVfp8"), nvfp4 = eval("KVnvfp4");
  EXPECT_GT(fp8.kl, 0.0);
  EXPECT_LT(fp8.kl, nvfp4.kl);
  // head_dim 8: NVFP4 blocks of 8 values share an E4M3 scale (4 + 8/8 bits).
  EXPECT_LT(nvfp4.bytes_per_token, fp8.bytes_per_token);
}

TEST_F(Stories, EngineDtypesAreOrderedAndCountTheirRealStorage) {
  SKIP_WITHOUT_SHARED();
  const Metrics int8 = eval("KVvllm:int8_per_token_head"), fp8 = eval("KVvllm:fp8"),
                e5m2 = eval("KVvllm:fp8_e5m2"), fp4 = eval("KVsglang:fp4_e2m1");
  EXPECT_GT(int8.kl, 0.0);
  EXPECT_LT(int8.kl, fp8.kl);  // 7 bits of precision per (token, head) beat 3 mantissa bits
  EXPECT_LT(fp8.kl, e5m2.kl);
  EXPECT_LT(e5m2.kl, fp4.kl);
  // Per-(token, head) fp32 scales cost 32 / head_dim = 4 bits here: 5 layers
  // x 2 x 4 heads x 8 x 12 bits / 8 = 480 bytes; fp4 blocks 4.5 bits.
  EXPECT_DOUBLE_EQ(int8.bytes_per_token, 480.0);
  EXPECT_NEAR(fp4.bytes_per_token, 180.0, 1e-9);
  // TensorRT-LLM's fp8 is vLLM's at scale 1, value for value.
  EXPECT_EQ(eval("KVtrtllm:fp8").kl, fp8.kl);
  // Calibrated scales (amax / 448) move the values the cache holds.
  const auto layers = config("KVvllm:fp8");
  Scheme calibrated = Scheme::parse("per-token-asym", 32, 32, "int");
  calibrated.kv_scales = KvScales::Calibrated;
  EXPECT_NE(evaluator_->evaluate(layers, calibrated).kl, fp8.kl);
  // head_dim 8 has no 16-channel NVFP4 blocks: refused, naming the layer.
  const std::string message = testing::message_of([&] { eval("KVvllm:nvfp4"); });
  EXPECT_NE(message.find("layer 0 (KVvllm:nvfp4): nvfp4 blocks are 16 channels of one head"),
            std::string::npos)
      << message;
}

TEST_F(Stories, ContinuationKlIsReportedBesideTheAllPositionsKl) {
  SKIP_WITHOUT_SHARED();
  const auto layers = config("KV2");
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  const Metrics today = evaluator_->evaluate(layers, scheme);
  // T0 = 0 is today's evaluation exactly, whatever the prompt rule.
  Evaluator no_prompt(*model_, {reference_tokens(257)}, {0});
  const Metrics zero =
      no_prompt.evaluate(layers, scheme, ReadRule::parse("prefill=cache,current=fresh"));
  EXPECT_EQ(zero.kl, today.kl);
  EXPECT_EQ(zero.kl_all, today.kl);
  EXPECT_EQ(zero.delta_nll, today.delta_nll);
  EXPECT_EQ(zero.top1_agreement, today.top1_agreement);
  EXPECT_EQ(zero.attn_rel_err, today.attn_rel_err);
  EXPECT_EQ(today.kl_all, today.kl);

  Evaluator prompted(*model_, {reference_tokens(257)}, {128});
  const Metrics fresh = prompted.evaluate(layers, scheme);
  EXPECT_EQ(fresh.tokens, 257 - 128);
  EXPECT_GT(fresh.kl, 0.0);
  // The fresh prompt adds 128 positions of zero KL to the all-positions mean.
  EXPECT_NEAR(fresh.kl_all, fresh.kl * (257.0 - 128.0) / 257.0, 1e-5);
  EXPECT_NE(fresh.kl, today.kl);
  // Sequences with and without a prompt in one calibration set: each mean
  // weighs the positions it covers.
  Evaluator mixed(*model_, {reference_tokens(257), reference_tokens(200)}, {128, 0});
  Evaluator short_one(*model_, {reference_tokens(200)});
  const Metrics both = mixed.evaluate(layers, scheme);
  const Metrics second = short_one.evaluate(layers, scheme);
  EXPECT_EQ(both.tokens, (257 - 128) + 200);
  EXPECT_NEAR(both.kl_all, (fresh.kl_all * 257 + second.kl * 200) / (257 + 200), 1e-5);
  EXPECT_NEAR(both.kl, (fresh.kl * (257 - 128) + second.kl * 200) / both.tokens, 1e-5);
  // Reading the prompt from the cache perturbs the prompt positions too.
  const Metrics cache = prompted.evaluate(layers, scheme, ReadRule::parse("cache"));
  EXPECT_GT(cache.kl_all, fresh.kl_all);
  EXPECT_NE(cache.kl, fresh.kl);
}

TEST_F(Stories, KvtunerTargetReportsContinuationKlAndDiffersFromTheIdealizedScheme) {
  SKIP_WITHOUT_SHARED();
  const auto layers = config("K4V2");
  for (const std::string setting : {"per-token-asym", "per-channel-asym"}) {
    SCOPED_TRACE(setting);
    const Scheme scheme = Scheme::kvtuner(setting);
    Evaluator prompted(*model_, {reference_tokens(257)}, {128});
    const Metrics m = prompted.evaluate(layers, scheme);
    EXPECT_EQ(m.tokens, 257 - 128);
    EXPECT_GT(m.kl, 0.0);
    // The prompt reads itself fresh: 128 positions of zero KL in kl_all.
    EXPECT_NE(m.kl_all, m.kl);
    EXPECT_NEAR(m.kl_all, m.kl * (257.0 - 128.0) / 257.0, 1e-5);
    // Re-quantization and bf16 arithmetic are not kvtune's idealized cache.
    EXPECT_NE(prompted.evaluate(layers, idealized_scheme(setting)).kl, m.kl);
  }
  // KVTuner's bf16 KV8 is measurably coarser than exact 8-bit integers.
  const Metrics kv8 = evaluator_->evaluate(config("KV8"), Scheme::kvtuner("per-token-asym"));
  EXPECT_GT(kv8.kl, 1.5 * eval("KV8").kl);
}

TEST_F(Stories, WrongLayerCountIsAnError) {
  SKIP_WITHOUT_SHARED();
  EXPECT_THROW(evaluator_->evaluate(parse_layer_config("KV4,KV4", 2), Scheme{}), Error);
}

// SGLang's fp8 cast does not saturate: keys beyond 464 x k_scale are NaN in
// its cache. The evaluation reports that, naming the layer, instead of
// returning a KL computed from values the engine does not hold.
TEST(EngineDtypes, NonSaturatingFp8OverflowIsReportedNotHidden) {
  Model model = make_demo_model();
  model.layers[2].wk = model.layers[2].wk * 5000.0;  // keys of a few thousand
  Evaluator ev(model, {{1, 5, 9, 13, 17, 21, 25, 29}});
  const auto layers =
      parse_layer_config("KVsglang:fp8_e4m3", static_cast<int>(model.config.n_layers));
  const std::string message = testing::message_of(
      [&] { ev.evaluate(layers, Scheme::parse("per-token-asym", 32, 32, "int")); });
  EXPECT_NE(message.find("layer 2 keys in sglang:fp8_e4m3 at k_scale 1"), std::string::npos)
      << message;
  EXPECT_NE(message.find("become NaN in sglang's cache"), std::string::npos) << message;
  // vLLM's saturating fp8 evaluates; so does SGLang's with calibrated scales.
  const Scheme plain = Scheme::parse("per-token-asym", 32, 32, "int");
  EXPECT_TRUE(std::isfinite(
      ev.evaluate(parse_layer_config("KVvllm:fp8", static_cast<int>(model.config.n_layers)), plain)
          .kl));
  Scheme calibrated = plain;
  calibrated.kv_scales = KvScales::Calibrated;
  EXPECT_TRUE(std::isfinite(ev.evaluate(layers, calibrated).kl));
}

TEST(EvaluatorInput, BadSequencesAreNamed) {
  SKIP_WITHOUT_SHARED();
  const Model model = load_llama2c(kStoriesModel);
  try {
    Evaluator ev(model, {{1, 2, 3}, {1, 600}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 1, position 1: token id 600"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(Evaluator(model, {{1}}), Error);
  EXPECT_THROW(Evaluator(model, {}), Error);
}

}  // namespace
}  // namespace kvtune::worker
