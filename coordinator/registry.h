// The config registry: for each (model fingerprint, scheme, data, metric),
// the evaluated Pareto frontier of every finished search, merged, and the
// queries users make of it ("the best config under B bits"). Entries are JSON
// documents in the store's "registry" column family.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace kvtune::registry {

// One evaluated configuration on a frontier.
struct Config {
  std::string layers;  // one pair per layer, e.g. "KV8,K8V4,KV4"
  double avg_bits = 0;
  double kl = 0;
  nlohmann::json metrics;  // as `kvtune eval --json` names them
  std::string eval_key;
  std::string job;  // the search that found it
  // Its metrics on that search's validation data (with "free_run" and
  // "rank_flip"); null when not validated.
  nlohmann::json validation;

  nlohmann::json to_json() const;
  static Config from_json(const nlohmann::json& j);
};

// The non-dominated configs of both lists by (avg_bits, kl), by increasing
// bits; of equal ones the first (from `a`) is kept.
std::vector<Config> merge_frontier(const std::vector<Config>& a, const std::vector<Config>& b);

// The lowest-KL config within `max_bits`, or, with `max_kl` alone, the one
// with the fewest bits within it (both: lowest KL within both); nullopt when
// none qualifies.
std::optional<Config> best(const std::vector<Config>& frontier, std::optional<double> max_bits,
                           std::optional<double> max_kl);

// The registry key of a search: what its results depend on.
std::string key(const std::string& model_fingerprint, const std::string& scheme_key,
                const std::string& data_fingerprint, const std::string& metric);
// A short, stable id for a key (16 hex digits of its XXH3-64).
std::string entry_id(const std::string& key);

}  // namespace kvtune::registry
