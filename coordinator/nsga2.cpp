// NSGA-II for the search (search.h): Deb's constraint violation and
// constrained domination, non-dominated sorting, crowding distances, and the
// Search driver's two NSGA-II steps: offspring (binary tournament, uniform
// crossover, per-gene mutation) and elitist (mu + lambda) survival.
#include <algorithm>
#include <cstddef>
#include <numeric>
#include <utility>

#include "search.h"
#include "search_internal.h"

namespace kvtune::search {
namespace {

using detail::kInf;

bool dominates(Point a, Point b) {
  return a.bits <= b.bits && a.error <= b.error && (a.bits < b.bits || a.error < b.error);
}

}  // namespace

double violation(Point point, const Budget& budget) {
  double v = 0;
  if (point.bits > budget.max_bits) v += (point.bits - budget.max_bits) / budget.max_bits;
  if (budget.max_error && point.error > *budget.max_error) {
    v += (point.error - *budget.max_error) / *budget.max_error;
  }
  return v;
}

bool constrained_dominates(const Objectives& a, const Objectives& b) {
  const bool fa = a.violation <= 0;
  const bool fb = b.violation <= 0;
  if (fa != fb) return fa;
  if (!fa) return a.violation < b.violation;
  return dominates({a.bits, a.error}, {b.bits, b.error});
}

std::vector<int> nondominated_ranks(const std::vector<Objectives>& solutions) {
  const std::size_t n = solutions.size();
  std::vector<std::vector<std::size_t>> beats(n);
  std::vector<int> beaten_by(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = i + 1; j < n; ++j) {
      if (constrained_dominates(solutions[i], solutions[j])) {
        beats[i].push_back(j);
        ++beaten_by[j];
      } else if (constrained_dominates(solutions[j], solutions[i])) {
        beats[j].push_back(i);
        ++beaten_by[i];
      }
    }
  }
  std::vector<int> rank(n, -1);
  std::vector<std::size_t> front;
  for (std::size_t i = 0; i < n; ++i) {
    if (beaten_by[i] == 0) front.push_back(i);
  }
  for (int r = 0; !front.empty(); ++r) {
    std::vector<std::size_t> next;
    for (std::size_t i : front) {
      rank[i] = r;
      for (std::size_t j : beats[i]) {
        if (--beaten_by[j] == 0) next.push_back(j);
      }
    }
    std::sort(next.begin(), next.end());
    front = std::move(next);
  }
  return rank;
}

std::vector<double> crowding_distances(const std::vector<Objectives>& solutions,
                                       const std::vector<int>& ranks) {
  const std::size_t n = solutions.size();
  std::vector<double> distance(n, 0);
  const int max_rank = n == 0 ? -1 : *std::max_element(ranks.begin(), ranks.end());
  for (int r = 0; r <= max_rank; ++r) {
    std::vector<std::size_t> members;
    for (std::size_t i = 0; i < n; ++i) {
      if (ranks[i] == r) members.push_back(i);
    }
    if (members.size() <= 2) {
      for (std::size_t i : members) distance[i] = kInf;
      continue;
    }
    for (int objective = 0; objective < 2; ++objective) {
      auto value = [&](std::size_t i) {
        return objective == 0 ? solutions[i].bits : log_error(solutions[i].error);
      };
      std::vector<std::size_t> order = members;
      std::stable_sort(order.begin(), order.end(),
                       [&](std::size_t a, std::size_t b) { return value(a) < value(b); });
      distance[order.front()] = kInf;
      distance[order.back()] = kInf;
      const double range = value(order.back()) - value(order.front());
      if (range <= 0) continue;
      for (std::size_t k = 1; k + 1 < order.size(); ++k) {
        distance[order[k]] += (value(order[k + 1]) - value(order[k - 1])) / range;
      }
    }
  }
  return distance;
}

void Search::offspring_generation() {
  const auto remaining = static_cast<std::size_t>(options_.max_evaluations - evaluations_);
  const auto population = static_cast<std::size_t>(options_.population);
  if (population_.empty()) {  // only configs outside the space so far: start afresh
    initial_generation();
    return;
  }
  std::vector<Objectives> objectives;
  for (std::size_t i : population_) objectives.push_back(objectives_of(records_[i]));
  const std::vector<int> ranks = nondominated_ranks(objectives);
  const std::vector<double> crowding = crowding_distances(objectives, ranks);
  auto tournament = [&]() -> const Genome& {
    const auto a = static_cast<std::size_t>(draw_below(population_.size()));
    const auto b = static_cast<std::size_t>(draw_below(population_.size()));
    const bool b_wins = ranks[b] < ranks[a] || (ranks[b] == ranks[a] && crowding[b] > crowding[a]);
    return records_[population_[b_wins ? b : a]].genome;
  };
  const double mutation = 1.0 / static_cast<double>(groups_.size());
  const std::size_t target = std::min(population, remaining);
  for (std::size_t tries = 0; pending_.size() < target && tries < 100 * population; ++tries) {
    const Genome& mother = tournament();
    const Genome& father = tournament();
    Genome child(groups_.size());
    for (std::size_t g = 0; g < child.size(); ++g) {
      child[g] = draw_unit() < 0.5 ? mother[g] : father[g];
    }
    for (std::size_t g = 0; g < child.size(); ++g) {
      const std::size_t options = groups_[g].pairs.size();
      if (options < 2 || !(draw_unit() < mutation)) continue;
      const auto other = static_cast<int>(draw_below(options - 1));
      child[g] = other >= child[g] ? other + 1 : other;
    }
    add_if_new(layers_of(child));
  }
}

void Search::survive(const std::vector<std::size_t>& pool) {
  std::vector<Objectives> objectives;
  for (std::size_t i : pool) objectives.push_back(objectives_of(records_[i]));
  const std::vector<int> ranks = nondominated_ranks(objectives);
  const std::vector<double> crowding = crowding_distances(objectives, ranks);
  std::vector<std::size_t> order(pool.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (ranks[a] != ranks[b]) return ranks[a] < ranks[b];
    return crowding[a] > crowding[b];
  });
  const std::size_t keep = std::min(pool.size(), static_cast<std::size_t>(options_.population));
  population_.clear();
  for (std::size_t k = 0; k < keep; ++k) population_.push_back(pool[order[k]]);
}

}  // namespace kvtune::search
