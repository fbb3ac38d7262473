// `kvtune worker health`, the check the Kubernetes probes of
// deploy/kubernetes/workers.yaml run, against real processes on loopback: a
// coordinator and a worker started with --health-file. Healthy while
// connected; unhealthy once the coordinator is killed, healthy again when it
// is back; unhealthy while one evaluation runs past --max-task-s; unhealthy
// when the worker's loop stops (SIGSTOP) or it dies (SIGKILL); no status file
// once it has said goodbye (SIGTERM). No stubs: every case is a real process
// in that state.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../support/cluster.h"
#include "../support/temp_dir.h"

namespace kvtune::testing {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// start_worker's timing: heartbeats every 200 ms, hello again after 1.5 s of
// silence; so the default --max-silence-s is 1.5 + 1 = 2.5 s.
constexpr double kCoordinatorTimeoutS = 1.5;
constexpr double kDefaultMaxSilenceS = kCoordinatorTimeoutS + 1.0;

// The generated demo model (no download) on sequences of its full length,
// evaluated with one thread: an evaluation takes seconds (about 1.5 s on an
// idle core, after a describe of about 5 s), back to back for eight configs.
json slow_job() {
  return {{"kind", "evaluate"},
          {"model", "builtin:demo"},
          {"data", "sample:6:512:0"},
          {"scheme", {{"name", "kivi"}, {"group_size", 16}, {"residual", 32}}},
          {"configs",
           {"KV8", "KV4", "KV2", "K8V4", "K4V2", "KV8,KV4,KV4,KV2,KV2,KV2",
            "KV4,KV8,KV8,KV8,KV8,KV8", "K8V4,KV2,KV2,KV2,KV2,KV2"}}};
}

double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

class Health : public ::testing::Test {
 protected:
  TempDir dir{"kvtune-health"};
  std::string db() const { return dir.file("db"); }
  std::string log(const std::string& name) const { return dir.file(name + ".log"); }
  std::string status_file() const { return dir.file("health.json"); }

  std::unique_ptr<Process> worker(const std::string& endpoint, const std::string& id = "w1") {
    return start_worker(endpoint, id, log(id), {"--health-file", status_file()});
  }

  // `kvtune worker health --health-file STATUS OPTIONS`, as a probe runs it.
  CommandResult check(const std::string& options = "") const {
    return run_command(
        build_path("kvtune") + " worker health --health-file " + status_file() + " " + options,
        true);
  }

  // Runs the check until its exit code is `code`; the check's output then,
  // or the last output with a failure.
  std::string check_until(int code, const std::string& options = "",
                          std::chrono::milliseconds timeout = 20s) const {
    CommandResult last;
    const bool reached = eventually(
        [&] {
          last = check(options);
          return last.exit_code == code;
        },
        timeout);
    EXPECT_TRUE(reached) << "the check never exited " << code << "; last (" << last.exit_code
                         << "): " << last.output;
    return last.output;
  }

  json status() const {
    std::ifstream in(status_file());
    std::stringstream text;
    text << in.rdbuf();
    return json::parse(text.str());
  }
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST_F(Health, NotHealthyWithoutAStatusFileOrBeforeTheWorkerHasHeardTheCoordinator) {
  const CommandResult none = check();
  EXPECT_EQ(none.exit_code, 1) << none.output;
  EXPECT_TRUE(contains(none.output, "unhealthy: no status file " + status_file())) << none.output;

  { std::ofstream(status_file()) << "{\"pid\": 1"; }
  const CommandResult garbage = check();
  EXPECT_EQ(garbage.exit_code, 1) << garbage.output;
  EXPECT_TRUE(contains(garbage.output, "unhealthy: status file")) << garbage.output;

  EXPECT_EQ(check("--max-task-s 0").exit_code, 2);
  EXPECT_EQ(run_command(build_path("kvtune") + " worker health", true).exit_code, 2);

  // A worker whose coordinator is not there (yet): writing, not connected.
  auto lonely =
      start_worker("tcp://127.0.0.1:9", "w0", log("w0"), {"--health-file", status_file()});
  std::filesystem::remove(status_file());
  ASSERT_TRUE(eventually([&] { return std::filesystem::exists(status_file()); }, 30s))
      << lonely->log();
  const std::string alone = check_until(1);
  EXPECT_TRUE(contains(alone, "unhealthy: worker w0")) << alone;
  EXPECT_TRUE(contains(alone,
                       "not connected: no message from the coordinator tcp://127.0.0.1:9 "
                       "yet"))
      << alone;

  const CommandResult help = run_command(build_path("kvtune") + " worker health --help", true);
  EXPECT_EQ(help.exit_code, 0) << help.output;
  for (const char* option : {"--health-file", "--max-silence-s", "--max-task-s", "--max-stale-s"}) {
    EXPECT_TRUE(contains(help.output, option)) << help.output;
  }
}

TEST_F(Health, HealthyWhileConnectedUnhealthyWhenTheCoordinatorIsKilledHealthyWhenBack) {
  std::string api, endpoint;
  std::unique_ptr<Process> w1;
  {
    CoordinatorProcess coordinator(db(), log("coordinator-1"));
    api = coordinator.api();
    endpoint = coordinator.endpoint();
    w1 = worker(endpoint);
    const std::string healthy = check_until(0);
    EXPECT_TRUE(contains(healthy, "healthy: worker w1 (pid " + std::to_string(w1->pid()) + ")"))
        << healthy;
    EXPECT_TRUE(contains(healthy, ", idle")) << healthy;

    // The status file the probe reads.
    const json s = status();
    EXPECT_EQ(s["pid"], w1->pid());
    EXPECT_EQ(s["worker_id"], "w1");
    EXPECT_EQ(s["coordinator"], endpoint);
    EXPECT_EQ(s["coordinator_timeout_ms"], 1500);
    EXPECT_GT(s["last_coordinator_message_ms"].get<int64_t>(), 0);
    EXPECT_EQ(s["busy_task_id"], "");
    EXPECT_EQ(s["busy_since_ms"], 0);
    const int64_t written = s["written_ms"];
    EXPECT_TRUE(eventually([&] { return status()["written_ms"].get<int64_t>() > written; }, 2s))
        << "the worker does not rewrite its status file every heartbeat";

    // Still healthy a little later.
    const CommandResult again = check();
    EXPECT_EQ(again.exit_code, 0) << again.output;
    coordinator.process().kill(SIGKILL);
    coordinator.process().wait();
  }
  // The coordinator is gone: unhealthy once the worker has heard nothing for
  // the default --max-silence-s, the coordinator timeout plus one of the
  // coordinator's 1 s heartbeats.
  // Every check that starts after that is unhealthy (each check reads the
  // clock itself, so how long it takes to start does not matter).
  const auto killed = SteadyClock::now();
  std::vector<std::pair<double, CommandResult>> polls;  // seconds after the kill
  ASSERT_TRUE(eventually(
      [&] {
        const double started = seconds_since(killed);
        polls.emplace_back(started, check());
        return polls.back().second.exit_code == 1;
      },
      20s))
      << polls.back().second.output;
  for (const auto& [started, result] : polls) {
    if (started > kDefaultMaxSilenceS + 0.3) {
      EXPECT_EQ(result.exit_code, 1)
          << "a check started " << started << " s after the kill: " << result.output;
    }
  }
  const auto& [unhealthy_after, r] = polls.back();
  EXPECT_TRUE(contains(r.output, "unhealthy: worker w1")) << r.output;
  EXPECT_TRUE(contains(r.output, "no message from the coordinator " + endpoint + " for"))
      << r.output;
  std::cout << polls.size() << " checks; the first unhealthy one started " << unhealthy_after
            << " s after the coordinator was killed: " << r.output;
  EXPECT_TRUE(w1->running());

  // Back on the same addresses: the worker says hello again, healthy again.
  CoordinatorProcess again(db(), log("coordinator-2"), {}, api, endpoint);
  const std::string healthy = check_until(0);
  EXPECT_TRUE(contains(healthy, "healthy: worker w1")) << healthy;

  // Dead (SIGKILL): its file stays behind, goes stale, names a process gone.
  w1->kill(SIGKILL);
  w1->wait();
  const std::string dead = check_until(1, "--max-stale-s 1");
  EXPECT_TRUE(contains(dead, "stale status file: worker w1")) << dead;
  EXPECT_TRUE(contains(dead, "the process is gone")) << dead;
}

TEST_F(Health, UnhealthyWhileOneEvaluationRunsPastItsAllowedTime) {
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = worker(coordinator.endpoint());
  check_until(0);
  const std::string id = coordinator.submit(slow_job());

  // An evaluation (past the job's describe) is running.
  std::string task;
  ASSERT_TRUE(eventually(
      [&] {
        const auto tasks = captures(w1->log(), "evaluating .* \\(task ([^ )\n]+)\\)\n");
        if (tasks.empty()) return false;
        task = tasks.front();
        return true;
      },
      60s))
      << w1->log();
  // Within the default allowance (the coordinator's 600 s lease): healthy.
  const CommandResult busy = check();
  EXPECT_EQ(busy.exit_code, 0) << busy.output;
  EXPECT_TRUE(contains(busy.output, "busy for")) << busy.output;

  // Allowed half a second: unhealthy, naming an evaluation task (one of
  // those the worker logged as evaluating) and how long it has run.
  const std::string stuck = check_until(1, "--max-task-s 0.5");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(stuck, m, std::regex("task ([^ ]+) busy for ([0-9.]+) s")))
      << stuck;
  EXPECT_TRUE(contains(w1->log(), "(task " + m[1].str() + ")")) << stuck;
  EXPECT_FALSE(contains(w1->log(), "describing builtin:demo (task " + m[1].str() + ")")) << stuck;
  EXPECT_GT(std::stod(m[2].str()), 0.5) << stuck;
  EXPECT_TRUE(contains(stuck, "(limit 0.5 s)")) << stuck;
  EXPECT_FALSE(contains(stuck, "no message from the coordinator")) << stuck;
  std::cout << "with --max-task-s 0.5: " << stuck;

  // Done with it: cancel the job.
  EXPECT_EQ(coordinator.call("POST", "/v1/jobs/" + id + "/cancel").status, 200);
}

TEST_F(Health, UnhealthyWhenTheWorkersLoopStopsAndNoStatusFileOnceItSaidGoodbye) {
  CoordinatorProcess coordinator(db(), log("coordinator"));
  auto w1 = worker(coordinator.endpoint());
  check_until(0);

  // Wedged: the process no longer runs (SIGSTOP), its file goes stale.
  w1->kill(SIGSTOP);
  const std::string stale = check_until(1, "--max-stale-s 1");
  EXPECT_TRUE(contains(stale, "stale status file: worker w1")) << stale;
  EXPECT_TRUE(contains(stale, "the process is wedged or stopped")) << stale;
  w1->kill(SIGCONT);
  check_until(0, "--max-stale-s 1");

  // Stopped (SIGTERM): it says goodbye and removes its file.
  w1->kill(SIGTERM);
  EXPECT_EQ(w1->wait(), 0) << w1->log();
  const CommandResult gone = check();
  EXPECT_EQ(gone.exit_code, 1) << gone.output;
  EXPECT_TRUE(contains(gone.output, "no status file")) << gone.output;
}

}  // namespace
}  // namespace kvtune::testing
