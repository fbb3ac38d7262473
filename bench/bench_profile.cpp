// The profile's cost and the reference's memory, each before vs after in one
// run:
// 1. Profile evaluations per second (every candidate pair on every layer
//    alone, as a search's profile phase asks): before (every evaluation from
//    layer 0, after a replay of the unquantized model that measures the
//    layer's attention error), without prefix reuse (the error measured in
//    the evaluation's own pass) and with it (from the kept boundary at the
//    evaluated layer), on stories260K (when ../shared is present) and a
//    generated 16-layer model. Goal >= 1.8x.
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
#include "one_core.h"

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
  // Before: every evaluation from layer 0, and the profile's attention error
  // measured by a replay of the unquantized model first (kvtune until now).
  kw::EvaluatorOptions before;
  before.prefix_cache_bytes = 0;
  before.attention_error_in_pass = false;
  // Without prefix reuse, but the attention error measured in the pass.
  kw::EvaluatorOptions without = before;
  without.attention_error_in_pass = true;
  const kw::EvaluatorOptions with;  // every boundary fits
  struct Row {
    const char* name;
    const kw::EvaluatorOptions* options;
    double best = 1e30;
    int64_t layers = 0;
  };
  Row rows[] = {{"before (replay, from layer 0)", &before},
                {"without prefix reuse", &without},
                {"with prefix reuse", &with}};
  int evaluations = 0;
  for (int r = 0; r < repeats; ++r) {  // alternated, best of each
    for (Row& row : rows) {
      row.best =
          std::min(row.best, profile_seconds(model, data, *row.options, row.layers, evaluations));
    }
  }
  std::printf("\n%s: %lld layers, data %s, %d profile evaluations\n", title.c_str(),
              static_cast<long long>(model.config.n_layers), data_spec.c_str(), evaluations);
  for (const Row& row : rows) {
    std::printf("  %-30s %7.3f s  %8.1f evaluations/s  %5lld layers run  %.2fx\n", row.name,
                row.best, evaluations / row.best, static_cast<long long>(row.layers),
                rows[0].best / row.best);
  }
  std::printf(
      "  prefix reuse: %.2fx over the same pass without it; %.2fx over before (goal >= "
      "1.8x)\n",
      rows[1].best / rows[2].best, rows[0].best / rows[2].best);
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
  kvtune::bench::run_on_one_core(argv);
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  std::printf("bench_profile: CPU float32, %d torch thread, OPENBLAS_NUM_THREADS=%s, best of %d\n",
              torch::get_num_threads(), std::getenv("OPENBLAS_NUM_THREADS"), quick ? 1 : 3);
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
