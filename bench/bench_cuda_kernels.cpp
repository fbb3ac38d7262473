// GPU throughput of the KV quantization kernels as a ratio to a device-to-device
// cudaMemcpy of the same input bytes, measured in the same run (only ratios
// compare across cards). Goal: quantize + pack at >= 0.7x the copy on an H100.
// Kernel time comes from CUDA events around a batch of back-to-back launches,
// so host launch overhead only counts where it starves the GPU.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kvtune/kernels/quant.h"

namespace kk = kvtune::kernels;

namespace {

constexpr int64_t kHeads = 8;
constexpr int64_t kHeadDim = 128;
constexpr int kLaunchesPerIteration = 10;
constexpr const char* kBaseline = "BM_DeviceCopy";

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(status));
  }
}

template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) {
    void* p = nullptr;
    check_cuda(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)), "cudaMalloc");
    ptr_.reset(static_cast<T*>(p));
  }
  T* get() const { return ptr_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { (void)cudaFree(p); }
  };
  std::unique_ptr<T, Free> ptr_;
};

struct StreamDestroy {
  void operator()(cudaStream_t s) const { (void)cudaStreamDestroy(s); }
};
struct EventDestroy {
  void operator()(cudaEvent_t e) const { (void)cudaEventDestroy(e); }
};
using Stream = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDestroy>;
using Event = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, EventDestroy>;

kk::IntSpec int_spec(kk::Grouping grouping, kk::Role role, int bits) {
  kk::IntSpec spec;
  spec.grouping = grouping;
  spec.role = role;
  spec.bits = bits;
  spec.group_size = 32;
  spec.residual = 32;
  return spec;
}

// The device buffers of one fp32 [tokens, 8, 128] tensor, sized for every
// benchmarked format.
struct Workload {
  explicit Workload(int64_t tokens)
      : shape{tokens, kHeads, kHeadDim},
        n(static_cast<size_t>(shape.elements())),
        x(n),
        y(n),
        codes(n / 4 + 1),  // up to 8-bit codes
        scales(n / 4 + 1),
        zeros(n / 4 + 1),
        bytes(n),
        block_scales(n / 16 + 1),
        head_scales(static_cast<size_t>(kHeads)) {
    cudaStream_t s = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    stream.reset(s);
    cudaEvent_t e = nullptr;
    check_cuda(cudaEventCreate(&e), "cudaEventCreate");
    start.reset(e);
    check_cuda(cudaEventCreate(&e), "cudaEventCreate");
    stop.reset(e);

    std::mt19937 rng(0);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> host(n);
    for (float& v : host) v = normal(rng);
    check_cuda(cudaMemcpy(x.get(), host.data(), n * sizeof(float), cudaMemcpyHostToDevice),
               "cudaMemcpy(input)");
    // Scales for an amax of 5, about where N(0, 1) data of this size ends.
    const std::vector<float> scales_host(static_cast<size_t>(kHeads), 5.0f);
    check_cuda(cudaMemcpy(head_scales.get(), scales_host.data(), kHeads * sizeof(float),
                          cudaMemcpyHostToDevice),
               "cudaMemcpy(head scales)");
  }

  int64_t input_bytes() const { return static_cast<int64_t>(n * sizeof(float)); }

  kk::CacheShape shape;
  size_t n;
  DeviceBuffer<float> x, y;
  DeviceBuffer<uint32_t> codes;
  DeviceBuffer<float> scales, zeros;
  DeviceBuffer<uint8_t> bytes, block_scales;
  DeviceBuffer<float> head_scales;
  Stream stream;
  Event start, stop;
};

Workload& workload(int64_t tokens) {
  static std::map<int64_t, std::unique_ptr<Workload>> workloads;
  auto& w = workloads[tokens];
  if (!w) w = std::make_unique<Workload>(tokens);
  return *w;
}

// Times `op` on the workload of state.range(0) tokens; throughput is counted
// in input bytes, the same for every kernel and the copy.
template <class Op>
void measure(benchmark::State& state, const Op& op) {
  try {
    Workload& w = workload(state.range(0));
    cudaStream_t stream = w.stream.get();
    op(w, stream);  // warm-up; also sizes the stream-ordered allocator's pool
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    for (auto _ : state) {
      check_cuda(cudaEventRecord(w.start.get(), stream), "cudaEventRecord");
      for (int i = 0; i < kLaunchesPerIteration; ++i) op(w, stream);
      check_cuda(cudaEventRecord(w.stop.get(), stream), "cudaEventRecord");
      check_cuda(cudaEventSynchronize(w.stop.get()), "cudaEventSynchronize");
      float ms = 0.0f;
      check_cuda(cudaEventElapsedTime(&ms, w.start.get(), w.stop.get()), "cudaEventElapsedTime");
      state.SetIterationTime(ms / 1e3 / kLaunchesPerIteration);
    }
    state.SetBytesProcessed(state.iterations() * w.input_bytes());
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void BM_DeviceCopy(benchmark::State& state) {
  measure(state, [](Workload& w, cudaStream_t s) {
    check_cuda(cudaMemcpyAsync(w.y.get(), w.x.get(), static_cast<size_t>(w.input_bytes()),
                               cudaMemcpyDeviceToDevice, s),
               "cudaMemcpyAsync");
  });
}

void quantize_int_bench(benchmark::State& state, const kk::IntSpec& spec) {
  measure(state, [&spec](Workload& w, cudaStream_t s) {
    kk::cuda::quantize_int(spec, w.shape, kk::DType::F32, w.x.get(),
                           {w.codes.get(), w.scales.get(), w.zeros.get()}, s);
  });
}

void BM_QuantizeIntPerToken4(benchmark::State& state) {
  quantize_int_bench(state, int_spec(kk::Grouping::PerToken, kk::Role::Key, 4));
}
void BM_QuantizeIntKiviKey4(benchmark::State& state) {
  quantize_int_bench(state, int_spec(kk::Grouping::Kivi, kk::Role::Key, 4));
}
void BM_QuantizeIntKiviValue2(benchmark::State& state) {
  quantize_int_bench(state, int_spec(kk::Grouping::Kivi, kk::Role::Value, 2));
}

void BM_FakeQuantIntPerToken4(benchmark::State& state) {
  const auto spec = int_spec(kk::Grouping::PerToken, kk::Role::Key, 4);
  measure(state, [&spec](Workload& w, cudaStream_t s) {
    kk::cuda::fake_quant_int(spec, w.shape, kk::DType::F32, w.x.get(), w.y.get(), s);
  });
}

void BM_QuantizeFp8(benchmark::State& state) {
  measure(state, [](Workload& w, cudaStream_t s) {
    kk::cuda::quantize_fp8(w.shape, kk::DType::F32, w.x.get(), w.head_scales.get(), w.bytes.get(),
                           s);
  });
}

void BM_FakeQuantFp8(benchmark::State& state) {
  measure(state, [](Workload& w, cudaStream_t s) {
    kk::cuda::fake_quant_fp8(w.shape, kk::DType::F32, w.x.get(), w.head_scales.get(), w.y.get(), s);
  });
}

void BM_QuantizeNvfp4(benchmark::State& state) {
  measure(state, [](Workload& w, cudaStream_t s) {
    kk::cuda::quantize_nvfp4(w.shape, kk::DType::F32, w.x.get(), w.head_scales.get(),
                             {w.codes.get(), w.block_scales.get()}, s);
  });
}

void BM_FakeQuantNvfp4(benchmark::State& state) {
  measure(state, [](Workload& w, cudaStream_t s) {
    kk::cuda::fake_quant_nvfp4(w.shape, kk::DType::F32, w.x.get(), w.head_scales.get(), w.y.get(),
                               s);
  });
}

// Tokens: a tensor that fits the H100's 50 MB L2 and one that does not.
#define KVT_GPU_BENCHMARK(fn) \
  BENCHMARK(fn)->Arg(4096)->Arg(32768)->UseManualTime()->Unit(benchmark::kMicrosecond)

KVT_GPU_BENCHMARK(BM_DeviceCopy);
KVT_GPU_BENCHMARK(BM_QuantizeIntPerToken4);
KVT_GPU_BENCHMARK(BM_QuantizeIntKiviKey4);
KVT_GPU_BENCHMARK(BM_QuantizeIntKiviValue2);
KVT_GPU_BENCHMARK(BM_FakeQuantIntPerToken4);
KVT_GPU_BENCHMARK(BM_QuantizeFp8);
KVT_GPU_BENCHMARK(BM_FakeQuantFp8);
KVT_GPU_BENCHMARK(BM_QuantizeNvfp4);
KVT_GPU_BENCHMARK(BM_FakeQuantNvfp4);

// Prints each kernel's throughput as a ratio to the device copy of the same
// tensor size.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred || run.run_type != Run::RT_Iteration) continue;
      const auto it = run.counters.find("bytes_per_second");
      if (it == run.counters.end()) continue;
      rates_.push_back({run.run_name.function_name, run.run_name.args, it->second.value});
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    std::map<std::string, double> baseline;  // by tokens
    for (const Rate& r : rates_) {
      if (r.kernel == kBaseline) baseline[r.tokens] = r.bytes_per_second;
    }
    std::cout << "\nthroughput (input bytes/s) as a ratio to a device-to-device copy of the "
                 "input, fp32 [tokens, "
              << kHeads << ", " << kHeadDim << "]:\n";
    for (const Rate& r : rates_) {
      if (r.kernel == kBaseline) continue;
      const auto base = baseline.find(r.tokens);
      if (base == baseline.end() || base->second <= 0) {
        std::printf("  %-26s tokens=%-6s ratio vs d2d copy: n/a (copy not run)\n", r.kernel.c_str(),
                    r.tokens.c_str());
      } else {
        std::printf("  %-26s tokens=%-6s ratio vs d2d copy: %.3f\n", r.kernel.c_str(),
                    r.tokens.c_str(), r.bytes_per_second / base->second);
      }
    }
    std::fflush(stdout);
  }

 private:
  struct Rate {
    std::string kernel;
    std::string tokens;
    double bytes_per_second;
  };
  std::vector<Rate> rates_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (!kk::cuda_device_available()) {
    std::cout << "bench_cuda_kernels: no CUDA device, nothing to measure\n";
    return 0;
  }
  int device = 0;
  cudaDeviceProp props{};
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaGetDeviceProperties(&props, device) == cudaSuccess) {
    std::cout << "device " << device << ": " << props.name << "\n";
  }
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
