// kvtune-worker: the model runtime behind `kvtune inspect|eval|generate|worker`.
// It is the only executable that links LibTorch.
#include <torch/torch.h>

#include <iostream>
#include <string>

#include "kvtune/kernels/quant.h"

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "version" || command == "--version") {
    std::cout << "kvtune-worker " << KVTUNE_VERSION << " (LibTorch " << TORCH_VERSION
              << ", torch CUDA " << (torch::cuda::is_available() ? "available" : "unavailable")
              << ", kvtune CUDA kernels "
              << (kvtune::kernels::cuda_compiled() ? "compiled" : "not compiled") << ")\n";
    return 0;
  }
  std::cerr << "kvtune-worker: command '" << command
            << "' is not available in this build; this build's worker supports: version\n";
  return 2;
}
