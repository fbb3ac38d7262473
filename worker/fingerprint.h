// Content fingerprints of models and calibration data: the identity under
// which evaluations are cached cluster-wide.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvtune::worker {

// A hex digest of a model's content (config and weights). For files, the digest
// is cached per host (keyed on path, size, mtime and inode) so a large model is
// hashed once. "builtin:demo" hashes its generation parameters.
std::string model_fingerprint(const std::string& spec);

// A hex digest of token sequences (their lengths and ids).
std::string data_fingerprint(const std::vector<std::vector<int64_t>>& sequences,
                             const std::vector<int64_t>& prompts = {});

}  // namespace kvtune::worker
