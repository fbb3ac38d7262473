// Job specs: what POST /v1/jobs and `kvtune submit` accept, and the field
// named for each thing they refuse.
#include <gtest/gtest.h>

#include <map>

#include "kvtune/common/job_spec.h"

namespace kvtune {
namespace {

using json = nlohmann::json;

// The field errors a spec gives, as "field: message" lines.
std::vector<std::string> errors_of(const json& spec) {
  try {
    JobSpec::parse(spec);
  } catch (const JobSpecError& e) {
    std::vector<std::string> out;
    for (const FieldError& f : e.fields()) out.push_back(f.field);
    return out;
  }
  return {};
}

TEST(JobSpec, DefaultsAreFilledIn) {
  const JobSpec s =
      JobSpec::parse({{"kind", "evaluate"}, {"model", "m.bin"}, {"configs", {"KV4"}}});
  EXPECT_EQ(s.kind, JobSpec::Kind::Evaluate);
  EXPECT_EQ(s.data, "sample:8:128:0");
  EXPECT_EQ(s.seq_len, 256);
  EXPECT_EQ(s.scheme.key(), "per-token-asym/zp=int");
  EXPECT_EQ(s.candidates.size(), 9u);
  EXPECT_EQ(s.configs, std::vector<std::string>{"KV4"});
}

TEST(JobSpec, ReadsEveryField) {
  const JobSpec s = JobSpec::parse(json::parse(R"({
    "kind": "profile", "model": "/m", "data": "toks.u16", "seq_len": 64, "name": "x",
    "scheme": {"name": "kivi", "group_size": 8, "residual": 16, "zero_point": "float"},
    "candidates": ["KV8", "Kfp8Vnvfp4"], "metric": "kl"})"));
  EXPECT_EQ(s.kind, JobSpec::Kind::Profile);
  EXPECT_EQ(s.scheme.key(), "kivi/G=8/R=16/zp=float");
  ASSERT_EQ(s.candidates.size(), 2u);
  EXPECT_EQ(s.candidates[1].name(), "Kfp8Vnvfp4");
  EXPECT_EQ(s.seq_len, 64);
  EXPECT_EQ(s.name, "x");
}

TEST(JobSpec, ResidualDefaultsToGroupSize) {
  const JobSpec s = JobSpec::parse(
      {{"kind", "profile"}, {"model", "m"}, {"scheme", {{"name", "kivi"}, {"group_size", 16}}}});
  EXPECT_EQ(s.scheme.residual, 16);
}

TEST(JobSpec, RoundTripsThroughItsJson) {
  const JobSpec s = JobSpec::parse(json::parse(R"({"kind": "evaluate", "model": "/m",
    "configs": ["KV4", "K8V4,KV2"], "scheme": {"name": "kivi", "group_size": 4, "residual": 8}})"));
  const JobSpec t = JobSpec::parse(s.to_json());
  EXPECT_EQ(t.to_json(), s.to_json());
  EXPECT_EQ(t.configs, s.configs);
}

TEST(JobSpec, NamesEveryWrongField) {
  const auto fields = errors_of(json::parse(R"({
    "kind": "evaluat", "data": 3, "seq_len": -1, "colour": "red",
    "scheme": {"name": "kivi", "group_size": 8, "residual": 12, "zp": 1},
    "configs": ["KV4", "K9V4", 7], "candidates": ["KV8", "KV8"], "metric": "mse"})"));
  const std::vector<std::string> expected = {
      "colour",          "kind",   "model",      "data",       "seq_len",      "scheme.zp",
      "scheme.residual", "metric", "configs[1]", "configs[2]", "candidates[1]"};
  EXPECT_EQ(fields, expected);
}

TEST(JobSpec, ErrorMessagesSayWhatIsWrong) {
  try {
    JobSpec::parse({{"kind", "evaluate"}, {"model", "m"}, {"configs", {"K8V4,KV3,KVx"}}});
    FAIL() << "accepted a bad config";
  } catch (const JobSpecError& e) {
    ASSERT_EQ(e.fields().size(), 1u);
    EXPECT_EQ(e.fields()[0].field, "configs[0]");
    EXPECT_NE(e.fields()[0].message.find("KVx"), std::string::npos) << e.fields()[0].message;
    EXPECT_NE(std::string(e.what()).find("configs[0]"), std::string::npos);
  }
}

TEST(JobSpec, PromptTokensAndReadRule) {
  const JobSpec d =
      JobSpec::parse(json{{"kind", "evaluate"}, {"model", "m"}, {"configs", {"KV4"}}});
  EXPECT_EQ(d.prompt_tokens, 0);
  EXPECT_TRUE(d.read.is_default());
  const JobSpec s = JobSpec::parse(json{{"kind", "evaluate"},
                                        {"model", "m"},
                                        {"configs", {"KV4"}},
                                        {"prompt_tokens", 64},
                                        {"read", "fresh-prefill"}});
  EXPECT_EQ(s.prompt_tokens, 64);
  EXPECT_EQ(s.read.name(), "fresh-prefill");
  EXPECT_EQ(JobSpec::parse(s.to_json()).to_json(), s.to_json());
  try {
    JobSpec::parse(json{{"kind", "evaluate"},
                        {"model", "m"},
                        {"configs", {"KV4"}},
                        {"prompt_tokens", -1},
                        {"read", "stale"}});
    ADD_FAILURE() << "accepted";
  } catch (const JobSpecError& e) {
    std::map<std::string, std::string> fields;
    for (const auto& f : e.fields()) fields[f.field] = f.message;
    EXPECT_EQ(fields.size(), 2u) << e.what();
    EXPECT_NE(fields["prompt_tokens"].find("-1 is out of range"), std::string::npos);
    EXPECT_NE(fields["read"].find("read rule 'stale' is not fresh, cache"), std::string::npos);
  }
  try {
    JobSpec::parse(json{{"kind", "evaluate"},
                        {"model", "m"},
                        {"configs", {"KV4"}},
                        {"scheme", {{"name", "kivi"}}},
                        {"read", "cache"}});
    ADD_FAILURE() << "accepted";
  } catch (const JobSpecError& e) {
    ASSERT_EQ(e.fields().size(), 1u) << e.what();
    EXPECT_EQ(e.fields()[0].field, "read");
    EXPECT_NE(e.fields()[0].message.find("kivi scheme keeps its window in full precision"),
              std::string::npos);
  }
}

TEST(JobSpec, KvtunerTargetTakesKvtunersSettings) {
  const json base = {{"kind", "profile"}, {"model", "m"}, {"target", "kvtuner"}};
  // No scheme: KVTuner's per-token-asym (residual_length 0, q_group_size -1).
  const JobSpec token = JobSpec::parse(base);
  EXPECT_EQ(token.scheme.target, Scheme::Target::Kvtuner);
  EXPECT_EQ(token.scheme.key(), "kvtuner:per-token-asym/G=0/R=0");
  json channel = base;
  channel["scheme"] = {{"name", "per-channel-asym"}};
  EXPECT_EQ(JobSpec::parse(channel).scheme.key(), "kvtuner:per-channel-asym/G=32/R=32");
  channel["scheme"]["residual"] = 0;
  channel["scheme"]["group_size"] = 64;
  const JobSpec given = JobSpec::parse(channel);
  EXPECT_EQ(given.scheme.key(), "kvtuner:per-channel-asym/G=64/R=0");
  EXPECT_EQ(given.scheme.flush_period(), 2);
  // -1 is KVTuner's spelling of head_dim.
  json minus = base;
  minus["scheme"] = {{"name", "per-token-asym"}, {"group_size", -1}};
  EXPECT_EQ(JobSpec::parse(minus).scheme.group_size, 0);
  // The echo names the target and parses back to the same spec.
  EXPECT_EQ(given.to_json()["target"], "kvtuner");
  EXPECT_EQ(JobSpec::parse(given.to_json()).scheme.key(), given.scheme.key());
  EXPECT_EQ(JobSpec::parse({{"kind", "profile"}, {"model", "m"}}).to_json()["target"], "kvtune");
}

TEST(JobSpec, KvtunerTargetRefusesWhatKvtunerDoesNotRun) {
  const json base = {{"kind", "profile"}, {"model", "m"}, {"target", "kvtuner"}};
  const auto with = [&](const std::string& key, const json& value) {
    json s = base;
    s[key] = value;
    return errors_of(s);
  };
  EXPECT_EQ(with("target", "vllm-ish"), std::vector<std::string>{"target"});
  EXPECT_EQ(with("scheme", {{"name", "kivi"}}), std::vector<std::string>{"scheme.name"});
  EXPECT_EQ(with("scheme", {{"zero_point", "float"}}),
            std::vector<std::string>{"scheme.zero_point"});
  EXPECT_EQ(with("scheme", {{"name", "per-channel-asym"}, {"group_size", -1}}),
            std::vector<std::string>{"scheme.group_size"});
  EXPECT_EQ(with("read", "cache"), std::vector<std::string>{"read"});
  EXPECT_EQ(with("candidates", {"KV8", "K3V4", "KVfp8"}),
            (std::vector<std::string>{"candidates[1]", "candidates[2]"}));
  json evaluate = base;
  evaluate["kind"] = "evaluate";
  evaluate["configs"] = {"KV4", "K8V4,KVnvfp4"};
  EXPECT_EQ(errors_of(evaluate), std::vector<std::string>{"configs[1]"});
  evaluate["configs"] = {"KV4", "K8V2,KV16"};
  EXPECT_TRUE(errors_of(evaluate).empty());
}

TEST(JobSpec, EngineDtypesAndTheirScaleSource) {
  json spec = {{"kind", "evaluate"},
               {"model", "m"},
               {"kv_scales", "calibrated"},
               {"configs", {"KVvllm:fp8", "KVsglang:fp4_e2m1,KV16"}}};
  const JobSpec parsed = JobSpec::parse(spec);
  EXPECT_EQ(parsed.scheme.kv_scales, KvScales::Calibrated);
  EXPECT_EQ(parsed.to_json()["kv_scales"], "calibrated");
  EXPECT_EQ(JobSpec::parse(parsed.to_json()).scheme.key(), parsed.scheme.key());
  // The default leaves the echo as it was (stored jobs match their specs).
  EXPECT_FALSE(
      JobSpec::parse({{"kind", "profile"}, {"model", "m"}}).to_json().contains("kv_scales"));
  spec["kv_scales"] = "checkpoint";
  EXPECT_EQ(errors_of(spec), std::vector<std::string>{"kv_scales"});
  spec["kv_scales"] = "calculated";  // vLLM's alone
  spec["configs"] = {"KVvllm:fp8", "KVsglang:fp8_e4m3", "KVvllm:fp9"};
  EXPECT_EQ(errors_of(spec), (std::vector<std::string>{"configs[1]", "configs[2]"}));
}

TEST(JobSpec, IkLlamaCppsRotationIsOffUnlessAsked) {
  // ik_llama.cpp's Hadamard is opt-in (-khad, -vhad): "auto" resolves to off.
  json spec = {{"kind", "search"}, {"model", "m"}, {"target", "ik_llama.cpp"}};
  const JobSpec ik = JobSpec::parse(spec);
  EXPECT_EQ(ik.scheme.rotation, Rotation::Off);
  EXPECT_EQ(ik.to_json()["rotate"], "off");
  EXPECT_EQ(JobSpec::parse(ik.to_json()).to_json(), ik.to_json());
  spec["rotate"] = "auto";
  EXPECT_EQ(JobSpec::parse(spec).scheme.rotation, Rotation::Off);
  spec["rotate"] = "on";
  EXPECT_EQ(JobSpec::parse(spec).scheme.rotation, Rotation::On);
  // llama.cpp keeps its own rule.
  spec["target"] = "llama.cpp";
  spec.erase("rotate");
  EXPECT_EQ(JobSpec::parse(spec).scheme.rotation, Rotation::Auto);
}

TEST(JobSpec, ASearchIsValidatedOnAnotherSampleByDefault) {
  const JobSpec s = JobSpec::parse({{"kind", "search"}, {"model", "m.bin"}});
  EXPECT_TRUE(s.validates());
  EXPECT_EQ(s.validation_data, "sample:8:128:1");  // the calibration sample's next seed
  EXPECT_EQ(s.free_run.prompts, 4);
  EXPECT_EQ(JobSpec::parse(s.to_json()).to_json(), s.to_json());
  EXPECT_EQ(default_validation_data("sample:2:64:41"), "sample:2:64:42");
  EXPECT_EQ(default_validation_data("tokens.u16"), "sample:8:128:1");

  const JobSpec custom = JobSpec::parse(json::parse(R"({
    "kind": "search", "model": "m.bin", "data": "sample:4:32:7", "validation_data": "v.jsonl",
    "free_run": {"prompts": 2, "prompt_tokens": 8, "new_tokens": 12}})"));
  EXPECT_EQ(custom.validation_data, "v.jsonl");
  EXPECT_EQ(custom.free_run.prompts, 2);
  EXPECT_EQ(custom.free_run.prompt_tokens, 8);
  EXPECT_EQ(custom.free_run.new_tokens, 12);
  EXPECT_FALSE(JobSpec::parse({{"kind", "search"}, {"model", "m"}, {"validation_data", "none"}})
                   .validates());
  EXPECT_FALSE(
      JobSpec::parse({{"kind", "evaluate"}, {"model", "m"}, {"configs", {"KV4"}}}).validates());
}

TEST(JobSpec, ValidationFieldsThatCannotWorkAreRefused) {
  using V = std::vector<std::string>;
  EXPECT_EQ(errors_of({{"kind", "profile"}, {"model", "m"}, {"validation_data", "sample:2:8:1"}}),
            V{"validation_data"});
  EXPECT_EQ(errors_of({{"kind", "search"}, {"model", "m"}, {"validation_data", ""}}),
            V{"validation_data"});
  EXPECT_EQ(errors_of({{"kind", "search"}, {"model", "m"}, {"free_run", {{"prompt", 2}}}}),
            V{"free_run.prompt"});
  EXPECT_EQ(errors_of({{"kind", "search"}, {"model", "m"}, {"free_run", {{"new_tokens", 0}}}}),
            V{"free_run.new_tokens"});
  // The default free run shrinks to a small validation sample...
  const JobSpec small =
      JobSpec::parse({{"kind", "search"}, {"model", "m"}, {"data", "sample:2:8:0"}});
  EXPECT_EQ(small.free_run.prompts, 2);
  EXPECT_EQ(small.free_run.prompt_tokens, 4);
  EXPECT_EQ(JobSpec::parse(small.to_json()).to_json(), small.to_json());
  // ... but sizes a spec gives are checked: the sample has 2 sequences of 8 tokens.
  EXPECT_EQ(errors_of({{"kind", "search"},
                       {"model", "m"},
                       {"data", "sample:2:8:0"},
                       {"free_run", {{"prompts", 3}, {"prompt_tokens", 9}}}}),
            (V{"free_run.prompts", "free_run.prompt_tokens"}));
}

TEST(JobSpec, AnEngineTargetSetsCandidatesAndReadRuleAndRefusesWhatTheEngineCannotRun) {
  const JobSpec vllm = JobSpec::parse(
      {{"kind", "profile"}, {"model", "m"}, {"target", "vllm"}, {"kv_scales", "calculated"}});
  EXPECT_EQ(vllm.target, "vllm");
  ASSERT_NE(vllm.engine_target(), nullptr);
  EXPECT_EQ(vllm.read, ReadRule::parse("cache"));  // vLLM V1 reads what it just cached
  ASSERT_EQ(vllm.candidates.size(), 5u);
  EXPECT_EQ(vllm.candidates[0].name(), "KVvllm:fp8");
  EXPECT_EQ(JobSpec::parse(vllm.to_json()).to_json(), vllm.to_json());
  const JobSpec fresh =
      JobSpec::parse({{"kind", "search"}, {"model", "m"}, {"target", "sglang"}, {"read", "fresh"}});
  EXPECT_EQ(fresh.read, ReadRule::parse("fresh"));  // the spec's own rule wins
  EXPECT_EQ(JobSpec::parse({{"kind", "search"}, {"model", "m"}, {"target", "sglang"}}).read,
            ReadRule::parse("fresh-prefill"));

  using V = std::vector<std::string>;
  EXPECT_EQ(
      errors_of({{"kind", "evaluate"},
                 {"model", "m"},
                 {"target", "vllm"},
                 {"configs", {"KVvllm:fp8,KV16,KVvllm:fp8", "KVvllm:fp8,KVvllm:nvfp4", "KV4"}}}),
      (V{"configs[1]", "configs[2]"}));
  EXPECT_EQ(errors_of({{"kind", "profile"},
                       {"model", "m"},
                       {"target", "trtllm"},
                       {"candidates", {"KVtrtllm:fp8", "KVvllm:fp8"}}}),
            V{"candidates[1]"});
  EXPECT_EQ(errors_of({{"kind", "search"}, {"model", "m"}, {"target", "vllm2"}}), V{"target"});
  EXPECT_EQ(
      errors_of(
          {{"kind", "search"}, {"model", "m"}, {"target", "vllm"}, {"scheme", {{"name", "kivi"}}}}),
      V{"scheme.name"});
  try {
    JobSpec::parse({{"kind", "evaluate"},
                    {"model", "m"},
                    {"target", "sglang"},
                    {"configs", {"KVsglang:fp8_e4m3,KV16"}}});
    ADD_FAILURE() << "a skipped layer passed for sglang";
  } catch (const JobSpecError& e) {
    EXPECT_NE(std::string(e.what()).find("layer 1 (KV16)"), std::string::npos) << e.what();
  }
}

TEST(JobSpec, EvaluateNeedsConfigs) {
  EXPECT_EQ(errors_of({{"kind", "evaluate"}, {"model", "m"}}), std::vector<std::string>{"configs"});
  EXPECT_EQ(errors_of({{"kind", "evaluate"}, {"model", "m"}, {"configs", json::array()}}),
            std::vector<std::string>{"configs"});
  EXPECT_TRUE(errors_of({{"kind", "profile"}, {"model", "m"}}).empty());
}

TEST(JobSpec, RefusesNonObjectsAndBadJson) {
  EXPECT_THROW(JobSpec::parse(json::array()), JobSpecError);
  EXPECT_THROW(JobSpec::parse_text("{\"kind\": "), JobSpecError);
  EXPECT_EQ(errors_of({{"kind", "profile"}, {"model", "m"}, {"scheme", "kivi"}}),
            std::vector<std::string>{"scheme"});
  EXPECT_EQ(errors_of({{"kind", "profile"}, {"model", ""}}), std::vector<std::string>{"model"});
}

}  // namespace
}  // namespace kvtune
