// Runs a command line for the integration tests and captures what it printed.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <memory>
#include <string>

namespace kvtune::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout, and stderr too when asked for
};

// Runs `command` through /bin/sh; merge_stderr appends 2>&1.
inline CommandResult run_command(const std::string& command, bool merge_stderr = false) {
  const std::string line = merge_stderr ? command + " 2>&1" : command;
  CommandResult result;
  FILE* pipe = ::popen(line.c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    result.output.append(buffer.data(), n);
  }
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

inline std::string build_path(const std::string& name) {
  return std::string(KVTUNE_BUILD_DIR) + "/" + name;
}

}  // namespace kvtune::testing
