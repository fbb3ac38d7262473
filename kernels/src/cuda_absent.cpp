// Built when nvcc is absent: the CUDA entry points exist and say so.
#include <stdexcept>

#include "kvtune/kernels/engine.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::kernels {

bool cuda_compiled() {
  return false;
}
bool cuda_device_available() {
  return false;
}

namespace cuda {
namespace {
[[noreturn]] void absent() {
  throw std::runtime_error("kvtune was built without CUDA (no nvcc at configure time)");
}
}  // namespace

void quantize_int(const IntSpec&, const CacheShape&, DType, const void*, IntBuffers, cudaStream_t,
                  int*) {
  absent();
}
void dequantize_int(const IntSpec&, const CacheShape&, ConstIntBuffers, DType, void*,
                    cudaStream_t) {
  absent();
}
void fake_quant_int(const IntSpec&, const CacheShape&, DType, const void*, void*, cudaStream_t,
                    int*) {
  absent();
}
void accumulate_head_amax(const CacheShape&, DType, const void*, float*, cudaStream_t, int*) {
  absent();
}
void fake_quant_kvtuner(const KvtunerSpec&, const CacheShape&, DType, const void*, void*,
                        cudaStream_t, int*) {
  absent();
}
void fake_quant_engine(const EngineSpec&, const CacheShape&, DType, const void*, void*,
                       cudaStream_t, unsigned long long*) {
  absent();
}
void quantize_fp8(const CacheShape&, DType, const void*, const float*, uint8_t*, cudaStream_t,
                  int*) {
  absent();
}
void dequantize_fp8(const CacheShape&, const uint8_t*, const float*, DType, void*, cudaStream_t) {
  absent();
}
void fake_quant_fp8(const CacheShape&, DType, const void*, const float*, void*, cudaStream_t,
                    int*) {
  absent();
}
void quantize_nvfp4(const CacheShape&, DType, const void*, const float*, Nvfp4Buffers, cudaStream_t,
                    int*) {
  absent();
}
void dequantize_nvfp4(const CacheShape&, ConstNvfp4Buffers, const float*, DType, void*,
                      cudaStream_t) {
  absent();
}
void fake_quant_nvfp4(const CacheShape&, DType, const void*, const float*, void*, cudaStream_t,
                      int*) {
  absent();
}
void check_flag(const int*, cudaStream_t, const char*) {
  absent();
}

}  // namespace cuda
}  // namespace kvtune::kernels
