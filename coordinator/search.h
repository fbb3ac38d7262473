// The search of a layer-wise KV precision configuration (DESIGN.md, "Search
// pipeline", steps 2-5) as pure, deterministic logic: no sockets, no store, no
// model. The coordinator drives a `Search` generation by generation: ask()
// gives the per-layer configs to evaluate, the cluster measures each one's
// error (mean KL, nats/token, by default: whatever the job's metric is, lower
// is better), tell() hands the errors back, and the state is persisted with
// to_json() after each call. A driver restored with from_json() continues
// with bit-identical asks.
//
// The building blocks are free functions so that each can be tested alone:
// - Pareto utilities over (bits, error) points, both minimized;
// - intra-layer pruning: per layer, the pairs on that layer's (bits, error)
//   front of the profile;
// - inter-layer clustering: layers with the same surviving pairs and similar
//   profiles share one pair;
// - the exact Pareto frontier of the additive model (per-layer errors summed)
//   by a multiple-choice-knapsack dynamic program over integer bit totals;
// - NSGA-II ranking with Deb's constrained domination for the budgets.
//
// Errors span decades (KL from 1e-4 to 1), so wherever a distance between
// errors matters (crowding distance, clustering similarity, hypervolume
// reports) the search uses log10(error), floored at kErrorFloor so that an
// exact 0 stays finite. Domination and sorting are unaffected by that
// monotone transform.
//
// Randomness: std::mt19937_64 with integers and doubles drawn by this file's
// own code (not std::uniform_*_distribution, whose output differs between
// standard libraries), so a seed gives the same search everywhere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvtune/common/precision.h"
#include "kvtune/common/scheme.h"

namespace kvtune::search {

// Errors below this are treated as this in log10 space (and log10 of it is
// the value used for errors <= 0).
inline constexpr double kErrorFloor = 1e-12;
double log_error(double error);

// ---------------------------------------------------------------------------
// Pareto utilities. Both coordinates are minimized.

struct Point {
  double bits = 0;
  double error = 0;
};

// Indices of the non-dominated points (a dominates b when it is no worse in
// both coordinates and better in one), ordered by increasing bits (hence
// decreasing error). Of several identical non-dominated points only the one
// with the lowest index is kept.
std::vector<std::size_t> pareto_front(const std::vector<Point>& points);

// 2-D hypervolume: the area dominated by the set and bounded by `reference`
// (the union of the boxes [p.bits, reference.bits] x [p.error,
// reference.error]). A point with bits >= reference.bits or error >=
// reference.error contributes nothing. Callers that want log-scaled errors
// pass log_error() values.
double hypervolume(const std::vector<Point>& points, Point reference);

// ---------------------------------------------------------------------------
// Profile, pruning and clustering.

// profile[layer][candidate]: the error when only that layer is quantized with
// that candidate pair (every other layer KV16).
using Profile = std::vector<std::vector<double>>;

// Per layer, the indices (ascending) of the candidates on that layer's
// (equivalent bits, error) Pareto front. Ties as in pareto_front: of several
// candidates with identical bits and error the lowest index survives. Throws
// kvtune::Error when the profile's shape does not match the candidates.
std::vector<std::vector<int>> prune_pairs(const std::vector<PrecisionPair>& candidates,
                                          const Profile& profile);

// Layers that share one pair. `pairs` are candidate indices (ascending).
struct Group {
  std::vector<int> layers;  // ascending
  std::vector<int> pairs;

  friend bool operator==(const Group&, const Group&) = default;
};

// One group per layer, with its surviving pairs.
std::vector<Group> singleton_groups(const std::vector<std::vector<int>>& surviving);

// Greedy complete-linkage clustering in layer order: layer l joins the first
// group (in order of creation) whose layers all have exactly l's surviving
// pairs and a profile within `tolerance` of l's, i.e. |log_error(profile[l][p])
// - log_error(profile[m][p])| <= tolerance for every surviving pair p and
// every member m; otherwise it starts a new group. Deterministic. Groups are
// ordered by their first layer. tolerance must be >= 0 (0 groups only layers
// with identical profiles over their pairs).
std::vector<Group> cluster_layers(const Profile& profile,
                                  const std::vector<std::vector<int>>& surviving, double tolerance);

// ---------------------------------------------------------------------------
// The additive model.

// One choice per group (an index into that group's `pairs`) and the model's
// prediction for it: bits = average equivalent bits over layers, error = the
// sum over layers of profile[layer][pair].
struct Assignment {
  std::vector<int> choice;
  Point predicted;
};

// The exact Pareto frontier of the additive model over the groups'
// assignments, ordered by increasing bits (strictly decreasing error). A
// multiple-choice knapsack: the cost of a layer is key bits + value bits (an
// integer), so the dynamic program keeps, for every reachable integer total,
// the least predicted error. Of assignments with equal total and equal error
// the one the program meets first (scanning totals, then choices, in
// ascending order) is kept, so the result is deterministic.
std::vector<Assignment> additive_frontier(const std::vector<PrecisionPair>& candidates,
                                          const Profile& profile, const std::vector<Group>& groups);

// The additive model restricted to vLLM's released structure: one candidate d
// on every layer except a set of layers kept unquantized (KV16).
struct SkipConfig {
  std::vector<int> layers;  // candidate index per layer; -1 = unquantized (KV16)
  Point predicted;          // bits = average equivalent bits, error = additive sum
};

// The Pareto frontier of the additive model over skip configs, ordered by
// increasing bits (ties as in pareto_front, over configs listed candidate by
// candidate, k ascending). Every skipped layer costs the same bits (16 - d's),
// so for each candidate d and each count k in 0 .. num_layers - 1 the best skip
// set of size k is exactly the k layers with the largest profile[l][d] (ties:
// the lower layer first); its predicted error is the sum of profile[l][d] over
// the quantized layers. Skipping every layer is left out: it quantizes
// nothing. Throws kvtune::Error when the profile's shape does not match the
// candidates.
std::vector<SkipConfig> skip_layer_frontier(const std::vector<PrecisionPair>& candidates,
                                            const Profile& profile);

// The additive model restricted to ik_llama.cpp's structure (first-last):
// keys and values each a base type with an optional type on the first N
// layers and one on the last N ("last" wins on overlap), i.e. per role a type
// sequence over layers of at most three runs. The candidates must be every
// (key type, value type) pair of their key types and value types (in any
// order). Its profile is per role: each key type t with the reference value
// type, and the reference key type with each value type (the reference: the
// type of the role with the most budget bits, the first listed on ties).
struct FirstLastProfile {
  std::vector<int> pairs;   // candidate indices profiled, in profile order
  std::vector<int> keys;    // per key type (first-appearance order): its candidate of the profile
  std::vector<int> values;  // per value type: its candidate of the profile
};
// Throws kvtune::Error when the candidates are not a full product.
FirstLastProfile first_last_profile(const std::vector<PrecisionPair>& candidates);

// Whether `layers` (candidate indices) has at most three runs of key types
// and at most three of value types.
bool first_last_expressible(const std::vector<PrecisionPair>& candidates,
                            const std::vector<int>& layers);

// The Pareto frontier of the additive model over every expressible config,
// ordered by increasing bits (strictly decreasing predicted error).
// `profile[l][j]` is the error with only layer l quantized by candidate
// first_last_profile(candidates).pairs[j]. The model: a layer's key error
// errK[l][t] = profile(t, ref value); its value error errV[l][t] =
// profile(ref key, t) - profile(ref key, ref value) (so the model is exact on
// every profiled config); a config's error is the sum over layers of both.
// Each role's canonical sequences (one run; two runs t1 != t2; three runs
// t1 != t2 != t3, t1 may equal t3) are enumerated with prefix sums and only
// each role's (bits, error) front is kept (a combined config on the front has
// both roles on their fronts); the key front x the value front is reduced to
// its front. Ties: of equal integer bit totals the least error, the first met
// (roles: one, two, then three runs, types in candidate order, shorter first
// runs first; then keys major). Throws kvtune::Error on a bad profile shape.
struct FirstLastConfig {
  std::vector<int> layers;  // candidate index per layer
  Point predicted;          // bits = average equivalent bits, error = the additive model's
};
std::vector<FirstLastConfig> first_last_frontier(const std::vector<PrecisionPair>& candidates,
                                                 const Profile& profile);

// ---------------------------------------------------------------------------
// NSGA-II with constraints.

struct Budget {
  double max_bits = 16;             // max average equivalent bits
  std::optional<double> max_error;  // optional max error
};

// Deb's constraint violation: the sum of normalized excesses,
// max(0, bits - max_bits) / max_bits + max(0, error - max_error) / max_error.
// Zero means feasible.
double violation(Point point, const Budget& budget);

struct Objectives {
  double bits = 0;
  double error = 0;
  double violation = 0;
};

// Deb's constrained domination: a feasible solution dominates an infeasible
// one; of two infeasible ones the smaller violation dominates; of two
// feasible ones ordinary Pareto domination on (bits, error).
bool constrained_dominates(const Objectives& a, const Objectives& b);

// Non-dominated sorting under constrained domination: rank 0 is the first
// front.
std::vector<int> nondominated_ranks(const std::vector<Objectives>& solutions);

// NSGA-II crowding distance within each rank, on (bits, log_error(error)),
// each coordinate normalized by its range within the front; the extremes of a
// front get +infinity.
std::vector<double> crowding_distances(const std::vector<Objectives>& solutions,
                                       const std::vector<int>& ranks);

// ---------------------------------------------------------------------------
// The driver.

// kSkipLayers, kScan and kFirstLast search only the configs a serving engine's released
// format can express, so their result deploys as is.
enum class Strategy {
  kKvtune,      // profile, prune, cluster, additive-frontier seeding, NSGA-II
  kNsga2,       // plain NSGA-II on per-layer genes, random initial population
  kRandom,      // uniform random configurations
  kSkipLayers,  // vLLM: one candidate everywhere but some KV16 layers; profile,
                // then the skip-layer additive frontier evaluated once
  kScan,        // SGLang / TensorRT-LLM: one candidate on every layer, each tried
  kFirstLast,   // ik_llama.cpp: keys and values each a base type with first-N and
                // last-N overrides; per-role profile, then first_last_frontier()
                // evaluated once
};
// "kvtune", "nsga2", "random", "skip-layers", "scan", "first-last"
std::string_view strategy_name(Strategy strategy);
Strategy parse_strategy(std::string_view text);  // throws kvtune::Error

// One evaluated (or predicted) configuration.
struct Evaluated {
  std::vector<PrecisionPair> layers;
  double bits = 0;   // average_bits(layers)
  double error = 0;  // measured (or, for additive_frontier(), predicted)
};

// Generation-synchronous ask/tell search (see the file comment).
//
// Stages:
// 1. Profile (strategies kvtune, skip-layers and first-last): the first
//    ask() returns, layer-major, every candidate (first-last: every pair of
//    first_last_profile()) on every layer alone with the other layers KV16
//    (num_layers x candidates configs). Its tell() prunes, clusters (unless
//    `cluster` is false) and computes the additive frontier (kvtune), or
//    computes skip_layer_frontier() (skip-layers) or first_last_frontier()
//    (first-last).
// 2. Generations. Genome = one choice per group (kvtune) or per layer (nsga2,
//    random, whose genes range over every candidate). The first kvtune
//    generation is the additive frontier's assignments whose prediction
//    meets the budgets (evenly subsampled to at most max(population, half the
//    remaining evaluations) when there are more), completed to `population`
//    with random genomes; the first nsga2 generation is `population` random
//    genomes. Later generations: `population` offspring by binary tournament
//    (rank, then crowding), uniform crossover and per-gene mutation with
//    probability 1/genes, then elitist (mu + lambda) survival of the
//    parents and offspring by rank and crowding. Random search asks
//    `population` new random genomes per generation.
//    A configuration is never asked twice: offspring equal to an evaluated
//    or already asked genome are redrawn (up to a bounded number of tries,
//    so a generation may be smaller), and a generation never asks more than
//    the evaluations left.
//    With `baselines` (the default) the first generation of every strategy
//    starts with the uniform configs (one candidate on every layer) whose
//    bits meet max_bits, in candidate order, so that no uniform config can
//    dominate a reported frontier point. A uniform config outside the
//    searched space (its pair pruned on some layer, or not shared by a
//    group) is evaluated and reported but takes no part in NSGA-II.
//    Skip-layers, first-last and scan ask ONE generation and no random
//    genome (first-last as skip-layers, its baselines only the uniform
//    configs whose keys and values share a type): scan the
//    uniform configs within max_bits (whatever `baselines` says: they are
//    its whole space); skip-layers the baselines, then the skip-layer
//    frontier's configs whose prediction meets the budgets, in bits order
//    (evenly subsampled, both ends kept, to the evaluations left). Their
//    configs keep skipped layers at KV16 (candidate index -1), which
//    grouping() does not list; they take no part in NSGA-II.
//
// Stopping: done() when the evaluations told (profile included) reach
// max_evaluations; when no new genome could be drawn; after the one
// generation of skip-layers and scan; or (kvtune, nsga2) after `patience`
// consecutive generations that did not improve the frontier. A generation
// improves the frontier when one of its configs is feasible and not weakly
// dominated by any config evaluated before it (exactly: the hypervolume of
// the feasible evaluated set grows for every reference point beyond all
// points), or, while nothing feasible has been found, when it lowers the
// least constraint violation.
class Search {
 public:
  struct Options {
    std::vector<PrecisionPair> candidates = kvtuner_candidates();
    double max_bits = 16;             // budget on average equivalent bits (> 0)
    std::optional<double> max_error;  // optional error budget (> 0)
    int max_evaluations = 500;        // profile included (>= 1)
    int population = 20;              // NSGA-II mu = lambda (>= 2)
    std::uint64_t seed = 0;
    Strategy strategy = Strategy::kKvtune;
    bool cluster = true;              // false: one group per layer
    double cluster_tolerance = 0.05;  // log10 units, see cluster_layers()
    int patience = 3;                 // generations without improvement (>= 1)
    bool baselines = true;            // evaluate the uniform configs first (see above)
  };

  // Throws kvtune::Error for invalid options (naming the field), including a
  // kvtune or skip-layers strategy whose max_evaluations does not exceed the
  // profile's num_layers x candidates evaluations.
  Search(Options options, int num_layers);

  // The configs to evaluate next, each as one pair per layer. Repeated calls
  // without tell() return the same configs. Empty when done().
  std::vector<std::vector<PrecisionPair>> ask();

  // The measured error of each config of the last ask(), in its order.
  // Throws kvtune::Error when nothing is asked, the count differs, or an
  // error is NaN or infinite.
  void tell(const std::vector<double>& errors);

  bool done() const { return stage_ == Stage::kDone; }
  // Still evaluating the per-layer profile (strategies kvtune, skip-layers).
  bool profiling() const { return stage_ == Stage::kProfile; }

  // Evaluations told so far, profile included.
  int evaluations() const { return evaluations_; }
  int generation() const { return generation_; }  // generations told
  const Options& options() const { return options_; }
  int num_layers() const { return num_layers_; }

  // The feasible non-dominated evaluated configs by (bits, error), ordered by
  // increasing bits. Profile configs are not part of it (they lie outside the
  // search space).
  std::vector<Evaluated> frontier() const;
  // Every evaluated config of the search (profile excluded), in order.
  std::vector<Evaluated> evaluated() const;
  // The groups searched (after the profile for kvtune; one per layer with
  // every candidate for the other strategies). Pairs are candidate indices,
  // never -1, so KV16 layers of skip-layers configs are not listed.
  const std::vector<Group>& grouping() const { return groups_; }
  // The additive model's frontier with its predicted errors (kvtune and
  // skip-layers, after the profile; empty otherwise), ordered by increasing
  // bits.
  std::vector<Evaluated> additive_frontier() const;
  // The profile (kvtune, skip-layers and first-last, after its tell; empty
  // otherwise): profile()[l][j] is the error of profile_candidates()[j] on
  // layer l alone.
  const Profile& profile() const { return profile_; }
  // The pairs profiled, in profile order: every candidate, or for first-last
  // first_last_profile()'s.
  std::vector<PrecisionPair> profile_candidates() const;

  // The whole state; from_json(to_json()) continues identically. Throws
  // kvtune::Error on a malformed document.
  nlohmann::json to_json() const;
  static Search from_json(const nlohmann::json& state);

 private:
  enum class Stage { kProfile, kSearch, kDone };
  using Genome = std::vector<int>;  // one choice per group

  struct Record {
    std::vector<int> layers;  // candidate index per layer (-1 = KV16: skip-layers)
    Genome genome;            // empty when not in the searched space
    double bits = 0;
    double error = 0;
  };

  Search() = default;
  void validate() const;
  std::vector<int> profiled() const;  // candidate indices of the profile, in its order
  void prepare();                     // fills pending_ for the current stage
  void tell_profile(const std::vector<double>& errors);
  void tell_generation(const std::vector<double>& errors);
  void initial_generation();
  void add_uniform_configs(std::size_t remaining);  // one candidate everywhere, within max_bits
  std::vector<std::vector<int>> predicted_within_budget() const;  // additive_, in order
  void offspring_generation();
  Genome random_genome();
  bool is_new(const std::vector<int>& layers) const;  // neither evaluated nor pending
  void add_if_new(std::vector<int> layers);
  std::vector<int> layers_of(const Genome& genome) const;  // candidate indices
  std::vector<int> layers_of(const Assignment& assignment) const;
  Genome genome_of(const std::vector<int>& layers) const;  // empty when not expressible
  std::vector<PrecisionPair> pairs_of(const std::vector<int>& layers) const;
  double bits_of(const std::vector<int>& layers) const;
  Objectives objectives_of(const Record& record) const;
  void survive(const std::vector<std::size_t>& pool);  // indices into records_
  std::uint64_t draw_below(std::uint64_t n);
  double draw_unit();
  static std::string config_key(const std::vector<int>& layers);
  void rebuild_index();

  Options options_;
  int num_layers_ = 0;
  Stage stage_ = Stage::kProfile;
  std::mt19937_64 rng_;
  Profile profile_;
  std::vector<Group> groups_;
  // kvtune: choices over groups_. skip-layers: the configs' layers (-1 =
  // KV16), which no group can express (see grouping()).
  std::vector<Assignment> additive_;
  std::vector<Record> records_;            // every evaluated genome, in order
  std::vector<std::size_t> population_;    // indices into records_
  std::vector<std::vector<int>> pending_;  // asked configs (candidate per layer), not told
  bool pending_profile_ = false;           // pending_ is the profile
  int evaluations_ = 0;
  int generation_ = 0;
  int stall_ = 0;
  std::unordered_map<std::string, std::size_t> index_;  // config_key -> records_
};

// The options as the job spec spells them ({"candidates": ["KV8", ...],
// "max_bits": 4.0, "max_error": 0.1, "max_evaluations": 500, "population":
// 20, "seed": 0, "strategy": "kvtune", "cluster": true, "cluster_tolerance":
// 0.05, "patience": 3}); missing keys keep their defaults. Throws
// kvtune::Error naming a bad field.
Search::Options options_from_json(const nlohmann::json& spec);

// Refuses, before anything runs, a search no configuration can satisfy: a
// max_bits below every layer at the cheapest candidate (naming the least
// reachable bits), or candidates the job's scheme cannot store. Throws Error.
void check_satisfiable(const Search::Options& options, const Scheme& scheme);
nlohmann::json options_to_json(const Search::Options& options);

}  // namespace kvtune::search
