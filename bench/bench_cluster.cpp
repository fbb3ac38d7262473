// Whole-system benchmark of the cluster on loopback (real coordinator and
// worker processes from the build directory):
//
// 1. Coordinator throughput: evaluations dispatched and persisted per second.
//    a) with real `kvtune worker` processes on stories260K and tiny data
//       (each evaluation costs the worker milliseconds), and
//    b) with in-process protocol workers that answer every task at once, so
//       that the figure is the coordinator's own ceiling (dispatch, Cap'n
//       Proto, synced RocksDB writes), not the workers' compute.
// 2. Speed-up of an evaluate job on stories260K from 1 to 2 CPU workers (one
//    thread each), after a warm-up job has loaded the model on every worker,
//    for a cache-sized and a 4x larger calibration set.
//
// usage: bench_cluster [--quick]
#include <capnp/message.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include "../tests/support/cluster.h"
#include "../tests/support/temp_dir.h"
#include "instant_worker.h"

namespace {

using namespace kvtune::testing;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::string kModel = std::string(KVTUNE_SHARED_DIR) + "/models/stories260K.bin";

std::vector<std::string> configs(std::size_t n, std::uint32_t seed) {
  const std::vector<std::string> pairs = {"KV8", "K8V4", "KV4", "K4V2", "KV2"};
  std::mt19937 rng(seed);
  std::set<std::string> seen;
  std::vector<std::string> out;
  while (out.size() < n) {
    std::string c;
    for (int l = 0; l < 5; ++l) c += (l ? "," : "") + pairs[rng() % pairs.size()];
    if (seen.insert(c).second) out.push_back(c);
  }
  return out;
}

json spec(const std::vector<std::string>& cs, const std::string& data) {
  return {{"kind", "evaluate"}, {"model", kModel}, {"data", data}, {"configs", cs}};
}

// Seconds from submission until the job is done.
double run_job(const CoordinatorProcess& c, const json& job_spec) {
  const auto start = Clock::now();
  const std::string id = c.submit(job_spec);
  const json job = c.wait_job(id, std::chrono::minutes(10));
  if (job["state"] != "done") throw std::runtime_error("job did not finish: " + job.dump());
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  if (!std::filesystem::exists(kModel)) {
    std::printf("bench_cluster: needs %s (../shared beside the project); skipped\n",
                kModel.c_str());
    return 0;
  }
  std::printf("bench_cluster: loopback, %u hardware threads\n\n",
              std::thread::hardware_concurrency());

  {  // 1a: real workers, tiny data.
    TempDir dir("bench-cluster");
    CoordinatorProcess c(dir.file("db"), dir.file("coordinator.log"));
    auto w1 = start_worker(c.endpoint(), "w1", dir.file("w1.log"));
    auto w2 = start_worker(c.endpoint(), "w2", dir.file("w2.log"));
    run_job(c, spec(configs(4, 1), "sample:1:4:0"));  // both workers load the model
    const std::size_t n = quick ? 200 : 1000;
    const double s = run_job(c, spec(configs(n, 2), "sample:1:4:0"));
    std::printf(
        "1a dispatch+persist, 2 kvtune workers, stories260K, 1x4 tokens: %zu evaluations "
        "in %.2f s = %.0f /s\n",
        n, s, n / s);
  }
  {  // 1b: the coordinator's ceiling.
    TempDir dir("bench-cluster");
    CoordinatorProcess c(dir.file("db"), dir.file("coordinator.log"));
    std::atomic<bool> stop{false};
    std::vector<std::thread> workers;
    for (int i = 0; i < 4; ++i) {
      workers.emplace_back(kvtune::bench::instant_worker, c.endpoint(), "load" + std::to_string(i),
                           5, std::ref(stop));
    }
    const std::size_t n = quick ? 1000 : 3000;
    const double s = run_job(c, spec(configs(n, 3), "sample:1:4:0"));
    stop = true;
    for (auto& t : workers) t.join();
    std::printf(
        "1b dispatch+persist, 4 instant protocol workers: %zu evaluations in %.2f s = "
        "%.0f /s (goal >= 2000 /s)\n",
        n, s, n / s);
  }
  // 2: speed-up from 1 to 2 workers, with data whose per-evaluation tensors
  // fit in cache (4x64 tokens) and with data 4x larger, where the evaluations
  // are bound by memory bandwidth that the host's cores share.
  for (const std::string data : {"sample:4:64:0", "sample:8:128:0"}) {
    const std::size_t n = quick ? 16 : data == "sample:4:64:0" ? 400 : 80;
    double seconds[2] = {0, 0};
    for (int workers = 1; workers <= 2; ++workers) {
      TempDir dir("bench-cluster");
      CoordinatorProcess c(dir.file("db"), dir.file("coordinator.log"));
      std::vector<std::unique_ptr<Process>> ws;
      for (int i = 0; i < workers; ++i) {
        ws.push_back(start_worker(c.endpoint(), "w" + std::to_string(i),
                                  dir.file("w" + std::to_string(i) + ".log"), {"--prefetch", "1"}));
      }
      // Warm-up, the same for both: the five uniform configs, so that every
      // worker has loaded the model and data (with its reference).
      run_job(c, spec({"KV8", "K8V4", "KV4", "K4V2", "KV2"}, data));
      seconds[workers - 1] = run_job(c, spec(configs(n, 5), data));
      std::printf("2  %d worker(s), %zu evaluations on stories260K, %s: %.2f s\n", workers, n,
                  data.c_str(), seconds[workers - 1]);
    }
    std::printf("2  speed-up 1 -> 2 workers, %s: %.2fx (goal >= 1.8x)\n", data.c_str(),
                seconds[0] / seconds[1]);
  }
  return 0;
}
