#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "commands.h"

namespace kvtune::cli {

int exec_worker(const std::vector<std::string>& args) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) {
    std::cerr << "kvtune: cannot locate its own executable (/proc/self/exe): " << ec.message()
              << "\n";
    return 127;
  }
  const std::string worker = (self.parent_path() / "kvtune-worker").string();
  // A worker told to use N threads must not also run a BLAS pool sized for
  // the whole machine: its library reads these before kvtune-worker's main.
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[0] == "worker" && args[i] == "--threads" && args[i + 1] != "0") {
      ::setenv("OPENBLAS_NUM_THREADS", args[i + 1].c_str(), 0);
      ::setenv("OMP_NUM_THREADS", args[i + 1].c_str(), 0);
    }
  }
  std::vector<std::string> storage;
  storage.push_back(worker);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : storage) argv.push_back(s.data());
  argv.push_back(nullptr);
  ::execv(worker.c_str(), argv.data());
  std::cerr
      << "kvtune: cannot run " << worker << ": " << std::strerror(errno)
      << " (kvtune-worker is built when LibTorch is available: cmake -DKVTUNE_WITH_TORCH=ON)\n";
  return 127;
}

}  // namespace kvtune::cli
