// KV-cache precision of one layer: a (key format, value format) pair such as
// K8V4, KV4, Kfp8Vnvfp4 or KV16, and per-model layer configurations of them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvtune {

struct EngineDtype;

// One tensor's storage format: an integer width, kvtune's per-head-scaled
// fp8 / nvfp4, a released engine's dtype (engine_dtype.h), or unquantized
// (16-bit, the model's own cache dtype).
struct KvFormat {
  enum class Kind { Int, Fp8, Nvfp4, Full, Engine };
  Kind kind = Kind::Full;
  int bits = 16;    // Int: 1, 2, 3, 4 or 8; Fp8: 8; Nvfp4: 4; Full: 16; Engine: its code width
  int engine = -1;  // Engine: the index in engine_dtypes()

  static KvFormat integer(int bits);
  static KvFormat fp8() { return {Kind::Fp8, 8}; }
  static KvFormat nvfp4() { return {Kind::Nvfp4, 4}; }
  static KvFormat full() { return {Kind::Full, 16}; }
  static KvFormat of(const EngineDtype& dtype);

  // The bits per element a budget counts: `bits`, but for llama.cpp's block
  // types their storage with the block scale (q8_0 8.5, q4_0 4.5, q4_1 5,
  // q5_0 5.5, q5_1 6, iq4_nl 4.5), as ggml stores them.
  double budget_bits() const;

  // Engine formats only: their dtype.
  const EngineDtype& engine_dtype() const;
  // An engine dtype with one k_scale / v_scale per layer (EngineDtype::Scale::Layer).
  bool takes_layer_scale() const;

  // "8", "fp8", "nvfp4", "16", "vllm:fp8" — the spelling used inside pair names.
  std::string name() const;
  // Parses a name above; throws kvtune::Error naming `text`.
  static KvFormat parse(std::string_view text);

  friend bool operator==(const KvFormat&, const KvFormat&) = default;
};

struct PrecisionPair {
  KvFormat key;
  KvFormat value;

  // KVTuner's names: "KV8" when both match, else "K8V4"; "Kfp8Vnvfp4";
  // engine dtypes the same way: "KVvllm:fp8".
  std::string name() const;
  // Parses KVTuner-style names ("K8V4", "KV4", "KV16", "Kfp8Vnvfp4", "KVfp8");
  // throws kvtune::Error naming `text` and what is wrong with it.
  static PrecisionPair parse(std::string_view text);
  // KVTuner's equivalent bits: (key bits + value bits) / 2 (budget_bits).
  double equivalent_bits() const { return (key.budget_bits() + value.budget_bits()) / 2.0; }

  friend bool operator==(const PrecisionPair&, const PrecisionPair&) = default;
};

// The nine candidate pairs of KVTuner: {8,4,2} x {8,4,2}.
std::vector<PrecisionPair> kvtuner_candidates();

// Parses a per-layer configuration: either one pair for every layer ("KV4")
// or exactly `num_layers` comma-separated pairs ("K8V4,KV4,..."). Throws
// kvtune::Error naming the bad entry and its position.
std::vector<PrecisionPair> parse_layer_config(std::string_view text, int num_layers);
std::string format_layer_config(const std::vector<PrecisionPair>& layers);

// Mean over layers of equivalent_bits().
double average_bits(const std::vector<PrecisionPair>& layers);

}  // namespace kvtune
