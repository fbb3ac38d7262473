// kvtune-worker: the model runtime behind `kvtune inspect|eval|generate|worker`.
// It is the only executable that links LibTorch.
#include <malloc.h>

#include <iostream>
#include <string>
#include <vector>

#include "commands.h"
#include "daemon.h"
#include "kvtune/kernels/quant.h"

int main(int argc, char** argv) {
  // The runtime allocates and frees tensors of megabytes per operation; by
  // default glibc maps and unmaps each one, and the page faults cost more than
  // the arithmetic on small models (and serialize workers sharing a VM).
  // Keep freed memory for reuse instead.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
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
