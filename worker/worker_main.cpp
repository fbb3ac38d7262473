// kvtune-worker: the model runtime behind `kvtune inspect|eval|generate|worker`.
// It is the only executable that links LibTorch.
#include <iostream>
#include <string>
#include <vector>

#include "allocator.h"
#include "commands.h"
#include "daemon.h"
#include "kvtune/kernels/quant.h"

int main(int argc, char** argv) {
  kvtune::worker::keep_freed_memory();
  const std::string command = argc > 1 ? argv[1] : "";
  const std::vector<std::string> args(argv + std::min(argc, 2), argv + argc);
  try {
    if (command == "version" || command == "--version") {
      std::cout << "kvtune-worker " << KVTUNE_VERSION << " (kvtune CUDA kernels "
                << (kvtune::kernels::cuda_compiled() ? "compiled" : "not compiled") << ")\n";
      return 0;
    }
    if (command == "generate") return kvtune::worker::generate_command(args);
    if (command == "eval") return kvtune::worker::eval_command(args);
    if (command == "inspect") return kvtune::worker::inspect_command(args);
    if (command == "worker") {
#if KVTUNE_WORKER_DAEMON
      return kvtune::worker::worker_command(args);
#else
      std::cerr << "kvtune worker: this build has no cluster support (ZeroMQ and Cap'n Proto "
                   "were not found, or cmake ran with -DKVTUNE_WITH_CLUSTER=OFF)\n";
      return 2;
#endif
    }
  } catch (const std::exception& e) {
    std::cerr << "kvtune " << command << ": " << e.what() << "\n";
    return 1;
  }
  std::cerr << "kvtune-worker: command '" << command
            << "' is not available in this build; this build's worker supports: inspect, eval, "
               "generate, worker, version\n";
  return 2;
}
