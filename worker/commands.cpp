#include "commands.h"

#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "calibration.h"
#include "evaluator.h"
#include "fingerprint.h"
#include "kvtune/common/config_file.h"
#include "kvtune/common/engine_target.h"
#include "kvtune/common/error.h"
#include "kvtune/common/int_list.h"
#include "kvtune/common/job_spec.h"
#include "llama.h"

namespace kvtune::worker {
namespace po = boost::program_options;

namespace {

constexpr const char* kModelHelp =
    "llama2.c .bin, Hugging Face directory, or builtin:demo (builtin:demo-hd64: head_dim 64)";
constexpr const char* kSyntheticNote =
    "note: builtin:demo is a synthetic, generated model (not a trained LM)";

// Options shared by the commands that quantize a cache.
struct QuantOptions {
  std::string target = "kvtune";
  std::string scheme = "per-token-asym";
  int group_size = kUnset;
  int residual = kUnset;
  static constexpr int kUnset = -1000;
  std::string zero_point = "int";
  std::string kv_scales = "one";
  std::string rotate = "auto";
  std::vector<std::string> configs;
  std::string config_file;

  void add_to(po::options_description& opts) {
    opts.add_options()(
        "target", po::value(&target)->default_value(target),
        "kvtune (its idealized caches), kvtuner (KVTuner's own cache, re-quantized at each "
        "flush, bf16 arithmetic), or an engine: vllm, sglang, trtllm, vllm-per-layer-pr, "
        "trtllm-per-layer-pr, llama.cpp, ik_llama.cpp (its dtypes, structure and read rule)")(
        "scheme", po::value(&scheme)->default_value(scheme),
        "per-token-asym or kivi; target kvtuner: per-token-asym or per-channel-asym")(
        "group-size", po::value(&group_size),
        "kivi group size G (default 32); kvtuner: q_group_size (-1: head_dim; default its "
        "setting's)")("residual", po::value(&residual),
                      "kivi full-precision window R, a multiple of G (default R = G); kvtuner: "
                      "residual_length (default its setting's)")(
        "zero-point", po::value(&zero_point)->default_value(zero_point),
        "int (KVTuner) or float (KIVI)")(
        "kv-scales", po::value(&kv_scales)->default_value(kv_scales),
        "engine dtypes' per-layer k/v scales: one, calculated (vLLM --calculate-kv-scales) or "
        "calibrated (a calibrated checkpoint: amax / 448, nvfp4 amax / 2688)")(
        "rotate", po::value(&rotate)->default_value(rotate),
        "llama.cpp types: the Hadamard rotation, auto (llama.cpp's rule: quantized types, "
        "head_dim % 64 == 0), on or off (LLAMA_ATTN_ROT_DISABLE=1)")(
        "config", po::value(&configs)->composing(),
        "one pair for all layers, or one per layer: K8V4,KV4,... (repeatable: each is evaluated)")(
        "config-file", po::value(&config_file), "KVTuner YAML or JSON layer config");
  }
  bool has_config() const { return !configs.empty() || !config_file.empty(); }
  Scheme quant_scheme() const {
    const auto given = [](int v) { return v == kUnset ? std::nullopt : std::optional<int>(v); };
    const EngineTarget* engine = find_engine_target(target);
    if (engine != nullptr && scheme != "per-token-asym") {
      throw Error("--scheme " + scheme + ": target " + target +
                  "'s engine dtypes have their own arithmetic (no integer scheme)");
    }
    Scheme s = Scheme::from_options(engine != nullptr ? "kvtune" : target, scheme,
                                    given(group_size), given(residual), zero_point);
    s.kv_scales = parse_kv_scales(kv_scales);
    s.rotation = target_rotation(target, parse_rotation(rotate));
    return s;
  }
  // The read rule: --read, else an engine target's own.
  ReadRule read_rule(const std::string& text, bool defaulted) const {
    const EngineTarget* engine = find_engine_target(target);
    return engine != nullptr && defaulted ? engine->read_rule() : ReadRule::parse(text);
  }
  // Every configuration given, in order.
  std::vector<std::vector<PrecisionPair>> layer_configs(int num_layers) const {
    if (!configs.empty() && !config_file.empty()) {
      throw Error("give --config or --config-file, not both");
    }
    if (!config_file.empty()) return {load_layer_config_file(config_file, num_layers)};
    if (configs.empty()) throw Error("--config or --config-file is required");
    std::vector<std::vector<PrecisionPair>> out;
    for (const std::string& c : configs) {
      try {
        out.push_back(parse_layer_config(c, num_layers));
        const EngineTarget* engine = find_engine_target(target);
        if (engine == nullptr) continue;
        if (std::string why = engine->refusal(out.back()); !why.empty()) {
          throw Error("target " + target + ": " + why);
        }
      } catch (const Error& e) {
        throw Error(std::string("--config ") + c + ": " + e.what());
      }
    }
    return out;
  }
  std::vector<PrecisionPair> layers(int num_layers) const {
    auto all = layer_configs(num_layers);
    if (all.size() != 1) throw Error("give one --config here");
    return all[0];
  }
};

// Where and in which precision the model runs.
struct RuntimeOptions {
  std::string device = "cpu";
  std::string dtype = "float32";

  void add_to(po::options_description& opts) {
    opts.add_options()("device", po::value(&device)->default_value(device), "cpu or cuda[:N]")(
        "dtype", po::value(&dtype)->default_value(dtype), "float32, bfloat16 or float16");
  }
  Model place(Model model) const {
    torch::ScalarType type = torch::kFloat32;
    if (dtype == "bfloat16") {
      type = torch::kBFloat16;
    } else if (dtype == "float16") {
      type = torch::kFloat16;
    } else if (dtype != "float32") {
      throw Error("--dtype '" + dtype + "' is not one of float32, bfloat16, float16");
    }
    if (device.rfind("cuda", 0) == 0 && !torch::cuda::is_available()) {
      throw Error("--device " + device + ": this worker's LibTorch sees no CUDA device");
    }
    if (device.rfind("cuda", 0) != 0 && device != "cpu") {
      throw Error("--device '" + device + "' is not one of cpu, cuda, cuda:N");
    }
    if (device == "cpu" && type != torch::kFloat32) {
      // Debian's CPU LibTorch lacks reduced-precision batched matmuls; CPU
      // workers evaluate in float32, GPU workers in the model's dtype.
      throw Error("--dtype " + dtype + " needs --device cuda; CPU evaluation runs in float32");
    }
    if (device == "cpu" && type == torch::kFloat32) return model;
    return to_device(model, torch::Device(device), type);
  }
};

// Parses args; returns false when --help was printed.
bool parse(const std::vector<std::string>& args, const po::options_description& opts,
           po::variables_map& vm) {
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts;
    return false;
  }
  po::notify(vm);
  return true;
}

std::vector<int64_t> parse_ids(const std::string& text, const char* option) {
  return parse_int_list(text, 0, [option](const std::string& item) {
    return std::string(option) + ": '" + item + "' is not a token id";
  });
}

std::string rope_description(const ModelConfig& c) {
  std::string s = "theta " + std::to_string(static_cast<int64_t>(c.rope_theta)) +
                  (c.rope_style == RopeStyle::Interleaved ? ", interleaved pairs" : ", half split");
  if (c.rope_scaling.enabled) s += ", llama3 scaling x" + std::to_string(c.rope_scaling.factor);
  return s;
}

}  // namespace

static int inspect_command_impl(const std::vector<std::string>& args) {
  std::string model_spec;
  po::options_description opts("kvtune inspect [options]");
  opts.add_options()("help,h", "show this help")("model", po::value(&model_spec)->required(),
                                                 kModelHelp)("json", "print one JSON object");
  po::variables_map vm;
  if (!parse(args, opts, vm)) return 0;
  const Model model = load_model(model_spec);
  const ModelConfig& c = model.config;
  const std::string fingerprint = model_fingerprint(model_spec);
  if (vm.count("json")) {
    std::cout << nlohmann::json{{"model", c.name},
                                {"architecture", c.architecture},
                                {"synthetic", c.synthetic},
                                {"layers", c.n_layers},
                                {"dim", c.dim},
                                {"hidden_dim", c.hidden_dim},
                                {"heads", c.n_heads},
                                {"kv_heads", c.n_kv_heads},
                                {"head_dim", c.head_dim},
                                {"vocab_size", c.vocab_size},
                                {"context", c.max_seq_len},
                                {"rope", rope_description(c)},
                                {"attention_bias", c.attention_bias},
                                {"tied_embeddings", c.tied_embeddings},
                                {"weight_dtype", c.weight_dtype},
                                {"fingerprint", fingerprint}}
                     .dump()
              << "\n";
    return 0;
  }
  std::cout << "model         " << c.name << (c.synthetic ? "  (synthetic)" : "") << "\n"
            << "architecture  " << c.architecture << "\n"
            << "layers        " << c.n_layers << "\n"
            << "dim           " << c.dim << " (ffn " << c.hidden_dim << ")\n"
            << "heads         " << c.n_heads << " query, " << c.n_kv_heads << " KV, head_dim "
            << c.head_dim << "\n"
            << "vocab         " << c.vocab_size << "\n"
            << "context       " << c.max_seq_len << "\n"
            << "rope          " << rope_description(c) << "\n"
            << "qkv bias      " << (c.attention_bias ? "yes" : "no") << "\n"
            << "embeddings    " << (c.tied_embeddings ? "tied" : "untied") << "\n"
            << "weights       " << c.weight_dtype << "\n"
            << "fingerprint   " << fingerprint << "\n";
  if (c.synthetic) std::cout << kSyntheticNote << "\n";
  return 0;
}

static int eval_command_impl(const std::vector<std::string>& args) {
  std::string model_spec, data_spec, read_text, free_run_text;
  int64_t seq_len = 0, prompt_tokens = 0;
  int threads = 0;
  QuantOptions quant;
  po::options_description opts("kvtune eval [options]");
  opts.add_options()("help,h", "show this help")("model", po::value(&model_spec)->required(),
                                                 kModelHelp)(
      "data", po::value(&data_spec)->required(),
      "calibration tokens: FILE.u16, FILE.u32, FILE.jsonl or sample:N:L:SEED")(
      "seq-len", po::value(&seq_len)->default_value(256), "sequence length for .u16/.u32 files")(
      "prompt-tokens", po::value(&prompt_tokens)->default_value(0),
      "T0: each sequence's first T0 tokens are a prompt, prefilled at once; metrics are over "
      "the continuation (a JSONL line's \"prompt\" overrides it)")(
      "read", po::value(&read_text)->default_value("fresh"),
      "read rule: fresh, cache, fresh-prefill, or prefill=fresh|cache,current=fresh|cache")(
      "threads", po::value(&threads)->default_value(0),
      "LibTorch intra-op threads (0: its default)")(
      "free-run", po::value(&free_run_text),
      "N,P,M: also generate greedily from the first P tokens of the first N sequences, M new "
      "tokens through the real quantized cache, and report agreement with the unquantized "
      "model's own continuation and the first divergence")("json", "print one JSON object");
  quant.add_to(opts);
  RuntimeOptions runtime;
  runtime.add_to(opts);
  po::variables_map vm;
  if (!parse(args, opts, vm)) return 0;
  std::optional<JobSpec::FreeRun> free_run;
  if (!free_run_text.empty()) free_run = parse_free_run(free_run_text, "--free-run");
  // LibTorch's own default; its matmuls already use OpenBLAS's threads, and
  // more intra-op threads on top oversubscribe the cores.
  if (threads > 0) torch::set_num_threads(threads);

  const Scheme scheme = quant.quant_scheme();
  if (prompt_tokens < 0) {
    throw Error("--prompt-tokens " + std::to_string(prompt_tokens) + " must be 0 or more");
  }
  const ReadRule rule = quant.read_rule(read_text, vm["read"].defaulted());
  const Model model = runtime.place(load_model(model_spec));
  const auto configs = quant.layer_configs(static_cast<int>(model.config.n_layers));
  const CalibrationData data = load_calibration(data_spec, seq_len, model);
  // The unquantized reference is computed once and shared by every config.
  const std::vector<int64_t> prompts = prompt_lengths(data, prompt_tokens);
  Evaluator evaluator(model, data.sequences, prompts);
  const bool prompted =
      std::any_of(prompts.begin(), prompts.end(), [](int64_t t) { return t > 0; });
  std::vector<Metrics> results;
  for (const auto& layers : configs) results.push_back(evaluator.evaluate(layers, scheme, rule));
  std::vector<FreeRun> runs;
  if (free_run) {
    for (const auto& layers : configs) {
      runs.push_back(evaluator.free_run(layers, scheme, rule, free_run->prompts,
                                        free_run->prompt_tokens, free_run->new_tokens));
    }
  }

  if (vm.count("json")) {
    // One JSON object per config (one line each).
    for (size_t i = 0; i < configs.size(); ++i) {
      nlohmann::json out = results[i].to_json();
      out["config"] = format_layer_config(configs[i]);
      out["scheme"] = scheme.key();
      out["read"] = rule.name();
      const bool uniform =
          std::all_of(prompts.begin(), prompts.end(), [&](int64_t t) { return t == prompts[0]; });
      out["prompt_tokens"] = uniform ? nlohmann::json(prompts[0]) : nlohmann::json(prompts);
      out["model"] = model.config.name;
      out["synthetic"] = model.config.synthetic;
      out["device"] = runtime.device;
      out["dtype"] = runtime.dtype;
      if (!runs.empty()) out["free_run"] = runs[i].to_json();
      std::cout << out.dump() << "\n";
    }
    return 0;
  }
  std::cout << "model " << model.config.name << (model.config.synthetic ? " (synthetic)" : "")
            << ", data " << data.spec << " (" << data.sequences.size() << " sequences, "
            << results[0].tokens << (prompted ? " continuation" : "") << " tokens), scheme "
            << scheme.key() << ", read rule " << rule.name() << "\n";
  if (!data.note.empty()) std::cout << "data: " << data.note << "\n";
  if (configs.size() == 1) {
    const Metrics& m = results[0];
    std::cout << "config " << format_layer_config(configs[0]) << "\n\n";
    std::printf("KL divergence      %.6f nats/token%s\n", m.kl, prompted ? " (continuation)" : "");
    if (prompted) std::printf("KL, all positions  %.6f nats/token\n", m.kl_all);
    std::printf("delta NLL          %.6f nats/token\n", m.delta_nll);
    std::printf("perplexity         %.4f -> %.4f\n", m.ppl_fp, m.ppl_q);
    std::printf("top-1 agreement    %.4f\n", m.top1_agreement);
    std::printf("average bits       %.3f\n", m.avg_bits);
    std::printf("KV bytes / token   %.1f\n", m.bytes_per_token);
    std::printf("attention rel.err ");
    for (double e : m.attn_rel_err) std::printf(" %.4f", e);
    std::printf("\n");
    if (!runs.empty()) {
      std::printf(
          "free-running       %.4f agreement, first divergence at %.1f of %lld new tokens\n",
          runs[0].agreement, runs[0].first_divergence, static_cast<long long>(runs[0].new_tokens));
    }
  } else {
    std::printf("\n%-28s %8s %10s %10s %10s %8s %10s\n", "config", "avg bits", "bytes/tok", "KL",
                "dNLL", "top-1", "ppl");
    for (size_t i = 0; i < configs.size(); ++i) {
      const Metrics& m = results[i];
      const auto& layers = configs[i];
      const bool uniform = std::all_of(layers.begin(), layers.end(),
                                       [&](const PrecisionPair& p) { return p == layers[0]; });
      std::string name = uniform ? layers[0].name() + " (all layers)" : format_layer_config(layers);
      if (name.size() > 28) name = name.substr(0, 25) + "...";
      std::printf("%-28s %8.3f %10.1f %10.5f %10.5f %8.4f %10.3f", name.c_str(), m.avg_bits,
                  m.bytes_per_token, m.kl, m.delta_nll, m.top1_agreement, m.ppl_q);
      if (!runs.empty()) {
        std::printf("   free-run %.3f, diverges at %.1f", runs[i].agreement,
                    runs[i].first_divergence);
      }
      std::printf("\n");
    }
  }
  if (model.config.synthetic) std::cout << kSyntheticNote << "\n";
  return 0;
}

static int generate_command_impl(const std::vector<std::string>& args) {
  std::string model_spec, prompt, data_spec;
  int64_t steps = 0;
  QuantOptions quant;
  po::options_description opts("kvtune generate [options]");
  opts.add_options()("help,h", "show this help")("model", po::value(&model_spec)->required(),
                                                 kModelHelp)(
      "prompt-ids", po::value(&prompt)->default_value("1"), "comma-separated prompt token ids")(
      "steps", po::value(&steps)->default_value(64), "tokens to generate")(
      "data", po::value(&data_spec)->default_value("sample:4:64:0"),
      "calibration data for fp8/nvfp4 static scales (and engine dtypes' calibrated ones)")(
      "json", "print one JSON object");
  quant.add_to(opts);
  RuntimeOptions runtime;
  runtime.add_to(opts);
  po::variables_map vm;
  if (!parse(args, opts, vm)) return 0;
  if (steps < 0) throw Error("--steps " + std::to_string(steps) + " must not be negative");
  const std::vector<int64_t> prompt_ids = parse_ids(prompt, "--prompt-ids");

  const Model model = runtime.place(load_model(model_spec));
  const Transformer transformer(model);
  std::unique_ptr<KvCache> cache = std::make_unique<FullPrecisionCache>();
  std::string config = "KV16";
  if (quant.has_config()) {
    const std::vector<PrecisionPair> layers = quant.layers(static_cast<int>(model.config.n_layers));
    config = format_layer_config(layers);
    // Static fp8/nvfp4 scales come from calibration data, as in an evaluation.
    const bool needs_scales = std::any_of(layers.begin(), layers.end(), [](const PrecisionPair& p) {
      return p.key.kind == KvFormat::Kind::Fp8 || p.key.kind == KvFormat::Kind::Nvfp4 ||
             p.key.kind == KvFormat::Kind::Engine || p.value.kind == KvFormat::Kind::Fp8 ||
             p.value.kind == KvFormat::Kind::Nvfp4 || p.value.kind == KvFormat::Kind::Engine;
    });
    KvAmax amax = KvAmax::zeros(model.config);
    if (needs_scales) {
      const AttentionFn record = amax.recording_attention();
      for (const auto& seq : load_calibration(data_spec, 0, model).sequences) {
        transformer.forward(torch::tensor(seq, torch::kInt64).unsqueeze(0), record);
      }
    }
    cache = std::make_unique<QuantizedKvCache>(
        make_quantizers(model.config, layers, quant.quant_scheme(), amax));
  }
  torch::Tensor logits;
  for (int64_t id : prompt_ids) logits = transformer.step(id, *cache);
  std::vector<int64_t> generated;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t next = logits.argmax().item<int64_t>();
    generated.push_back(next);
    if (s + 1 < steps) logits = transformer.step(next, *cache);
  }
  if (vm.count("json")) {
    std::cout << nlohmann::json{{"prompt", prompt_ids},
                                {"generated", generated},
                                {"config", config}}
                     .dump()
              << "\n";
  } else {
    for (size_t i = 0; i < generated.size(); ++i) std::cout << (i ? " " : "") << generated[i];
    std::cout << "\n";
  }
  return 0;
}

namespace {

// LibTorch errors carry a C++ backtrace in what(); users get the message.
template <class Command>
int without_backtraces(const Command& command, const std::vector<std::string>& args) {
  try {
    return command(args);
  } catch (const c10::Error& e) {
    throw Error(e.what_without_backtrace());
  }
}

}  // namespace

int inspect_command(const std::vector<std::string>& args) {
  return without_backtraces(inspect_command_impl, args);
}
int eval_command(const std::vector<std::string>& args) {
  return without_backtraces(eval_command_impl, args);
}
int generate_command(const std::vector<std::string>& args) {
  return without_backtraces(generate_command_impl, args);
}

}  // namespace kvtune::worker
