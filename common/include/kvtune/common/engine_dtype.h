// The KV-cache dtypes of released inference engines, as kvtune names them:
// "vllm:fp8", "sglang:fp4_e2m1", "llama.cpp:q4_0", ... Each names the engine,
// the value of its --kv-cache-dtype (KvCacheConfig dtype; llama.cpp's -ctk /
// -ctv) flag, the arithmetic the kernels emulate (../shared/ENGINES.md) and
// where its per-layer scale comes from.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "kvtune/kernels/engine_math.h"

namespace kvtune {

struct EngineDtype {
  // Where the format's per-layer k_scale / v_scale comes from.
  enum class Scale {
    None,      // the format has none (per-token-head and block scales; llama.cpp's types)
    Layer,     // one per layer and role: 1.0, computed, or calibrated (KvScales)
    AlwaysOne  // the engine applies 1.0 whatever the checkpoint says (TensorRT-LLM fp8)
  };
  std::string_view name;    // "vllm:fp8"
  std::string_view engine;  // "vllm", "sglang", "trtllm" or "llama.cpp"
  std::string_view flag;    // the engine's own dtype name: "fp8"
  kernels::EngineArith arith;
  // The code width: 8, 5 or 4 bits (llama.cpp's q5_0 / q5_1: 5); 16 or 32 for
  // llama.cpp's unquantized f16, bf16 and f32. Block scales are not counted
  // (engine_storage_bits has them: q4_0 4.5, q8_0 8.5, ...).
  int bits;
  Scale scale;
  // Empty when a released engine runs it; else what it needs.
  std::string_view availability;
};

// Every engine dtype kvtune emulates, in a fixed order (their ids).
std::span<const EngineDtype> engine_dtypes();
// The dtype of that name ("vllm:fp8_e4m3" is vllm:fp8); nullptr when none.
const EngineDtype* find_engine_dtype(std::string_view name);
// "vllm:fp8, vllm:fp8_e5m2, ...": for error messages.
std::string engine_dtype_names();

// Where a job's per-layer fp8 / nvfp4 scales come from (EngineDtype::Scale::Layer).
enum class KvScales {
  One,         // 1.0: a checkpoint without KV scales
  Calculated,  // vLLM --calculate-kv-scales: max|k| / 200, max|v| / 100
  Calibrated   // a checkpoint's scales as ModelOpt calibrates them: amax / 448 (fp8), amax / 2688
               // (nvfp4)
};
std::string_view kv_scales_name(KvScales s);  // "one", "calculated", "calibrated"
// Throws kvtune::Error naming `text` and the choices.
KvScales parse_kv_scales(std::string_view text);

// The per-layer scale of `dtype` for a tensor (keys when `keys`) whose
// calibration amax over the layer's heads is `amax`. A zero amax gives 1.
float engine_layer_scale(const EngineDtype& dtype, KvScales source, bool keys, float amax);

}  // namespace kvtune
