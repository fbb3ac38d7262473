// The generation-synchronous ask/tell Search driver (search.h): option
// validation, deterministic random draws, genome <-> config mapping, the
// profile stage, initial generations (baselines, additive-frontier seeds,
// random fill; the single generation of skip-layers and scan), frontier
// bookkeeping, and the state's (de)serialization. The building blocks live
// in search_profile.cpp (Pareto utilities, pruning, clustering, additive DP,
// skip-layer frontier), nsga2.cpp (NSGA-II ranking, offspring, survival) and
// search_options.cpp (the options' JSON spelling).
#include "search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <utility>

#include "kvtune/common/error.h"
#include "search_internal.h"

namespace kvtune::search {

using detail::kInf;

namespace {

// Strategies that start with the per-layer profile.
bool has_profile(Strategy strategy) {
  return strategy == Strategy::kKvtune || strategy == Strategy::kSkipLayers ||
         strategy == Strategy::kFirstLast;
}

// Strategies whose additive configs are per-layer candidate indices, not
// choices over groups.
bool additive_layers(Strategy strategy) {
  return strategy == Strategy::kSkipLayers || strategy == Strategy::kFirstLast;
}

// Strategies whose later generations are NSGA-II offspring (and may stall).
bool evolves(Strategy strategy) {
  return strategy == Strategy::kKvtune || strategy == Strategy::kNsga2;
}

// Strategies that ask exactly one generation: an engine's fixed structure,
// not a search over per-layer genes.
bool single_generation(Strategy strategy) {
  return strategy == Strategy::kSkipLayers || strategy == Strategy::kScan ||
         strategy == Strategy::kFirstLast;
}

// `cap` of `items`: the first, the last and evenly spaced ones between (all
// of them when they fit), in their order.
std::vector<std::vector<int>> evenly_spaced(std::vector<std::vector<int>> items, std::size_t cap) {
  const std::size_t n = items.size();
  if (n <= cap) return items;
  std::vector<std::vector<int>> picked;
  for (std::size_t i = 0; i < cap; ++i) {
    const std::size_t at = cap == 1 ? 0 : (i * (n - 1) + (cap - 1) / 2) / (cap - 1);
    picked.push_back(items[at]);
  }
  return picked;
}

}  // namespace

Search::Search(Options options, int num_layers)
    : options_(std::move(options)), num_layers_(num_layers), rng_(options_.seed) {
  validate();
  stage_ = has_profile(options_.strategy) ? Stage::kProfile : Stage::kSearch;
  // kvtune's groups come from its profile; the others have every candidate
  // on every layer.
  if (options_.strategy != Strategy::kKvtune) {
    std::vector<int> all(options_.candidates.size());
    std::iota(all.begin(), all.end(), 0);
    groups_ =
        singleton_groups(std::vector<std::vector<int>>(static_cast<std::size_t>(num_layers_), all));
  }
}

void Search::validate() const {
  const Options& o = options_;
  if (num_layers_ < 1) throw Error("search: the model must have at least one layer");
  if (o.candidates.empty()) throw Error("search: \"candidates\" is empty");
  for (std::size_t i = 0; i < o.candidates.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      if (o.candidates[i] == o.candidates[j]) {
        throw Error("search: candidate " + o.candidates[i].name() + " is listed twice");
      }
    }
  }
  if (!(o.max_bits > 0) || !std::isfinite(o.max_bits)) {
    throw Error("search: \"max_bits\" must be a positive number");
  }
  if (o.max_error && (!(*o.max_error > 0) || !std::isfinite(*o.max_error))) {
    throw Error("search: \"max_error\" must be a positive number");
  }
  if (o.max_evaluations < 1) throw Error("search: \"max_evaluations\" must be >= 1");
  if (o.population < 2) throw Error("search: \"population\" must be >= 2");
  if (!(o.cluster_tolerance >= 0)) throw Error("search: \"cluster_tolerance\" must be >= 0");
  if (o.patience < 1) throw Error("search: \"patience\" must be >= 1");
  if (has_profile(o.strategy)) {
    const std::size_t pairs = profiled().size();  // first-last: checks its candidates
    const long long profile = static_cast<long long>(num_layers_) * static_cast<long long>(pairs);
    if (o.max_evaluations <= profile) {
      throw Error("search: \"max_evaluations\" (" + std::to_string(o.max_evaluations) +
                  ") must exceed the profile's " + std::to_string(num_layers_) + " layers x " +
                  std::to_string(pairs) + " candidates = " + std::to_string(profile) +
                  " evaluations");
    }
  }
}

std::uint64_t Search::draw_below(std::uint64_t n) {
  // Rejection sampling: uniform and the same with every standard library.
  const std::uint64_t limit = (std::numeric_limits<std::uint64_t>::max() / n) * n;
  std::uint64_t x = 0;
  do {
    x = rng_();
  } while (x >= limit);
  return x % n;
}

double Search::draw_unit() {
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

std::string Search::config_key(const std::vector<int>& layers) {
  std::string key;
  for (int g : layers) {
    key += std::to_string(g);
    key += ',';
  }
  return key;
}

std::vector<int> Search::layers_of(const Genome& genome) const {
  std::vector<int> layers(static_cast<std::size_t>(num_layers_), -1);
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    const int pair = groups_[g].pairs[static_cast<std::size_t>(genome[g])];
    for (int l : groups_[g].layers) layers[static_cast<std::size_t>(l)] = pair;
  }
  return layers;
}

std::vector<int> Search::layers_of(const Assignment& assignment) const {
  return additive_layers(options_.strategy) ? assignment.choice : layers_of(assignment.choice);
}

std::vector<PrecisionPair> Search::pairs_of(const std::vector<int>& layers) const {
  std::vector<PrecisionPair> pairs;
  for (int p : layers) {
    pairs.push_back(p < 0 ? PrecisionPair{KvFormat::full(), KvFormat::full()}
                          : options_.candidates[static_cast<std::size_t>(p)]);
  }
  return pairs;
}

double Search::bits_of(const std::vector<int>& layers) const {
  return average_bits(pairs_of(layers));
}

Objectives Search::objectives_of(const Record& record) const {
  const Budget budget{options_.max_bits, options_.max_error};
  return {record.bits, record.error, violation({record.bits, record.error}, budget)};
}

Search::Genome Search::genome_of(const std::vector<int>& layers) const {
  Genome genome(groups_.size());
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    const int pair = layers[static_cast<std::size_t>(groups_[g].layers.front())];
    for (int l : groups_[g].layers) {
      if (layers[static_cast<std::size_t>(l)] != pair) return {};
    }
    const auto& pairs = groups_[g].pairs;
    const auto at = std::find(pairs.begin(), pairs.end(), pair);
    if (at == pairs.end()) return {};
    genome[g] = static_cast<int>(at - pairs.begin());
  }
  return genome;
}

bool Search::is_new(const std::vector<int>& layers) const {
  if (index_.count(config_key(layers))) return false;
  return std::find(pending_.begin(), pending_.end(), layers) == pending_.end();
}

void Search::add_if_new(std::vector<int> layers) {
  if (is_new(layers)) pending_.push_back(std::move(layers));
}

Search::Genome Search::random_genome() {
  Genome genome(groups_.size());
  for (std::size_t g = 0; g < groups_.size(); ++g) {
    genome[g] = static_cast<int>(draw_below(groups_[g].pairs.size()));
  }
  return genome;
}

std::vector<std::vector<PrecisionPair>> Search::ask() {
  if (stage_ == Stage::kDone) return {};
  if (pending_.empty() && !pending_profile_) prepare();
  std::vector<std::vector<PrecisionPair>> configs;
  if (pending_profile_) {
    const std::vector<int> pairs = profiled();
    for (int l = 0; l < num_layers_; ++l) {
      for (int p : pairs) {
        std::vector<int> layers(static_cast<std::size_t>(num_layers_), -1);
        layers[static_cast<std::size_t>(l)] = p;
        configs.push_back(pairs_of(layers));
      }
    }
    return configs;
  }
  for (const auto& layers : pending_) configs.push_back(pairs_of(layers));
  return configs;
}

void Search::prepare() {
  if (stage_ == Stage::kProfile) {
    pending_profile_ = true;
    return;
  }
  if (options_.strategy == Strategy::kRandom || generation_ == 0) {
    initial_generation();
  } else if (evolves(options_.strategy)) {
    offspring_generation();
  }
  if (pending_.empty()) stage_ = Stage::kDone;
}

void Search::initial_generation() {
  const auto remaining = static_cast<std::size_t>(options_.max_evaluations - evaluations_);
  const auto population = static_cast<std::size_t>(options_.population);
  const Strategy strategy = options_.strategy;
  // The uniform configs are scan's whole space, and baselines for the rest.
  if (strategy == Strategy::kScan || (options_.baselines && generation_ == 0)) {
    add_uniform_configs(remaining);
  }
  if (strategy == Strategy::kScan) return;
  if (additive_layers(strategy)) {
    // Every evaluation left goes to the predicted frontier: no random fill,
    // so drop the baselines it repeats before spacing it out.
    std::vector<std::vector<int>> fresh;
    for (auto& layers : predicted_within_budget()) {
      if (is_new(layers)) fresh.push_back(std::move(layers));
    }
    for (auto& layers : evenly_spaced(std::move(fresh), remaining - pending_.size())) {
      add_if_new(std::move(layers));
    }
    return;
  }
  if (strategy == Strategy::kKvtune) {
    const std::size_t cap = std::max(population, remaining / 2);
    for (auto& layers : evenly_spaced(predicted_within_budget(), cap)) {
      if (pending_.size() >= remaining) break;
      add_if_new(std::move(layers));
    }
  }
  const std::size_t target = std::min(std::max(population, pending_.size()), remaining);
  for (std::size_t tries = 0; pending_.size() < target && tries < 100 * population; ++tries) {
    add_if_new(layers_of(random_genome()));
  }
}

void Search::add_uniform_configs(std::size_t remaining) {
  // First-last has every (key, value) pair: its baselines are those with
  // keys and values in one type (the others may come from its frontier).
  const bool diagonal = options_.strategy == Strategy::kFirstLast;
  for (std::size_t p = 0; p < options_.candidates.size() && pending_.size() < remaining; ++p) {
    if (options_.candidates[p].equivalent_bits() > options_.max_bits) continue;
    if (diagonal && !(options_.candidates[p].key == options_.candidates[p].value)) continue;
    add_if_new(std::vector<int>(static_cast<std::size_t>(num_layers_), static_cast<int>(p)));
  }
}

std::vector<std::vector<int>> Search::predicted_within_budget() const {
  const Budget budget{options_.max_bits, options_.max_error};
  std::vector<std::vector<int>> configs;
  for (const Assignment& a : additive_) {
    if (violation(a.predicted, budget) <= 0) configs.push_back(layers_of(a));
  }
  return configs;
}

void Search::tell(const std::vector<double>& errors) {
  if (stage_ == Stage::kDone || (pending_.empty() && !pending_profile_)) {
    throw Error("search: tell() without a pending ask()");
  }
  const std::size_t expected = pending_profile_
                                   ? static_cast<std::size_t>(num_layers_) * profiled().size()
                                   : pending_.size();
  if (errors.size() != expected) {
    throw Error("search: tell() got " + std::to_string(errors.size()) + " errors for " +
                std::to_string(expected) + " asked configs");
  }
  for (std::size_t i = 0; i < errors.size(); ++i) {
    if (!std::isfinite(errors[i])) {
      throw Error("search: the error of asked config " + std::to_string(i) + " is not finite");
    }
  }
  if (pending_profile_) {
    tell_profile(errors);
  } else {
    tell_generation(errors);
  }
}

void Search::tell_profile(const std::vector<double>& errors) {
  const std::size_t pairs = profiled().size();
  profile_.assign(static_cast<std::size_t>(num_layers_), std::vector<double>(pairs));
  for (std::size_t l = 0; l < profile_.size(); ++l) {
    for (std::size_t p = 0; p < pairs; ++p) profile_[l][p] = errors[l * pairs + p];
  }
  evaluations_ += static_cast<int>(errors.size());
  pending_profile_ = false;
  stage_ = evaluations_ >= options_.max_evaluations ? Stage::kDone : Stage::kSearch;
  if (options_.strategy == Strategy::kSkipLayers) {
    additive_.clear();
    for (SkipConfig& c : skip_layer_frontier(options_.candidates, profile_)) {
      additive_.push_back({std::move(c.layers), c.predicted});
    }
    return;
  }
  if (options_.strategy == Strategy::kFirstLast) {
    additive_.clear();
    for (FirstLastConfig& c : first_last_frontier(options_.candidates, profile_)) {
      additive_.push_back({std::move(c.layers), c.predicted});
    }
    return;
  }
  const auto surviving = prune_pairs(options_.candidates, profile_);
  groups_ = options_.cluster ? cluster_layers(profile_, surviving, options_.cluster_tolerance)
                             : singleton_groups(surviving);
  additive_ = search::additive_frontier(options_.candidates, profile_, groups_);
}

void Search::tell_generation(const std::vector<double>& errors) {
  const std::size_t before = records_.size();
  std::vector<std::size_t> fresh;
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    Record record;
    record.layers = pending_[i];
    record.genome = genome_of(record.layers);
    record.bits = bits_of(record.layers);
    record.error = errors[i];
    index_[config_key(record.layers)] = records_.size();
    if (!record.genome.empty()) fresh.push_back(records_.size());
    records_.push_back(std::move(record));
  }
  evaluations_ += static_cast<int>(errors.size());
  pending_.clear();
  ++generation_;

  // Did this generation improve the frontier?
  bool improved = false;
  double least_violation_before = kInf;
  bool feasible_before = false;
  for (std::size_t i = 0; i < before; ++i) {
    const double v = objectives_of(records_[i]).violation;
    least_violation_before = std::min(least_violation_before, v);
    feasible_before = feasible_before || v <= 0;
  }
  for (std::size_t n = before; n < records_.size(); ++n) {
    const Objectives o = objectives_of(records_[n]);
    if (o.violation > 0) {
      if (!feasible_before && o.violation < least_violation_before) improved = true;
      continue;
    }
    bool covered = false;
    for (std::size_t i = 0; i < before && !covered; ++i) {
      const Objectives p = objectives_of(records_[i]);
      covered = p.violation <= 0 && p.bits <= o.bits && p.error <= o.error;
    }
    if (!covered) improved = true;
  }
  stall_ = improved ? 0 : stall_ + 1;

  const bool evolving = evolves(options_.strategy);
  if (evolving) {
    std::vector<std::size_t> pool = population_;
    pool.insert(pool.end(), fresh.begin(), fresh.end());
    survive(pool);
  }
  const bool stalled = evolving && stall_ >= options_.patience;
  if (evaluations_ >= options_.max_evaluations || stalled || single_generation(options_.strategy)) {
    stage_ = Stage::kDone;
  }
}

std::vector<Evaluated> Search::evaluated() const {
  std::vector<Evaluated> out;
  for (const Record& r : records_) {
    out.push_back({pairs_of(r.layers), r.bits, r.error});
  }
  return out;
}

std::vector<Evaluated> Search::frontier() const {
  std::vector<Point> points;
  std::vector<std::size_t> feasible;
  for (std::size_t i = 0; i < records_.size(); ++i) {
    if (objectives_of(records_[i]).violation > 0) continue;
    points.push_back({records_[i].bits, records_[i].error});
    feasible.push_back(i);
  }
  std::vector<Evaluated> out;
  for (std::size_t k : pareto_front(points)) {
    const Record& r = records_[feasible[k]];
    out.push_back({pairs_of(r.layers), r.bits, r.error});
  }
  return out;
}

std::vector<Evaluated> Search::additive_frontier() const {
  std::vector<Evaluated> out;
  for (const Assignment& a : additive_) {
    out.push_back({pairs_of(layers_of(a)), a.predicted.bits, a.predicted.error});
  }
  return out;
}

void Search::rebuild_index() {
  index_.clear();
  for (std::size_t i = 0; i < records_.size(); ++i) index_[config_key(records_[i].layers)] = i;
}

// ---------------------------------------------------------------------------
// Persistence

namespace {

const char* stage_name(int stage) {
  static const char* names[] = {"profile", "search", "done"};
  return names[stage];
}

nlohmann::json groups_json(const std::vector<Group>& groups) {
  nlohmann::json out = nlohmann::json::array();
  for (const Group& g : groups) out.push_back({{"layers", g.layers}, {"pairs", g.pairs}});
  return out;
}

}  // namespace

nlohmann::json Search::to_json() const {
  std::ostringstream rng;
  rng << rng_;
  nlohmann::json additive = nlohmann::json::array();
  for (const Assignment& a : additive_) {
    additive.push_back(
        {{"choice", a.choice}, {"bits", a.predicted.bits}, {"error", a.predicted.error}});
  }
  nlohmann::json records = nlohmann::json::array();
  for (const Record& r : records_) {
    records.push_back(
        {{"layers", r.layers}, {"genome", r.genome}, {"bits", r.bits}, {"error", r.error}});
  }
  return {{"version", 1},
          {"options", options_to_json(options_)},
          {"num_layers", num_layers_},
          {"stage", stage_name(static_cast<int>(stage_))},
          {"rng", rng.str()},
          {"profile", profile_},
          {"groups", groups_json(groups_)},
          {"additive", additive},
          {"records", records},
          {"population", population_},
          {"pending", pending_},
          {"pending_profile", pending_profile_},
          {"evaluations", evaluations_},
          {"generation", generation_},
          {"stall", stall_}};
}

Search Search::from_json(const nlohmann::json& state) {
  Search s;
  try {
    if (state.at("version").get<int>() != 1) throw Error("search: unknown state version");
    s.options_ = options_from_json(state.at("options"));
    s.num_layers_ = state.at("num_layers").get<int>();
    s.validate();
    const std::string stage = state.at("stage").get<std::string>();
    if (stage == "profile") {
      s.stage_ = Stage::kProfile;
    } else if (stage == "search") {
      s.stage_ = Stage::kSearch;
    } else if (stage == "done") {
      s.stage_ = Stage::kDone;
    } else {
      throw Error("search: unknown stage \"" + stage + "\"");
    }
    std::istringstream rng(state.at("rng").get<std::string>());
    rng >> s.rng_;
    if (!rng) throw Error("search: malformed random engine state");
    s.profile_ = state.at("profile").get<Profile>();
    for (const auto& g : state.at("groups")) {
      s.groups_.push_back(
          {g.at("layers").get<std::vector<int>>(), g.at("pairs").get<std::vector<int>>()});
    }
    for (const auto& a : state.at("additive")) {
      s.additive_.push_back({a.at("choice").get<std::vector<int>>(),
                             {a.at("bits").get<double>(), a.at("error").get<double>()}});
    }
    for (const auto& r : state.at("records")) {
      s.records_.push_back({r.at("layers").get<std::vector<int>>(), r.at("genome").get<Genome>(),
                            r.at("bits").get<double>(), r.at("error").get<double>()});
    }
    s.population_ = state.at("population").get<std::vector<std::size_t>>();
    s.pending_ = state.at("pending").get<std::vector<std::vector<int>>>();
    s.pending_profile_ = state.at("pending_profile").get<bool>();
    s.evaluations_ = state.at("evaluations").get<int>();
    s.generation_ = state.at("generation").get<int>();
    s.stall_ = state.at("stall").get<int>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("search: malformed search state: ") + e.what());
  }
  // Genomes must index the groups they are decoded with.
  if (!s.profile_.empty()) {
    const std::size_t pairs = s.profiled().size();
    if (s.profile_.size() != static_cast<std::size_t>(s.num_layers_) ||
        std::any_of(s.profile_.begin(), s.profile_.end(),
                    [&](const auto& row) { return row.size() != pairs; })) {
      throw Error("search: state profile of the wrong shape");
    }
  }
  auto check_genome = [&](const Genome& genome) {
    if (genome.size() != s.groups_.size()) throw Error("search: state genome of the wrong length");
    for (std::size_t g = 0; g < genome.size(); ++g) {
      if (genome[g] < 0 || static_cast<std::size_t>(genome[g]) >= s.groups_[g].pairs.size()) {
        throw Error("search: state genome out of range");
      }
    }
  };
  for (const Group& g : s.groups_) {
    for (int l : g.layers) {
      if (l < 0 || l >= s.num_layers_) throw Error("search: state group names a bad layer");
    }
    for (int p : g.pairs) {
      if (p < 0 || static_cast<std::size_t>(p) >= s.options_.candidates.size()) {
        throw Error("search: state group names a bad candidate");
      }
    }
  }
  // Only skip-layers configs hold KV16 layers (-1).
  const bool skip_layers = s.options_.strategy == Strategy::kSkipLayers;
  const int least = skip_layers ? -1 : 0;
  auto check_layers = [&](const std::vector<int>& layers) {
    if (layers.size() != static_cast<std::size_t>(s.num_layers_)) {
      throw Error("search: state config of the wrong length");
    }
    for (int p : layers) {
      if (p < least || (p >= 0 && static_cast<std::size_t>(p) >= s.options_.candidates.size())) {
        throw Error("search: state config names a bad candidate");
      }
    }
  };
  for (const Record& r : s.records_) {
    check_layers(r.layers);
    if (!r.genome.empty()) check_genome(r.genome);
  }
  for (const auto& layers : s.pending_) check_layers(layers);
  for (const Assignment& a : s.additive_) {
    if (skip_layers) {
      check_layers(a.choice);
    } else if (s.options_.strategy == Strategy::kFirstLast) {
      check_layers(a.choice);
      if (!first_last_expressible(s.options_.candidates, a.choice)) {
        throw Error("search: state first-last config has more than three runs of a role's types");
      }
    } else {
      check_genome(a.choice);
    }
  }
  for (std::size_t i : s.population_) {
    if (i >= s.records_.size() || s.records_[i].genome.empty())
      throw Error("search: state population names a bad record");
  }
  s.rebuild_index();
  return s;
}

}  // namespace kvtune::search
