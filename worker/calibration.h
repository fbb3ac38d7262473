// Calibration data: the token sequences an evaluation runs over.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvtune::worker {

struct Model;

struct CalibrationData {
  std::string spec;                             // as given by the user
  std::vector<std::vector<int64_t>> sequences;  // token ids, each within the model's context
  // Per sequence, the prompt length a JSONL line gives ("prompt": T0), or -1
  // where it gives none; empty for the other forms.
  std::vector<int64_t> prompts;
  std::string note;  // e.g. "dropped a trailing partial sequence of 37 tokens"
};

// Loads `spec`:
//   PATH.u16 / PATH.u32  raw little-endian token ids, cut into seq_len-token sequences
//   PATH.jsonl           one {"tokens": [...]} object per line, one sequence each,
//                        optionally with "prompt": T0 (its first T0 tokens are a prompt)
//   sample:N:L:SEED      N sequences of L tokens sampled from the fp model at
//                        temperature 1, starting from BOS (id 1), deterministic for SEED
// Throws kvtune::Error naming the file, line or sequence, and the bad value:
// token ids >= vocab, sequences longer than the model's context, empty data.
CalibrationData load_calibration(const std::string& spec, int64_t seq_len, const Model& model);

// Each sequence's prompt length: its JSONL "prompt", else `prompt_tokens`.
std::vector<int64_t> prompt_lengths(const CalibrationData& data, int64_t prompt_tokens);

}  // namespace kvtune::worker
