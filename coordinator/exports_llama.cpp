// The llama.cpp family's deploy commands (exports.h): its cache-type flags,
// and ik_llama.cpp's first-N / last-N overrides.
#include <algorithm>

#include "exports.h"
#include "kvtune/common/engine_target.h"
#include "kvtune/common/error.h"

namespace kvtune::exports {
namespace {

// One role's ik_llama.cpp flags from its type sequence (at most three runs):
// " -ctk BASE" in `base`, " -ctk-first T,N" / " -ctk-last T,N" in
// `overrides`. Two runs: the longer is the base (the second on a tie), the
// other the first or last override.
void role_flags(const std::vector<std::string_view>& types, const char* flag, std::string& base,
                std::string& overrides) {
  struct Run {
    std::string_view type;
    std::size_t length;
  };
  std::vector<Run> runs;
  for (std::string_view t : types) {
    if (!runs.empty() && runs.back().type == t) {
      ++runs.back().length;
    } else {
      runs.push_back({t, 1});
    }
  }
  const auto over = [&](const char* where, const Run& r) {
    overrides += " " + std::string(flag) + "-" + where + " " + std::string(r.type) + "," +
                 std::to_string(r.length);
  };
  std::size_t b = runs.size() == 3 ? 1 : 0;
  if (runs.size() == 2 && runs[1].length >= runs[0].length) b = 1;
  base = " " + std::string(flag) + " " + std::string(runs[b].type);
  if (b > 0) over("first", runs[0]);
  if (b + 1 < runs.size()) over("last", runs[b + 1]);
}

// The checks and lines both commands share: the target's refusal, the GGUF
// model (a note when the job's model is not one), -fa on for a quantized V.
struct Command {
  std::string model, notes, flash;
};
Command command_base(std::string_view target_name, const std::vector<PrecisionPair>& layers,
                     const DeployOptions& deploy) {
  const std::string what = std::string(target_name) + " flags: ";
  if (layers.empty()) throw Error(what + "no layers");
  if (std::string why = find_engine_target(target_name)->refusal(layers); !why.empty()) {
    throw Error(what + why);
  }
  Command c;
  const bool gguf = deploy.model.ends_with(".gguf");
  c.model = shell_word(gguf ? deploy.model : "MODEL.gguf");
  if (!gguf) {
    c.notes += "# MODEL.gguf: " + deploy.model +
               " converted to GGUF (llama.cpp's convert_hf_to_gguf.py).\n";
  }
  // A quantized V cache needs flash attention; f16, bf16 and f32 do not.
  if (std::any_of(layers.begin(), layers.end(),
                  [](const PrecisionPair& p) { return p.value.engine_dtype().bits < 16; })) {
    c.notes += "# A quantized V cache needs flash attention (-fa on).\n";
    c.flash = " -fa on";
  }
  return c;
}

}  // namespace

std::string llama_cpp_command(const std::vector<PrecisionPair>& layers,
                              const DeployOptions& deploy) {
  Command c = command_base("llama.cpp", layers, deploy);
  const EngineDtype& k = layers[0].key.engine_dtype();
  const EngineDtype& v = layers[0].value.engine_dtype();
  std::string& notes = c.notes;
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
  const std::string flags = " -m " + c.model + " -ctk " + std::string(k.flag) + " -ctv " +
                            std::string(v.flag) + c.flash + "\n";
  return notes + env + "llama-server" + flags + env + "llama-cli" + flags;
}

std::string ik_llama_cpp_command(const std::vector<PrecisionPair>& layers,
                                 const DeployOptions& deploy) {
  Command c = command_base("ik_llama.cpp", layers, deploy);
  std::vector<std::string_view> keys, values;
  for (const PrecisionPair& p : layers) {
    keys.push_back(p.key.engine_dtype().flag);
    values.push_back(p.value.engine_dtype().flag);
  }
  std::string k_base, k_over, v_base, v_over;
  role_flags(keys, "-ctk", k_base, k_over);
  role_flags(values, "-ctv", v_base, v_over);
  std::string notes =
      "# ik_llama.cpp (PR #1599, mixed KV cache: merged 2026-04, no release tag yet): a "
      "build of its main branch.\n" +
      c.notes;
  std::string hadamard;
  if (deploy.rotation == Rotation::On) {
    hadamard = " -khad -vhad";
    notes +=
        "# Evaluated with llama.cpp's Hadamard rotation (PR #21038); ik_llama.cpp's opt-in "
        "-khad / -vhad are taken to match it (unverified).\n";
  }
  const std::string flags =
      " -m " + c.model + k_base + v_base + k_over + v_over + hadamard + c.flash + "\n";
  return notes + "llama-server" + flags + "llama-cli" + flags;
}

}  // namespace kvtune::exports
