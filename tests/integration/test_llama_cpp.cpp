// The llama.cpp target as users run it: `kvtune run --target llama.cpp` scans
// every (-ctk, -ctv) pair of ggml cache types within the budget and prints the
// frontier with its flags, on a model whose head_dim is 64 (where llama.cpp's
// Hadamard rotation applies) and on stories260K (head_dim 8: no rotation);
// `kvtune eval --rotate` shows the rotation acting only where llama.cpp's rule
// says it does. `kvtune run --target ik_llama.cpp` searches ik_llama.cpp's
// first-N / last-N overrides and deploys each config with flags that give
// back its per-layer types.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "../support/cluster.h"
#include "../support/shared_files.h"
#include "../support/temp_dir.h"
#include "kvtune/common/engine_dtype.h"
#include "kvtune/common/engine_target.h"
#include "kvtune/common/precision.h"

namespace kvtune::testing {
namespace {

using json = nlohmann::json;

json run_json(const std::string& arguments) {
  const TempDir dir("kvtune-llama-cpp");
  const CommandResult r = run_command(build_path("kvtune") + " run " + arguments +
                                      " --no-report --json 2>" + dir.file("run.err"));
  std::ifstream err(dir.file("run.err"));
  EXPECT_EQ(r.exit_code, 0) << r.output << std::string(std::istreambuf_iterator<char>(err), {});
  return json::parse(r.output);
}

// The KL of each config of `kvtune eval ... --json` (one object a line), in order.
std::vector<double> eval_kl(const std::string& arguments) {
  const CommandResult r =
      run_command(build_path("kvtune") + " eval " + arguments + " --json 2>/dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::vector<double> out;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) out.push_back(json::parse(line)["kl"]);
  return out;
}

TEST(LlamaCpp, RunScansTheTypePairsAndDeploysEachWithItsFlags) {
  const json job = run_json(
      "--target llama.cpp --model builtin:demo-hd64 --data sample:4:64:0 --max-bits 9 "
      "--workers 2");
  ASSERT_EQ(job["state"], "done") << job.dump();
  EXPECT_EQ(job["search"]["strategy"], "scan");
  // Every pair of the six block types (f16, bf16 and f32 pairs average over 9 bits).
  EXPECT_EQ(job["search"]["evaluations"], 36);
  ASSERT_FALSE(job["frontier"].empty());
  double last_bits = 0, last_kl = 1e9;
  for (const json& f : job["frontier"]) {
    const auto layers = parse_layer_config(f["layers"].get<std::string>(), 6);
    for (const PrecisionPair& p : layers) EXPECT_EQ(p, layers[0]) << f["layers"];
    const EngineDtype& k = layers[0].key.engine_dtype();
    const EngineDtype& v = layers[0].value.engine_dtype();
    EXPECT_EQ(k.engine, "llama.cpp");
    EXPECT_EQ(v.engine, "llama.cpp");
    const double bits = f["metrics"]["avg_bits"], kl = f["metrics"]["kl"];
    EXPECT_EQ(bits, layers[0].equivalent_bits());  // ggml's storage: q4_0 4.5, q8_0 8.5, ...
    EXPECT_GT(bits, last_bits);
    EXPECT_LT(kl, last_kl);
    last_bits = bits;
    last_kl = kl;
    // The deploy command is the pair's flags, -fa on for a quantized V.
    ASSERT_TRUE(f.contains("deploy")) << f;
    EXPECT_TRUE(f["deploy"]["released"].get<bool>());
    const std::string text = f["deploy"]["text"];
    const std::string flags =
        "-ctk " + std::string(k.flag) + " -ctv " + std::string(v.flag) + " -fa on\n";
    EXPECT_NE(text.find("llama-server -m MODEL.gguf " + flags), std::string::npos) << text;
    EXPECT_NE(text.find("llama-cli -m MODEL.gguf " + flags), std::string::npos) << text;
  }
  // The baselines are the types used for keys and values alike.
  std::set<std::string> baselines;
  for (const json& b : job["baselines"]) {
    const auto pair = parse_layer_config(b["layers"].get<std::string>(), 6)[0];
    EXPECT_EQ(pair.key, pair.value) << b["layers"];
    baselines.insert(pair.name());
  }
  for (const char* t : {"q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0"}) {
    EXPECT_TRUE(baselines.contains("KVllama.cpp:" + std::string(t))) << t;
  }
}

TEST(LlamaCpp, RunOnStories260KPrintsTheFrontierWithFlags) {
  SKIP_WITHOUT_STORIES();
  const TempDir dir("kvtune-llama-cpp");
  const CommandResult r = run_command(
      build_path("kvtune") + " run --target llama.cpp --model " + kStoriesModel +
      " --data sample:4:64:0 --max-bits 9 --workers 2 --no-report 2>" + dir.file("run.err"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* line :
       {"frontier config", "KVq8_0 (all layers)", "deploy the lowest KL within the budget",
        "llama-server -m MODEL.gguf -ctk q8_0 -ctv q8_0 -fa on"}) {
    EXPECT_NE(r.output.find(line), std::string::npos) << line << " in\n" << r.output;
  }
  // The progress lines name the best pair as the table does, not layer by layer.
  std::ifstream in(dir.file("run.err"));
  const std::string progress((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(progress.find("; best within budget KVq8_0 (all layers) (8.50 bits)"),
            std::string::npos)
      << progress;
  EXPECT_EQ(progress.find("llama.cpp:q8_0,"), std::string::npos) << progress;
}

// The per-layer types that ik_llama.cpp's flags on `line` give each role
// (ENGINES.md: layers i < N take the -ctX-first type, i >= layers - N the
// -ctX-last type, "last" winning, the others the -ctX type).
std::vector<std::pair<std::string, std::string>> ik_types(const std::string& line, int layers) {
  std::map<std::string, std::string> flag;
  std::istringstream words(line);
  for (std::string word, value; words >> word;) {
    if (word.rfind("-ctk", 0) == 0 || word.rfind("-ctv", 0) == 0) {
      words >> value;
      EXPECT_FALSE(flag.contains(word)) << word << " twice in " << line;
      flag[word] = value;
    }
  }
  const auto role = [&](const std::string& f, int l) {
    std::string type = flag.at(f);  // the base type is always given
    for (const char* where : {"-first", "-last"}) {
      const auto it = flag.find(f + where);
      if (it == flag.end()) continue;
      const std::size_t comma = it->second.find(',');
      const int n = std::stoi(it->second.substr(comma + 1));
      EXPECT_GE(n, 1) << line;
      const bool first = std::string(where) == "-first";
      if (first ? l < n : l >= layers - n) type = it->second.substr(0, comma);
    }
    return type;
  };
  std::vector<std::pair<std::string, std::string>> out;
  for (int l = 0; l < layers; ++l) out.emplace_back(role("-ctk", l), role("-ctv", l));
  return out;
}

TEST(IkLlamaCpp, RunSearchesTheOverridesAndEachExportGivesBackItsTypes) {
  SKIP_WITHOUT_STORIES();
  const TempDir dir("kvtune-ik-llama-cpp");
  const std::string arguments = "--target ik_llama.cpp --model " + kStoriesModel +
                                " --data sample:4:64:0 --max-bits 9 --max-evaluations 150 "
                                "--workers 2 --db " +
                                dir.file("db");
  const json job = run_json(arguments);
  ASSERT_EQ(job["state"], "done") << job.dump();
  EXPECT_EQ(job["search"]["strategy"], "first-last");
  EXPECT_LE(job["search"]["evaluations"].get<int>(), 150);
  const EngineTarget& ik = *find_engine_target("ik_llama.cpp");
  ASSERT_FALSE(job["frontier"].empty());
  int overridden = 0;
  for (const json& f : job["frontier"]) {
    const std::string text = f["layers"];
    const int layers = static_cast<int>(std::count(text.begin(), text.end(), ',')) + 1;
    const auto config = parse_layer_config(text, layers);
    EXPECT_EQ(ik.refusal(config), "") << text;
    EXPECT_LE(f["metrics"]["avg_bits"].get<double>(), 9.0);
    ASSERT_TRUE(f.contains("deploy")) << f;
    EXPECT_EQ(f["deploy"]["format"], "ik_llama.cpp");
    EXPECT_FALSE(f["deploy"]["released"].get<bool>());
    ASSERT_TRUE(f["deploy"].contains("text")) << f["deploy"];
    const std::string deploy = f["deploy"]["text"];
    const std::size_t at = deploy.find("llama-server -m MODEL.gguf ");
    ASSERT_NE(at, std::string::npos) << deploy;
    const std::string line = deploy.substr(at, deploy.find('\n', at) - at);
    EXPECT_EQ(line.find("-khad"), std::string::npos) << line;  // rotation off: ik's default
    const auto types = ik_types(line, layers);
    for (int l = 0; l < layers; ++l) {
      const PrecisionPair& p = config[static_cast<std::size_t>(l)];
      EXPECT_EQ(types[static_cast<std::size_t>(l)].first, p.key.engine_dtype().flag)
          << "layer " << l << ": " << line << " for " << text;
      EXPECT_EQ(types[static_cast<std::size_t>(l)].second, p.value.engine_dtype().flag)
          << "layer " << l << ": " << line << " for " << text;
    }
    if (line.find("-first") != std::string::npos || line.find("-last") != std::string::npos) {
      ++overridden;
    }
  }
  EXPECT_GE(overridden, 1) << job["frontier"].dump(1);

  // The same job's table (its store has every result): each row names its
  // config by runs of pairs, the types without "llama.cpp:", cut at 48 characters.
  const CommandResult table =
      run_command(build_path("kvtune") + " run " + arguments + " --no-report 2>/dev/null");
  ASSERT_EQ(table.exit_code, 0) << table.output;
  for (const json& f : job["frontier"]) {
    std::vector<std::pair<std::string, int>> runs;
    std::istringstream in(f["layers"].get<std::string>());
    for (std::string pair; std::getline(in, pair, ',');) {
      for (std::size_t at; (at = pair.find("llama.cpp:")) != std::string::npos;) pair.erase(at, 10);
      if (!runs.empty() && runs.back().first == pair) {
        ++runs.back().second;
      } else {
        runs.emplace_back(pair, 1);
      }
    }
    std::string name = runs.size() == 1 ? runs[0].first + " (all layers)" : "";
    for (const auto& [pair, n] : runs) {
      if (runs.size() == 1) break;
      name += (name.empty() ? "" : ",") + pair + (n > 1 ? "*" + std::to_string(n) : "");
    }
    if (name.size() > 48) name = name.substr(0, 45) + "...";
    EXPECT_NE(table.output.find("\n" + name + " "), std::string::npos)
        << name << " for " << f["layers"] << " in\n"
        << table.output;
  }
}

// A quantized type and f16, for every layer.
const std::string kRotationConfigs =
    "--target llama.cpp --data sample:4:64:0 --config KVllama.cpp:q4_0 --config "
    "KVllama.cpp:f16";

TEST(LlamaCpp, TheRotationActsWhereLlamaCppsRuleSays) {
  const std::string configs = kRotationConfigs;
  // head_dim 64: auto rotates the quantized type (as llama.cpp does), not f16.
  const std::string hd64 = " --model builtin:demo-hd64 " + configs;
  const auto automatic = eval_kl(hd64), on = eval_kl(hd64 + " --rotate on"),
             off = eval_kl(hd64 + " --rotate off");
  ASSERT_EQ(automatic.size(), 2u);
  ASSERT_EQ(on.size(), 2u);
  ASSERT_EQ(off.size(), 2u);
  EXPECT_EQ(automatic[0], on[0]);
  EXPECT_NE(automatic[0], off[0]);
  // The demo's outlier key channels: spread by the rotation, they cost q4_0 less.
  EXPECT_LT(automatic[0], off[0]);
  EXPECT_EQ(automatic[1], off[1]);
}

TEST(LlamaCpp, Stories260KIsNotRotated) {
  SKIP_WITHOUT_STORIES();
  // head_dim 8: llama.cpp does not rotate.
  const std::string stories = " --model " + kStoriesModel + " " + kRotationConfigs;
  const auto automatic = eval_kl(stories);
  ASSERT_EQ(automatic.size(), 2u);
  EXPECT_EQ(automatic, eval_kl(stories + " --rotate off"));
}

}  // namespace
}  // namespace kvtune::testing
