// The search's building blocks that work on a profile (search.h): the Pareto
// utilities over (bits, error) points, log-scaled errors, intra-layer pruning,
// inter-layer clustering, the exact additive-model frontier (a
// multiple-choice-knapsack dynamic program over integer bit totals) and its
// restriction to skip-layer configs.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "kvtune/common/error.h"
#include "search.h"
#include "search_internal.h"

namespace kvtune::search {
namespace {

using detail::kInf;

// A pair's key + value bits in half bits: an integer for every format
// (llama.cpp's block types count 4.5, 5.5 and 8.5 bits).
int pair_cost(const PrecisionPair& pair) {
  return static_cast<int>(std::lround(2.0 * (pair.key.budget_bits() + pair.value.budget_bits())));
}

void check_profile(const std::vector<PrecisionPair>& candidates, const Profile& profile) {
  if (candidates.empty()) throw Error("search: no candidate pairs");
  for (std::size_t l = 0; l < profile.size(); ++l) {
    if (profile[l].size() != candidates.size()) {
      throw Error("search: profile of layer " + std::to_string(l) + " has " +
                  std::to_string(profile[l].size()) + " errors for " +
                  std::to_string(candidates.size()) + " candidates");
    }
  }
}

}  // namespace

double log_error(double error) {
  return std::log10(std::max(error, kErrorFloor));
}

// ---------------------------------------------------------------------------
// Pareto utilities

std::vector<std::size_t> pareto_front(const std::vector<Point>& points) {
  std::vector<std::size_t> order(points.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (points[a].bits != points[b].bits) return points[a].bits < points[b].bits;
    return points[a].error < points[b].error;
  });
  // In this order a point is non-dominated exactly when its error is below
  // that of every point before it.
  std::vector<std::size_t> front;
  double best = kInf;
  for (std::size_t i : order) {
    if (points[i].error < best) {
      front.push_back(i);
      best = points[i].error;
    }
  }
  return front;
}

double hypervolume(const std::vector<Point>& points, Point reference) {
  std::vector<Point> inside;
  for (const Point& p : points) {
    if (p.bits < reference.bits && p.error < reference.error) inside.push_back(p);
  }
  const std::vector<std::size_t> front = pareto_front(inside);
  double area = 0;
  for (std::size_t k = 0; k < front.size(); ++k) {
    const Point& p = inside[front[k]];
    const double next = k + 1 < front.size() ? inside[front[k + 1]].bits : reference.bits;
    area += (next - p.bits) * (reference.error - p.error);
  }
  return area;
}

// ---------------------------------------------------------------------------
// Pruning and clustering

std::vector<std::vector<int>> prune_pairs(const std::vector<PrecisionPair>& candidates,
                                          const Profile& profile) {
  check_profile(candidates, profile);
  std::vector<std::vector<int>> surviving;
  for (const auto& errors : profile) {
    std::vector<Point> points;
    for (std::size_t p = 0; p < candidates.size(); ++p) {
      points.push_back({candidates[p].equivalent_bits(), errors[p]});
    }
    std::vector<int> kept;
    for (std::size_t i : pareto_front(points)) kept.push_back(static_cast<int>(i));
    std::sort(kept.begin(), kept.end());
    surviving.push_back(std::move(kept));
  }
  return surviving;
}

std::vector<Group> singleton_groups(const std::vector<std::vector<int>>& surviving) {
  std::vector<Group> groups;
  for (std::size_t l = 0; l < surviving.size(); ++l) {
    groups.push_back({{static_cast<int>(l)}, surviving[l]});
  }
  return groups;
}

std::vector<Group> cluster_layers(const Profile& profile,
                                  const std::vector<std::vector<int>>& surviving,
                                  double tolerance) {
  if (surviving.size() != profile.size()) {
    throw Error("search: " + std::to_string(surviving.size()) + " pruned layers for a profile of " +
                std::to_string(profile.size()));
  }
  if (!(tolerance >= 0)) throw Error("search: cluster_tolerance must be >= 0");
  auto close = [&](std::size_t a, std::size_t b) {
    for (int p : surviving[a]) {
      const auto pi = static_cast<std::size_t>(p);
      if (std::abs(log_error(profile[a][pi]) - log_error(profile[b][pi])) > tolerance) {
        return false;
      }
    }
    return true;
  };
  std::vector<Group> groups;
  for (std::size_t l = 0; l < surviving.size(); ++l) {
    bool placed = false;
    for (Group& group : groups) {
      if (group.pairs != surviving[l]) continue;
      const bool all_close = std::all_of(group.layers.begin(), group.layers.end(), [&](int m) {
        return close(l, static_cast<std::size_t>(m));
      });
      if (all_close) {
        group.layers.push_back(static_cast<int>(l));
        placed = true;
        break;
      }
    }
    if (!placed) groups.push_back({{static_cast<int>(l)}, surviving[l]});
  }
  return groups;
}

// ---------------------------------------------------------------------------
// The additive model

std::vector<Assignment> additive_frontier(const std::vector<PrecisionPair>& candidates,
                                          const Profile& profile,
                                          const std::vector<Group>& groups) {
  check_profile(candidates, profile);
  std::size_t num_layers = 0;
  std::vector<std::vector<int>> cost(groups.size());
  std::vector<std::vector<double>> error(groups.size());
  int max_total = 0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const Group& group = groups[g];
    if (group.layers.empty() || group.pairs.empty()) {
      throw Error("search: group " + std::to_string(g) + " has no layers or no pairs");
    }
    num_layers += group.layers.size();
    int group_max = 0;
    for (int p : group.pairs) {
      if (p < 0 || static_cast<std::size_t>(p) >= candidates.size()) {
        throw Error("search: group " + std::to_string(g) + " names candidate " + std::to_string(p));
      }
      int c = 0;
      double e = 0;
      for (int l : group.layers) {
        if (l < 0 || static_cast<std::size_t>(l) >= profile.size()) {
          throw Error("search: group " + std::to_string(g) + " names layer " + std::to_string(l));
        }
        c += pair_cost(candidates[static_cast<std::size_t>(p)]);
        e += profile[static_cast<std::size_t>(l)][static_cast<std::size_t>(p)];
      }
      cost[g].push_back(c);
      error[g].push_back(e);
      group_max = std::max(group_max, c);
    }
    max_total += group_max;
  }
  if (groups.empty()) return {};

  // best[t]: least error of the groups so far with total cost t;
  // choice[g][t]: the choice of group g that reached best[t] after group g.
  const auto totals = static_cast<std::size_t>(max_total) + 1;
  std::vector<double> best(totals, kInf);
  best[0] = 0;
  std::vector<std::vector<int>> choice(groups.size(), std::vector<int>(totals, -1));
  for (std::size_t g = 0; g < groups.size(); ++g) {
    std::vector<double> next(totals, kInf);
    for (std::size_t t = 0; t < totals; ++t) {
      if (best[t] == kInf) continue;
      for (std::size_t c = 0; c < cost[g].size(); ++c) {
        const std::size_t nt = t + static_cast<std::size_t>(cost[g][c]);
        const double e = best[t] + error[g][c];
        if (e < next[nt]) {
          next[nt] = e;
          choice[g][nt] = static_cast<int>(c);
        }
      }
    }
    best = std::move(next);
  }

  std::vector<Assignment> frontier;
  double least = kInf;
  for (std::size_t t = 0; t < totals; ++t) {
    if (!(best[t] < least)) continue;
    least = best[t];
    Assignment a;
    a.choice.assign(groups.size(), 0);
    std::size_t rest = t;
    for (std::size_t g = groups.size(); g-- > 0;) {
      const int c = choice[g][rest];
      a.choice[g] = c;
      rest -= static_cast<std::size_t>(cost[g][static_cast<std::size_t>(c)]);
    }
    a.predicted = {static_cast<double>(t) / (4.0 * static_cast<double>(num_layers)), best[t]};
    frontier.push_back(std::move(a));
  }
  return frontier;
}

// Skip-layer configs: for each candidate, the greedy by profile is exact
// because every skipped layer adds the same bits, so only the error saved by
// skipping decides which layers to skip.
std::vector<SkipConfig> skip_layer_frontier(const std::vector<PrecisionPair>& candidates,
                                            const Profile& profile) {
  check_profile(candidates, profile);
  const PrecisionPair kv16{KvFormat::full(), KvFormat::full()};
  const std::size_t num_layers = profile.size();
  std::vector<SkipConfig> configs;
  for (std::size_t d = 0; d < candidates.size(); ++d) {
    std::vector<std::size_t> order(num_layers);
    std::iota(order.begin(), order.end(), std::size_t{0});
    // Most sensitive first; stable, so ties keep the lower layer first.
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return profile[a][d] > profile[b][d]; });
    // A candidate that is KV16 itself has nothing to skip: its skip configs
    // would be the same pairs under other names.
    const std::size_t skips = candidates[d] == kv16 ? 1 : num_layers;
    std::vector<int> layers(num_layers, static_cast<int>(d));
    for (std::size_t k = 0; k < skips; ++k) {
      if (k > 0) layers[order[k - 1]] = -1;
      std::vector<PrecisionPair> pairs;
      double error = 0;
      for (std::size_t l = 0; l < num_layers; ++l) {
        const bool skipped = layers[l] < 0;
        pairs.push_back(skipped ? kv16 : candidates[d]);
        if (!skipped) error += profile[l][d];
      }
      configs.push_back({layers, {average_bits(pairs), error}});
    }
  }
  std::vector<Point> points;
  for (const SkipConfig& c : configs) points.push_back(c.predicted);
  std::vector<SkipConfig> front;
  for (std::size_t i : pareto_front(points)) front.push_back(std::move(configs[i]));
  return front;
}

}  // namespace kvtune::search
