// Evaluation throughput: the quantized-cache evaluation's time as a ratio of
// the unquantized forward's, measured in the same run (goal <= 1.5x), with the
// memory the evaluator holds. Models: stories260K (when ../shared is present)
// and a generated 12-layer, dim-512 model over 2048 tokens.
//
// --device cuda: against a CUDA LibTorch, a generated model with
// Llama-3.1-8B's layer shapes (4 layers, dim 4096, 32 heads, 8 KV heads, FFN
// 14336, vocab 128,256) in bfloat16 over 8 x 512 tokens, with each row's
// achieved FLOP rate as a share of the card's peak bf16 rate (--peak-tflops,
// default 989.4: H100/H200 SXM dense).
//
//   build/bench/bench_eval [--quick] [--device cuda [--peak-tflops T]]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "allocator.h"
#include "evaluator.h"
#include "generated_model.h"

namespace kw = kvtune::worker;

namespace {

double seconds(const std::function<void()>& f, int repeats) {
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    f();
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// FLOPs of one teacher-forced forward over `tokens` positions of sequences of
// `len`: the projections, the causal attention (q.k and p.v over i + 1 keys
// for position i: len / 2 on average) and the output head.
double forward_flops(const kw::ModelConfig& c, int64_t tokens, int64_t len) {
  const double d = static_cast<double>(c.dim), kv = static_cast<double>(c.n_kv_heads * c.head_dim);
  const double per_layer =
      2.0 * (2 * d * d + 2 * d * kv + 3 * d * static_cast<double>(c.hidden_dim)) +
      2.0 * 2.0 * d * (static_cast<double>(len) + 1) / 2.0;
  const double head = 2.0 * d * static_cast<double>(c.vocab_size);
  return static_cast<double>(tokens) * (static_cast<double>(c.n_layers) * per_layer + head);
}

std::vector<std::vector<int64_t>> random_tokens(int64_t sequences, int64_t len, int64_t vocab) {
  torch::manual_seed(1);
  const torch::Tensor t = torch::randint(vocab, {sequences, len}, torch::kInt64).contiguous();
  std::vector<std::vector<int64_t>> out;
  for (int64_t s = 0; s < sequences; ++s) {
    out.emplace_back(t[s].data_ptr<int64_t>(), t[s].data_ptr<int64_t>() + len);
  }
  return out;
}

// peak_tflops > 0: each row also reports its FLOP rate as a share of it.
void run(const std::string& title, const kw::Model& model,
         const std::vector<std::vector<int64_t>>& data, int repeats, double peak_tflops = 0) {
  const double rss_before = peak_rss_mib();
  const auto build_start = std::chrono::steady_clock::now();
  kw::Evaluator ev(model, data);
  const double build_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - build_start).count();
  const double rss_after = peak_rss_mib();
  int64_t tokens = 0;
  for (const auto& s : data) tokens += static_cast<int64_t>(s.size());
  std::vector<torch::Tensor> batches;
  for (const auto& s : data) batches.push_back(torch::tensor(s, torch::kInt64));
  const torch::Tensor batch = torch::stack(batches);

  // The sum's item() waits for the device, so GPU rows time finished work.
  ev.transformer().forward(batch).sum().item<float>();  // warm-up (kernels, allocator)
  const double fp = seconds([&] { ev.transformer().forward(batch).sum().item<float>(); }, repeats);
  const double flops = forward_flops(model.config, tokens, static_cast<int64_t>(data[0].size()));
  const auto rate = [&](double secs) {
    if (peak_tflops <= 0) return std::string();
    const double tflops = flops / secs / 1e12;
    char text[96];
    std::snprintf(text, sizeof(text), "  %7.1f TFLOP/s  %5.1f%% of peak", tflops,
                  100.0 * tflops / peak_tflops);
    return std::string(text);
  };
  std::printf(
      "\n%s: %zu x %zu tokens, %lld layers, dim %lld, vocab %lld, %s on %s\n", title.c_str(),
      data.size(), data[0].size(), static_cast<long long>(model.config.n_layers),
      static_cast<long long>(model.config.dim), static_cast<long long>(model.config.vocab_size),
      c10::toString(model.embedding.scalar_type()), model.embedding.device().str().c_str());
  std::printf("  reference pass (amax, log-probs) %.3f s, once per calibration set\n", build_s);
  std::printf("  unquantized forward       %8.3f s  %10.0f tokens/s  1.00x%s\n", fp,
              static_cast<double>(tokens) / fp, rate(fp).c_str());
  const int64_t layers = model.config.n_layers;
  struct Case {
    const char* name;
    const char* pair;
    const char* scheme;
    const char* target = "kvtune";
  };
  // The kvtuner rows re-quantize the whole cache at every flush (R = 0: every
  // 2 tokens; R = 32: every 32): their cost beside the one-pass mask rows.
  for (const Case& c : {Case{"evaluate KV4 per-token", "KV4", "per-token-asym"},
                        Case{"evaluate KV2 kivi", "KV2", "kivi"},
                        Case{"evaluate Kfp8Vnvfp4", "Kfp8Vnvfp4", "per-token-asym"},
                        Case{"evaluate K8V4 kivi", "K8V4", "kivi"},
                        Case{"kvtuner KV4 per-token R0", "KV4", "per-token-asym", "kvtuner"},
                        Case{"kvtuner KV4 per-chan R32", "KV4", "per-channel-asym", "kvtuner"}}) {
    const auto config = kvtune::parse_layer_config(c.pair, static_cast<int>(layers));
    const auto scheme = std::string(c.target) == "kvtuner"
                            ? kvtune::Scheme::kvtuner(c.scheme)
                            : kvtune::Scheme::parse(c.scheme, 32, 32, "int");
    ev.evaluate(config, scheme);  // the first call also measures layer-local attention errors
    const double t = seconds([&] { ev.evaluate(config, scheme); }, repeats);
    std::printf("  %-25s %8.3f s  %10.0f tokens/s  %.2fx%s\n", c.name, t,
                static_cast<double>(tokens) / t, t / fp, rate(t).c_str());
  }
  std::printf(
      "  evaluator reference state  %.1f MiB (tokens x vocab log-probs would be %.1f MiB; "
      "peak RSS %.1f -> %.1f MiB)\n",
      static_cast<double>(ev.reference_bytes()) / (1 << 20),
      static_cast<double>(tokens * model.config.vocab_size * 4) / (1 << 20), rss_before, rss_after);
}

}  // namespace

// A generated model with Llama-3.1-8B's layer shapes in bfloat16 on the GPU.
int run_cuda(double peak_tflops) {
  if (!torch::cuda::is_available()) {
    std::printf("--device cuda: LibTorch sees no CUDA device (a CPU LibTorch, or no GPU)\n");
    return 1;
  }
  const auto options = torch::TensorOptions().dtype(torch::kBFloat16).device(torch::kCUDA, 0);
  kw::Model m = kvtune::bench::random_model(4, 4096, 32, 8, 128256, 8192, 14336, options);
  m.config.rope_theta = 500000.0;
  std::printf("peak bf16 rate taken as %.1f TFLOP/s (--peak-tflops)\n", peak_tflops);
  run("generated (synthetic) Llama-3.1-8B shapes", m, random_tokens(8, 512, 128256), 3,
      peak_tflops);
  return 0;
}

int main(int argc, char** argv) {
  kw::keep_freed_memory();  // as kvtune-worker runs
  bool quick = false, cuda = false;
  double peak_tflops = 989.4;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      quick = true;
    } else if (arg == "--device" && i + 1 < argc && std::string(argv[i + 1]) == "cuda") {
      cuda = true;
      ++i;
    } else if (arg == "--peak-tflops" && i + 1 < argc) {
      peak_tflops = std::stod(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_eval [--quick] [--device cuda [--peak-tflops T]]\n");
      return 2;
    }
  }
  if (cuda) return run_cuda(peak_tflops);
  std::printf("threads: %d (torch), one run per row is the median of %d\n",
              torch::get_num_threads(), quick ? 1 : 3);
  const std::string stories = std::string(KVTUNE_SHARED_DIR) + "/models/stories260K.bin";
  if (std::filesystem::exists(stories)) {
    const kw::Model m = kw::load_llama2c(stories);
    run("stories260K", m, random_tokens(8, 256, m.config.vocab_size), quick ? 1 : 3);
  } else {
    std::printf("stories260K: ../shared absent, skipped\n");
  }
  const int64_t len = quick ? 512 : 2048;
  const kw::Model big = kvtune::bench::random_model(12, 512, 8, 8, 512, 4096);
  run("generated (synthetic) 12x512", big, random_tokens(1, len, 512), quick ? 1 : 2);
  return 0;
}
