// The kvtune command as a user runs it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../support/process.h"

namespace kvtune::testing {
namespace {

const std::string kKvtune = build_path("kvtune");

TEST(CliFormats, JsonReportsEveryFormatWithErrorGrowingAsBitsFall) {
  const CommandResult r =
      run_command(kKvtune + " formats --tokens 256 --heads 2 --head-dim 64 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto json = nlohmann::json::parse(r.output);
  EXPECT_TRUE(json["synthetic"].get<bool>());
  const auto& rows = json["formats"];
  ASSERT_EQ(rows.size(), 7u);
  EXPECT_EQ(rows[0]["format"], "8");
  EXPECT_EQ(rows[5]["format"], "fp8");
  EXPECT_EQ(rows[6]["format"], "nvfp4");
  // Integer widths are listed 8, 4, 3, 2, 1: fewer bits, more storage saved, more error.
  for (size_t i = 1; i < 5; ++i) {
    for (const char* role : {"key", "value"}) {
      EXPECT_LT(rows[i][std::string(role) + "_bits"].get<double>(),
                rows[i - 1][std::string(role) + "_bits"].get<double>());
      EXPECT_GT(rows[i][std::string(role) + "_rel_err"].get<double>(),
                rows[i - 1][std::string(role) + "_rel_err"].get<double>());
    }
  }
  // head_dim 64 per token: 4 bits + fp16 scale and zero over 64 values.
  EXPECT_DOUBLE_EQ(rows[1]["key_bits"].get<double>(), 4.5);
}

TEST(CliFormats, KiviBeatsPerTokenOnOutlierKeysAtTwoBits) {
  const auto run = [](const std::string& scheme) {
    const CommandResult r = run_command(kKvtune + " formats --tokens 256 --heads 2 --head-dim 64 " +
                                        "--formats 2 --json --scheme " + scheme);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output)["formats"][0]["key_rel_err"].get<double>();
  };
  // Per-channel key groups isolate the outlier channels (KIVI's observation).
  EXPECT_LT(run("kivi"), run("per-token-asym"));
}

TEST(CliErrors, BadOptionValuesAreNamed) {
  CommandResult r = run_command(kKvtune + " formats --scheme bogus", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--scheme 'bogus'"), std::string::npos) << r.output;

  r = run_command(kKvtune + " formats --formats 8,5", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("'5'"), std::string::npos) << r.output;

  r = run_command(kKvtune + " formats --scheme kivi --residual 48", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("residual 48"), std::string::npos) << r.output;

  r = run_command(kKvtune + " nosuchcommand", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown command 'nosuchcommand'"), std::string::npos) << r.output;
}

TEST(CliWorkerCommands, RunKvtuneWorkerAndPassItsExitCodeThrough) {
  // `kvtune eval` is served by kvtune-worker; whatever that prints and returns
  // reaches the user unchanged.
  const CommandResult direct = run_command(build_path("kvtune-worker") + " eval --x", true);
  const CommandResult via = run_command(kKvtune + " eval --x", true);
  EXPECT_EQ(via.exit_code, direct.exit_code);
  EXPECT_EQ(via.output, direct.output);
  EXPECT_NE(via.output.find("kvtune-worker"), std::string::npos);
}

}  // namespace
}  // namespace kvtune::testing
