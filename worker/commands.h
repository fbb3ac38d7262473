// Subcommands served by kvtune-worker (torch-free interface).
#pragma once

#include <string>
#include <vector>

namespace kvtune::worker {

// `generate --model PATH --prompt-ids 1[,..] --steps N [--json]`: greedy decode
// with a KV cache, token by token; prints the generated token ids.
int generate_command(const std::vector<std::string>& args);

}  // namespace kvtune::worker
