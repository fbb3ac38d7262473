#include "registry.h"

#include <algorithm>
#include <cstdio>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvtune::registry {

nlohmann::json Config::to_json() const {
  nlohmann::json out = {{"layers", layers},   {"avg_bits", avg_bits}, {"kl", kl},
                        {"metrics", metrics}, {"eval_key", eval_key}, {"job", job}};
  if (!validation.is_null()) out["validation"] = validation;
  return out;
}

Config Config::from_json(const nlohmann::json& j) {
  Config c;
  c.layers = j.at("layers").get<std::string>();
  c.avg_bits = j.at("avg_bits").get<double>();
  c.kl = j.at("kl").get<double>();
  c.metrics = j.value("metrics", nlohmann::json::object());
  c.eval_key = j.value("eval_key", std::string());
  c.job = j.value("job", std::string());
  if (j.contains("validation")) c.validation = j.at("validation");
  return c;
}

std::vector<Config> merge_frontier(const std::vector<Config>& a, const std::vector<Config>& b) {
  std::vector<Config> all = a;
  for (const Config& c : b) {
    const bool known =
        std::any_of(all.begin(), all.end(), [&](const Config& x) { return x.layers == c.layers; });
    if (!known) all.push_back(c);
  }
  std::stable_sort(all.begin(), all.end(), [](const Config& x, const Config& y) {
    return x.avg_bits != y.avg_bits ? x.avg_bits < y.avg_bits : x.kl < y.kl;
  });
  std::vector<Config> front;
  for (const Config& c : all) {
    // Sorted by bits: c is dominated iff a kept config has no more KL.
    if (front.empty() || c.kl < front.back().kl) front.push_back(c);
  }
  return front;
}

std::optional<Config> best(const std::vector<Config>& frontier, std::optional<double> max_bits,
                           std::optional<double> max_kl) {
  std::optional<Config> out;
  for (const Config& c : frontier) {
    if (max_bits && c.avg_bits > *max_bits + 1e-9) continue;
    if (max_kl && c.kl > *max_kl) continue;
    const bool better = !out || (max_bits ? c.kl < out->kl
                                          : c.avg_bits < out->avg_bits ||
                                                (c.avg_bits == out->avg_bits && c.kl < out->kl));
    if (better) out = c;
  }
  return out;
}

std::string key(const std::string& model_fingerprint, const std::string& scheme_key,
                const std::string& data_fingerprint, const std::string& metric) {
  return model_fingerprint + "|" + scheme_key + "|" + data_fingerprint + "|" + metric;
}

std::string entry_id(const std::string& key) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(key.data(), key.size())));
  return buf;
}

}  // namespace kvtune::registry
