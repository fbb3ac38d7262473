// The additive model restricted to ik_llama.cpp's first-last structure
// (search.h): the per-role profile's pairs, expressibility, and the exact
// frontier over every config whose key types and value types each form at
// most three runs over the layers.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "kvtune/common/error.h"
#include "search.h"
#include "search_internal.h"

namespace kvtune::search {
namespace {

// The distinct key and value formats of the candidates (first appearance)
// and the candidate of each (key, value) combination.
struct RoleTypes {
  std::vector<KvFormat> keys, values;
  std::vector<std::vector<int>> pair;  // [key type][value type] -> candidate index

  int key_of(const PrecisionPair& p) const {
    return static_cast<int>(std::find(keys.begin(), keys.end(), p.key) - keys.begin());
  }
  int value_of(const PrecisionPair& p) const {
    return static_cast<int>(std::find(values.begin(), values.end(), p.value) - values.begin());
  }
};

RoleTypes role_types(const std::vector<PrecisionPair>& candidates) {
  if (candidates.empty()) throw Error("search: no candidate pairs");
  RoleTypes t;
  for (const PrecisionPair& p : candidates) {
    if (std::find(t.keys.begin(), t.keys.end(), p.key) == t.keys.end()) t.keys.push_back(p.key);
    if (std::find(t.values.begin(), t.values.end(), p.value) == t.values.end()) {
      t.values.push_back(p.value);
    }
  }
  t.pair.assign(t.keys.size(), std::vector<int>(t.values.size(), -1));
  for (std::size_t c = 0; c < candidates.size(); ++c) {
    t.pair[static_cast<std::size_t>(t.key_of(candidates[c]))]
          [static_cast<std::size_t>(t.value_of(candidates[c]))] = static_cast<int>(c);
  }
  for (std::size_t k = 0; k < t.keys.size(); ++k) {
    for (std::size_t v = 0; v < t.values.size(); ++v) {
      if (t.pair[k][v] < 0) {
        throw Error("search: first-last needs every (key, value) pair of its types; K" +
                    t.keys[k].name() + "V" + t.values[v].name() + " is not a candidate");
      }
    }
  }
  return t;
}

// The widest format (most budget bits; the first on ties).
std::size_t widest(const std::vector<KvFormat>& formats) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < formats.size(); ++i) {
    if (formats[i].budget_bits() > formats[best].budget_bits()) best = i;
  }
  return best;
}

int runs_of(const std::vector<int>& types) {
  int runs = types.empty() ? 0 : 1;
  for (std::size_t l = 1; l < types.size(); ++l) runs += types[l] != types[l - 1] ? 1 : 0;
  return runs;
}

// One role's type sequence: `first` on layers < nf, `last` on layers >=
// L - nl, `base` between.
struct RoleSeq {
  int first = 0, nf = 0, base = 0, last = 0, nl = 0;
  long cost = 0;  // half bits summed over layers
  double error = 0;

  int type_at(int l, int num_layers) const {
    if (l >= num_layers - nl) return last;
    return l < nf ? first : base;
  }
};

// The (cost, error) front of one role's expressible sequences. err[l][t] is
// the role's error of type t on layer l; cost[t] its half bits.
std::vector<RoleSeq> role_front(const std::vector<std::vector<double>>& err,
                                const std::vector<int>& cost) {
  const int L = static_cast<int>(err.size());
  const int n = static_cast<int>(cost.size());
  // prefix[t][i]: the error of type t summed over layers < i.
  std::vector<std::vector<double>> prefix(static_cast<std::size_t>(n),
                                          std::vector<double>(static_cast<std::size_t>(L) + 1, 0));
  for (int t = 0; t < n; ++t) {
    for (int l = 0; l < L; ++l) {
      prefix[t][l + 1] = prefix[t][l] + err[l][t];
    }
  }
  const auto span = [&](int t, int from, int to) { return prefix[t][to] - prefix[t][from]; };
  const int max_cost = *std::max_element(cost.begin(), cost.end()) * L;
  std::vector<RoleSeq> best(static_cast<std::size_t>(max_cost) + 1);
  std::vector<bool> seen(best.size(), false);
  const auto offer = [&](const RoleSeq& s) {
    const auto at = static_cast<std::size_t>(s.cost);
    if (!seen[at] || s.error < best[at].error) {
      best[at] = s;
      seen[at] = true;
    }
  };
  for (int b = 0; b < n; ++b) offer({b, 0, b, b, 0, long{cost[b]} * L, span(b, 0, L)});
  // Two runs: t1 on layers < a, t2 after (a first override on base t2).
  for (int f = 0; f < n; ++f) {
    for (int b = 0; b < n; ++b) {
      if (f == b) continue;
      for (int a = 1; a < L; ++a) {
        offer({f, a, b, b, 0, long{cost[f]} * a + long{cost[b]} * (L - a),
               span(f, 0, a) + span(b, a, L)});
      }
    }
  }
  // Three runs: f on layers < a, b on [a, L - c), g on the last c.
  for (int f = 0; f < n; ++f) {
    for (int b = 0; b < n; ++b) {
      if (f == b) continue;
      for (int g = 0; g < n; ++g) {
        if (g == b) continue;
        for (int a = 1; a < L - 1; ++a) {
          for (int c = 1; a + c < L; ++c) {
            offer({f, a, b, g, c,
                   long{cost[f]} * a + long{cost[b]} * (L - a - c) + long{cost[g]} * c,
                   span(f, 0, a) + span(b, a, L - c) + span(g, L - c, L)});
          }
        }
      }
    }
  }
  std::vector<RoleSeq> front;
  double least = detail::kInf;
  for (std::size_t c = 0; c < best.size(); ++c) {
    if (seen[c] && best[c].error < least) {
      least = best[c].error;
      front.push_back(best[c]);
    }
  }
  return front;
}

int half_bits(const KvFormat& f) {
  return static_cast<int>(std::lround(2.0 * f.budget_bits()));
}

}  // namespace

FirstLastProfile first_last_profile(const std::vector<PrecisionPair>& candidates) {
  const RoleTypes t = role_types(candidates);
  const std::size_t ref_k = widest(t.keys), ref_v = widest(t.values);
  FirstLastProfile out;
  for (std::size_t k = 0; k < t.keys.size(); ++k) out.keys.push_back(t.pair[k][ref_v]);
  for (std::size_t v = 0; v < t.values.size(); ++v) out.values.push_back(t.pair[ref_k][v]);
  // Keys' pairs, then the values' but the shared (ref key, ref value);
  // ascending candidate order within the profile.
  out.pairs = out.keys;
  for (std::size_t v = 0; v < t.values.size(); ++v) {
    if (v != ref_v) out.pairs.push_back(out.values[v]);
  }
  std::sort(out.pairs.begin(), out.pairs.end());
  return out;
}

bool first_last_expressible(const std::vector<PrecisionPair>& candidates,
                            const std::vector<int>& layers) {
  const RoleTypes t = role_types(candidates);
  std::vector<int> keys, values;
  for (int c : layers) {
    if (c < 0 || static_cast<std::size_t>(c) >= candidates.size()) return false;
    keys.push_back(t.key_of(candidates[static_cast<std::size_t>(c)]));
    values.push_back(t.value_of(candidates[static_cast<std::size_t>(c)]));
  }
  return runs_of(keys) <= 3 && runs_of(values) <= 3;
}

std::vector<FirstLastConfig> first_last_frontier(const std::vector<PrecisionPair>& candidates,
                                                 const Profile& profile) {
  const RoleTypes t = role_types(candidates);
  const FirstLastProfile fp = first_last_profile(candidates);
  const auto column = [&](int candidate) {
    return static_cast<std::size_t>(std::find(fp.pairs.begin(), fp.pairs.end(), candidate) -
                                    fp.pairs.begin());
  };
  const std::size_t L = profile.size();
  if (L == 0) throw Error("search: an empty profile");
  for (std::size_t l = 0; l < L; ++l) {
    if (profile[l].size() != fp.pairs.size()) {
      throw Error("search: profile of layer " + std::to_string(l) + " has " +
                  std::to_string(profile[l].size()) + " errors for " +
                  std::to_string(fp.pairs.size()) + " first-last profile pairs");
    }
  }
  const std::size_t ref_v = widest(t.values);
  std::vector<std::vector<double>> err_k(L), err_v(L);
  for (std::size_t l = 0; l < L; ++l) {
    const double both = profile[l][column(fp.values[ref_v])];
    for (int c : fp.keys) err_k[l].push_back(profile[l][column(c)]);
    for (int c : fp.values) err_v[l].push_back(profile[l][column(c)] - both);
  }
  std::vector<int> cost_k, cost_v;
  for (const KvFormat& f : t.keys) cost_k.push_back(half_bits(f));
  for (const KvFormat& f : t.values) cost_v.push_back(half_bits(f));
  const std::vector<RoleSeq> keys = role_front(err_k, cost_k);
  const std::vector<RoleSeq> values = role_front(err_v, cost_v);

  // Key front x value front, the least error per total (the first met on ties).
  std::vector<std::pair<int, int>> best;  // per total: (key, value) index, or (-1, -1)
  std::vector<double> least;
  for (std::size_t k = 0; k < keys.size(); ++k) {
    for (std::size_t v = 0; v < values.size(); ++v) {
      const auto total = static_cast<std::size_t>(keys[k].cost + values[v].cost);
      if (total >= best.size()) {
        best.resize(total + 1, {-1, -1});
        least.resize(total + 1, detail::kInf);
      }
      const double e = keys[k].error + values[v].error;
      if (best[total].first < 0 || e < least[total]) {
        best[total] = {static_cast<int>(k), static_cast<int>(v)};
        least[total] = e;
      }
    }
  }
  std::vector<FirstLastConfig> front;
  double lowest = detail::kInf;
  const int layers = static_cast<int>(L);
  for (std::size_t total = 0; total < best.size(); ++total) {
    if (best[total].first < 0 || !(least[total] < lowest)) continue;
    lowest = least[total];
    const RoleSeq& k = keys[static_cast<std::size_t>(best[total].first)];
    const RoleSeq& v = values[static_cast<std::size_t>(best[total].second)];
    FirstLastConfig c;
    for (int l = 0; l < layers; ++l) {
      c.layers.push_back(t.pair[static_cast<std::size_t>(k.type_at(l, layers))]
                               [static_cast<std::size_t>(v.type_at(l, layers))]);
    }
    c.predicted = {static_cast<double>(total) / (4.0 * static_cast<double>(L)), least[total]};
    front.push_back(std::move(c));
  }
  return front;
}

// The Search's profile pairs (search.h).
std::vector<int> Search::profiled() const {
  if (options_.strategy == Strategy::kFirstLast) {
    return first_last_profile(options_.candidates).pairs;
  }
  std::vector<int> all(options_.candidates.size());
  for (std::size_t p = 0; p < all.size(); ++p) all[p] = static_cast<int>(p);
  return all;
}

std::vector<PrecisionPair> Search::profile_candidates() const {
  std::vector<PrecisionPair> out;
  for (int p : profiled()) out.push_back(options_.candidates[static_cast<std::size_t>(p)]);
  return out;
}

}  // namespace kvtune::search
