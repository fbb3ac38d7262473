// Subcommands served by kvtune-worker (torch-free interface). Each takes the
// arguments after its name and returns the exit code.
#pragma once

#include <string>
#include <vector>

namespace kvtune::worker {

// `inspect --model SPEC [--json]`: architecture and fingerprint.
int inspect_command(const std::vector<std::string>& args);

// `eval --model SPEC --data SPEC --scheme ... (--config C | --config-file F) [--json]`.
int eval_command(const std::vector<std::string>& args);

// `generate --model SPEC --prompt-ids 1[,..] --steps N [--config C ...] [--json]`:
// greedy decode token by token with a (quantized) KV cache.
int generate_command(const std::vector<std::string>& args);

}  // namespace kvtune::worker
