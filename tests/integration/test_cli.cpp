// The kvtune command as a user runs it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

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

// Raw float32 files for `kvtune fake-quant`.
void write_floats(const std::filesystem::path& path, const std::vector<float>& x) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(x.data()),
             static_cast<std::streamsize>(x.size() * sizeof(float)));
}
std::vector<float> read_floats(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<float> x(std::filesystem::file_size(path) / sizeof(float));
  in.read(reinterpret_cast<char*>(x.data()), static_cast<std::streamsize>(x.size() * 4));
  return x;
}

TEST(CliFakeQuant, WritesWhatTheEmulatedCacheHolds) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvtune_fq_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto in = dir / "x.f32", out = dir / "y.f32";
  // One token's head, worked by hand (as in tests/kernels/test_kvtuner.cpp).
  write_floats(in, {-1.0f, 0.3f, 0.7f, 1.5f, 2.0f, -0.55f, 0.05f, 1.23f});
  const std::string base =
      kKvtune + " fake-quant --shape 1,1,8 --in " + in.string() + " --out " + out.string();
  auto r = run_command(base + " --format 8 --target kvtuner");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // KVTuner's bf16 arithmetic: 0.3 comes back as 0.294921875.
  EXPECT_EQ(read_floats(out), (std::vector<float>{-1.0f, 0.294921875f, 0.6953125f, 1.4921875f, 2.0f,
                                                  -0.5546875f, 0.047119140625f, 1.2265625f}));
  // kvtune's exact per-token-asym 2 bits: scale 3/3 = 1, zero round(-1) + 2 = 1;
  // 1.5 - 1 = 0.5 rounds half to even, to code 0: 1.0.
  ASSERT_EQ(run_command(base + " --format 2").exit_code, 0);
  EXPECT_EQ(read_floats(out),
            (std::vector<float>{-1.0f, 0.0f, 1.0f, 1.0f, 2.0f, -1.0f, 0.0f, 1.0f}));
  // fp8 E4M3 with a per-layer scalar scale of 0.5: x / 0.5 rounded to 3
  // mantissa bits (0.6 -> 0.625, 1.4 -> 1.375, 2.46 -> 2.5, 0.1 -> 0.1015625).
  ASSERT_EQ(run_command(base + " --format fp8 --scale 0.5").exit_code, 0);
  EXPECT_EQ(read_floats(out), (std::vector<float>{-1.0f, 0.3125f, 0.6875f, 1.5f, 2.0f, -0.5625f,
                                                  0.05078125f, 1.25f}));
  ASSERT_EQ(run_command(base + " --format 16").exit_code, 0);
  EXPECT_EQ(read_floats(out),
            (std::vector<float>{-1.0f, 0.3f, 0.7f, 1.5f, 2.0f, -0.55f, 0.05f, 1.23f}));

  r = run_command(kKvtune + " fake-quant --shape 2,1,8 --format 4 --in " + in.string() + " --out " +
                      out.string(),
                  true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("has 32 bytes; a float32 tensor [tokens=2, heads=1, head_dim=8] has 64"),
            std::string::npos)
      << r.output;
  r = run_command(base + " --format 3 --target kvtuner", true);
  EXPECT_NE(r.output.find("format 3 is not KVTuner's"), std::string::npos) << r.output;
  r = run_command(kKvtune + " fake-quant --format 4 --shape 1,x,8 --in " + in.string() + " --out " +
                      out.string(),
                  true);
  EXPECT_NE(r.output.find("'x' is not a positive integer"), std::string::npos) << r.output;
  std::filesystem::remove_all(dir);
}

// Every engine dtype through `kvtune fake-quant`, against values computed
// independently of kvtune (a Python transcription of ENGINES.md's arithmetic,
// float32 rounding emulated op by op): x is one token of 2 heads x 8.
TEST(CliFakeQuant, EngineDtypesHoldWhatTheEnginesCacheHolds) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvtune_fqe_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto in = dir / "x.f32", in2 = dir / "x2.f32", out = dir / "y.f32";
  write_floats(in, {4.0f, 1.25f, 0.125f, -0.74f, -2.5f, 1.75f, 0.3f, 0.0f, 600.0f, -100.0f, 50.0f,
                    0.2f, 19.0f, -17.0f, 1.0f, 0.0f});
  // amax 6 for the 16-element fp4 blocks.
  write_floats(in2, {4.0f, 1.25f, 0.125f, -0.74f, -2.5f, 1.75f, 0.3f, 0.0f, 5.0f, -3.3f, 0.9f, 2.2f,
                     6.0f, -0.45f, 1.0f, 0.0f});
  const auto fq = [&](const std::string& options, const std::filesystem::path& x,
                      const std::string& shape = "1,2,8") {
    const CommandResult r = run_command(kKvtune + " fake-quant --shape " + shape + " --in " +
                                        x.string() + " --out " + out.string() + " " + options);
    EXPECT_EQ(r.exit_code, 0) << options << ": " << r.output;
    return read_floats(out);
  };
  using V = std::vector<float>;
  // vLLM fp8 at k_scale 0.5: 1200 saturates at 448 (-> 224); -200 and 100
  // are ties (-> 192, 96); 38 and -34 ties on spacing 4 (-> 40, 32).
  EXPECT_EQ(fq("--format vllm:fp8 --scale 0.5", in),
            (V{4, 1.25f, 0.125f, -0.75f, -2.5f, 1.75f, 0.3125f, 0, 224, -96, 48, 0.203125f, 20, -16,
               1, 0}));
  // Calibrated: k_scale = amax / 448 = 600 / 448, so 600 lands on 448 exactly.
  EXPECT_EQ(fq("--format vllm:fp8 --kv-scales calibrated", in),
            (V{4.01785707f, 1.25558043f, 0.125558034f, -0.753348231f, -2.51116085f, 1.67410719f,
               0.29296875f, 0, 600, -96.4285736f, 48.2142868f, 0.209263399f, 18.75f, -17.4107151f,
               1.00446427f, 0}));
  // E5M2: 600 -> 640 (spacing 128), 0.2 -> 0.1875 (spacing 1/16).
  const V e5m2{4,   1.25f, 0.125f, -0.75f,  -2.5f, 1.75f, 0.3125f, 0,
               640, -96,   48,     0.1875f, 20,    -16,   1,       0};
  EXPECT_EQ(fq("--format vllm:fp8_e5m2", in), e5m2);
  EXPECT_EQ(fq("--format sglang:fp8_e5m2", in), e5m2);  // no overflow below 61440
  EXPECT_EQ(
      fq("--format vllm:fp8_per_token_head", in),
      (V{4, 1.28571439f, 0.125f, -0.714285731f, -2.57142878f, 1.71428585f, 0.285714298f, 0, 600,
         -96.4285736f, 48.2142868f, 0.209263399f, 18.75f, -17.4107151f, 1.00446427f, 0}));
  // int8: s = amax / 127, x * (1 / s) truncated (1.25 * 127/4 = 39.69 -> 39);
  // 600 * (1 / s) is 126.99999 in float32 and truncates to 126, as in vLLM.
  EXPECT_EQ(
      fq("--format vllm:int8_per_token_head", in),
      (V{4, 1.22834647f, 0.0944881886f, -0.724409461f, -2.48818898f, 1.73228347f, 0.283464551f, 0,
         595.275635f, -99.2126007f, 47.2440948f, 0, 18.8976383f, -14.1732292f, 0, 0}));
  // SGLang fp8 at scale 1: 600 is past 464 and NaN in its cache (the run
  // says so); the rest as vLLM's fp8.
  const CommandResult nan_run =
      run_command(kKvtune + " fake-quant --shape 1,2,8 --format sglang:fp8_e4m3 --in " +
                      in.string() + " --out " + out.string(),
                  true);
  EXPECT_EQ(nan_run.exit_code, 0) << nan_run.output;
  EXPECT_NE(nan_run.output.find("1 values overflow sglang:fp8_e4m3 at scale 1"), std::string::npos)
      << nan_run.output;
  const V sglang = read_floats(out);
  EXPECT_TRUE(std::isnan(sglang[8]));
  EXPECT_EQ(sglang[9], -96.0f);
  EXPECT_EQ(fq("--format sglang:fp8_e4m3 --kv-scales calibrated", in)[8], 600.0f);
  // TensorRT-LLM fp8: scale 1.0, saturating: 600 -> 448.
  EXPECT_EQ(fq("--format trtllm:fp8", in), (V{4, 1.25f, 0.125f, -0.75f, -2.5f, 1.75f, 0.3125f, 0,
                                              448, -96, 48, 0.203125f, 20, -16, 1, 0}));
  // NVFP4 at k_scale 0.25: g = 4, SF = e4m3(4 * 6 / 6) = 4, block scale 1;
  // E2M1 ties to even: 1.25 -> 1, -2.5 -> -2, 5 -> 4.
  const V nvfp4{4, 1, 0, -0.5f, -2, 2, 0.5f, 0, 4, -3, 1, 2, 6, -0.5f, 1, 0};
  EXPECT_EQ(fq("--format vllm:nvfp4 --scale 0.25", in2, "1,1,16"), nvfp4);
  EXPECT_EQ(fq("--format trtllm:nvfp4 --scale 0.25", in2, "1,1,16"), nvfp4);
  // SGLang fp4: scale 2^ceil(log2(6 / 6)) = 1; midpoints go up: 1.25 -> 1.5,
  // -2.5 -> -3, 5 -> 6.
  EXPECT_EQ(fq("--format sglang:fp4_e2m1", in2),
            (V{4, 1.5f, 0, -0.5f, -3, 2, 0.5f, 0, 6, -3, 1, 2, 6, -0.5f, 1, 0}));

  CommandResult r =
      run_command(kKvtune + " fake-quant --shape 1,2,8 --format trtllm:fp8 --scale 2 --in " +
                      in.string() + " --out " + out.string(),
                  true);
  EXPECT_NE(r.output.find("always applies a scale of 1.0"), std::string::npos) << r.output;
  r = run_command(kKvtune + " fake-quant --shape 1,2,8 --format vllm:nvfp4 --in " + in.string() +
                      " --out " + out.string(),
                  true);
  EXPECT_NE(r.output.find("head_dim 8 is not a multiple of 16"), std::string::npos) << r.output;
  r = run_command(kKvtune +
                      " fake-quant --shape 1,2,8 --format sglang:fp8_e4m3 --kv-scales "
                      "calculated --in " +
                      in.string() + " --out " + out.string(),
                  true);
  EXPECT_NE(r.output.find("sglang does not have"), std::string::npos) << r.output;
  std::filesystem::remove_all(dir);
}

TEST(CliFormats, EngineDtypesAreMeasuredWithTheirOwnArithmetic) {
  const CommandResult r =
      run_command(kKvtune +
                  " formats --tokens 256 --heads 2 --head-dim 64 --json --formats "
                  "vllm:fp8,vllm:int8_per_token_head,vllm:nvfp4,sglang:fp4_e2m1,trtllm:fp8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rows = nlohmann::json::parse(r.output)["formats"];
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[0]["format"], "vllm:fp8");
  // Bits: 8 + one fp32 over 256 x 2 x 64 values; 8 + 32/64; 4 + 8/16 (+ fp32).
  EXPECT_DOUBLE_EQ(rows[0]["key_bits"].get<double>(), 8.0 + 32.0 / 32768);
  EXPECT_DOUBLE_EQ(rows[1]["key_bits"].get<double>(), 8.5);
  EXPECT_DOUBLE_EQ(rows[3]["key_bits"].get<double>(), 4.5);
  for (const auto& row : rows) {
    EXPECT_GT(row["value_rel_err"].get<double>(), 0.0) << row;
  }
  // int8 with a scale per (token, head) beats fp8's 3 mantissa bits; 4 bits are worse.
  EXPECT_LT(rows[1]["value_rel_err"].get<double>(), rows[0]["value_rel_err"].get<double>());
  EXPECT_GT(rows[2]["value_rel_err"].get<double>(), rows[0]["value_rel_err"].get<double>());
  EXPECT_GT(rows[3]["value_rel_err"].get<double>(), rows[0]["value_rel_err"].get<double>());
}

TEST(CliErrors, BadOptionValuesAreNamed) {
  CommandResult r = run_command(kKvtune + " formats --scheme bogus", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("scheme 'bogus'"), std::string::npos) << r.output;

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

TEST(CliWorkerCommands, RunKvtuneWorkerAndPassItsOutputAndExitCodeThrough) {
  // `kvtune inspect|eval|generate` are served by kvtune-worker; what it prints
  // and returns reaches the user unchanged.
  for (const std::string args : {"inspect --model builtin:demo", "eval --bogus-option"}) {
    const CommandResult direct = run_command(build_path("kvtune-worker") + " " + args, true);
    const CommandResult via = run_command(kKvtune + " " + args, true);
    EXPECT_EQ(via.exit_code, direct.exit_code) << args;
    EXPECT_EQ(via.output, direct.output) << args;
  }
  EXPECT_EQ(run_command(kKvtune + " eval --bogus-option", true).exit_code, 1);
}

const std::string kShared = KVTUNE_SHARED_DIR;
const std::string kStories = kShared + "/models/stories260K.bin";

#define SKIP_WITHOUT_SHARED()             \
  if (!std::filesystem::exists(kStories)) \
  GTEST_SKIP() << "../shared/models/stories260K.bin is absent here"

TEST(CliInspect, DescribesTheModelAndItsFingerprint) {
  SKIP_WITHOUT_SHARED();
  const CommandResult r = run_command(kKvtune + " inspect --model " + kStories + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["layers"], 5);
  EXPECT_EQ(j["kv_heads"], 4);
  EXPECT_EQ(j["head_dim"], 8);
  EXPECT_EQ(j["fingerprint"].get<std::string>().size(), 32u);
  EXPECT_FALSE(j["synthetic"].get<bool>());
  // The same content gives the same fingerprint.
  EXPECT_EQ(
      nlohmann::json::parse(
          run_command(kKvtune + " inspect --model " + kStories + " --json").output)["fingerprint"],
      j["fingerprint"]);
}

TEST(CliInspect, TheDemoModelIsMarkedSynthetic) {
  const CommandResult r = run_command(kKvtune + " inspect --model builtin:demo");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("synthetic"), std::string::npos) << r.output;
}

TEST(CliEval, JsonHasEveryMetricAndKv16IsLossless) {
  SKIP_WITHOUT_SHARED();
  const std::string base = kKvtune + " eval --model " + kStories + " --data sample:2:48:0 --json";
  const auto fp = nlohmann::json::parse(run_command(base + " --config KV16").output);
  for (const char* key : {"kl", "delta_nll", "ppl_fp", "ppl_q", "top1_agreement", "avg_bits",
                          "bytes_per_token", "attn_rel_err", "tokens"}) {
    EXPECT_TRUE(fp.contains(key)) << key;
  }
  EXPECT_EQ(fp["kl"].get<double>(), 0.0);
  EXPECT_EQ(fp["tokens"], 96);
  EXPECT_EQ(fp["attn_rel_err"].size(), 5u);
  const auto q = nlohmann::json::parse(
      run_command(base + " --config K8V4,KV2,KV4,KV4,KV8 --scheme kivi").output);
  EXPECT_GT(q["kl"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(q["avg_bits"].get<double>(), (6.0 + 2 + 4 + 4 + 8) / 5);
  EXPECT_EQ(q["config"], "K8V4,KV2,KV4,KV4,KV8");
}

TEST(CliEval, PromptTokensReportContinuationKlBesideAllPositionsKl) {
  SKIP_WITHOUT_SHARED();
  const std::string base =
      kKvtune + " eval --model " + kStories + " --data sample:2:64:0 --json --config KV2";
  const auto plain = nlohmann::json::parse(run_command(base).output);
  EXPECT_EQ(plain["kl_all"], plain["kl"]);
  EXPECT_EQ(plain["prompt_tokens"], 0);
  EXPECT_EQ(plain["read"], "fresh");
  // --prompt-tokens 0 is the same evaluation.
  EXPECT_EQ(nlohmann::json::parse(run_command(base + " --prompt-tokens 0").output)["kl"],
            plain["kl"]);

  const auto fresh = nlohmann::json::parse(run_command(base + " --prompt-tokens 32").output);
  EXPECT_EQ(fresh["prompt_tokens"], 32);
  EXPECT_EQ(fresh["tokens"], 2 * (64 - 32));
  EXPECT_NE(fresh["kl"], fresh["kl_all"]);
  EXPECT_LT(fresh["kl_all"].get<double>(), fresh["kl"].get<double>());  // the prompt is fresh
  const auto cache =
      nlohmann::json::parse(run_command(base + " --prompt-tokens 32 --read cache").output);
  EXPECT_EQ(cache["read"], "cache");
  EXPECT_GT(cache["kl_all"].get<double>(), fresh["kl_all"].get<double>());

  // A JSONL line's "prompt" overrides --prompt-tokens; a bad one is named.
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvtune_cli_prompt_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string tokens = "[1";
  for (int i = 2; i < 40; ++i) tokens += "," + std::to_string(i * 5);
  tokens += "]";
  std::ofstream(dir / "data.jsonl") << "{\"tokens\": " << tokens << ", \"prompt\": 20}\n"
                                    << "{\"tokens\": " << tokens << "}\n";
  const auto mixed = nlohmann::json::parse(
      run_command(kKvtune + " eval --model " + kStories + " --json --config KV2 --data " +
                  (dir / "data.jsonl").string() + " --prompt-tokens 10")
          .output);
  EXPECT_EQ(mixed["prompt_tokens"], nlohmann::json::array({20, 10}));
  EXPECT_EQ(mixed["tokens"], (39 - 20) + (39 - 10));
  std::ofstream(dir / "bad.jsonl") << "{\"tokens\": " << tokens << ", \"prompt\": 38}\n";
  const CommandResult bad = run_command(kKvtune + " eval --model " + kStories +
                                            " --config KV2 --data " + (dir / "bad.jsonl").string(),
                                        true);
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("bad.jsonl:1: \"prompt\" is 38; it must be a whole number of tokens "
                            "from 0 to 37 (at least 2 of the sequence's 39 tokens continue it)"),
            std::string::npos)
      << bad.output;
  const CommandResult rule = run_command(base + " --read stale", true);
  EXPECT_NE(rule.exit_code, 0);
  EXPECT_NE(rule.output.find("read rule 'stale' is not fresh, cache, fresh-prefill"),
            std::string::npos)
      << rule.output;
  std::filesystem::remove_all(dir);
}

TEST(CliEval, KvtunerYamlConfigFileEqualsTheSameConfigInline) {
  SKIP_WITHOUT_SHARED();
  const auto dir =
      std::filesystem::temp_directory_path() / ("kvtune_cli_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto yaml = dir / "preset.yaml";
  std::ofstream(yaml) << "0: {nbits_key: 8, nbits_value: 4}\n1: {nbits_key: 2, nbits_value: 2}\n"
                         "2: {nbits_key: 4, nbits_value: 4}\n3: {nbits_key: 4, nbits_value: 2}\n"
                         "4: {nbits_key: 8, nbits_value: 8}\n";
  const std::string base = kKvtune + " eval --model " + kStories + " --data sample:2:40:3 --json";
  const auto from_file =
      nlohmann::json::parse(run_command(base + " --config-file " + yaml.string()).output);
  const auto inline_cfg =
      nlohmann::json::parse(run_command(base + " --config K8V4,KV2,KV4,K4V2,KV8").output);
  EXPECT_EQ(from_file["kl"], inline_cfg["kl"]);
  EXPECT_EQ(from_file["config"], "K8V4,KV2,KV4,K4V2,KV8");
  std::filesystem::remove_all(dir);
}

TEST(CliEval, KvtunerTargetRunsKvtunersCacheAndRefusesWhatItCannot) {
  SKIP_WITHOUT_SHARED();
  const std::string base = kKvtune + " eval --model " + kStories +
                           " --data sample:2:64:0 --json --config K8V4 --prompt-tokens 16";
  const auto idealized = nlohmann::json::parse(run_command(base).output);
  const auto token = nlohmann::json::parse(run_command(base + " --target kvtuner").output);
  EXPECT_EQ(token["scheme"], "kvtuner:per-token-asym/G=0/R=0");
  EXPECT_NE(token["kl"], idealized["kl"]);
  EXPECT_NE(token["kl"], token["kl_all"]);
  const auto channel = nlohmann::json::parse(
      run_command(base + " --target kvtuner --scheme per-channel-asym").output);
  EXPECT_EQ(channel["scheme"], "kvtuner:per-channel-asym/G=32/R=32");
  const auto r8 = nlohmann::json::parse(
      run_command(base + " --target kvtuner --scheme per-channel-asym --residual 8").output);
  EXPECT_EQ(r8["scheme"], "kvtuner:per-channel-asym/G=32/R=8");
  EXPECT_NE(r8["kl"], channel["kl"]);

  CommandResult r = run_command(base + " --target kvtuner --scheme kivi", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("not one of KVTuner's per-token-asym, per-channel-asym"),
            std::string::npos)
      << r.output;
  r = run_command(base + " --target kvtuner --config KV3", true);
  EXPECT_NE(r.output.find("format 3 is not KVTuner's"), std::string::npos) << r.output;
  r = run_command(base + " --target kvtuner --read cache", true);
  EXPECT_NE(r.output.find("takes the fresh rule"), std::string::npos) << r.output;
  r = run_command(base + " --target vllm2", true);
  EXPECT_NE(r.output.find("target 'vllm2' is not one of kvtune, kvtuner, vllm, sglang"),
            std::string::npos)
      << r.output;
}

TEST(CliEval, AnEngineTargetReadsAsItsEngineAndRefusesWhatItCannotRun) {
  SKIP_WITHOUT_SHARED();
  const std::string base = kKvtune + " eval --model " + kStories + " --data sample:2:32:0 --json";
  CommandResult r = run_command(base + " --target vllm --config KV16,KVvllm:fp8,KVvllm:fp8," +
                                "KVvllm:fp8,KVvllm:fp8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto vllm = nlohmann::json::parse(r.output);
  EXPECT_EQ(vllm["read"], "cache");  // vLLM V1 reads what it just cached
  EXPECT_GT(vllm["kl"].get<double>(), 0.0);
  // The same config under kvtune's default rule reads fresh K/V: another result.
  r = run_command(base + " --config KV16,KVvllm:fp8,KVvllm:fp8,KVvllm:fp8,KVvllm:fp8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(r.output)["read"], "fresh");
  EXPECT_NE(nlohmann::json::parse(r.output)["kl"], vllm["kl"]);

  r = run_command(base + " --target vllm --config KVvllm:fp8,KVvllm:fp8_e5m2,KV16,KV16,KV16", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("layer 1 (KVvllm:fp8_e5m2)"), std::string::npos) << r.output;
  r = run_command(base + " --target sglang --config KVsglang:fp8_e4m3,KV16,KV16,KV16,KV16", true);
  EXPECT_NE(r.output.find("cannot leave a layer unquantized"), std::string::npos) << r.output;
}

TEST(CliEval, BadInputsAreNamed) {
  SKIP_WITHOUT_SHARED();
  const std::string base = kKvtune + " eval --model " + kStories + " --data sample:2:40:3";
  CommandResult r = run_command(base + " --config KV4,KV2", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("2 pairs but the model has 5 layers"), std::string::npos) << r.output;
  r = run_command(base + " --config KV4 --scheme kivi --group-size 32 --residual 40", true);
  EXPECT_NE(r.output.find("residual 40"), std::string::npos) << r.output;
  r = run_command(kKvtune + " eval --model /nonexistent.bin --data sample:1:8:0 --config KV4",
                  true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("/nonexistent.bin"), std::string::npos) << r.output;
}

TEST(CliEval, FreeRunReportsAgreementWithTheUnquantizedContinuation) {
  SKIP_WITHOUT_SHARED();
  const std::string base = kKvtune + " eval --model " + kStories + " --data sample:3:48:1 --json";
  const CommandResult r = run_command(base + " --config KV16 --config KV2 --free-run 3,8,24");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<nlohmann::json> lines;
  std::istringstream in(r.output);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["free_run"]["agreement"], 1.0);
  EXPECT_EQ(lines[0]["free_run"]["first_divergence"], 24.0);
  EXPECT_EQ(lines[0]["free_run"]["prompts"], 3);
  EXPECT_LT(lines[1]["free_run"]["agreement"].get<double>(), 1.0);
  const CommandResult bad = run_command(base + " --config KV2 --free-run 3,8", true);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("takes N,P,M"), std::string::npos) << bad.output;
}

TEST(CliGenerate, GreedyDecodeMatchesTheReferenceAndQuantizationChangesIt) {
  SKIP_WITHOUT_SHARED();
  const auto ref =
      nlohmann::json::parse(std::ifstream(kShared + "/reference/stories260K-greedy.json"));
  const std::string base = kKvtune + " generate --model " + kStories + " --steps 256 --json";
  const auto fp = nlohmann::json::parse(run_command(base).output);
  EXPECT_EQ(fp["generated"], ref["greedy_next_ids"]);
  EXPECT_EQ(nlohmann::json::parse(run_command(base + " --config KV16").output)["generated"],
            ref["greedy_next_ids"]);
  const auto q = nlohmann::json::parse(run_command(base + " --config KV2").output);
  EXPECT_NE(q["generated"], ref["greedy_next_ids"]);
  EXPECT_EQ(q["generated"].size(), 256u);
}

}  // namespace
}  // namespace kvtune::testing
