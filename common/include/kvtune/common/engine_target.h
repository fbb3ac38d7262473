// Serving engines as targets of a job: which engine dtypes (engine_dtype.h)
// are its candidates, what per-layer variation the engine accepts (its
// structure, which a search must respect), what its default attention path
// reads (its read rule, ../shared/ENGINES.md "Read rules"), and whether a
// released engine runs that structure or it needs a named pull request.
//
//   vllm                 released: one dtype (--kv-cache-dtype) for every layer
//                        but a set kept unquantized (--kv-cache-dtype-skip-layers,
//                        vLLM PR #33695); keys and values share the dtype
//   sglang, trtllm       released: one dtype for every layer (a scan)
//   vllm-per-layer-pr    fp8 / nvfp4 / unquantized per layer through ModelOpt's
//                        kv_cache_quantized_layers (vllm-project/vllm PR #56116)
//   trtllm-per-layer-pr  fp8 / nvfp4 / unquantized per layer through
//                        KvCacheConfig.dtype ranges (NVIDIA/TensorRT-LLM PR #13695)
//   llama.cpp            released: one key type (-ctk) and one value type (-ctv)
//                        for every layer, any of the nine ggml cache types each
//   ik_llama.cpp         a base key type and value type plus first-N and last-N
//                        overrides for each (-ctk-first T,N, -ctv-last T,N, ...;
//                        ikawrakow/ik_llama.cpp PR #1599, merged, no release tag)
//
// The targets kvtune and kvtuner (scheme.h) are not engine targets: any
// per-layer pair of their formats.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/precision.h"
#include "kvtune/common/read_rule.h"
#include "kvtune/common/scheme.h"

namespace kvtune {

struct EngineTarget {
  enum class Structure {
    SkipLayers,  // one dtype for every layer but a set of unquantized layers
    Uniform,     // one dtype for every layer
    PerLayer,    // any of the dtypes, or unquantized, per layer
    UniformKV,   // one key dtype and one value dtype, each any of the dtypes, for every layer
    FirstLast,   // keys and values apart, each a base dtype with an optional dtype on the
                 // first N layers and one on the last N ("last" wins on overlap):
                 // per role, a dtype sequence over layers of at most three runs
  };
  std::string_view name;    // "vllm"
  std::string_view engine;  // "vllm", "sglang" or "trtllm"
  Structure structure;
  std::span<const std::string_view> dtypes;  // engine dtype names, in order
  std::string_view read;                     // ReadRule::parse() text of the default path
  std::string_view read_path;                // which attention path that rule is
  std::string_view needs;                    // "" when released; else the pull request
  std::string_view deploy;  // the export format (coordinator/exports.h) that deploys a config

  // The candidate pairs: keys and values in one dtype, for each dtype (and,
  // for PerLayer, KV16 last: a layer left unquantized); for UniformKV and
  // FirstLast every (key dtype, value dtype) pair, keys major.
  std::vector<PrecisionPair> candidates() const;
  ReadRule read_rule() const { return ReadRule::parse(std::string(read)); }
  // Why `layers` (one pair per layer) is not a configuration this engine runs
  // (empty when it is): names the first layer and the rule it breaks.
  std::string refusal(const std::vector<PrecisionPair>& layers) const;
  // Why one pair cannot be a candidate of this target (empty when it can).
  std::string pair_refusal(const PrecisionPair& pair) const;
};

// Why an engine dtype of `pair` cannot hold a cache of kv_heads x head_dim
// (nvfp4's blocks are 16 channels of one head; fp4_e2m1's 16 values of one
// token); empty when it can, and for every other format.
std::string shape_refusal(const PrecisionPair& pair, int64_t kv_heads, int64_t head_dim);

// "skip-layers", "uniform", "per-layer", "uniform-kv", "first-last"
std::string_view structure_name(EngineTarget::Structure s);

// The rotation a job of `target` runs when asked for `rotation`: ik_llama.cpp's
// Hadamard is opt-in (-khad, -vhad), so its auto is off; other targets keep
// `rotation` (auto is llama.cpp's rule, Scheme::rotate_chunk).
Rotation target_rotation(std::string_view target, Rotation rotation);

// Every engine target, in a fixed order.
std::span<const EngineTarget> engine_targets();
// The engine target of that name; nullptr for kvtune, kvtuner and unknown names.
const EngineTarget* find_engine_target(std::string_view name);
// "kvtune, kvtuner, vllm, sglang, ...": every target a job takes.
std::string target_names();

}  // namespace kvtune
