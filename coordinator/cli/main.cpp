// kvtune: the command-line entry point. Dispatches to a subcommand.
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "commands.h"

namespace {

constexpr const char* kUsage = R"(kvtune — layer-wise mixed-precision KV-cache calibration

usage: kvtune <command> [options]

commands:
  formats     storage cost and quantization error of every KV format on a synthetic cache
  fake-quant  the values the emulated cache holds for one tensor (raw float32 in and out)
  inspect     print a model's architecture and fingerprint        (runs kvtune-worker)
  eval        evaluate a per-layer KV config on a model           (runs kvtune-worker)
  generate    greedy decode with a quantized KV cache             (runs kvtune-worker)

cluster:
  run         one job on this machine: embedded coordinator and store, local workers
  coordinator run the coordinator: job store, scheduler, HTTP API and worker socket
  worker      run a GPU/CPU worker that connects to a coordinator (runs kvtune-worker)
  submit      submit a job spec (JSON) to the coordinator; --wait prints its results
  jobs        list the coordinator's jobs
  status      show a job's state, progress and results
  cancel      cancel a job
  report      write a finished search's report folder: plots, tables, exports, index.html
  workers     list the connected workers
  registry    the frontiers of finished searches: list, show, best under a budget, export
  keygen      write a CURVE key pair (coordinator or worker, for off-host workers)

other:
  version     print the version and build features

`kvtune <command> --help` describes a command's options.
)";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  static const std::set<std::string> kWorkerCommands = {"inspect", "eval", "generate", "worker"};
  try {
    if (kWorkerCommands.contains(command)) {
      args.insert(args.begin(), command);
      return kvtune::cli::exec_worker(args);
    }
    if (command == "formats") return kvtune::cli::formats_command(args);
    if (command == "fake-quant") return kvtune::cli::fake_quant_command(args);
    if (command == "coordinator") return kvtune::cli::coordinator_command(args);
    if (command == "run") return kvtune::cli::run_command(args);
    if (command == "submit") return kvtune::cli::submit_command(args);
    if (command == "jobs") return kvtune::cli::jobs_command(args);
    if (command == "status") return kvtune::cli::status_command(args);
    if (command == "cancel") return kvtune::cli::cancel_command(args);
    if (command == "report") return kvtune::cli::report_command(args);
    if (command == "workers") return kvtune::cli::workers_command(args);
    if (command == "registry") return kvtune::cli::registry_command(args);
    if (command == "keygen") return kvtune::cli::keygen_command(args);
    if (command == "version" || command == "--version") {
      std::cout << "kvtune " << KVTUNE_VERSION << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "kvtune " << command << ": " << e.what() << "\n";
    return 1;
  }
  std::cerr << "kvtune: unknown command '" << command << "'\n\n" << kUsage;
  return 2;
}
