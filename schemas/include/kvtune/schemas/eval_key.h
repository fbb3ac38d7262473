// Evaluation keys: the content address of an evaluation. Two requests with the
// same canonical inputs (model, data, sequence length, scheme, per-layer
// config, metric) get the same key, so a result is computed once and shared
// by every job that asks for it.
#pragma once

#include <string>
#include <vector>

#include "kvtune/common/precision.h"
#include "kvtune/common/read_rule.h"
#include "kvtune/common/scheme.h"
#include "kvtune/schemas/kvtune.capnp.h"

namespace kvtune {

// The inputs of one evaluation in kvtune's own value types.
struct EvalInputs {
  std::string model_spec;
  std::string model_fingerprint;
  std::string data_spec;
  std::string data_fingerprint;
  int seq_len = 0;
  Scheme scheme;
  std::vector<PrecisionPair> layers;
  std::string metric = "kl";
  int64_t prompt_tokens = 0;  // T0 of sequences without their own
  ReadRule read;
  // Free-running greedy generation (a search's validation): from the first
  // prompt_tokens tokens of the first `prompts` sequences, new_tokens each;
  // none when prompts is 0.
  struct FreeRun {
    int64_t prompts = 0, prompt_tokens = 0, new_tokens = 0;
    bool operator==(const FreeRun&) const = default;
  } free_run;
};

// Fills `out` from `inputs`; every field is set explicitly.
void build_eval_request(const EvalInputs& inputs, schema::EvalRequest::Builder out);

// Reads `request` back into value types. Throws kvtune::Error naming the
// field when a value is out of range (a format kind with impossible bits, a
// scheme that Scheme::parse refuses): a request is validated before use.
EvalInputs read_eval_request(const schema::EvalRequest::Reader& request);

// Hex XXH3-128 (32 lowercase hex characters) of the canonical Cap'n Proto
// encoding of `request`, after normalizing what does not change the result:
// the group size and residual of a per-token-asym scheme, an unset metric
// (which reads as its default, "kl"), and the prefill rule when T0 = 0.
std::string evaluation_key(const schema::EvalRequest::Reader& request);

}  // namespace kvtune
