#include "kvtune/common/engine_target.h"

#include <algorithm>
#include <array>
#include <stdexcept>

#include "kvtune/kernels/engine.h"

namespace kvtune {
namespace {

using Structure = EngineTarget::Structure;

constexpr std::array<std::string_view, 5> kVllm = {"vllm:fp8", "vllm:fp8_e5m2",
                                                   "vllm:fp8_per_token_head",
                                                   "vllm:int8_per_token_head", "vllm:nvfp4"};
constexpr std::array<std::string_view, 3> kSglang = {"sglang:fp8_e4m3", "sglang:fp8_e5m2",
                                                     "sglang:fp4_e2m1"};
constexpr std::array<std::string_view, 2> kTrtllm = {"trtllm:fp8", "trtllm:nvfp4"};
constexpr std::array<std::string_view, 2> kVllmPr = {"vllm:fp8", "vllm:nvfp4"};
// llama.cpp's -ctk / -ctv types (common/arg.cpp), widest first.
constexpr std::array<std::string_view, 9> kLlamaCpp = {
    "llama.cpp:f32",  "llama.cpp:f16",  "llama.cpp:bf16",   "llama.cpp:q8_0", "llama.cpp:q5_1",
    "llama.cpp:q5_0", "llama.cpp:q4_1", "llama.cpp:iq4_nl", "llama.cpp:q4_0"};
// ik_llama.cpp's searched types: llama.cpp's without f32 (twice f16's bits for
// an error f16 already makes negligible) and bf16 (f16's bits with 3 fewer
// mantissa bits; KV rarely leaves f16's range), keeping its profile of
// (keys + values - 1) pairs per layer small. f16 first: the reference of the
// per-role profile, and the type of an unquantized first/last override.
constexpr std::array<std::string_view, 7> kIkLlamaCpp = {
    "llama.cpp:f16",  "llama.cpp:q8_0",   "llama.cpp:q5_1", "llama.cpp:q5_0",
    "llama.cpp:q4_1", "llama.cpp:iq4_nl", "llama.cpp:q4_0"};

// Read rules (ENGINES.md "Read rules"): vLLM V1 writes the step's K/V into the
// cache before its attention kernel reads the cache; SGLang's default
// FlashInfer path reads the prompt's own K/V fresh (ragged extend) and the
// decoded token's from the cache; TensorRT-LLM's paged context FMHA (block
// reuse is on by default) and XQA decode read the cache. llama.cpp's
// build_attn copies the batch's K/V into the cache (cpy_k / cpy_v) and its
// attention reads views of the cache, with or without flash attention.
constexpr std::array kTargets = {
    EngineTarget{"vllm", "vllm", Structure::SkipLayers, kVllm, "cache",
                 "vLLM V1 FlashAttention/Triton/FlashInfer", "", "vllm"},
    EngineTarget{"sglang", "sglang", Structure::Uniform, kSglang, "fresh-prefill",
                 "SGLang FlashInfer (its default ragged extend)", "", "sglang-launch"},
    EngineTarget{"trtllm", "trtllm", Structure::Uniform, kTrtllm, "cache",
                 "TensorRT-LLM paged context FMHA and XQA decode", "", "trtllm-serve"},
    EngineTarget{"vllm-per-layer-pr", "vllm", Structure::PerLayer, kVllmPr, "cache",
                 "vLLM V1 FlashAttention/Triton/FlashInfer",
                 "vllm-project/vllm PR #56116 (ModelOpt kv_cache_quantized_layers)",
                 "hf_quant_config"},
    EngineTarget{"trtllm-per-layer-pr", "trtllm", Structure::PerLayer, kTrtllm, "cache",
                 "TensorRT-LLM paged context FMHA and XQA decode",
                 "NVIDIA/TensorRT-LLM PR #13695 (KvCacheConfig.dtype ranges)", "trtllm"},
    EngineTarget{"llama.cpp", "llama.cpp", Structure::UniformKV, kLlamaCpp, "cache",
                 "llama.cpp build_attn (the batch's K/V copied into the cache, then read)", "",
                 "llama.cpp"},
    EngineTarget{
        "ik_llama.cpp", "llama.cpp", Structure::FirstLast, kIkLlamaCpp, "cache",
        "ik_llama.cpp build_attn (as llama.cpp)",
        "ikawrakow/ik_llama.cpp PR #1599 (mixed KV cache; merged 2026-04, no release tags)",
        "ik_llama.cpp"},
};

bool unquantized(const PrecisionPair& p) {
  return p.key.kind == KvFormat::Kind::Full && p.value.kind == KvFormat::Kind::Full;
}

bool separate_types(Structure s) {
  return s == Structure::UniformKV || s == Structure::FirstLast;
}

// FirstLast: why the keys' (or values') dtype sequence over layers is not a
// base type with a first-N and a last-N override, i.e. has more than three
// runs; empty when it is.
std::string first_last_refusal(const std::vector<PrecisionPair>& layers, bool keys) {
  const auto of = [&](std::size_t l) { return keys ? layers[l].key : layers[l].value; };
  int runs = 1;
  for (std::size_t l = 1; l < layers.size(); ++l) {
    if (of(l) == of(l - 1)) continue;
    if (++runs > 3) {
      const char* role = keys ? "key" : "value";
      return "layer " + std::to_string(l) + " (" + layers[l].name() + "): its " + role + " type " +
             of(l).name() + " starts a fourth run of " + role +
             " types; ik_llama.cpp takes a base type with one type on the first N layers and "
             "one on the last N (-ct" +
             (keys ? "k" : "v") + "-first T,N, -ct" + (keys ? "k" : "v") + "-last T,N)";
    }
  }
  return "";
}

}  // namespace

std::vector<PrecisionPair> EngineTarget::candidates() const {
  std::vector<PrecisionPair> out;
  for (std::string_view d : dtypes) {
    const KvFormat f = KvFormat::of(*find_engine_dtype(d));
    if (!separate_types(structure)) {
      out.push_back({f, f});
      continue;
    }
    for (std::string_view v : dtypes) out.push_back({f, KvFormat::of(*find_engine_dtype(v))});
  }
  if (structure == Structure::PerLayer) out.push_back({KvFormat::full(), KvFormat::full()});
  return out;
}

std::string EngineTarget::pair_refusal(const PrecisionPair& pair) const {
  if (unquantized(pair)) {
    return structure == Structure::PerLayer
               ? ""
               : "KV16 is not a candidate of target " + std::string(name) +
                     " (an unquantized model needs no search)";
  }
  const auto known = [&](const KvFormat& f) {
    return std::any_of(dtypes.begin(), dtypes.end(), [&](std::string_view d) {
      return f.kind == KvFormat::Kind::Engine && f.name() == find_engine_dtype(d)->name;
    });
  };
  const bool separate = separate_types(structure);
  if ((!separate && !(pair.key == pair.value)) || !known(pair.key) || !known(pair.value)) {
    std::string list;
    for (std::string_view d : dtypes) list += (list.empty() ? "" : ", ") + std::string(d);
    return pair.name() + " is not a " + std::string(engine) + " cache dtype of target " +
           std::string(name) + " (keys and values " + (separate ? "each take" : "share") +
           " one of " + list + ")";
  }
  return "";
}

std::string EngineTarget::refusal(const std::vector<PrecisionPair>& layers) const {
  const PrecisionPair* dtype = nullptr;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const PrecisionPair& p = layers[l];
    const std::string where = "layer " + std::to_string(l) + " (" + p.name() + "): ";
    if (unquantized(p)) {
      if (structure != Structure::SkipLayers && structure != Structure::PerLayer) {
        if (structure == Structure::FirstLast) {
          return where + std::string(name) +
                 " gives every layer one of its cache types; it cannot leave a layer "
                 "unquantized (f16 is its unquantized type)";
        }
        return where + std::string(engine) +
               " keeps every layer in one cache dtype; it cannot leave a layer unquantized";
      }
      continue;
    }
    if (std::string why = pair_refusal(p); !why.empty()) return where + why;
    if (structure == Structure::PerLayer || structure == Structure::FirstLast) continue;
    if (dtype != nullptr && !(*dtype == p)) {
      return where + std::string(engine) + " takes one " +
             (structure == Structure::UniformKV ? "key type and one value type"
                                                : "--kv-cache-dtype") +
             " for the model, and layer " + std::to_string(&*dtype - layers.data()) + " has " +
             dtype->name();
    }
    if (dtype == nullptr) dtype = &p;
  }
  if (structure == Structure::FirstLast) {
    if (layers.empty()) return "no layers";
    for (bool keys : {true, false}) {
      if (std::string why = first_last_refusal(layers, keys); !why.empty()) return why;
    }
    return "";
  }
  if (dtype == nullptr && structure != Structure::PerLayer) {
    return "every layer is unquantized: not a quantized cache of target " + std::string(name);
  }
  return "";
}

std::string shape_refusal(const PrecisionPair& pair, int64_t kv_heads, int64_t head_dim) {
  for (const KvFormat& f : {pair.key, pair.value}) {
    if (f.kind != KvFormat::Kind::Engine) continue;
    try {
      kernels::validate_engine({find_engine_dtype(f.name())->arith, 1.0f}, {1, kv_heads, head_dim});
    } catch (const std::invalid_argument& e) {
      return pair.name() + ": " + e.what();
    }
  }
  return "";
}

std::string_view structure_name(Structure s) {
  switch (s) {
    case Structure::SkipLayers:
      return "skip-layers";
    case Structure::Uniform:
      return "uniform";
    case Structure::UniformKV:
      return "uniform-kv";
    case Structure::FirstLast:
      return "first-last";
    case Structure::PerLayer:
      break;
  }
  return "per-layer";
}

Rotation target_rotation(std::string_view target, Rotation rotation) {
  return target == "ik_llama.cpp" && rotation == Rotation::Auto ? Rotation::Off : rotation;
}

std::span<const EngineTarget> engine_targets() {
  return kTargets;
}

const EngineTarget* find_engine_target(std::string_view name) {
  for (const EngineTarget& t : kTargets) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string target_names() {
  std::string out = "kvtune, kvtuner";
  for (const EngineTarget& t : kTargets) out += ", " + std::string(t.name);
  return out;
}

}  // namespace kvtune
