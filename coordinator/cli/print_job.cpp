// `kvtune status` and `kvtune run`'s view of a job: its summary, the results
// or frontier table (validation and prediction columns when present) and, for
// an engine target, the deploy command of the lowest KL within the budget.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.h"
#include "kvtune/common/engine_target.h"
#include "report.h"

namespace kvtune::cli {

using json = nlohmann::json;

namespace {

// An engine target's deploy command for the lowest-KL frontier config (the
// frontier holds only configs within the budget).
void print_deploy(const json& job) {
  if (!job.contains("frontier") || job["frontier"].empty()) return;
  const json& best = job["frontier"].back();
  if (!best.contains("deploy")) return;
  const json& d = best["deploy"];
  std::cout << "\ndeploy the lowest KL within the budget (" << fixed(best["metrics"]["avg_bits"], 3)
            << " bits, KL " << fixed(best["metrics"]["kl"], 5) << ")";
  if (!d.value("released", false)) std::cout << "; needs " << d.value("needs", "");
  std::cout << ":\n";
  if (d.contains("error")) {
    std::cout << "  (no export: " << d.value("error", "") << ")\n";
    return;
  }
  std::istringstream lines(d.value("text", ""));
  for (std::string line; std::getline(lines, line);) std::cout << "  " << line << "\n";
}

}  // namespace

std::string config_display_name(const std::string& layers) {
  if (layers.empty()) return layers;
  const std::string name = report::short_config_name(layers);
  return name.find_first_of(",*") == std::string::npos ? name + " (all layers)" : name;
}

void print_job(const json& job) {
  const json& p = job["progress"];
  std::cout << "job       " << job.value("id", "") << " (" << job.value("kind", "") << ")\n"
            << "state     " << job.value("state", "") << "\n"
            << "model     " << job.value("model", "") << "\n";
  if (job.contains("spec") && job["spec"].contains("scheme")) {
    // Which cache was emulated: kvtune's idealized one or KVTuner's own.
    const json& spec = job["spec"];
    const json& scheme = spec["scheme"];
    const std::string target = spec.value("target", "kvtune");
    std::cout << "cache     target " << target;
    if (const EngineTarget* engine = find_engine_target(target)) {
      // The engine's dtypes carry their own arithmetic: no integer scheme.
      std::cout << " (" << structure_name(engine->structure) << ", k/v scales "
                << spec.value("kv_scales", "one") << ")";
    } else {
      std::cout << ", scheme " << scheme.value("name", "") << " (G "
                << scheme.value("group_size", 0) << ", R " << scheme.value("residual", 0) << ")";
    }
    std::cout << ", read " << spec.value("read", "fresh") << ", prompt "
              << spec.value("prompt_tokens", 0) << " tokens\n";
  }
  std::cout << "progress  " << p.value("done", 0) << "/" << p.value("total", 0) << " done";
  if (p.value("failed", 0) > 0) std::cout << ", " << p.value("failed", 0) << " failed";
  std::cout << "\n";
  if (job.contains("error")) std::cout << "error     " << job["error"].get<std::string>() << "\n";
  if (!job.contains("results") || job["results"].empty()) return;
  const bool search = job.contains("frontier");
  if (search) {
    const json& info = job["search"];
    std::cout << "search    " << info.value("strategy", "") << ", " << info.value("evaluations", 0)
              << " evaluations, " << job["frontier"].size() << " configs on the frontier\n";
  }
  // A search's validation: KL on the validation data and free-run agreement.
  const bool validated = search && job.contains("validation");
  // The additive model's prediction beside the measured KL (engine targets).
  const bool predicted =
      search && std::any_of(job["frontier"].begin(), job["frontier"].end(),
                            [](const json& f) { return f.contains("predicted_kl"); });
  bool flips = false;
  const auto display_name = [](const json& r) {
    return config_display_name(r.value("config", ""));
  };
  // As wide as the longest name (llama.cpp's pairs are long), 32 to 48.
  int width = 32;
  for (const char* list : {"frontier", "baselines", "results"}) {
    for (const auto& r : job.value(list, json::array())) {
      width = std::clamp(static_cast<int>(display_name(r).size()), width, 48);
    }
  }
  const auto print_row = [&](const json& r) {
    std::string name = display_name(r);
    if (static_cast<int>(name.size()) > width) name = name.substr(0, width - 3) + "...";
    const json& m = r["metrics"];
    std::printf(
        "%-*s %8s %10s %10s", width, name.c_str(), fixed(m.value("avg_bits", 0.0), 3).c_str(),
        fixed(m.value("bytes_per_token", 0.0), 1).c_str(), fixed(m.value("kl", 0.0), 5).c_str());
    if (predicted) {
      std::printf(" %10s", r.contains("predicted_kl")
                               ? fixed(r["predicted_kl"].get<double>(), 5).c_str()
                               : "-");
    }
    std::printf(" %10s %8s", fixed(m.value("delta_nll", 0.0), 5).c_str(),
                fixed(m.value("top1_agreement", 0.0), 4).c_str());
    if (validated && r.contains("validation")) {
      const json& v = r["validation"];
      const bool flip = v.value("rank_flip", false);
      flips = flips || flip;
      const std::string agree =
          v.contains("free_run") ? fixed(v["free_run"].value("agreement", 0.0), 3) : "-";
      std::printf(" %10s%s %8s", fixed(v.value("kl", 0.0), 5).c_str(), flip ? "*" : " ",
                  agree.c_str());
    }
    std::printf("\n");
  };
  std::printf("\n%-*s %8s %10s %10s", width, search ? "frontier config" : "config", "avg bits",
              "bytes/tok", "KL");
  if (predicted) std::printf(" %10s", "pred KL");
  std::printf(" %10s %8s", "dNLL", "top-1");
  if (validated) std::printf(" %10s  %8s", "val KL", "free-run");
  std::printf("\n");
  for (const auto& r : job[search ? "frontier" : "results"]) print_row(r);
  if (search && !job["baselines"].empty()) {
    std::cout << "uniform baselines:\n";
    for (const auto& r : job["baselines"]) print_row(r);
  }
  if (validated) {
    const json& v = job["validation"];
    const json& f = v["free_run"];
    std::cout << "validation: KL on " << v.value("data", "");
    if (f.value("prompts", 0) > 0) {
      std::cout << "; free-run: greedy tokens agreeing with the unquantized model's, "
                << f.value("prompts", 0) << " prompts of " << f.value("prompt_tokens", 0)
                << " tokens, " << f.value("new_tokens", 0) << " new";
    }
    std::cout << "\n";
    if (flips) std::cout << "* ranks differently by KL on the validation data\n";
  }
  if (predicted) std::cout << "pred KL: the additive model's prediction (per-layer KLs summed)\n";
  print_deploy(job);

  if (job.contains("model_info") && job["model_info"].value("synthetic", false)) {
    std::cout << "note: " << job.value("model", "")
              << " is a synthetic, generated model (not a trained LM)\n";
  }
  for (const auto& f : job.value("failures", json::array())) {
    std::cout << "failed " << f.value("config", "") << ":";
    for (const auto& e : f["errors"]) std::cout << "\n  " << e.get<std::string>();
    std::cout << "\n";
  }
}

}  // namespace kvtune::cli
