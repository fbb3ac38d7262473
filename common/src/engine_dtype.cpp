#include "kvtune/common/engine_dtype.h"

#include <array>

#include "kvtune/common/error.h"

namespace kvtune {
namespace {

using Arith = kernels::EngineArith;
using Scale = EngineDtype::Scale;

constexpr std::string_view kVllmMain =
    "vLLM main since 2026-08 (commit 002f10e0); its first release is unverified";

constexpr std::array kDtypes = {
    EngineDtype{"vllm:fp8", "vllm", "fp8", Arith::E4m3Scaled, 8, Scale::Layer, ""},
    EngineDtype{"vllm:fp8_e5m2", "vllm", "fp8_e5m2", Arith::E5m2Scaled, 8, Scale::Layer, ""},
    EngineDtype{"vllm:fp8_per_token_head", "vllm", "fp8_per_token_head", Arith::Fp8PerTokenHead, 8,
                Scale::None, kVllmMain},
    EngineDtype{"vllm:int8_per_token_head", "vllm", "int8_per_token_head", Arith::Int8PerTokenHead,
                8, Scale::None, kVllmMain},
    EngineDtype{"vllm:nvfp4", "vllm", "nvfp4", Arith::Nvfp4Layer, 4, Scale::Layer, kVllmMain},
    EngineDtype{"sglang:fp8_e4m3", "sglang", "fp8_e4m3", Arith::E4m3Cast, 8, Scale::Layer, ""},
    EngineDtype{"sglang:fp8_e5m2", "sglang", "fp8_e5m2", Arith::E5m2Cast, 8, Scale::Layer, ""},
    EngineDtype{"sglang:fp4_e2m1", "sglang", "fp4_e2m1", Arith::Fp4Pow2, 4, Scale::None, ""},
    EngineDtype{"trtllm:fp8", "trtllm", "fp8", Arith::E4m3Scaled, 8, Scale::AlwaysOne, ""},
    EngineDtype{"trtllm:nvfp4", "trtllm", "nvfp4", Arith::Nvfp4Layer, 4, Scale::Layer, ""},
    // llama.cpp: the -ctk / -ctv value; blocks of 32 with fp16 scales (kernels/ggml_math.h).
    EngineDtype{"llama.cpp:q8_0", "llama.cpp", "q8_0", Arith::GgmlQ8_0, 8, Scale::None, ""},
    EngineDtype{"llama.cpp:q4_0", "llama.cpp", "q4_0", Arith::GgmlQ4_0, 4, Scale::None, ""},
    EngineDtype{"llama.cpp:q4_1", "llama.cpp", "q4_1", Arith::GgmlQ4_1, 4, Scale::None, ""},
    EngineDtype{"llama.cpp:q5_0", "llama.cpp", "q5_0", Arith::GgmlQ5_0, 5, Scale::None, ""},
    EngineDtype{"llama.cpp:q5_1", "llama.cpp", "q5_1", Arith::GgmlQ5_1, 5, Scale::None, ""},
    EngineDtype{"llama.cpp:iq4_nl", "llama.cpp", "iq4_nl", Arith::GgmlIq4Nl, 4, Scale::None, ""},
    EngineDtype{"llama.cpp:f16", "llama.cpp", "f16", Arith::GgmlF16, 16, Scale::None, ""},
    EngineDtype{"llama.cpp:bf16", "llama.cpp", "bf16", Arith::GgmlBf16, 16, Scale::None, ""},
    EngineDtype{"llama.cpp:f32", "llama.cpp", "f32", Arith::GgmlF32, 32, Scale::None, ""},
};

}  // namespace

std::span<const EngineDtype> engine_dtypes() {
  return kDtypes;
}

const EngineDtype* find_engine_dtype(std::string_view name) {
  if (name == "vllm:fp8_e4m3") name = "vllm:fp8";  // vLLM's alias
  for (const EngineDtype& d : kDtypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

std::string engine_dtype_names() {
  std::string out;
  for (const EngineDtype& d : kDtypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

std::string_view kv_scales_name(KvScales s) {
  switch (s) {
    case KvScales::Calculated:
      return "calculated";
    case KvScales::Calibrated:
      return "calibrated";
    case KvScales::One:
      break;
  }
  return "one";
}

KvScales parse_kv_scales(std::string_view text) {
  for (KvScales s : {KvScales::One, KvScales::Calculated, KvScales::Calibrated}) {
    if (text == kv_scales_name(s)) return s;
  }
  throw Error("KV scales '" + std::string(text) +
              "' is not one of one (1.0, a checkpoint without scales), calculated (vLLM "
              "--calculate-kv-scales) or calibrated (a checkpoint's calibrated k_scale/v_scale)");
}

float engine_layer_scale(const EngineDtype& dtype, KvScales source, bool keys, float amax) {
  if (dtype.scale != Scale::Layer || source == KvScales::One || !(amax > 0.0f)) return 1.0f;
  // vLLM: abs(k).max() / k_range with a CPU fp32 k_range, which PyTorch's
  // CUDA division takes as a multiplication by its reciprocal.
  if (source == KvScales::Calculated) return amax * (1.0f / (keys ? 200.0f : 100.0f));
  // ModelOpt: fp8 amax / 448; nvfp4 amax / (6 * 448), so block scales fit E4M3.
  return dtype.bits == 4 ? amax / (6.0f * 448.0f) : amax / 448.0f;
}

}  // namespace kvtune
