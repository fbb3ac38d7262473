// Subcommands of the `kvtune` CLI. Each takes the arguments after its name
// and returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace kvtune::cli {

// `kvtune formats`: every KV format's storage cost and error on a synthetic cache.
int formats_command(const std::vector<std::string>& args);

// Replaces this process with `kvtune-worker <args...>` from the directory of
// the running executable, so arguments, output and exit code pass through.
// Returns only on failure (exit code 127, with the reason on stderr).
int exec_worker(const std::vector<std::string>& args);

}  // namespace kvtune::cli
