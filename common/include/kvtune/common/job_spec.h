// A job as users submit it (`POST /v1/jobs`, `kvtune submit FILE`): JSON,
// validated field by field so that a bad spec is refused with every wrong
// field named, before anything runs.
//
//   {"kind": "evaluate" | "profile" | "search",
//    "model": "models/stories260K.bin",       required
//    "data": "sample:8:128:0",                 default
//    "seq_len": 256,                           default
//    "target": "kvtune",                       kvtune | kvtuner (kvtune/common/scheme.h), or an
//                                              engine: vllm | sglang | trtllm |
//                                              vllm-per-layer-pr | trtllm-per-layer-pr
//                                              (kvtune/common/engine_target.h: its dtypes,
//                                              structure and read rule, the default "read")
//    "scheme": {"name": "per-token-asym" | "kivi", "group_size": 32,
//               "residual": 32, "zero_point": "int" | "float"},
//              kvtuner: {"name": "per-token-asym" | "per-channel-asym", "group_size",
//               "residual"}, defaults KVTuner's settings (Scheme::kvtuner)
//    "prompt_tokens": 0,                      T0: each sequence's prompt (JSONL "prompt" wins)
//    "read": "fresh",                          the read rule (kvtune/common/read_rule.h)
//    "metric": "kl",
//    "configs": ["KV4", "K8V4,KV4,..."],       evaluate: required
//    "candidates": ["KV8", "K8V4", ...],       profile: default the nine of {8,4,2}^2
//    "search": {...},                          search options (kept as given)
//    "validation_data": "sample:8:128:1",      search: the frontier and baselines are
//                                              evaluated again on it; default the
//                                              calibration sample with the next seed
//                                              (sample:8:128:1 for token files); "none": skip
//    "free_run": {"prompts": 4, "prompt_tokens": 16, "new_tokens": 32},
//                                              search validation's greedy generation
//                                              (prompts from the validation data; 0: none)
//    "name": "free-form label"}
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kvtune/common/engine_target.h"
#include "kvtune/common/error.h"
#include "kvtune/common/precision.h"
#include "kvtune/common/read_rule.h"
#include "kvtune/common/scheme.h"

namespace kvtune {

struct FieldError {
  std::string field;  // JSON path, e.g. "scheme.group_size" or "configs[2]"
  std::string message;
};

// A spec that failed validation: what() lists every field error.
class JobSpecError : public Error {
 public:
  explicit JobSpecError(std::vector<FieldError> fields);
  const std::vector<FieldError>& fields() const { return fields_; }

 private:
  std::vector<FieldError> fields_;
};

struct JobSpec {
  enum class Kind { Evaluate, Profile, Search };

  Kind kind = Kind::Evaluate;
  std::string name;
  std::string model;
  std::string target = "kvtune";  // kvtune, kvtuner or an engine target's name
  std::string data = "sample:8:128:0";
  int seq_len = 256;
  Scheme scheme;
  int prompt_tokens = 0;
  ReadRule read;
  std::string metric = "kl";
  std::vector<std::string> configs;       // evaluate: one entry per configuration
  std::vector<PrecisionPair> candidates;  // profile: the pairs tried on each layer
  nlohmann::json search = nlohmann::json::object();
  std::string validation_data;  // search: set by parse (see above)
  struct FreeRun {
    int prompts = 4, prompt_tokens = 16, new_tokens = 32;
  } free_run;

  // The engine target (nullptr for kvtune and kvtuner).
  const EngineTarget* engine_target() const { return find_engine_target(target); }

  // A search job with validation data (not "none").
  bool validates() const { return kind == Kind::Search && validation_data != "none"; }

  // Validates `spec`; throws JobSpecError naming every bad field.
  static JobSpec parse(const nlohmann::json& spec);
  // Parses JSON text first (a syntax error is a JobSpecError on field "").
  static JobSpec parse_text(const std::string& text);
  // The spec with every default filled in (parse(to_json()) gives it back).
  nlohmann::json to_json() const;
  std::string kind_name() const;
};

// The validation data of calibration data `data`: a sample: spec with the
// next seed, or sample:8:128:1 for token files.
std::string default_validation_data(const std::string& data);

// "N,P,M" (a --free-run option): N prompts of P tokens, M new tokens each,
// all positive. Throws kvtune::Error naming `option` and the bad item.
JobSpec::FreeRun parse_free_run(const std::string& text, const std::string& option);

// "evaluate", "profile", "search".
std::string to_string(JobSpec::Kind kind);

}  // namespace kvtune
