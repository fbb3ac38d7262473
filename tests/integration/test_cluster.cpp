// The cluster as users run it: a coordinator process and worker processes on
// loopback, jobs submitted over HTTP, processes killed with SIGKILL.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <boost/asio.hpp>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <zmq.hpp>

#include "../support/cluster.h"
#include "../support/temp_dir.h"

namespace kvtune::testing {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

const std::string kModel = std::string(KVTUNE_SHARED_DIR) + "/models/stories260K.bin";
// Large enough that an evaluation takes a while (so kills land mid-task),
// small enough for CI.
const std::string kData = "sample:8:128:0";

#define REQUIRE_MODEL()                                                                    \
  if (!std::filesystem::exists(kModel)) {                                                  \
    GTEST_SKIP() << "needs " << kModel << " (the ../shared directory beside the project)"; \
  }

// 40 configurations of stories260K's 5 layers from KVTuner's five pairs: the
// five uniform ones and 35 mixed ones drawn with a fixed seed.
std::vector<std::string> forty_configs() {
  const std::vector<std::string> pairs = {"KV8", "K8V4", "KV4", "K4V2", "KV2"};
  std::vector<std::string> out(pairs.begin(), pairs.end());
  std::mt19937 rng(7);
  std::set<std::string> seen(out.begin(), out.end());
  while (out.size() < 40) {
    std::string c;
    for (int l = 0; l < 5; ++l) c += (l ? "," : "") + pairs[rng() % pairs.size()];
    if (seen.insert(c).second) out.push_back(c);
  }
  return out;
}

json evaluate_spec(const std::vector<std::string>& configs) {
  return {{"kind", "evaluate"},
          {"model", kModel},
          {"data", kData},
          {"scheme", {{"name", "kivi"}, {"group_size", 16}, {"residual", 32}}},
          {"configs", configs}};
}

// `kvtune eval --json` of every config in one process: config -> metrics.
std::map<std::string, json> single_process_eval(
    const std::vector<std::string>& configs,
    const std::string& options = "--scheme kivi --group-size 16 --residual 32") {
  // One BLAS thread, as the test's workers run: float32 sums in the same order.
  std::string cmd = "OPENBLAS_NUM_THREADS=1 " + build_path("kvtune") +
                    " eval --threads 1 --json --model " + kModel + " --data " + kData + " " +
                    options;
  for (const std::string& c : configs) cmd += " --config " + c;
  const CommandResult r = run_command(cmd);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::map<std::string, json> out;
  std::istringstream lines(r.output);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    json m = json::parse(line);
    for (const char* k :
         {"config", "scheme", "read", "prompt_tokens", "model", "synthetic", "device", "dtype"}) {
      m.erase(k);
    }
    out[configs.at(i++)] = m;
  }
  EXPECT_EQ(out.size(), configs.size());
  return out;
}

// Every result of a finished job equals the single-process evaluation.
void expect_results_equal(const json& job, const std::map<std::string, json>& expected) {
  ASSERT_EQ(job["state"], "done") << job.dump(1);
  ASSERT_EQ(job["results"].size(), expected.size());
  for (const json& r : job["results"]) {
    const std::string config = r["config"];
    ASSERT_TRUE(expected.contains(config)) << config;
    EXPECT_EQ(r["metrics"], expected.at(config)) << config;
  }
}

std::set<std::string> result_keys(const json& job) {
  std::set<std::string> keys;
  for (const json& r : job["results"]) keys.insert(r["eval_key"].get<std::string>());
  return keys;
}

// Keys the coordinator log says it dispatched, in order.
std::vector<std::string> dispatched(const std::string& log) {
  return captures(log, "dispatch ([0-9a-f]{32}) ");
}

class Cluster : public ::testing::Test {
 protected:
  TempDir dir{"kvtune-cluster"};
  std::string db() const { return dir.file("db"); }
  std::string log(const std::string& name) const { return dir.file(name + ".log"); }
};

TEST_F(Cluster, TwoWorkersEvaluateFortyConfigsAsOneProcessDoes) {
  REQUIRE_MODEL();
  const auto configs = forty_configs();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  auto w2 = start_worker(coordinator.endpoint(), "w2", log("w2"));
  const std::string id = coordinator.submit(evaluate_spec(configs));
  const json job = coordinator.wait_job(id);
  expect_results_equal(job, single_process_eval(configs));

  // Both workers took part, each evaluation was dispatched once and stored once.
  std::set<std::string> workers;
  for (const json& r : job["results"]) workers.insert(r["worker"].get<std::string>());
  EXPECT_EQ(workers, (std::set<std::string>{"w1", "w2"}));
  EXPECT_EQ(dispatched(coordinator.process().log()).size(), 40u);
  EXPECT_EQ(coordinator.metric("kvtune_evaluations_total"), 40);
  EXPECT_EQ(job["progress"]["done"], 40);
  EXPECT_EQ(job["model_info"]["layers"], 5);

  const json listed = coordinator.get("/v1/workers");
  EXPECT_EQ(listed["workers"].size(), 2u);
  // Each worker reports what its loaded reference holds: the final hidden
  // states and four kept boundaries of stories260K (dim 64, float32) over
  // the job's calibration tokens, at most the five boundaries of its last
  // evaluation, and (a vocabulary this small) the log-probabilities.
  const int64_t tokens = job["model_info"]["tokens"].get<int64_t>();
  const int64_t boundary = tokens * 64 * 4, logp = tokens * 512 * 4;
  EXPECT_TRUE(eventually(
      [&] {
        for (const json& w : coordinator.get("/v1/workers")["workers"]) {
          const int64_t bytes = w.value("reference_bytes", int64_t{0});
          if (bytes < 5 * boundary + logp || bytes > 10 * boundary + logp) return false;
        }
        return true;
      },
      std::chrono::milliseconds(5000)))
      << coordinator.get("/v1/workers").dump();
}

TEST_F(Cluster, PromptsAndReadRulesReachTheWorkersAndKeyTheirResults) {
  REQUIRE_MODEL();
  const std::vector<std::string> configs = {"KV4", "K8V4,KV2,KV4,KV4,KV8", "KVfp8"};
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  json plain = evaluate_spec(configs);
  plain["scheme"] = {{"name", "per-token-asym"}};
  json cached = plain;
  cached["prompt_tokens"] = 48;
  cached["read"] = "cache";
  json kivi = evaluate_spec(configs);
  kivi["prompt_tokens"] = 48;  // mid-window for R = 32
  const json a = coordinator.wait_job(coordinator.submit(plain));
  const json b = coordinator.wait_job(coordinator.submit(cached));
  const json c = coordinator.wait_job(coordinator.submit(kivi));
  // The kvtuner target (KVTuner's own cache) crosses the wire the same way.
  const std::vector<std::string> kvtuner_configs = {"KV4", "K8V4,KV2,KV4,KV4,KV8"};
  json kvtuner = evaluate_spec(kvtuner_configs);
  kvtuner["target"] = "kvtuner";
  kvtuner["scheme"] = {{"name", "per-channel-asym"}};
  kvtuner["prompt_tokens"] = 48;
  const json d = coordinator.wait_job(coordinator.submit(kvtuner));
  expect_results_equal(d, single_process_eval(kvtuner_configs,
                                              "--target kvtuner --scheme per-channel-asym "
                                              "--prompt-tokens 48"));
  EXPECT_EQ(d["spec"]["target"], "kvtuner");
  // Each is what one process computes with the same options.
  expect_results_equal(a, single_process_eval(configs, "--scheme per-token-asym"));
  expect_results_equal(b, single_process_eval(configs, "--prompt-tokens 48 --read cache"));
  expect_results_equal(c, single_process_eval(configs,
                                              "--scheme kivi --group-size 16 --residual 32 "
                                              "--prompt-tokens 48"));
  EXPECT_EQ(b["spec"]["prompt_tokens"], 48);
  EXPECT_EQ(b["spec"]["read"], "cache");
  // Other questions, other keys: nothing was reused between the three jobs.
  std::set<std::string> keys;
  for (const json* job : {&a, &b, &c, &d}) {
    for (const std::string& k : result_keys(*job)) keys.insert(k);
  }
  EXPECT_EQ(keys.size(), 11u);
  EXPECT_EQ(coordinator.metric("kvtune_cache_hits_total"), 0);
  for (const json& r : b["results"]) {
    EXPECT_EQ(r["metrics"]["tokens"], 8 * (128 - 48));
    EXPECT_GT(r["metrics"]["kl_all"].get<double>(), 0.0);
  }
  // A prompt that leaves no continuation fails the job at its describe, named.
  json too_long = plain;
  too_long["prompt_tokens"] = 127;
  const json failed = coordinator.wait_job(coordinator.submit(too_long));
  EXPECT_EQ(failed["state"], "failed");
  EXPECT_NE(failed["error"].get<std::string>().find("a prompt of 127"), std::string::npos)
      << failed.dump(1);
}

TEST_F(Cluster, KilledWorkersTaskIsReleasedAndNothingIsStoredTwice) {
  REQUIRE_MODEL();
  const auto configs = forty_configs();
  CoordinatorProcess coordinator(db(), log("coordinator"), {"--heartbeat-timeout-seconds", "1"});
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  auto w2 = start_worker(coordinator.endpoint(), "w2", log("w2"));
  const std::string id = coordinator.submit(evaluate_spec(configs));

  // Kill w1 in the middle of an evaluation: after it said "evaluating" and
  // before it said "done".
  std::string victim_key;
  ASSERT_TRUE(eventually([&] {
    const std::string text = w1->log();
    const auto started = captures(text, "evaluating ([0-9a-f]{32})");
    const auto finished = captures(text, "done ([0-9a-f]{32})");
    if (started.size() < 3 || started.size() != finished.size() + 1) return false;
    w1->kill(SIGKILL);
    victim_key = started.back();
    return true;
  })) << w1->log();
  w1->wait();

  const json job = coordinator.wait_job(id);
  expect_results_equal(job, single_process_eval(configs));
  const std::string log_text = coordinator.process().log();
  EXPECT_NE(log_text.find("worker w1 went silent"), std::string::npos) << log_text;
  // The evaluation w1 was working on went to w2, and every result is stored once.
  const auto sent = dispatched(log_text);
  EXPECT_EQ(std::count(sent.begin(), sent.end(), victim_key), 2) << victim_key;
  EXPECT_EQ(coordinator.metric("kvtune_evaluations_total"), 40);
  EXPECT_EQ(result_keys(job).size(), 40u);
  for (const json& r : job["results"]) {
    if (r["eval_key"] == victim_key) {
      EXPECT_EQ(r["worker"], "w2");
    }
  }
}

TEST_F(Cluster, CoordinatorKilledMidJobResumesWithoutRedispatching) {
  REQUIRE_MODEL();
  const auto configs = forty_configs();
  std::string api, endpoint, id;
  std::set<std::string> stored_before;
  {
    CoordinatorProcess first(db(), log("coordinator-1"));
    api = first.api();
    endpoint = first.endpoint();
    auto w1 = start_worker(endpoint, "w1", log("w1"));
    auto w2 = start_worker(endpoint, "w2", log("w2"));
    id = first.submit(evaluate_spec(configs));
    ASSERT_TRUE(eventually([&] {
      const json job = first.get("/v1/jobs/" + id);
      if (job["progress"]["done"].get<int>() < 12) return false;
      stored_before = result_keys(job);
      first.process().kill(SIGKILL);
      return true;
    }));
    first.process().wait();
    ASSERT_LT(stored_before.size(), 40u);

    // Same database, same addresses: the workers reconnect by themselves.
    CoordinatorProcess second(db(), log("coordinator-2"), {}, api, endpoint);
    const json job = second.wait_job(id);
    expect_results_equal(job, single_process_eval(configs));
    const auto sent_after = dispatched(second.process().log());
    for (const std::string& key : sent_after) {
      EXPECT_FALSE(stored_before.contains(key)) << key << " was stored before the kill";
    }
    EXPECT_LE(sent_after.size(), 40u - stored_before.size());
    EXPECT_NE(second.process().log().find("resumed 1 unfinished job"), std::string::npos);
  }
}

TEST_F(Cluster, SecondJobReusesTheFirstJobsEvaluations) {
  REQUIRE_MODEL();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  const std::vector<std::string> first = {"KV8", "KV4", "KV2"};
  const json job1 = coordinator.wait_job(coordinator.submit(evaluate_spec(first)));
  ASSERT_EQ(job1["state"], "done");
  const double dispatched_after_first = coordinator.metric("kvtune_dispatched_total");

  // Same model and data: two of three are stored already ("KV4" spelled per layer).
  const std::vector<std::string> second = {"KV8", "KV4,KV4,KV4,KV4,KV4", "K8V4"};
  const json job2 = coordinator.wait_job(coordinator.submit(evaluate_spec(second)));
  ASSERT_EQ(job2["state"], "done");
  EXPECT_EQ(coordinator.metric("kvtune_dispatched_total") - dispatched_after_first, 1);
  EXPECT_EQ(coordinator.metric("kvtune_cache_hits_total"), 2);
  EXPECT_EQ(job2["results"][0]["metrics"], job1["results"][0]["metrics"]);
  EXPECT_EQ(job2["results"][1]["metrics"], job1["results"][1]["metrics"]);
  EXPECT_EQ(job2["results"][1]["eval_key"], job1["results"][1]["eval_key"]);

  // Other data: nothing is shared.
  json other = evaluate_spec({"KV8"});
  other["data"] = "sample:2:32:1";
  ASSERT_EQ(coordinator.wait_job(coordinator.submit(other))["state"], "done");
  EXPECT_EQ(coordinator.metric("kvtune_dispatched_total") - dispatched_after_first, 2);
}

TEST_F(Cluster, ProfileGivesTheSensitivityTable) {
  REQUIRE_MODEL();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  auto w2 = start_worker(coordinator.endpoint(), "w2", log("w2"));
  const json job =
      coordinator.wait_job(coordinator.submit({{"kind", "profile"},
                                               {"model", kModel},
                                               {"data", "sample:4:64:0"},
                                               {"candidates", {"KV8", "KV4", "KV2"}}}));
  ASSERT_EQ(job["state"], "done") << job.dump(1);
  ASSERT_EQ(job["results"].size(), 15u);
  const json& layers = job["sensitivity"]["layers"];
  ASSERT_EQ(layers.size(), 5u);
  for (const json& row : layers) {
    // Fewer bits, more damage, on every layer.
    EXPECT_LT(row["kl"]["KV8"].get<double>(), row["kl"]["KV4"].get<double>());
    EXPECT_LT(row["kl"]["KV4"].get<double>(), row["kl"]["KV2"].get<double>());
    EXPECT_GT(row["attn_rel_err"]["KV2"].get<double>(), 0);
  }
  // stories260K's first layer is far more sensitive than its last.
  EXPECT_GT(layers[0]["kl"]["KV2"].get<double>(), 3 * layers[4]["kl"]["KV2"].get<double>());
  // Each profile evaluation quantizes exactly one layer.
  for (const json& r : job["results"]) {
    const std::string layers_text = r["layers"];
    EXPECT_EQ(std::count(layers_text.begin(), layers_text.end(), '6'), 4) << layers_text;
  }
}

TEST_F(Cluster, GarbageIsRefusedAndTheCoordinatorKeepsServing) {
  REQUIRE_MODEL();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  {
    // Garbage frames and a malformed Cap'n Proto message on the worker socket.
    zmq::context_t context;
    zmq::socket_t dealer(context, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.connect(coordinator.endpoint());
    dealer.send(zmq::buffer(std::string("hello?")), zmq::send_flags::none);
    std::string bad_capnp = "K\x01";
    bad_capnp += std::string("\x00\x00\x00\x00\xff\xff\x00\x00garbage!", 16);
    dealer.send(zmq::message_t(), zmq::send_flags::sndmore);
    dealer.send(zmq::buffer(bad_capnp), zmq::send_flags::none);
    ASSERT_TRUE(
        eventually([&] { return coordinator.metric("kvtune_refused_messages_total") >= 2; }, 10s));
  }
  {
    // Malformed HTTP and malformed job bodies.
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket raw(io);
    const auto [host, port] = http::parse_host_port(coordinator.api());
    raw.connect({boost::asio::ip::make_address(host), port});
    boost::asio::write(raw, boost::asio::buffer(std::string("\x01\x02 NOT HTTP\r\n\r\n")));
    boost::system::error_code ec;
    std::string reply(256, '\0');
    reply.resize(raw.read_some(boost::asio::buffer(reply), ec));
    EXPECT_NE(reply.find("400"), std::string::npos) << reply;
  }
  auto r = coordinator.call("POST", "/v1/jobs", "{\"kind\": \"evaluate\", ");
  EXPECT_EQ(r.status, 400);
  r = coordinator.call("POST", "/v1/jobs",
                       R"({"kind": "evaluate", "model": "m", "configs": ["KV5"]})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body)["fields"][0]["field"], "configs[0]") << r.body;
  r = coordinator.call("POST", "/v1/jobs", std::string(2 << 20, '{'));
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(coordinator.call("GET", "/v1/jobs/nope").status, 404);

  // Still serving: a real job completes.
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  const json job = coordinator.wait_job(coordinator.submit(evaluate_spec({"KV4"})));
  EXPECT_EQ(job["state"], "done");
  const std::string text = coordinator.process().log();
  EXPECT_NE(text.find("refused"), std::string::npos) << text;
  EXPECT_GE(coordinator.metric("kvtune_refused_http_requests_total"), 1);
}

TEST_F(Cluster, BadModelFailsTheJobWithTheWorkersMessage) {
  CoordinatorProcess coordinator(db(), log("coordinator"), {"--max-attempts", "2"});
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  const std::string missing = dir.file("no-such-model.bin");
  const json job = coordinator.wait_job(
      coordinator.submit({{"kind", "evaluate"}, {"model", missing}, {"configs", {"KV4"}}}));
  EXPECT_EQ(job["state"], "failed");
  EXPECT_NE(job["error"].get<std::string>().find(missing), std::string::npos) << job.dump(1);
  EXPECT_NE(job["error"].get<std::string>().find("w1"), std::string::npos) << job.dump(1);
}

TEST_F(Cluster, CancelStopsAJobAndBearerTokenGuardsTheApi) {
  CoordinatorProcess coordinator(db(), log("coordinator"), {"--api-token", "s3cret"});
  // No worker: the job stays queued until cancelled.
  auto r = coordinator.call("POST", "/v1/jobs", evaluate_spec({"KV4"}).dump());
  EXPECT_EQ(r.status, 401);
  r = coordinator.call("POST", "/v1/jobs", evaluate_spec({"KV4"}).dump(), "s3cret");
  ASSERT_EQ(r.status, 201) << r.body;
  const std::string id = json::parse(r.body)["id"];
  EXPECT_EQ(coordinator.call("GET", "/healthz").status, 200);
  EXPECT_EQ(coordinator.call("POST", "/v1/jobs/" + id + "/cancel", "", "s3cret").status, 200);
  EXPECT_EQ(coordinator.call("POST", "/v1/jobs/" + id + "/cancel", "", "s3cret").status, 409);
  r = coordinator.call("GET", "/v1/jobs/" + id, "", "s3cret");
  EXPECT_EQ(json::parse(r.body)["state"], "cancelled");
}

TEST_F(Cluster, CliClientSubmitsWaitsAndLists) {
  REQUIRE_MODEL();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  const std::string spec = dir.file("job.json");
  std::ofstream(spec) << evaluate_spec({"KV8", "KV2"}).dump();
  const std::string api = " --api " + coordinator.api();
  CommandResult r = run_command(build_path("kvtune") + " submit " + spec + " --wait" + api, true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("state     done"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("KV2 (all layers)"), std::string::npos) << r.output;
  // status --watch follows a job to its end, then prints it.
  std::ofstream(spec) << evaluate_spec({"K8V4", "K4V2", "KV4"}).dump();
  r = run_command(build_path("kvtune") + " submit " + spec + api);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string submitted = r.output.substr(0, r.output.find('\n'));
  r = run_command(build_path("kvtune") + " status " + submitted + " --watch --json" + api);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json watched = json::parse(r.output);
  EXPECT_EQ(watched["state"], "done");
  EXPECT_EQ(watched["results"].size(), 3u);

  r = run_command(build_path("kvtune") + " jobs" + api, true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("done"), std::string::npos) << r.output;
  r = run_command(build_path("kvtune") + " workers --json" + api, true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json::parse(r.output)["workers"][0]["id"], "w1");

  std::ofstream(spec) << R"({"kind": "evaluate", "model": "x", "configs": ["KV4"], "seq_len": 1})";
  r = run_command(build_path("kvtune") + " submit " + spec + api, true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("seq_len"), std::string::npos) << r.output;
  r = run_command(build_path("kvtune") + " status nope" + api, true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("404"), std::string::npos) << r.output;
}

TEST_F(Cluster, SigtermedWorkerSaysGoodbye) {
  REQUIRE_MODEL();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  const std::string id = coordinator.submit(evaluate_spec({"KV8", "KV4"}));
  ASSERT_EQ(coordinator.wait_job(id)["state"], "done");
  w1->kill(SIGTERM);
  EXPECT_EQ(w1->wait(), 0) << w1->log();
  EXPECT_TRUE(eventually(
      [&] { return coordinator.process().log().find("w1 says goodbye") != std::string::npos; },
      10s));
  EXPECT_EQ(coordinator.get("/v1/workers")["workers"].size(), 0u);
}

// --- search jobs ------------------------------------------------------------

const std::vector<std::string> kFivePairs = {"KV8", "K8V4", "KV4", "K4V2", "KV2"};

json search_spec(int max_evaluations, const std::string& data = "sample:2:64:0") {
  return {{"kind", "search"},
          {"model", kModel},
          {"data", data},
          {"search",
           {{"candidates", kFivePairs},
            {"max_bits", 8},
            {"max_evaluations", max_evaluations},
            {"seed", 0}}}};
}

struct BitsKl {
  double bits, log_kl;
};
BitsKl point(const json& result) {
  return {result["metrics"]["avg_bits"].get<double>(),
          std::log10(std::max(result["metrics"]["kl"].get<double>(), 1e-12))};
}

// The area dominated by `points` (minimizing both) inside the box below `ref`,
// computed independently of the search library: sweep by bits.
double hypervolume(std::vector<BitsKl> points, BitsKl ref) {
  std::sort(points.begin(), points.end(),
            [](const BitsKl& a, const BitsKl& b) { return a.bits < b.bits; });
  double area = 0, best = ref.log_kl;
  for (std::size_t i = 0; i < points.size(); ++i) {
    best = std::min(best, points[i].log_kl);
    const double next = i + 1 < points.size() ? std::min(points[i + 1].bits, ref.bits) : ref.bits;
    if (points[i].bits < ref.bits && next > points[i].bits)
      area += (next - points[i].bits) * (ref.log_kl - best);
  }
  return area;
}

std::vector<std::string> all_configs() {
  std::vector<std::string> out;
  for (int i = 0; i < 3125; ++i) {
    std::string c;
    for (int l = 0, x = i; l < 5; ++l, x /= 5) c += (l ? "," : "") + kFivePairs[x % 5];
    out.push_back(c);
  }
  return out;
}

TEST_F(Cluster, SearchReachesTheBruteForceFrontierWithFivePercentOfItsEvaluations) {
  REQUIRE_MODEL();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  auto w2 = start_worker(coordinator.endpoint(), "w2", log("w2"));
  const json search = coordinator.wait_job(coordinator.submit(search_spec(156)));
  ASSERT_EQ(search["state"], "done") << search.dump(1);
  const int used = search["search"]["evaluations"];
  EXPECT_LE(used, 156);  // 5% of 3,125, the 25 profile evaluations included
  // Besides the search's own: one validation of each frontier and baseline config.
  std::set<std::string> validated;
  for (const char* list : {"frontier", "baselines"}) {
    for (const json& r : search[list]) validated.insert(r["layers"].get<std::string>());
  }
  EXPECT_EQ(search["progress"]["done"], used + static_cast<int>(validated.size()));

  // Each generation was dispatched in the order of its layer strings, so that
  // consecutive evaluations on a worker share leading layers (prefix reuse).
  std::map<std::string, std::string> layers_of;
  for (const json& r : search["results"]) layers_of[r["eval_key"]] = r["layers"];
  std::vector<std::vector<std::string>> generations;
  std::istringstream lines(coordinator.process().log());
  const std::regex dispatch("dispatch ([0-9a-f]{32}) ");
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (line.find(": search generation ") != std::string::npos) {
      generations.emplace_back();
    } else if (line.find(": baselines") != std::string::npos) {
      break;
    } else if (!generations.empty() && std::regex_search(line, m, dispatch)) {
      generations.back().push_back(layers_of.at(m[1]));
    }
  }
  ASSERT_GE(generations.size(), 2u);
  for (const auto& g : generations) EXPECT_TRUE(std::is_sorted(g.begin(), g.end()));

  // The brute force, through the same cluster (reusing what the search evaluated).
  json brute = evaluate_spec(all_configs());
  brute["data"] = "sample:2:64:0";
  brute.erase("scheme");
  const json all = coordinator.wait_job(coordinator.submit(brute), std::chrono::minutes(10));
  ASSERT_EQ(all["state"], "done");
  ASSERT_EQ(all["results"].size(), 3125u);
  // Every search evaluation but the 25 profile ones (one layer quantized,
  // the others KV16) is one of the 3,125 and was not evaluated again.
  EXPECT_EQ(coordinator.metric("kvtune_cache_hits_total"), used - 25);

  std::vector<BitsKl> every, found;
  double worst = -1e9;
  for (const json& r : all["results"]) {
    every.push_back(point(r));
    worst = std::max(worst, every.back().log_kl);
  }
  for (const json& f : search["frontier"]) found.push_back(point(f));
  const BitsKl ref{8.5, worst + 0.1};
  const double share = hypervolume(found, ref) / hypervolume(every, ref);
  std::printf("search: %d evaluations, %zu frontier configs, %.4f of the brute-force hypervolume\n",
              used, found.size(), share);
  EXPECT_GE(share, 0.99);

  // KVTuner's five uniform baselines are evaluated beside the frontier, and
  // none of them dominates a frontier point.
  std::set<std::string> baseline_layers;
  for (const json& b : search["baselines"]) baseline_layers.insert(b["layers"].get<std::string>());
  for (const std::string& pair : kFivePairs) {
    EXPECT_TRUE(baseline_layers.contains(pair + "," + pair + "," + pair + "," + pair + "," + pair))
        << pair;
  }
  for (const json& b : search["baselines"]) {
    const BitsKl p = point(b);
    for (const BitsKl& f : found) {
      EXPECT_FALSE(p.bits <= f.bits && p.log_kl <= f.log_kl &&
                   (p.bits < f.bits || p.log_kl < f.log_kl))
          << b["layers"] << " dominates a frontier point";
    }
  }
}

TEST_F(Cluster, SearchValidatesItsFrontierOnOtherTextAndInFreeRunningGeneration) {
  REQUIRE_MODEL();
  // Built to differ from the calibration sample: uniformly random token ids,
  // text the model would never write (4 sequences of 64 tokens).
  const std::string noise = dir.file("noise.u16");
  {
    std::mt19937 rng(11);
    std::vector<uint16_t> tokens(4 * 64);
    for (auto& t : tokens) t = static_cast<uint16_t>(rng() % 512);
    std::ofstream(noise, std::ios::binary)
        .write(reinterpret_cast<const char*>(tokens.data()),
               static_cast<std::streamsize>(tokens.size() * sizeof(uint16_t)));
  }
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  auto w2 = start_worker(coordinator.endpoint(), "w2", log("w2"));
  json spec = search_spec(40);
  spec["seq_len"] = 64;
  spec["validation_data"] = noise;
  spec["free_run"] = {{"prompts", 4}, {"prompt_tokens", 16}, {"new_tokens", 48}};
  const json job = coordinator.wait_job(coordinator.submit(spec));
  ASSERT_EQ(job["state"], "done") << job.dump(1);
  ASSERT_FALSE(job.contains("failures")) << job["failures"].dump(1);
  EXPECT_EQ(job["validation"]["data"], noise);
  EXPECT_EQ(job["validation"]["free_run"]["new_tokens"], 48);

  // Every frontier and baseline config is validated: its metrics on the
  // noise differ from its calibration ones, and equal a single process's
  // evaluation of the noise (`kvtune eval --free-run`).
  std::map<std::string, json> validated;  // layers -> the result with its validation
  for (const char* list : {"frontier", "baselines"}) {
    ASSERT_FALSE(job[list].empty());
    for (const json& r : job[list]) {
      ASSERT_TRUE(r.contains("validation")) << r.dump(1);
      validated[r["layers"]] = r;
    }
  }
  std::string eval = "OPENBLAS_NUM_THREADS=1 " + build_path("kvtune") +
                     " eval --threads 1 --json --model " + kModel + " --data " + noise +
                     " --seq-len 64 --free-run 4,16,48";
  for (const auto& [layers, r] : validated) eval += " --config " + layers;
  const CommandResult single = run_command(eval);
  ASSERT_EQ(single.exit_code, 0) << single.output;
  std::istringstream lines(single.output);
  auto it = validated.begin();
  for (std::string line; std::getline(lines, line) && it != validated.end(); ++it) {
    const json expected = json::parse(line);
    const json& v = it->second["validation"];
    const double calibration_kl = it->second["metrics"]["kl"];
    std::printf("%-26s KL calibration %.6f, noise %.6f; free-run agreement %.3f\n",
                it->first.c_str(), calibration_kl, v["kl"].get<double>(),
                v["free_run"]["agreement"].get<double>());
    EXPECT_GT(std::abs(v["kl"].get<double>() - calibration_kl), 0.01 * calibration_kl) << it->first;
    EXPECT_NEAR(v["kl"].get<double>(), expected["kl"].get<double>(),
                1e-5 * expected["kl"].get<double>())
        << it->first;
    EXPECT_NEAR(v["top1_agreement"].get<double>(), expected["top1_agreement"].get<double>(), 1e-9);
    EXPECT_EQ(v["free_run"]["agreement"], expected["free_run"]["agreement"]) << it->first;
    EXPECT_EQ(v["free_run"]["first_divergence"], expected["free_run"]["first_divergence"]);
  }
  EXPECT_EQ(it, validated.end()) << single.output;

  // A config is marked exactly when its KL order against another validated
  // config is reversed on the noise.
  for (const auto& [a, ra] : validated) {
    bool flips = false;
    for (const auto& [b, rb] : validated) {
      const double c = ra["metrics"]["kl"].get<double>() - rb["metrics"]["kl"].get<double>();
      const double v = ra["validation"]["kl"].get<double>() - rb["validation"]["kl"].get<double>();
      flips = flips || (c < 0 && v > 0) || (c > 0 && v < 0);
    }
    EXPECT_EQ(ra["validation"]["rank_flip"], flips) << a;
  }

  // The registry keeps the frontier's validation; the table shows it.
  const json entries = coordinator.get("/v1/registry");
  ASSERT_EQ(entries["entries"].size(), 1u);
  const json entry =
      coordinator.get("/v1/registry/" + entries["entries"][0]["id"].get<std::string>());
  EXPECT_EQ(entry["validation_data"], noise);
  for (const json& c : entry["frontier"]) {
    ASSERT_TRUE(c.contains("validation")) << c.dump(1);
    EXPECT_EQ(c["validation"], validated.at(c["layers"])["validation"]);
  }
  const CommandResult table =
      run_command(build_path("kvtune") + " status " + job["id"].get<std::string>() + " --api " +
                  coordinator.api());
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_NE(table.output.find("val KL  free-run"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find("validation: KL on " + noise), std::string::npos) << table.output;
}

TEST_F(Cluster, FreeRunningAgreementFallsAsTheBaselinesBitsFall) {
  REQUIRE_MODEL();
  // The search's validation, on the default validation data (the calibration
  // sample's next seed), generating 8 x 48 tokens greedily from real text.
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  json spec = search_spec(30, "sample:8:64:0");
  spec["free_run"] = {{"prompts", 8}, {"prompt_tokens", 16}, {"new_tokens", 48}};
  const json job = coordinator.wait_job(coordinator.submit(spec));
  ASSERT_EQ(job["state"], "done") << job.dump(1);
  EXPECT_EQ(job["validation"]["data"], "sample:8:64:1");
  std::map<std::string, double> agreement;
  for (const json& b : job["baselines"]) {
    agreement[b["config"].get<std::string>().substr(0, b["config"].get<std::string>().find(','))] =
        b["validation"]["free_run"]["agreement"];
  }
  std::printf("free-run agreement: KV8 %.3f, KV4 %.3f, KV2 %.3f\n", agreement["KV8"],
              agreement["KV4"], agreement["KV2"]);
  EXPECT_GE(agreement.at("KV8"), agreement.at("KV4"));
  EXPECT_GE(agreement.at("KV4"), agreement.at("KV2"));
  EXPECT_LT(agreement.at("KV2"), 1.0);
  // And along the frontier: the fewest bits agree least.
  const json& frontier = job["frontier"];
  EXPECT_GE(frontier.back()["validation"]["free_run"]["agreement"].get<double>(),
            frontier.front()["validation"]["free_run"]["agreement"].get<double>());
}

TEST_F(Cluster, SearchResumedAfterKillGivesTheIdenticalFrontier) {
  REQUIRE_MODEL();
  const auto frontier_of = [](const json& job) {
    std::vector<std::pair<std::string, json>> out;
    for (const json& f : job["frontier"]) out.emplace_back(f["layers"], f["metrics"]);
    return out;
  };
  json uninterrupted;
  {
    TempDir other("kvtune-search-ref");
    CoordinatorProcess c(other.file("db"), other.file("coordinator.log"));
    auto w = start_worker(c.endpoint(), "ref", other.file("w.log"));
    uninterrupted = c.wait_job(c.submit(search_spec(120, kData)));
    ASSERT_EQ(uninterrupted["state"], "done");
  }
  std::string api, endpoint, id;
  {
    CoordinatorProcess first(db(), log("coordinator-1"));
    api = first.api();
    endpoint = first.endpoint();
    auto w1 = start_worker(endpoint, "w1", log("w1"));
    auto w2 = start_worker(endpoint, "w2", log("w2"));
    id = first.submit(search_spec(120, kData));
    std::string state_at_kill;
    ASSERT_TRUE(eventually([&] {
      const json job = first.get("/v1/jobs/" + id + "?view=summary");
      if (job["progress"]["done"].get<int>() < 40) return false;
      first.process().kill(SIGKILL);
      state_at_kill = job["state"];
      return true;
    }));
    ASSERT_EQ(state_at_kill, "running");  // killed mid-search
    first.process().wait();
    CoordinatorProcess second(db(), log("coordinator-2"), {}, api, endpoint);
    const json resumed = second.wait_job(id);
    ASSERT_EQ(resumed["state"], "done") << resumed.dump(1);
    EXPECT_EQ(frontier_of(resumed), frontier_of(uninterrupted));
    EXPECT_EQ(resumed["search"]["evaluations"], uninterrupted["search"]["evaluations"]);
  }
}

TEST_F(Cluster, RegistryAnswersTheBestConfigUnderABudgetAndExportsIt) {
  REQUIRE_MODEL();
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = start_worker(coordinator.endpoint(), "w1", log("w1"));
  json spec = search_spec(40);
  spec["search"]["candidates"] = {"KV16", "KVfp8", "KVnvfp4"};
  spec["search"]["max_bits"] = 16;
  const json job = coordinator.wait_job(coordinator.submit(spec));
  ASSERT_EQ(job["state"], "done") << job.dump(1);

  const std::string api = " --api " + coordinator.api();
  CommandResult r = run_command(build_path("kvtune") + " registry list --json" + api, true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json entries = json::parse(r.output)["entries"];
  ASSERT_EQ(entries.size(), 1u);
  const std::string id = entries[0]["id"];
  EXPECT_EQ(entries[0]["configs"], job["frontier"].size());

  // The best config within 6 bits is the frontier's lowest-KL one within 6 bits.
  std::string expected;
  double expected_kl = 1e9;
  for (const json& f : job["frontier"]) {
    const double bits = f["metrics"]["avg_bits"], kl = f["metrics"]["kl"];
    if (bits <= 6 && kl < expected_kl) {
      expected_kl = kl;
      expected = f["layers"];
    }
  }
  ASSERT_FALSE(expected.empty());
  r = run_command(build_path("kvtune") + " registry best " + id + " --max-bits 6 --json" + api,
                  true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(json::parse(r.output)["layers"], expected);

  // TensorRT-LLM's range syntax names the same per-layer formats.
  r = run_command(
      build_path("kvtune") + " registry best " + id + " --max-bits 6 --format trtllm" + api, true);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<std::string> from_ranges(5);
  for (const std::string& range : captures(r.output, "([0-9]+(?:-[0-9]+)?:[a-z0-9]+)")) {
    const auto colon = range.find(':');
    const auto dash = range.find('-');
    const int first = std::stoi(range.substr(0, std::min(dash, colon)));
    const int last = dash < colon ? std::stoi(range.substr(dash + 1, colon - dash - 1)) : first;
    for (int l = first; l <= last; ++l) from_ranges[l] = range.substr(colon + 1);
  }
  std::vector<std::string> from_layers;
  for (const std::string& pair : captures(expected + ",", "KV([a-z0-9]+),")) {
    from_layers.push_back(pair == "16" ? "bfloat16" : pair);
  }
  EXPECT_EQ(from_ranges, from_layers) << r.output;

  // A budget nothing meets is an error, not a guess.
  r = run_command(build_path("kvtune") + " registry best " + id + " --max-bits 1" + api, true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("budget"), std::string::npos) << r.output;
}

TEST_F(Cluster, RunEmbedsCoordinatorStoreAndWorkers) {
  const std::string store = dir.file("run-db");
  const std::string cmd = build_path("kvtune") +
                          " run --kind profile --model builtin:demo --data sample:2:32:0 "
                          "--candidate KV8 --candidate KV2 --workers 2 --json --db " +
                          store;
  const CommandResult r = run_command(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json job = json::parse(r.output);
  EXPECT_EQ(job["state"], "done");
  EXPECT_EQ(job["model_info"]["synthetic"], true);
  const auto layers = job["model_info"]["layers"].get<std::size_t>();
  EXPECT_EQ(job["results"].size(), 2 * layers);
  // Every result comes from a local worker. (Not necessarily from both: on a
  // loaded machine one may take every task before the other has started;
  // RunKilledWithSigkillTakesItsWorkersWithIt sees both processes.)
  for (const json& res : job["results"]) {
    EXPECT_TRUE(res["worker"] == "local-0" || res["worker"] == "local-1") << res.dump();
  }
  // A KVTuner YAML preset is a config to evaluate (the demo model has 6 layers).
  std::ofstream(dir.file("preset.yaml"))
      << "0: {nbits_key: 8, nbits_value: 8}\n1: {nbits_key: 8, nbits_value: 4}\n"
         "2: {nbits_key: 4, nbits_value: 4}\n3: {nbits_key: 4, nbits_value: 2}\n"
         "4: {nbits_key: 2, nbits_value: 2}\n5: {nbits_key: 2, nbits_value: 2}\n";
  const CommandResult preset = run_command(
      build_path("kvtune") + " run --model builtin:demo --data sample:2:32:0 --workers 1 " +
      "--json --config-file " + dir.file("preset.yaml"));
  ASSERT_EQ(preset.exit_code, 0) << preset.output;
  EXPECT_EQ(json::parse(preset.output)["results"][0]["layers"], "KV8,K8V4,KV4,K4V2,KV2,KV2");

  // The store is kept: a second run of the same job evaluates nothing again.
  const json again = json::parse(run_command(cmd).output);
  EXPECT_EQ(again["results"], job["results"]);
  EXPECT_TRUE(std::filesystem::exists(store + "/store"));
}

TEST_F(Cluster, RunSearchesTheDemoModelAsTheQuickstartDoes) {
  const std::string err = dir.file("run.err");
  const CommandResult r = run_command(build_path("kvtune") +
                                      " run --kind search --model builtin:demo --data "
                                      "sample:2:32:0 --scheme kivi --max-bits 5 "
                                      "--max-evaluations 90 --workers 2 --json 2>" +
                                      err);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json job = json::parse(r.output);
  ASSERT_EQ(job["state"], "done");
  // Not a terminal: a plain progress line per phase, no carriage returns.
  std::ifstream in(err);
  const std::string progress((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(progress.find('\r'), std::string::npos) << progress;
  EXPECT_NE(progress.find("kvtune: profile layer "), std::string::npos) << progress;
  EXPECT_NE(progress.find("kvtune: generation "), std::string::npos) << progress;
  EXPECT_NE(progress.find("/90 evaluations"), std::string::npos) << progress;
  EXPECT_NE(progress.find("; best within budget "), std::string::npos) << progress;
  EXPECT_LE(job["search"]["evaluations"].get<int>(), 90);
  ASSERT_FALSE(job["frontier"].empty());
  for (const json& f : job["frontier"]) EXPECT_LE(f["metrics"]["avg_bits"].get<double>(), 5.0);
}

// The layers of a config string, one pair name per layer.
std::vector<std::string> pairs_of(const std::string& layers) {
  std::vector<std::string> out;
  std::istringstream in(layers);
  for (std::string pair; std::getline(in, pair, ',');) out.push_back(pair);
  return out;
}

TEST_F(Cluster, RunTargetVllmFindsDtypeAndSkipLayersWithTheServeCommand) {
  REQUIRE_MODEL();
  const std::string run = build_path("kvtune") + " run --target vllm --model " + kModel +
                          " --data sample:4:64:0 --workers 2 --validation-data none";
  const CommandResult r = run_command(run + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json job = json::parse(r.output);
  ASSERT_EQ(job["state"], "done") << job.dump(1);
  EXPECT_EQ(job["spec"]["read"], "cache");  // vLLM V1 reads what it just cached
  EXPECT_EQ(job["search"]["strategy"], "skip-layers");
  // nvfp4 cannot hold stories260K's cache (head_dim 8): four dtypes remain.
  EXPECT_EQ(job["spec"]["candidates"].size(), 5u);
  // The profile (5 layers x 4 dtypes), then the additive frontier's points once.
  EXPECT_LE(job["search"]["evaluations"].get<int>(), 20 + 4 * 5);
  ASSERT_GE(job["frontier"].size(), 3u);
  bool skipped_some = false;
  for (const json& f : job["frontier"]) {
    // One dtype for every quantized layer, the others KV16: and its command says so.
    const auto pairs = pairs_of(f["layers"]);
    std::string dtype, skip;
    for (std::size_t l = 0; l < pairs.size(); ++l) {
      if (pairs[l] == "KV16") {
        skip += " " + std::to_string(l);
        continue;
      }
      ASSERT_EQ(pairs[l].rfind("KVvllm:", 0), 0u) << f["layers"];
      if (dtype.empty()) dtype = pairs[l].substr(std::string("KVvllm:").size());
      EXPECT_EQ(pairs[l], "KVvllm:" + dtype) << f["layers"];
    }
    skipped_some = skipped_some || !skip.empty();
    const std::string expected = "vllm serve " + kModel + " --kv-cache-dtype " + dtype +
                                 (skip.empty() ? "" : " --kv-cache-dtype-skip-layers" + skip);
    const std::string text = f["deploy"]["text"];
    EXPECT_NE(text.find(expected + "\n"), std::string::npos) << expected << "\n" << text;
    EXPECT_EQ(f["deploy"]["released"], true);
    // The additive model's prediction beside the measured KL.
    if (!skip.empty()) {
      EXPECT_TRUE(f.contains("predicted_kl")) << f.dump(1);
    }
  }
  EXPECT_TRUE(skipped_some);
  // The baselines are vLLM's own dtypes on every layer.
  ASSERT_EQ(job["baselines"].size(), 4u);
  for (const json& b : job["baselines"]) {
    EXPECT_EQ(pairs_of(b["layers"]).front().rfind("KVvllm:", 0), 0u);
  }

  // As a person reads it: the table with the prediction, then the command.
  const CommandResult text = run_command(run + " --max-bits 12 --db " + db(), true);
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("pred KL"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("deploy the lowest KL within the budget"), std::string::npos)
      << text.output;
  EXPECT_NE(text.output.find("  vllm serve " + kModel + " --kv-cache-dtype "), std::string::npos)
      << text.output;

  // The registry entry records the target and that a release runs it; its
  // best config within a budget comes back as the command line.
  CoordinatorProcess coordinator(db() + "/store", log("coordinator"));
  const json entries = coordinator.get("/v1/registry");
  ASSERT_EQ(entries["entries"].size(), 1u);
  const json& entry = entries["entries"][0];
  EXPECT_EQ(entry["target"], "vllm");
  EXPECT_EQ(entry["released"], true);
  const std::string id = entry["id"];
  const CommandResult best = run_command(build_path("kvtune") + " registry best " + id +
                                         " --max-bits 12 --format vllm --api " + coordinator.api());
  ASSERT_EQ(best.exit_code, 0) << best.output;
  EXPECT_NE(best.output.find("vllm serve " + kModel + " --kv-cache-dtype "), std::string::npos)
      << best.output;
  const json answer = coordinator.get("/v1/registry/" + id + "/best?max_bits=12");
  EXPECT_EQ(answer["deploy"]["format"], "vllm");
  EXPECT_EQ(answer["deploy"]["text"].get<std::string>(), best.output);
}

TEST_F(Cluster, CalibratedScalesOfAVllmConfigComeBackAsCheckpointTensors) {
  REQUIRE_MODEL();
  // vllm:fp8 alone, its k/v scales calibrated (amax / 448 per layer).
  const CommandResult r = run_command(build_path("kvtune") + " run --target vllm --model " +
                                      kModel + " --data sample:2:64:0 --workers 2 --json " +
                                      "--validation-data none --kv-scales calibrated " +
                                      "--candidate KVvllm:fp8 --db " + db());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json job = json::parse(r.output);
  ASSERT_EQ(job["state"], "done") << job.dump(1);
  const json& best = job["frontier"].back();
  const auto pairs = pairs_of(best["layers"]);
  const json& k = best["metrics"]["k_scales"];
  const json& v = best["metrics"]["v_scales"];
  ASSERT_EQ(k.size(), pairs.size());
  EXPECT_NE(best["deploy"]["text"].get<std::string>().find("--format kv_scales"),
            std::string::npos);

  CoordinatorProcess coordinator(db() + "/store", log("coordinator"));
  const std::string id = coordinator.get("/v1/registry")["entries"][0]["id"];
  const CommandResult scales =
      run_command(build_path("kvtune") + " registry best " + id +
                  " --max-bits 16 --format kv_scales --api " + coordinator.api());
  ASSERT_EQ(scales.exit_code, 0) << scales.output;
  const json tensors = json::parse(scales.output);
  std::size_t quantized = 0;
  for (std::size_t l = 0; l < pairs.size(); ++l) {
    const std::string layer = "model.layers." + std::to_string(l) + ".self_attn.";
    if (pairs[l] == "KV16") {
      EXPECT_FALSE(tensors.contains(layer + "k_proj.k_scale")) << l;
      EXPECT_EQ(k[l], 0.0);
      continue;
    }
    ++quantized;
    // What the evaluation applied, with keys' scales unlike values'.
    EXPECT_GT(k[l].get<double>(), 0.0);
    EXPECT_EQ(tensors.at(layer + "k_proj.k_scale"), k[l]) << l;
    EXPECT_EQ(tensors.at(layer + "v_proj.v_scale"), v[l]) << l;
    EXPECT_NE(k[l], v[l]) << l;
  }
  EXPECT_EQ(tensors.size(), 2 * quantized);
}

TEST_F(Cluster, RunTargetsSglangAndTrtllmScanTheirDtypesAndPerLayerPrTargetsSaySo) {
  REQUIRE_MODEL();
  const std::string run = build_path("kvtune") + " run --model " + kModel +
                          " --data sample:2:64:0 --workers 2 --json --validation-data none";
  const CommandResult sglang = run_command(run + " --target sglang");
  ASSERT_EQ(sglang.exit_code, 0) << sglang.output;
  const json scan = json::parse(sglang.output);
  ASSERT_EQ(scan["state"], "done") << scan.dump(1);
  EXPECT_EQ(scan["search"]["strategy"], "scan");
  EXPECT_EQ(scan["search"]["evaluations"], 3);  // fp8_e4m3, fp8_e5m2, fp4_e2m1
  ASSERT_FALSE(scan["frontier"].empty());
  for (const json& f : scan["frontier"]) {
    const auto pairs = pairs_of(f["layers"]);
    EXPECT_EQ(std::count(pairs.begin(), pairs.end(), pairs[0]), 5) << f["layers"];
    const std::string flag = pairs[0].substr(std::string("KVsglang:").size());
    EXPECT_NE(
        f["deploy"]["text"].get<std::string>().find("python -m sglang.launch_server --model-path " +
                                                    kModel + " --kv-cache-dtype " + flag),
        std::string::npos)
        << f["deploy"].dump(1);
  }

  const CommandResult pr =
      run_command(run + " --target trtllm-per-layer-pr --max-evaluations 40 --max-bits 8");
  ASSERT_EQ(pr.exit_code, 0) << pr.output;
  const json per_layer = json::parse(pr.output);
  ASSERT_EQ(per_layer["state"], "done") << per_layer.dump(1);
  ASSERT_FALSE(per_layer["frontier"].empty());
  for (const json& f : per_layer["frontier"]) {
    EXPECT_EQ(f["deploy"]["released"], false);
    EXPECT_NE(f["deploy"]["needs"].get<std::string>().find("#13695"), std::string::npos);
    for (const std::string& p : pairs_of(f["layers"])) {
      EXPECT_TRUE(p == "KVtrtllm:fp8" || p == "KVtrtllm:nvfp4" || p == "KV16") << p;
    }
  }
  // What the engine cannot run is refused at the door, naming the rule.
  const CommandResult bad = run_command(
      run + " --target sglang --config KVsglang:fp8_e4m3,KV16," + "KV16,KV16,KV16", true);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("cannot leave a layer unquantized"), std::string::npos) << bad.output;
}

TEST_F(Cluster, RunAgainWithTheSameDbResumesTheInterruptedJobToTheSameFrontier) {
  const std::string args =
      " run --model builtin:demo --data sample:8:128:0 --candidate KV8 --candidate K8V4 "
      "--candidate KV4 --candidate KV2 --max-evaluations 150 --max-bits 5 --workers 1 --json";
  const auto frontier_of = [](const json& job) {
    std::vector<std::pair<std::string, json>> out;
    for (const json& f : job["frontier"]) out.emplace_back(f["layers"], f["metrics"]);
    return out;
  };
  const CommandResult reference = run_command(build_path("kvtune") + args);
  ASSERT_EQ(reference.exit_code, 0) << reference.output;
  const json uninterrupted = json::parse(reference.output);
  EXPECT_EQ(uninterrupted["kind"], "search");  // the default kind without configs

  const std::string store = dir.file("resume-db");
  std::vector<std::string> argv{build_path("kvtune")};
  std::istringstream words(args + " --db " + store);
  for (std::string w; words >> w;) argv.push_back(w);
  Process first(argv, log("run-interrupted"));
  std::string id;
  ASSERT_TRUE(eventually(
      [&] {
        const auto ids = captures(first.log(), "kvtune run: job (job-[0-9a-f-]+)");
        if (ids.empty()) return false;
        id = ids.front();
        return true;
      },
      60s))
      << first.log();
  std::this_thread::sleep_for(4s);  // part of the way through
  first.kill(SIGINT);
  const int code = first.wait();
  const bool interrupted = code == 130;
  if (interrupted) {
    EXPECT_NE(first.log().find("job " + id + " is kept in " + store +
                               ": run the same command again to resume it"),
              std::string::npos)
        << first.log();
  } else {
    EXPECT_EQ(code, 0) << "finished before the interrupt: " << first.log();
  }
  const CommandResult again = run_command(build_path("kvtune") + args + " --db " + store);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  const json resumed = json::parse(again.output);
  EXPECT_EQ(resumed["id"], id);
  EXPECT_EQ(resumed["state"], "done");
  EXPECT_EQ(frontier_of(resumed), frontier_of(uninterrupted));
  EXPECT_EQ(resumed["search"]["evaluations"], uninterrupted["search"]["evaluations"]);
}

TEST_F(Cluster, RunRefusesBadInputAtTheDoorAndSaysEachErrorOnce) {
  CommandResult r = run_command(
      build_path("kvtune") + " run --model builtin:demo --data sample:2:32:0 --max-bits 0.5", true);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("search: \"max_bits\" 0.5 is below every configuration of these "
                          "candidates; the least reachable is 2 (every layer at KV2)"),
            std::string::npos)
      << r.output;
  r = run_command(
      build_path("kvtune") + " run --model /nonexistent.bin --data sample:2:32:0 --workers 1",
      true);
  EXPECT_EQ(r.exit_code, 1);
  const std::string said = "/nonexistent.bin: no such model file";
  const auto first = r.output.find(said);
  ASSERT_NE(first, std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(said, first + 1), std::string::npos) << "said twice:\n" << r.output;
  // The model's error, not blamed on the validation data read first.
  EXPECT_EQ(r.output.find("validation data"), std::string::npos) << r.output;
  r = run_command(build_path("kvtune") +
                      " run --target kvtuner --model builtin:demo --data sample:2:32:0 "
                      "--candidate KV4 --candidate KVfp8",
                  true);
  EXPECT_NE(r.output.find("search: candidate KVfp8: format fp8 is not KVTuner's"),
            std::string::npos)
      << r.output;
}

// The processes whose parent is `parent`, from /proc.
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) out.push_back(std::stoi(name));
  }
  return out;
}

// Whether `pid` runs (a zombie waiting for a reaper does not).
bool running(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
}

std::string exe_of(pid_t pid) {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec).filename();
}

TEST_F(Cluster, RunKilledWithSigkillTakesItsWorkersWithIt) {
  Process run({build_path("kvtune"), "run", "--kind", "search", "--model", "builtin:demo", "--data",
               "sample:8:128:0", "--workers", "2", "--max-evaluations", "1000"},
              log("run"));
  std::vector<pid_t> workers;
  // Both workers up and exec'd into kvtune-worker (kvtune worker execs it).
  ASSERT_TRUE(eventually(
      [&] {
        workers = children_of(run.pid());
        return workers.size() == 2 && std::all_of(workers.begin(), workers.end(), [](pid_t w) {
                 return exe_of(w) == "kvtune-worker";
               });
      },
      120s))
      << run.log();
  run.kill(SIGKILL);
  EXPECT_EQ(run.wait(), 128 + SIGKILL);
  std::this_thread::sleep_for(2s);
  for (const pid_t w : workers) {
    EXPECT_FALSE(running(w)) << "worker " << w << " outlived kvtune run";
    if (running(w)) ::kill(w, SIGKILL);
  }
}

TEST_F(Cluster, CurveAdmitsAuthorizedWorkersOnly) {
  REQUIRE_MODEL();
  const std::string kvtune = build_path("kvtune");
  for (const char* name : {"coord", "good", "bad"}) {
    const CommandResult r =
        run_command(kvtune + " keygen --out " + dir.file(std::string(name) + ".key"), true);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  std::ifstream good_pub(dir.file("good.key.pub"));
  std::stringstream authorized;
  authorized << good_pub.rdbuf();
  // The authorized list holds bare keys, one per line.
  const auto keys = captures(authorized.str(), "public-key = \"([^\"]+)\"");
  ASSERT_EQ(keys.size(), 1u) << authorized.str();
  std::ofstream(dir.file("workers")) << "# the one worker allowed\n" << keys[0] << " good\n";

  CoordinatorProcess coordinator(
      db(), log("coordinator"),
      {"--curve-secret", dir.file("coord.key"), "--curve-authorized", dir.file("workers")});
  const std::vector<std::string> server_key = {"--curve-server-key", dir.file("coord.key.pub")};
  auto with = [&](const std::string& keys_file) {
    std::vector<std::string> args = server_key;
    args.insert(args.end(), {"--curve-keys", keys_file});
    return args;
  };
  auto bad = start_worker(coordinator.endpoint(), "bad", log("bad"), with(dir.file("bad.key")));
  auto plain = start_worker(coordinator.endpoint(), "plain", log("plain"));
  const bool refused =
      eventually([&] { return coordinator.metric("kvtune_refused_handshakes_total") >= 1; }, 20s);
  ASSERT_TRUE(refused) << coordinator.process().log() << bad->log() << plain->log();
  const std::string id = coordinator.submit(evaluate_spec({"KV4"}));
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(coordinator.get("/v1/jobs/" + id)["state"], "queued");  // nobody may describe it
  EXPECT_EQ(coordinator.get("/v1/workers")["workers"].size(), 0u);

  auto good = start_worker(coordinator.endpoint(), "good", log("good"), with(dir.file("good.key")));
  const json job = coordinator.wait_job(id);
  EXPECT_EQ(job["state"], "done");
  EXPECT_EQ(job["results"][0]["worker"], "good");
  EXPECT_NE(coordinator.process().log().find("not in the authorized keys"), std::string::npos);
}

}  // namespace
}  // namespace kvtune::testing
