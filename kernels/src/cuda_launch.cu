// Host-side plumbing of the CUDA kernels: CUDA error checks, grid sizing and
// pointer checks (declared in cuda_common.cuh), whether CUDA is compiled in
// and a device usable, and cuda::check_flag (reading back and clearing the
// callers' non-finite flag). The kernels and their entry points live in
// cuda_int.cu, cuda_fp8.cu and cuda_nvfp4.cu.
#include "cuda_common.cuh"

namespace kvtune::kernels {
namespace cuda_detail {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(status));
  }
}

// Grid-stride kernels need no more blocks than fill the device a few times
// over; more only adds scheduling overhead.
int grid_size(int64_t threads) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
        "cudaDeviceGetAttribute(cudaDevAttrMultiProcessorCount)");
  const int64_t wanted = (threads + kThreads - 1) / kThreads;
  return static_cast<int>(std::clamp<int64_t>(wanted, 1, int64_t{sms} * 16));
}

void check_pointers(const char* what, std::initializer_list<const void*> pointers) {
  for (const void* p : pointers) {
    if (p == nullptr) throw std::invalid_argument(std::string(what) + ": null buffer");
  }
}

}  // namespace cuda_detail

bool cuda_compiled() {
  return true;
}

bool cuda_device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // a missing driver must not poison later calls
    return false;
  }
  return count > 0;
}

namespace cuda {

using cuda_detail::check;

void check_flag(const int* nonfinite_flag, cudaStream_t stream, const char* what) {
  if (nonfinite_flag == nullptr) return;
  int seen = 0;
  check(cudaMemcpyAsync(&seen, nonfinite_flag, sizeof seen, cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync(nonfinite flag)");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (seen == 0) return;
  // The flag is the caller's, reused across calls: clear it before reporting.
  check(cudaMemsetAsync(const_cast<int*>(nonfinite_flag), 0, sizeof seen, stream),
        "cudaMemsetAsync(nonfinite flag)");
  throw std::invalid_argument(std::string(what) + ": input contains NaN or Inf");
}

}  // namespace cuda
}  // namespace kvtune::kernels
