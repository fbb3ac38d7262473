// The registry's frontier merging and "best under a budget" queries.
#include <gtest/gtest.h>

#include "registry.h"

namespace kvtune::registry {
namespace {

Config config(const std::string& layers, double bits, double kl) {
  Config c;
  c.layers = layers;
  c.avg_bits = bits;
  c.kl = kl;
  return c;
}

std::vector<std::string> names(const std::vector<Config>& cs) {
  std::vector<std::string> out;
  for (const Config& c : cs) out.push_back(c.layers);
  return out;
}

TEST(Registry, MergeKeepsTheNonDominatedConfigsOfBoth) {
  const std::vector<Config> a = {config("a2", 2, 3.0), config("a4", 4, 0.5), config("a8", 8, 0.01)};
  const std::vector<Config> b = {config("b3", 3, 1.0), config("b4", 4, 0.6),
                                 config("b6", 6, 0.005)};
  // b4 is dominated by a4; a8 by b6 (fewer bits, less KL).
  EXPECT_EQ(names(merge_frontier(a, b)), (std::vector<std::string>{"a2", "b3", "a4", "b6"}));
  // The same config twice counts once.
  EXPECT_EQ(names(merge_frontier(a, a)), (std::vector<std::string>{"a2", "a4", "a8"}));
}

TEST(Registry, BestUnderABitsOrErrorBudget) {
  const std::vector<Config> f = {config("a2", 2, 3.0), config("b3", 3, 1.0), config("a4", 4, 0.5)};
  EXPECT_EQ(best(f, 3.5, std::nullopt)->layers, "b3");
  EXPECT_EQ(best(f, 4.0, std::nullopt)->layers, "a4");
  EXPECT_FALSE(best(f, 1.5, std::nullopt).has_value());
  EXPECT_EQ(best(f, std::nullopt, 1.0)->layers, "b3");  // fewest bits within KL 1.0
  EXPECT_EQ(best(f, std::nullopt, 5.0)->layers, "a2");
  EXPECT_EQ(best(f, 3.0, 0.5), std::nullopt);
}

TEST(Registry, ConfigJsonRoundTripAndStableIds) {
  Config c = config("KV8,KV4", 6, 0.25);
  c.metrics = {{"kl", 0.25}};
  c.job = "job-1";
  const Config d = Config::from_json(c.to_json());
  EXPECT_EQ(d.to_json(), c.to_json());
  const std::string k = key("fp", "kivi/G=32/R=32/zp=int", "dfp", "kl");
  EXPECT_EQ(k, "fp|kivi/G=32/R=32/zp=int|dfp|kl");
  EXPECT_EQ(entry_id(k), entry_id(k));
  EXPECT_EQ(entry_id(k).size(), 16u);
  EXPECT_NE(entry_id(k), entry_id(key("fp", "per-token-asym/zp=int", "dfp", "kl")));
}

}  // namespace
}  // namespace kvtune::registry
