// The llama.cpp family's deploy commands (exports.h): its cache-type flags.
#include "exports.h"
#include "kvtune/common/engine_target.h"
#include "kvtune/common/error.h"

namespace kvtune::exports {

std::string llama_cpp_command(const std::vector<PrecisionPair>& layers,
                              const DeployOptions& deploy) {
  const EngineTarget& target = *find_engine_target("llama.cpp");
  if (layers.empty()) throw Error("llama.cpp flags: no layers");
  if (std::string why = target.refusal(layers); !why.empty()) {
    throw Error("llama.cpp flags: " + why);
  }
  const EngineDtype& k = layers[0].key.engine_dtype();
  const EngineDtype& v = layers[0].value.engine_dtype();
  const bool gguf = deploy.model.ends_with(".gguf");
  const std::string model = shell_word(gguf ? deploy.model : "MODEL.gguf");
  std::string notes;
  if (!gguf) {
    notes += "# MODEL.gguf: " + deploy.model +
             " converted to GGUF (llama.cpp's convert_hf_to_gguf.py).\n";
  }
  // A quantized V cache needs flash attention; f16, bf16 and f32 do not.
  const bool quantized_v = v.bits < 16;
  if (quantized_v) notes += "# A quantized V cache needs flash attention (-fa on).\n";
  std::string env;
  if (deploy.rotation == Rotation::Off) {
    env = "LLAMA_ATTN_ROT_DISABLE=1 ";
    notes +=
        "# Evaluated without llama.cpp's Hadamard rotation (PR #21038), which this turns "
        "off.\n";
  } else if (deploy.rotation == Rotation::On) {
    notes +=
        "# Evaluated with the Hadamard rotation forced on; llama.cpp rotates only when "
        "head_dim % 64 == 0 (PR #21038).\n";
  }
  const std::string flags = " -m " + model + " -ctk " + std::string(k.flag) + " -ctv " +
                            std::string(v.flag) + (quantized_v ? " -fa on" : "") + "\n";
  return notes + env + "llama-server" + flags + env + "llama-cli" + flags;
}

}  // namespace kvtune::exports
