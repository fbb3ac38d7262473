// Benchmarks that measure one core: LibTorch's intra-op pool and OpenBLAS's
// own pool (which LibTorch's matmuls use, and which spins and yields between
// small products when it has more threads than work) both sized 1; the
// allocator set as kvtune-worker sets it.
#pragma once

#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>

#include "allocator.h"

namespace kvtune::bench {

// OpenBLAS sizes its pool when it is loaded, so the variable must be in the
// environment before the process starts: re-executes this program once with
// OPENBLAS_NUM_THREADS=1 unless the caller set it.
inline void run_on_one_core(char** argv) {
  if (std::getenv("OPENBLAS_NUM_THREADS") == nullptr) {
    ::setenv("OPENBLAS_NUM_THREADS", "1", 1);
    ::execv("/proc/self/exe", argv);  // returns only on failure: then carry on as we are
  }
  torch::set_num_threads(1);
  worker::keep_freed_memory();  // as kvtune-worker runs
}

}  // namespace kvtune::bench
