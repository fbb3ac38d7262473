// Search efficiency: how many evaluations each search strategy (kvtune:
// profile, prune, cluster, additive seeding, NSGA-II; nsga2: plain NSGA-II;
// random; additive: NVIDIA ModelOpt's recipe, the single-layer profile then
// each point of the additive model's frontier within the budget evaluated
// once, in order of increasing bits, no search) needs before the hypervolume
// of its evaluated feasible configs reaches 99% of a reference hypervolume,
// as ratios to kvtune; and on stories260K the wall time kvtune's search needs
// to reach it with the evaluator before prefix reuse and bounded references
// (every evaluation from layer 0, tokens x vocab reference log-probs) and
// after. In process (no
// cluster): the search driver asks, the LibTorch evaluator (CPU, float32)
// measures the KL, and every evaluation is cached by its config string, so
// nothing is evaluated twice across strategies and seeds.
//
// 1. stories260K (when ../shared is present), KVTuner's five pairs on its 5
//    layers, max_bits 8: the reference is the brute-force frontier of all
//    5^5 = 3,125 configs.
// 2. A generated (synthetic) 16-layer model with the nine pairs of {8,4,2}^2,
//    max_bits 4, 600 evaluations per run: brute force is impossible (9^16),
//    so the reference is the frontier of everything any run evaluated.
//
// Hypervolume is in (average bits, log10 KL): search::hypervolume over points
// {bits, search::log_error(kl)}, reference point (max_bits + 0.5, the largest
// log10 KL among the feasible configs evaluated + 0.1). The evaluations a run
// needed are the driver's evaluations() (the profile included) after the
// first tell() whose result reaches the target, so they are counted in whole
// generations.
//
//   build/bench/bench_search [--quick]     (--quick: seeds 0..1 instead of 0..4)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "calibration.h"
#include "evaluator.h"
#include "generated_model.h"
#include "one_core.h"
#include "search.h"

namespace kw = kvtune::worker;
namespace ks = kvtune::search;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A generated Llama-architecture model with random weights (synthetic), as in
// bench_eval, with layers that differ in KV sensitivity: the attention scores
// get sharper and a few key channels carry larger outliers the earlier the
// layer (as in trained models and the built-in demo model).
kw::Model generated_model(int64_t layers, int64_t dim, int64_t heads, int64_t kv_heads,
                          int64_t vocab, int64_t context) {
  torch::manual_seed(0);
  kw::Model m;
  m.config = kvtune::bench::generated_config(layers, dim, heads, kv_heads, vocab, context);
  const kw::ModelConfig& c = m.config;
  const double s = 1.0 / std::sqrt(static_cast<double>(dim));
  m.embedding = torch::randn({vocab, dim}) * 0.5;
  m.classifier = m.embedding;
  m.final_norm = torch::ones({dim});
  const int64_t outlier_channels = std::min<int64_t>(4, c.head_dim / 2);
  for (int64_t l = 0; l < layers; ++l) {
    const double depth = layers > 1 ? static_cast<double>(l) / static_cast<double>(layers - 1) : 0;
    const double qk_gain = std::sqrt(4.0 - 2.0 * depth);  // score std 4 -> 2
    const double outlier = 5.0 - 4.0 * depth;             // key outliers 5x -> 1x
    kw::LayerWeights& w = m.layers.emplace_back();
    w.attn_norm = torch::ones({dim});
    w.ffn_norm = torch::ones({dim});
    w.wq = torch::randn({heads * c.head_dim, dim}) * (s * qk_gain);
    w.wk = torch::randn({kv_heads * c.head_dim, dim}) * (s * qk_gain);
    w.wv = torch::randn({kv_heads * c.head_dim, dim}) * s;
    w.wo = torch::randn({dim, heads * c.head_dim}) * s;
    w.w1 = torch::randn({c.hidden_dim, dim}) * s;
    w.w3 = torch::randn({c.hidden_dim, dim}) * s;
    w.w2 = torch::randn({dim, c.hidden_dim}) * (s * 0.5);
    // Outlier key channels, compensated in the queries: same scores, but the
    // cached keys have a wide range for quantization to cope with.
    const int64_t group = heads / kv_heads;
    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      for (int64_t ch = c.head_dim - outlier_channels; ch < c.head_dim; ++ch) {
        w.wk[kv * c.head_dim + ch].mul_(outlier);
        for (int64_t h = kv * group; h < (kv + 1) * group; ++h) {
          w.wq[h * c.head_dim + ch].div_(outlier);
        }
      }
    }
  }
  return m;
}

// The evaluator with a cache keyed by the config string.
class CachedEvaluator {
 public:
  CachedEvaluator(const kw::Model& model, std::vector<std::vector<int64_t>> sequences,
                  kvtune::Scheme scheme, const kw::EvaluatorOptions& options = {})
      : evaluator_(model, std::move(sequences), {}, options), scheme_(scheme) {}

  double kl(const std::vector<kvtune::PrecisionPair>& layers) {
    const std::string key = kvtune::format_layer_config(layers);
    const auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    const double kl = evaluator_.evaluate(layers, scheme_).kl;
    cache_.emplace(key, kl);
    return kl;
  }
  std::size_t evaluated() const { return cache_.size(); }

 private:
  kw::Evaluator evaluator_;
  kvtune::Scheme scheme_;
  std::unordered_map<std::string, double> cache_;
};

// One search run: every evaluated config (profile excluded) in order, and
// after each tell() the driver's evaluations() with the number of configs
// evaluated so far.
struct Run {
  std::string strategy;  // kvtune, nsga2, random or additive
  std::uint64_t seed = 0;
  std::vector<ks::Point> points;  // {bits, log_error(kl)}, feasible or not
  struct Step {
    int evaluations = 0;
    std::size_t configs = 0;
    double seconds = 0;  // since the run started
  };
  std::vector<Step> steps;
  int evaluations = 0;
};

Run run_search(ks::Strategy strategy, std::uint64_t seed, int num_layers,
               const std::vector<kvtune::PrecisionPair>& candidates, double max_bits,
               int max_evaluations, CachedEvaluator& evaluator) {
  ks::Search::Options o;
  o.candidates = candidates;
  o.max_bits = max_bits;
  o.max_evaluations = max_evaluations;
  o.population = 20;
  o.seed = seed;
  o.strategy = strategy;
  o.patience = 1000;  // never stop early: the evaluation budget is the limit
  ks::Search search(o, num_layers);
  Run run;
  run.strategy = std::string(ks::strategy_name(strategy));
  run.seed = seed;
  const auto start = Clock::now();
  while (!search.done()) {
    const auto configs = search.ask();
    if (configs.empty()) break;
    std::vector<double> errors;
    errors.reserve(configs.size());
    for (const auto& c : configs) errors.push_back(evaluator.kl(c));
    search.tell(errors);
    run.steps.push_back({search.evaluations(), search.evaluated().size(), since(start)});
  }
  for (const ks::Evaluated& e : search.evaluated()) {
    run.points.push_back({e.bits, ks::log_error(e.error)});
  }
  run.evaluations = search.evaluations();
  return run;
}

// ModelOpt's recipe: the profile (every candidate on every layer alone), the
// additive model's exact frontier over per-layer choices (no pruning of the
// search space by clustering), each of its points within the budget
// evaluated once, in order of increasing bits.
Run run_additive(int num_layers, const std::vector<kvtune::PrecisionPair>& candidates,
                 double max_bits, CachedEvaluator& evaluator) {
  ks::Search::Options o;
  o.candidates = candidates;
  o.max_bits = max_bits;
  o.max_evaluations = num_layers * static_cast<int>(candidates.size()) + 1;
  o.cluster = false;
  ks::Search search(o, num_layers);
  Run run;
  run.strategy = "additive";
  const auto start = Clock::now();
  std::vector<double> errors;
  for (const auto& c : search.ask()) errors.push_back(evaluator.kl(c));
  search.tell(errors);
  int evaluations = static_cast<int>(errors.size());
  for (const ks::Evaluated& e : search.additive_frontier()) {
    if (e.bits > max_bits + 1e-9) continue;
    run.points.push_back({e.bits, ks::log_error(evaluator.kl(e.layers))});
    ++evaluations;
    run.steps.push_back({evaluations, run.points.size(), since(start)});
  }
  run.evaluations = evaluations;
  return run;
}

std::vector<ks::Point> feasible(const std::vector<ks::Point>& points, double max_bits,
                                std::size_t count) {
  std::vector<ks::Point> out;
  for (std::size_t i = 0; i < count && i < points.size(); ++i) {
    if (points[i].bits <= max_bits + 1e-9) out.push_back(points[i]);
  }
  return out;
}

struct Outcome {
  std::optional<int> to_target;  // evaluations when the target was first reached
  double seconds = 0;            // and the run's wall time then
  double final_share = 0;        // final hypervolume / reference hypervolume
  int evaluations = 0;
};

Outcome analyse(const Run& run, double max_bits, ks::Point reference, double reference_hv,
                double target) {
  Outcome out;
  out.evaluations = run.evaluations;
  for (const Run::Step& step : run.steps) {
    const double hv = ks::hypervolume(feasible(run.points, max_bits, step.configs), reference);
    if (hv >= target * reference_hv) {
      out.to_target = step.evaluations;
      out.seconds = step.seconds;
      break;
    }
  }
  out.final_share =
      ks::hypervolume(feasible(run.points, max_bits, run.points.size()), reference) / reference_hv;
  return out;
}

constexpr double kNever = std::numeric_limits<double>::infinity();

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string evals_text(double v, int budget) {
  if (std::isinf(v)) return ">" + std::to_string(budget);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

const std::vector<ks::Strategy> kStrategies = {ks::Strategy::kKvtune, ks::Strategy::kNsga2,
                                               ks::Strategy::kRandom};
const std::vector<std::string> kReported = {"kvtune", "nsga2", "random", "additive"};

// Prints per strategy: evaluations to `target` of the reference hypervolume
// (median, min-max over seeds), the ratio of its median to kvtune's, and the
// final hypervolume share with its ratio to kvtune's.
void report(const std::vector<Run>& runs, double max_bits, ks::Point reference, double reference_hv,
            int budget, double target) {
  char head[32];
  std::snprintf(head, sizeof head, "evals@%.0f%%", 100 * target);
  std::printf("  %-8s %10s %13s %9s %14s %9s %s\n", "strategy", head, "(min-max)", "ratio",
              "final HV share", "ratio", "reached");
  double kvtune_median = 0;
  double kvtune_share = 0;
  for (const std::string& strategy : kReported) {
    std::vector<double> evals, shares;
    int reached = 0;
    for (const Run& run : runs) {
      if (run.strategy != strategy) continue;
      const Outcome o = analyse(run, max_bits, reference, reference_hv, target);
      evals.push_back(o.to_target ? static_cast<double>(*o.to_target) : kNever);
      shares.push_back(o.final_share);
      reached += o.to_target ? 1 : 0;
    }
    if (evals.empty()) continue;
    const double med = median(evals);
    const double share = median(shares);
    if (strategy == "kvtune") {
      kvtune_median = med;
      kvtune_share = share;
    }
    const auto [lo, hi] = std::minmax_element(evals.begin(), evals.end());
    const std::string range = *lo == *hi ? evals_text(*lo, budget)
                                         : evals_text(*lo, budget) + "-" + evals_text(*hi, budget);
    std::string ratio = "n/a";
    if (!std::isinf(med) && !std::isinf(kvtune_median) && kvtune_median > 0) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.2fx", med / kvtune_median);
      ratio = buf;
    } else if (std::isinf(med) && !std::isinf(kvtune_median)) {
      char buf[32];
      std::snprintf(buf, sizeof buf, ">%.2fx", budget / kvtune_median);
      ratio = buf;
    }
    char share_ratio[32];
    std::snprintf(share_ratio, sizeof share_ratio, "%.3fx", share / kvtune_share);
    std::printf("  %-8s %10s %13s %9s %13.2f%% %9s %d/%zu\n", strategy.c_str(),
                evals_text(med, budget).c_str(), range.c_str(), ratio.c_str(), 100 * share,
                share_ratio, reached, evals.size());
  }
}

void run_all(const char* title, std::vector<Run>& runs, int num_layers,
             const std::vector<kvtune::PrecisionPair>& candidates, double max_bits, int budget,
             int seeds, CachedEvaluator& evaluator) {
  for (const ks::Strategy strategy : kStrategies) {
    for (int seed = 0; seed < seeds; ++seed) {
      const auto start = Clock::now();
      const std::size_t cached = evaluator.evaluated();
      runs.push_back(run_search(strategy, static_cast<std::uint64_t>(seed), num_layers, candidates,
                                max_bits, budget, evaluator));
      std::printf("  [%s] %-6s seed %d: %4d evaluations (%zu new to the cache), %.1f s\n", title,
                  runs.back().strategy.c_str(), seed, runs.back().evaluations,
                  evaluator.evaluated() - cached, since(start));
      std::fflush(stdout);
    }
  }
  const auto start = Clock::now();
  const std::size_t cached = evaluator.evaluated();
  runs.push_back(run_additive(num_layers, candidates, max_bits, evaluator));
  std::printf("  [%s] additive (deterministic): %4d evaluations (%zu new to the cache), %.1f s\n",
              title, runs.back().evaluations, evaluator.evaluated() - cached, since(start));
}

std::vector<kvtune::PrecisionPair> pairs(std::initializer_list<const char*> names) {
  std::vector<kvtune::PrecisionPair> out;
  for (const char* n : names) out.push_back(kvtune::PrecisionPair::parse(n));
  return out;
}

void stories(const std::string& path, int seeds) {
  const auto start = Clock::now();
  const kw::Model model = kw::load_llama2c(path);
  const auto data = kw::load_calibration("sample:2:64:0", 64, model);
  const auto scheme = kvtune::Scheme::parse("per-token-asym", 32, 32, "int");
  CachedEvaluator evaluator(model, data.sequences, scheme);
  const auto candidates = pairs({"KV8", "K8V4", "KV4", "K4V2", "KV2"});
  const int layers = static_cast<int>(model.config.n_layers);
  const double max_bits = 8;
  std::printf(
      "\nstories260K: %d layers, %zu pairs, data sample:2:64:0, per-token-asym int, "
      "max_bits %.0f\n",
      layers, candidates.size(), max_bits);

  // Brute force: every config, in lexicographic order of candidate indices.
  const auto brute_start = Clock::now();
  std::vector<ks::Point> all;
  std::vector<int> choice(static_cast<std::size_t>(layers), 0);
  const auto n = static_cast<int>(candidates.size());
  while (true) {
    std::vector<kvtune::PrecisionPair> config;
    for (int c : choice) config.push_back(candidates[static_cast<std::size_t>(c)]);
    all.push_back({kvtune::average_bits(config), ks::log_error(evaluator.kl(config))});
    int l = layers - 1;
    while (l >= 0 && ++choice[static_cast<std::size_t>(l)] == n) {
      choice[static_cast<std::size_t>(l)] = 0;
      --l;
    }
    if (l < 0) break;
  }
  double max_log = -std::numeric_limits<double>::infinity();
  for (const ks::Point& p : all) max_log = std::max(max_log, p.error);
  const ks::Point reference{max_bits + 0.5, max_log + 0.1};
  const double brute_hv = ks::hypervolume(all, reference);
  const auto front = ks::pareto_front(all);
  std::printf(
      "  brute force: %zu configs evaluated in %.1f s (%.2f ms each); frontier %zu "
      "points, HV %.4f (reference bits %.1f, log10 KL %.3f)\n",
      all.size(), since(brute_start), 1000 * since(brute_start) / static_cast<double>(all.size()),
      front.size(), brute_hv, reference.bits, reference.error);
  std::fflush(stdout);

  const int budget = static_cast<int>(all.size());
  std::vector<Run> runs;
  run_all("stories260K", runs, layers, candidates, max_bits, budget, seeds, evaluator);
  std::printf("  new evaluations beyond the brute force (kvtune's profile, KV16 elsewhere): %zu\n",
              evaluator.evaluated() - all.size());
  std::printf(
      "\n  evaluations to reach 99%% of the brute-force HV (seeds 0..%d; budget %d = 100%% "
      "of the space):\n",
      seeds - 1, budget);
  report(runs, max_bits, reference, brute_hv, budget, 0.99);
  std::printf("\n  the same to 95%% of the brute-force HV:\n");
  report(runs, max_bits, reference, brute_hv, budget, 0.95);
  std::printf("  (5%% of the brute force = %d evaluations)\n", budget / 20);

  // Wall time: kvtune's search with a fresh evaluator (nothing cached), to
  // 99% of the brute-force HV, the evaluator before vs after.
  kw::EvaluatorOptions before;
  before.prefix_cache_bytes = 0;
  before.reference = kw::EvaluatorOptions::Reference::Full;
  before.attention_error_in_pass = false;
  const kw::EvaluatorOptions after;
  std::vector<double> seconds[2];
  for (int seed = 0; seed < seeds; ++seed) {
    for (int mode = 0; mode < 2; ++mode) {
      CachedEvaluator fresh(model, data.sequences, scheme, mode == 0 ? before : after);
      const Run run = run_search(ks::Strategy::kKvtune, static_cast<std::uint64_t>(seed), layers,
                                 candidates, max_bits, budget, fresh);
      const Outcome o = analyse(run, max_bits, reference, brute_hv, 0.99);
      if (o.to_target) seconds[mode].push_back(o.seconds);
    }
  }
  if (!seconds[0].empty() && !seconds[1].empty()) {
    std::printf(
        "\n  kvtune's wall time to 99%% of the brute-force HV (median of %zu seeds, fresh "
        "evaluator):\n    before (replay, from layer 0, tokens x vocab reference)  %.3f s\n    "
        "after (prefix reuse, the default reference)                %.3f s\n    %.2fx faster (goal "
        ">= "
        "1.5x)\n",
        seconds[1].size(), median(seconds[0]), median(seconds[1]),
        median(seconds[0]) / median(seconds[1]));
  }
  std::printf("  stories260K total %.1f s\n", since(start));
}

void generated(int seeds) {
  const auto start = Clock::now();
  const kw::Model model = generated_model(16, 64, 4, 2, 512, 256);
  const auto data = kw::load_calibration("sample:2:64:0", 64, model);
  const auto scheme = kvtune::Scheme::parse("per-token-asym", 32, 32, "int");
  CachedEvaluator evaluator(model, data.sequences, scheme);
  const auto candidates = kvtune::kvtuner_candidates();
  const int layers = static_cast<int>(model.config.n_layers);
  const double max_bits = 4;
  const int budget = 600;
  std::printf(
      "\ngenerated (synthetic) %dx%lld, %lld heads / %lld KV heads, vocab %lld: %zu pairs, "
      "data sample:2:64:0, max_bits %.0f, %d evaluations per run\n",
      layers, static_cast<long long>(model.config.dim),
      static_cast<long long>(model.config.n_heads), static_cast<long long>(model.config.n_kv_heads),
      static_cast<long long>(model.config.vocab_size), candidates.size(), max_bits, budget);
  std::fflush(stdout);

  std::vector<Run> runs;
  run_all("generated", runs, layers, candidates, max_bits, budget, seeds, evaluator);

  // The reference: the union of every feasible config any run evaluated.
  std::vector<ks::Point> all;
  for (const Run& run : runs) {
    const auto f = feasible(run.points, max_bits, run.points.size());
    all.insert(all.end(), f.begin(), f.end());
  }
  double max_log = -std::numeric_limits<double>::infinity();
  for (const ks::Point& p : all) max_log = std::max(max_log, p.error);
  const ks::Point reference{max_bits + 0.5, max_log + 0.1};
  const double union_hv = ks::hypervolume(all, reference);
  std::printf(
      "  union of all runs: %zu distinct configs evaluated, frontier %zu points, HV %.4f "
      "(reference bits %.1f, log10 KL %.3f)\n",
      evaluator.evaluated(), ks::pareto_front(all).size(), union_hv, reference.bits,
      reference.error);
  std::printf(
      "\n  evaluations to reach 99%% of the union frontier's HV (seeds 0..%d; budget %d):\n",
      seeds - 1, budget);
  report(runs, max_bits, reference, union_hv, budget, 0.99);
  for (const double target : {0.95, 0.90}) {
    std::printf("\n  the same to %.0f%% of the union frontier's HV:\n", 100 * target);
    report(runs, max_bits, reference, union_hv, budget, target);
  }
  std::printf("  generated total %.1f s\n", since(start));
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const int seeds = quick ? 2 : 5;
  kvtune::bench::run_on_one_core(argv);
  const auto start = Clock::now();
  std::printf(
      "bench_search: CPU float32, %d torch thread, OPENBLAS_NUM_THREADS=%s, seeds 0..%d, "
      "population 20, patience 1000\n",
      torch::get_num_threads(), std::getenv("OPENBLAS_NUM_THREADS"), seeds - 1);
  const std::string path = std::string(KVTUNE_SHARED_DIR) + "/models/stories260K.bin";
  if (std::filesystem::exists(path)) {
    stories(path, seeds);
  } else {
    std::printf("\nstories260K: %s absent, skipped\n", path.c_str());
  }
  generated(seeds);
  std::printf("\ntotal %.1f s\n", since(start));
  return 0;
}
