// Evaluation throughput: the quantized-cache evaluation's time as a ratio of
// the unquantized forward's, measured in the same run (goal <= 1.5x), with the
// memory the evaluator holds. Models: stories260K (when ../shared is present)
// and a generated 12-layer, dim-512 model over 2048 tokens.
//
//   build/bench/bench_eval [--quick]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

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

// A generated Llama-architecture model with random weights (synthetic).
kw::Model generated_model(int64_t layers, int64_t dim, int64_t heads, int64_t kv_heads,
                          int64_t vocab, int64_t context) {
  torch::manual_seed(0);
  kw::Model m;
  m.config = kvtune::bench::generated_config(layers, dim, heads, kv_heads, vocab, context);
  const kw::ModelConfig& c = m.config;
  const double s = 1.0 / std::sqrt(static_cast<double>(dim));
  m.embedding = torch::randn({vocab, dim});
  m.classifier = m.embedding;
  m.final_norm = torch::ones({dim});
  for (int64_t l = 0; l < layers; ++l) {
    kw::LayerWeights& w = m.layers.emplace_back();
    w.attn_norm = torch::ones({dim});
    w.ffn_norm = torch::ones({dim});
    w.wq = torch::randn({dim, dim}) * s;
    w.wk = torch::randn({kv_heads * c.head_dim, dim}) * s;
    w.wv = torch::randn({kv_heads * c.head_dim, dim}) * s;
    w.wo = torch::randn({dim, dim}) * s;
    w.w1 = torch::randn({c.hidden_dim, dim}) * s;
    w.w3 = torch::randn({c.hidden_dim, dim}) * s;
    w.w2 = torch::randn({dim, c.hidden_dim}) * s;
  }
  return m;
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

void run(const std::string& title, const kw::Model& model,
         const std::vector<std::vector<int64_t>>& data, int repeats) {
  const double rss_before = peak_rss_mib();
  kw::Evaluator ev(model, data);
  const double rss_after = peak_rss_mib();
  int64_t tokens = 0;
  for (const auto& s : data) tokens += static_cast<int64_t>(s.size());
  std::vector<torch::Tensor> batches;
  for (const auto& s : data) batches.push_back(torch::tensor(s, torch::kInt64));
  const torch::Tensor batch = torch::stack(batches);

  const double fp = seconds([&] { ev.transformer().forward(batch); }, repeats);
  std::printf("\n%s: %zu x %zu tokens, %lld layers, dim %lld\n", title.c_str(), data.size(),
              data[0].size(), static_cast<long long>(model.config.n_layers),
              static_cast<long long>(model.config.dim));
  std::printf("  unquantized forward       %8.3f s  %10.0f tokens/s  1.00x\n", fp,
              static_cast<double>(tokens) / fp);
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
    std::printf("  %-25s %8.3f s  %10.0f tokens/s  %.2fx\n", c.name, t,
                static_cast<double>(tokens) / t, t / fp);
  }
  std::printf("  evaluator reference state  %.1f MiB (peak RSS %.1f -> %.1f MiB)\n",
              static_cast<double>(tokens * model.config.vocab_size * 4) / (1 << 20), rss_before,
              rss_after);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
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
  const kw::Model big = generated_model(12, 512, 8, 8, 512, 4096);
  run("generated (synthetic) 12x512", big, random_tokens(1, len, 512), quick ? 1 : 2);
  return 0;
}
