// CPU throughput of the KV quantization kernels, on one core, as a ratio to a
// memcpy of the same bytes measured in the same run (the machines are noisy,
// so only ratios are comparable). Goal: per-token-asym 4-bit fake-quant of a
// [4096, 8, 128] fp32 tensor at >= 0.25x memcpy; likewise llama.cpp's q8_0,
// q4_0 and iq4_nl without rotation.
#include <benchmark/benchmark.h>

#include <cstring>
#include <iostream>
#include <map>
#include <random>
#include <vector>

#include "kvtune/kernels/engine.h"
#include "kvtune/kernels/quant.h"

namespace kk = kvtune::kernels;

namespace {

const kk::CacheShape kShape{4096, 8, 128};

const std::vector<float>& input() {
  static const std::vector<float> x = [] {
    std::mt19937 rng(0);
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(kShape.elements()));
    for (float& f : v) f = n(rng);
    return v;
  }();
  return x;
}

int64_t input_bytes() {
  return kShape.elements() * static_cast<int64_t>(sizeof(float));
}

kk::IntSpec spec(kk::Grouping g, kk::Role r, int bits) {
  kk::IntSpec s;
  s.grouping = g;
  s.role = r;
  s.bits = bits;
  return s;
}

void BM_Memcpy(benchmark::State& state) {
  const auto& x = input();
  std::vector<float> y(x.size());
  for (auto _ : state) {
    std::memcpy(y.data(), x.data(), static_cast<size_t>(input_bytes()));
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * input_bytes());
}

void fake_quant_bench(benchmark::State& state, kk::IntSpec s) {
  kk::cpu::set_num_threads(1);
  const auto& x = input();
  std::vector<float> y(x.size());
  for (auto _ : state) {
    kk::cpu::fake_quant_int(s, kShape, kk::DType::F32, x.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * input_bytes());
}

void BM_FakeQuantPerToken4(benchmark::State& state) {
  fake_quant_bench(state, spec(kk::Grouping::PerToken, kk::Role::Key, 4));
}
void BM_FakeQuantKiviKey4(benchmark::State& state) {
  fake_quant_bench(state, spec(kk::Grouping::Kivi, kk::Role::Key, 4));
}
void BM_FakeQuantKiviValue2(benchmark::State& state) {
  fake_quant_bench(state, spec(kk::Grouping::Kivi, kk::Role::Value, 2));
}

void BM_QuantizePackPerToken4(benchmark::State& state) {
  kk::cpu::set_num_threads(1);
  const auto s = spec(kk::Grouping::PerToken, kk::Role::Key, 4);
  const kk::IntLayout layout = kk::int_layout(s, kShape);
  std::vector<uint32_t> codes(static_cast<size_t>(layout.code_words));
  std::vector<float> scales(static_cast<size_t>(layout.groups.count)), zeros(scales.size());
  for (auto _ : state) {
    kk::cpu::quantize_int(s, kShape, kk::DType::F32, input().data(),
                          {codes.data(), scales.data(), zeros.data()});
    benchmark::DoNotOptimize(codes.data());
  }
  state.SetBytesProcessed(state.iterations() * input_bytes());
}

std::vector<float> unit_scales() {
  return std::vector<float>(kShape.heads, 0.01f);
}

void BM_FakeQuantFp8(benchmark::State& state) {
  kk::cpu::set_num_threads(1);
  const auto scales = unit_scales();
  std::vector<float> y(input().size());
  for (auto _ : state) {
    kk::cpu::fake_quant_fp8(kShape, kk::DType::F32, input().data(), scales.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * input_bytes());
}

void BM_FakeQuantNvfp4(benchmark::State& state) {
  kk::cpu::set_num_threads(1);
  const auto scales = unit_scales();
  std::vector<float> y(input().size());
  for (auto _ : state) {
    kk::cpu::fake_quant_nvfp4(kShape, kk::DType::F32, input().data(), scales.data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * input_bytes());
}

// A released engine's dtype (engine_math.h), at a scale that keeps every value finite.
void engine_bench(benchmark::State& state, kk::EngineArith arith, int rotate_chunk = 0) {
  kk::cpu::set_num_threads(1);
  kk::EngineSpec spec{arith, 0.05f};  // (llama.cpp's types take no scale)
  spec.rotate_chunk = rotate_chunk;
  std::vector<float> y(input().size());
  for (auto _ : state) {
    kk::cpu::fake_quant_engine(spec, kShape, kk::DType::F32, input().data(), y.data());
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * input_bytes());
}
void BM_EngineVllmFp8(benchmark::State& state) {
  engine_bench(state, kk::EngineArith::E4m3Scaled);
}
void BM_EngineSglangFp8(benchmark::State& state) {
  engine_bench(state, kk::EngineArith::E4m3Cast);
}
void BM_EngineInt8PerTokenHead(benchmark::State& state) {
  engine_bench(state, kk::EngineArith::Int8PerTokenHead);
}
void BM_EngineVllmNvfp4(benchmark::State& state) {
  engine_bench(state, kk::EngineArith::Nvfp4Layer);
}
void BM_EngineSglangFp4(benchmark::State& state) {
  engine_bench(state, kk::EngineArith::Fp4Pow2);
}

// llama.cpp's cache types; with llama.cpp's key rotation (Hadamard chunks of
// 128 for head_dim 128) as a second figure (llama.cpp rotates only the
// quantized types: the f16 and bf16 figures show what the transforms cost).
#define KVT_GGML_BENCH(name, arith)                             \
  void BM_Llamacpp_##name(benchmark::State& state) {            \
    engine_bench(state, kk::EngineArith::arith);                \
  }                                                             \
  void BM_Llamacpp_##name##_rot128(benchmark::State& state) {   \
    engine_bench(state, kk::EngineArith::arith, 128);           \
  }                                                             \
  BENCHMARK(BM_Llamacpp_##name)->Unit(benchmark::kMillisecond); \
  BENCHMARK(BM_Llamacpp_##name##_rot128)->Unit(benchmark::kMillisecond);
KVT_GGML_BENCH(q8_0, GgmlQ8_0)
KVT_GGML_BENCH(q4_0, GgmlQ4_0)
KVT_GGML_BENCH(q4_1, GgmlQ4_1)
KVT_GGML_BENCH(q5_0, GgmlQ5_0)
KVT_GGML_BENCH(q5_1, GgmlQ5_1)
KVT_GGML_BENCH(iq4_nl, GgmlIq4Nl)
KVT_GGML_BENCH(f16, GgmlF16)
KVT_GGML_BENCH(bf16, GgmlBf16)
#undef KVT_GGML_BENCH

BENCHMARK(BM_Memcpy)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EngineVllmFp8)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EngineSglangFp8)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EngineInt8PerTokenHead)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EngineVllmNvfp4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EngineSglangFp4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FakeQuantPerToken4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FakeQuantKiviKey4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FakeQuantKiviValue2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_QuantizePackPerToken4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FakeQuantFp8)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FakeQuantNvfp4)->Unit(benchmark::kMillisecond);

// Prints each benchmark's throughput as a ratio to BM_Memcpy's.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      const auto it = run.counters.find("bytes_per_second");
      if (it != run.counters.end()) rates_[run.benchmark_name()] = it->second.value;
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    const double base = rates_["BM_Memcpy"];
    if (base <= 0) return;
    std::cout << "\nthroughput as a ratio to memcpy of the same bytes (one core, " << kShape.str()
              << " fp32, vector instructions: " << kk::cpu::vector_isa()
              << "; KVTUNE_CPU_NO_AVX512=1 for AVX2):\n";
    for (const auto& [name, rate] : rates_) {
      std::printf("  %-28s %.3fx\n", name.c_str(), rate / base);
    }
  }

 private:
  std::map<std::string, double> rates_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
