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
  std::string note;  // e.g. "dropped a trailing partial sequence of 37 tokens"
};

// Loads `spec`:
//   PATH.u16 / PATH.u32  raw little-endian token ids, cut into seq_len-token sequences
//   PATH.jsonl           one {"tokens": [...]} object per line, one sequence each
//   sample:N:L:SEED      N sequences of L tokens sampled from the fp model at
//                        temperature 1, starting from BOS (id 1), deterministic for SEED
// Throws kvtune::Error naming the file, line or sequence, and the bad value:
// token ids >= vocab, sequences longer than the model's context, empty data.
CalibrationData load_calibration(const std::string& spec, int64_t seq_len, const Model& model);

}  // namespace kvtune::worker
