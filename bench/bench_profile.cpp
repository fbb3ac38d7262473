// The profile's cost and the reference's memory, each before vs after in one
// run:
// 1. Profile evaluations per second (every candidate pair on every layer
//    alone, as a search's profile phase asks) without prefix reuse (every
//    evaluation and attention-error replay from layer 0) and with it (from
//    the kept boundary at the evaluated layer), on stories260K (when
//    ../shared is present) and a generated 16-layer model. Goal >= 1.8x.
// 2. The evaluator's reference memory for a generated model with vocab
//    128,256 over 4 x 512 tokens: tokens x vocab float32 log-probabilities
//    (before) against the final hidden states and kept boundaries (after).
//
//   build/bench/bench_profile [--quick]
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "calibration.h"
#include "evaluator.h"
#include "generated_model.h"

namespace kw = kvtune::worker;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Seconds for the whole profile with a fresh evaluator (the first
// evaluations also measure each layer's attention error, as in a search).
double profile_seconds(const kw::Model& model, const kw::CalibrationData& data,
                       const kw::EvaluatorOptions& options, int64_t& layers_run, int& evaluations) {
  kw::Evaluator ev(model, data.sequences, {}, options);
  const auto scheme = kvtune::Scheme::parse("per-token-asym", 32, 32, "int");
  const int n = static_cast<int>(model.config.n_layers);
  const auto start = Clock::now();
  evaluations = 0;
  for (int l = 0; l < n; ++l) {
    for (const char* pair : {"KV8", "K8V4", "KV4", "K4V2", "KV2"}) {
      std::vector<kvtune::PrecisionPair> layers(static_cast<size_t>(n),
                                                kvtune::PrecisionPair::parse("KV16"));
      layers[static_cast<size_t>(l)] = kvtune::PrecisionPair::parse(pair);
      ev.evaluate(layers, scheme);
      ++evaluations;
    }
  }
  layers_run = ev.layers_run();
  return since(start);
}

void profile(const std::string& title, const kw::Model& model, const std::string& data_spec,
             int repeats) {
  const kw::CalibrationData data = kw::load_calibration(data_spec, 256, model);
  kw::EvaluatorOptions without;
  without.prefix_cache_bytes = 0;
  const kw::EvaluatorOptions with;  // every boundary fits
  double best_without = 1e30, best_with = 1e30;
  int64_t layers_without = 0, layers_with = 0;
  int evaluations = 0;
  for (int r = 0; r < repeats; ++r) {  // alternated, best of each
    best_without =
        std::min(best_without, profile_seconds(model, data, without, layers_without, evaluations));
    best_with = std::min(best_with, profile_seconds(model, data, with, layers_with, evaluations));
  }
  std::printf("\n%s: %lld layers, data %s, %d profile evaluations\n", title.c_str(),
              static_cast<long long>(model.config.n_layers), data_spec.c_str(), evaluations);
  std::printf("  without prefix reuse  %7.3f s  %8.1f evaluations/s  %5lld layers run\n",
              best_without, evaluations / best_without, static_cast<long long>(layers_without));
  std::printf("  with prefix reuse     %7.3f s  %8.1f evaluations/s  %5lld layers run\n", best_with,
              evaluations / best_with, static_cast<long long>(layers_with));
  std::printf("  speed-up %.2fx (goal >= 1.8x)\n", best_without / best_with);
}

void reference_memory() {
  const kw::Model model = kvtune::bench::random_model(4, 256, 8, 4, 128256, 1024);
  torch::manual_seed(1);  // random tokens: what memory holds does not depend on them
  const torch::Tensor ids = torch::randint(128256, {4, 512}, torch::kInt64).contiguous();
  kw::CalibrationData data;
  for (int64_t s = 0; s < 4; ++s) {
    data.sequences.emplace_back(ids[s].data_ptr<int64_t>(), ids[s].data_ptr<int64_t>() + 512);
  }
  kw::EvaluatorOptions before;
  before.reference = kw::EvaluatorOptions::Reference::Full;
  before.prefix_cache_bytes = 0;
  const kw::EvaluatorOptions after;
  const auto t0 = Clock::now();
  const int64_t bytes_before = kw::Evaluator(model, data.sequences, {}, before).reference_bytes();
  const double s_before = since(t0);
  const auto t1 = Clock::now();
  kw::Evaluator ev(model, data.sequences, {}, after);
  const double s_after = since(t1);
  std::printf(
      "\nreference memory, generated 4x256 model, vocab 128,256, 4 x 512 tokens (float32):\n"
      "  before (tokens x vocab log-probs)          %8.1f MiB  (built in %.2f s)\n"
      "  after (final hidden + %lld kept boundaries)  %8.3f MiB  (built in %.2f s)\n"
      "  ratio %.0fx\n",
      static_cast<double>(bytes_before) / (1 << 20), s_before,
      static_cast<long long>(model.config.n_layers - 1),
      static_cast<double>(ev.reference_bytes()) / (1 << 20), s_after,
      static_cast<double>(bytes_before) / static_cast<double>(ev.reference_bytes()));
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  torch::set_num_threads(1);
  std::printf("bench_profile: CPU float32, %d torch thread, best of %d\n", torch::get_num_threads(),
              quick ? 1 : 3);
  const std::string stories = std::string(KVTUNE_SHARED_DIR) + "/models/stories260K.bin";
  if (std::filesystem::exists(stories)) {
    profile("stories260K", kw::load_llama2c(stories), "sample:4:256:0", quick ? 1 : 3);
  } else {
    std::printf("\nstories260K: ../shared absent, skipped\n");
  }
  profile("generated (synthetic) 16x128", kvtune::bench::random_model(16, 128, 4, 2, 2048, 512),
          "sample:4:256:0", quick ? 1 : 3);
  reference_memory();
  return 0;
}
