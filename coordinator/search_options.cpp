// The search's options as a job spec spells them (search.h): strategy names,
// the candidate sets ("kvtuner", "hardware" or a list of pair names) and
// options_from_json() / options_to_json().
#include <algorithm>
#include <cstdio>
#include <set>
#include <string>

#include "kvtune/common/error.h"
#include "search.h"

namespace kvtune::search {

std::string_view strategy_name(Strategy strategy) {
  switch (strategy) {
    case Strategy::kKvtune:
      return "kvtune";
    case Strategy::kNsga2:
      return "nsga2";
    case Strategy::kRandom:
      return "random";
    case Strategy::kSkipLayers:
      return "skip-layers";
    case Strategy::kScan:
      return "scan";
    case Strategy::kFirstLast:
      return "first-last";
  }
  return "kvtune";
}

Strategy parse_strategy(std::string_view text) {
  if (text == "kvtune") return Strategy::kKvtune;
  if (text == "nsga2") return Strategy::kNsga2;
  if (text == "random") return Strategy::kRandom;
  if (text == "skip-layers") return Strategy::kSkipLayers;
  if (text == "scan") return Strategy::kScan;
  if (text == "first-last") return Strategy::kFirstLast;
  throw Error("search: unknown strategy \"" + std::string(text) +
              "\" (expected kvtune, nsga2, random, skip-layers, scan or first-last)");
}

namespace {

std::vector<PrecisionPair> hardware_candidates() {
  const KvFormat formats[] = {KvFormat::full(), KvFormat::fp8(), KvFormat::nvfp4()};
  std::vector<PrecisionPair> pairs;
  for (const KvFormat& k : formats) {
    for (const KvFormat& v : formats) pairs.push_back({k, v});
  }
  return pairs;
}

template <typename T>
T field(const nlohmann::json& spec, const char* key, T fallback) {
  if (!spec.contains(key) || spec.at(key).is_null()) return fallback;
  try {
    return spec.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(std::string("search: field \"") + key +
                "\" has the wrong type: " + spec.at(key).dump());
  }
}

}  // namespace

Search::Options options_from_json(const nlohmann::json& spec) {
  if (!spec.is_object()) throw Error("search: the search spec must be a JSON object");
  static const std::set<std::string> known = {
      "candidates", "max_bits", "max_error",         "max_evaluations", "population", "seed",
      "strategy",   "cluster",  "cluster_tolerance", "patience",        "baselines"};
  for (const auto& item : spec.items()) {
    if (!known.count(item.key())) throw Error("search: unknown field \"" + item.key() + "\"");
  }
  Search::Options o;
  if (spec.contains("candidates")) {
    const auto& c = spec.at("candidates");
    if (c.is_string() && c.get<std::string>() == "kvtuner") {
      o.candidates = kvtuner_candidates();
    } else if (c.is_string() && c.get<std::string>() == "hardware") {
      o.candidates = hardware_candidates();
    } else if (c.is_array()) {
      o.candidates.clear();
      for (const auto& name : c) {
        if (!name.is_string()) throw Error("search: candidate " + name.dump() + " is not a name");
        o.candidates.push_back(PrecisionPair::parse(name.get<std::string>()));
      }
    } else {
      throw Error(
          "search: \"candidates\" must be a list of pair names, \"kvtuner\" or "
          "\"hardware\", not " +
          c.dump());
    }
  }
  o.max_bits = field(spec, "max_bits", o.max_bits);
  if (spec.contains("max_error") && !spec.at("max_error").is_null()) {
    o.max_error = field(spec, "max_error", 0.0);
  }
  o.max_evaluations = field(spec, "max_evaluations", o.max_evaluations);
  o.population = field(spec, "population", o.population);
  o.seed = field(spec, "seed", o.seed);
  o.strategy = parse_strategy(field(spec, "strategy", std::string(strategy_name(o.strategy))));
  o.cluster = field(spec, "cluster", o.cluster);
  o.cluster_tolerance = field(spec, "cluster_tolerance", o.cluster_tolerance);
  o.patience = field(spec, "patience", o.patience);
  o.baselines = field(spec, "baselines", o.baselines);
  return o;
}

nlohmann::json options_to_json(const Search::Options& o) {
  nlohmann::json names = nlohmann::json::array();
  for (const auto& pair : o.candidates) names.push_back(pair.name());
  return {{"candidates", names},
          {"max_bits", o.max_bits},
          {"max_error", o.max_error ? nlohmann::json(*o.max_error) : nlohmann::json()},
          {"max_evaluations", o.max_evaluations},
          {"population", o.population},
          {"seed", o.seed},
          {"strategy", std::string(strategy_name(o.strategy))},
          {"cluster", o.cluster},
          {"cluster_tolerance", o.cluster_tolerance},
          {"patience", o.patience},
          {"baselines", o.baselines}};
}

void check_satisfiable(const Search::Options& options, const Scheme& scheme) {
  for (const PrecisionPair& p : options.candidates) {
    for (const KvFormat& f : {p.key, p.value}) {
      if (const std::string why = scheme.refusal(f); !why.empty()) {
        throw Error("search: candidate " + p.name() + ": " + why);
      }
    }
  }
  if (options.candidates.empty()) return;
  const auto cheapest = std::min_element(options.candidates.begin(), options.candidates.end(),
                                         [](const PrecisionPair& a, const PrecisionPair& b) {
                                           return a.equivalent_bits() < b.equivalent_bits();
                                         });
  if (options.max_bits < cheapest->equivalent_bits()) {
    char text[160];
    std::snprintf(text, sizeof text,
                  "search: \"max_bits\" %g is below every configuration of these candidates; "
                  "the least reachable is %g (every layer at %s)",
                  options.max_bits, cheapest->equivalent_bits(), cheapest->name().c_str());
    throw Error(text);
  }
}

}  // namespace kvtune::search
