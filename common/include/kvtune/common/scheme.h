// The KV quantization scheme of a job, shared by every layer: which cache is
// emulated (the target) and how its integer formats group values and code them.
#pragma once

#include <optional>
#include <string>

#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/precision.h"
#include "kvtune/kernels/engine.h"
#include "kvtune/kernels/quant.h"

namespace kvtune {

// llama.cpp's Hadamard rotation around its ggml cache types (PR #21038):
// Auto is llama.cpp's rule (on for the quantized types when head_dim % 64 ==
// 0), On forces it (the largest power-of-two chunk dividing head_dim, up to
// llama.cpp's, when llama.cpp would not rotate), Off is
// LLAMA_ATTN_ROT_DISABLE=1. Other formats ignore it.
enum class Rotation { Auto, On, Off };
std::string_view rotation_name(Rotation r);  // "auto", "on", "off"
// Throws kvtune::Error naming `text` and the choices.
Rotation parse_rotation(std::string_view text);

struct Scheme {
  enum class Target {
    // kvtune's idealized caches: per-token-asym and kivi, exact float32
    // quantizer arithmetic, every token quantized once, when it leaves the
    // full-precision window (windows counted from position 0).
    Kvtune,
    // KVTuner's own cache as its code behaves (cmd2001/KVTuner
    // FlexibleVanillaQuantizedCache): the prompt quantized once after prefill
    // and read fresh, a flush every max(R, 2) decoded tokens re-quantizing the
    // whole cache, grouping in HF's flattened order, bf16 arithmetic.
    Kvtuner
  };
  Target target = Target::Kvtune;
  // Kvtune: per-token-asym or kivi. Kvtuner: PerToken is its per-token-asym
  // setting (axis_key 0), Kivi its per-channel-asym one (axis_key 1); values
  // are per token under both.
  kernels::Grouping grouping = kernels::Grouping::PerToken;
  int group_size = 32;  // kivi G; kvtuner q_group_size (0: head_dim, KVTuner's -1)
  int residual = 32;    // kivi R; kvtuner residual_length (0 allowed)
  kernels::ZeroPoint zero_point = kernels::ZeroPoint::Int;
  // Where engine dtypes' per-layer k_scale / v_scale come from.
  KvScales kv_scales = KvScales::One;
  // The rotation of llama.cpp's types.
  Rotation rotation = Rotation::Auto;

  // "per-token-asym" or "kivi"; under the kvtuner target "per-token-asym" or
  // "per-channel-asym" (KVTuner's own names).
  std::string name() const;
  // "kvtune" or "kvtuner".
  std::string target_name() const;
  // The name as shown to users: "kivi", or "kvtuner:per-channel-asym".
  std::string label() const;
  // A canonical description that identifies the scheme in cache keys.
  std::string key() const;
  // Validates names and sizes; throws kvtune::Error naming the option.
  static Scheme parse(const std::string& name, int group_size, int residual,
                      const std::string& zero_point, const std::string& target = "kvtune");
  // As the command lines take it: sizes left out get the target's defaults
  // (kvtune: G 32, R = G, and R 0 also means G; kvtuner: its setting's, and
  // group size -1 means head_dim, as in KVTuner).
  static Scheme from_options(const std::string& target, const std::string& name,
                             std::optional<int> group_size, std::optional<int> residual,
                             const std::string& zero_point);
  // KVTuner's setting of that name as its search runs it (search_optuna_*.py):
  // per-token-asym R 0, q_group_size -1; per-channel-asym R 32, q_group_size 32.
  static Scheme kvtuner(const std::string& name);
  // The kernel spec of one tensor (keys or values) at `bits`: kvtune target.
  kernels::IntSpec int_spec(kernels::Role role, int bits) const;
  // The same under the kvtuner target.
  kernels::KvtunerSpec kvtuner_spec(kernels::Role role, int bits) const;
  // The kernel spec of an engine-dtype tensor whose calibration amax over
  // the layer's heads is `amax`, with heads head_dim long.
  kernels::EngineSpec engine_spec(const KvFormat& format, kernels::Role role, float amax,
                                  int64_t head_dim) const;
  // The Hadamard chunk of `format` for keys or values of heads head_dim long
  // under `rotation` (kernels::EngineSpec::rotate_chunk; 0: none).
  int rotate_chunk(const KvFormat& format, kernels::Role role, int64_t head_dim) const;
  // Why this scheme cannot store `format` (empty when it can): the kvtuner
  // target runs KVTuner's quantizer, 2, 4 or 8 bits, or leaves a tensor
  // unquantized; only vLLM computes scales (--calculate-kv-scales).
  std::string refusal(const KvFormat& format) const;
  // Kvtuner: decoded tokens between two flushes (its flush condition
  // `len(recent) + 1 >= residual_length` holds after max(R, 2) tokens).
  int flush_period() const { return residual > 2 ? residual : 2; }
};

}  // namespace kvtune
