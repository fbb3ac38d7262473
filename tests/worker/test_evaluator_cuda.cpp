// The evaluator on a CUDA LibTorch: the same model and calibration data
// evaluated on the GPU give the metrics the CPU gives, for every kind of
// format the kernels run on device tensors (float64 activations on both, so
// that summation order cannot flip a code at a rounding boundary: the
// quantizers see the same float32 values); in bfloat16 the metrics keep their
// order. Skips where
// LibTorch sees no GPU or kvtune was built without its CUDA kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "../support/stories_reference.h"
#include "evaluator.h"
#include "kvtune/kernels/quant.h"

namespace kvtune::worker {
namespace {

bool cuda_evaluation_possible() {
  return torch::cuda::is_available() && kernels::cuda_device_available();
}

// Eight windows of the reference greedy text, 96 tokens each.
std::vector<std::vector<int64_t>> cuda_case_sequences() {
  const std::vector<int64_t> ids = kvtune::testing::stories_reference_ids();
  std::vector<std::vector<int64_t>> out;
  for (size_t s = 0; s < 8; ++s) {
    const size_t start = (s * 17) % (ids.size() - 96);
    out.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(start),
                     ids.begin() + static_cast<std::ptrdiff_t>(start + 96));
  }
  return out;
}

struct CudaCase {
  const char* layers;
  const char* target;
  const char* scheme;
};

const CudaCase kCudaCases[] = {
    {"KV4", "kvtune", "per-token-asym"},
    {"K8V4", "kvtune", "kivi"},
    {"KV2", "kvtune", "kivi"},
    {"KVfp8", "kvtune", "per-token-asym"},
    {"KVvllm:fp8", "kvtune", "per-token-asym"},
    {"KVvllm:int8_per_token_head", "kvtune", "per-token-asym"},
    {"KVsglang:fp4_e2m1", "kvtune", "per-token-asym"},
    {"KV4", "kvtuner", "per-token-asym"},
};

Scheme cuda_case_scheme(const CudaCase& c) {
  return std::string(c.target) == "kvtuner" ? Scheme::kvtuner(c.scheme)
                                            : Scheme::parse(c.scheme, 32, 32, "int");
}

TEST(CudaEvaluator, TheGpuGivesTheCpuMetrics) {
  SKIP_WITHOUT_SHARED();
  if (!cuda_evaluation_possible()) GTEST_SKIP() << "no CUDA device (LibTorch or kvtune kernels)";
  const Model cpu_model =
      to_device(load_llama2c(kvtune::testing::kStoriesModel), torch::kCPU, torch::kFloat64);
  const Model gpu_model = to_device(cpu_model, torch::Device(torch::kCUDA, 0), torch::kFloat64);
  Evaluator cpu(cpu_model, cuda_case_sequences());
  Evaluator gpu(gpu_model, cuda_case_sequences());
  for (size_t l = 0; l < cpu.amax().keys.size(); ++l) {
    for (size_t h = 0; h < cpu.amax().keys[l].size(); ++h) {
      EXPECT_NEAR(gpu.amax().keys[l][h], cpu.amax().keys[l][h], 1e-4 * cpu.amax().keys[l][h]);
      EXPECT_NEAR(gpu.amax().values[l][h], cpu.amax().values[l][h], 1e-4 * cpu.amax().values[l][h]);
    }
  }
  for (const CudaCase& c : kCudaCases) {
    const auto layers = parse_layer_config(c.layers, 5);
    const Scheme scheme = cuda_case_scheme(c);
    const Metrics a = cpu.evaluate(layers, scheme), b = gpu.evaluate(layers, scheme);
    const std::string what = std::string(c.layers) + " " + c.target + " " + c.scheme;
    ASSERT_GT(a.kl, 0.0) << what;
    // Summation order alone differs, in float64.
    EXPECT_NEAR(b.kl, a.kl, 1e-3 * a.kl) << what;
    EXPECT_NEAR(b.delta_nll, a.delta_nll, 1e-4) << what;
    EXPECT_NEAR(b.top1_agreement, a.top1_agreement, 2.0 / 768) << what;
    EXPECT_DOUBLE_EQ(b.bytes_per_token, a.bytes_per_token) << what;
    for (size_t l = 0; l < a.attn_rel_err.size(); ++l) {
      EXPECT_NEAR(b.attn_rel_err[l], a.attn_rel_err[l], 1e-3 * a.attn_rel_err[l] + 1e-9) << what;
    }
    std::printf("  %-40s KL cpu %.6g  cuda %.6g\n", what.c_str(), a.kl, b.kl);
  }
}

TEST(CudaEvaluator, Bfloat16KeepsTheOrderOfFormats) {
  SKIP_WITHOUT_SHARED();
  if (!cuda_evaluation_possible()) GTEST_SKIP() << "no CUDA device (LibTorch or kvtune kernels)";
  const Model model = to_device(load_llama2c(kvtune::testing::kStoriesModel),
                                torch::Device(torch::kCUDA, 0), torch::kBFloat16);
  Evaluator ev(model, cuda_case_sequences());
  const Scheme scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  const Metrics full = ev.evaluate(parse_layer_config("KV16", 5), scheme);
  EXPECT_EQ(full.kl, 0.0);
  const Metrics kv8 = ev.evaluate(parse_layer_config("KV8", 5), scheme);
  const Metrics kv4 = ev.evaluate(parse_layer_config("KV4", 5), scheme);
  const Metrics kv2 = ev.evaluate(parse_layer_config("KV2", 5), scheme);
  EXPECT_LT(kv8.kl, kv4.kl);
  EXPECT_LT(kv4.kl, kv2.kl);
  EXPECT_GT(kv8.top1_agreement, kv2.top1_agreement);
}

}  // namespace
}  // namespace kvtune::worker
