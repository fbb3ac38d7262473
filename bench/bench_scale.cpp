// The coordinator at the scale of a GPU fleet: a real `kvtune coordinator`
// process whose store already holds 1,000,000 evaluations, with 64 and then
// 256 simulated workers (real ZeroMQ DEALER sockets answering every task at
// once: instant_worker.h), running 100,000 evaluations per worker count as
// evaluate jobs queued together. Measured while they run:
// - evaluations dispatched and persisted per second (goal >= 2,000 /s at 256);
// - p99 latency of GET /v1/jobs/{id}?view=summary (what pollers read) and of
//   GET /metrics, polled every 20 ms (goal <= 100 ms), and of the full view
//   GET /v1/jobs/{id} of one finished 8,000-result job, for comparison;
// - the coordinator's resident memory: on an empty store and on the filled
//   one before the jobs, and its peak while 100,000 tasks are unfinished
//   (memory should follow the unfinished tasks, not the store).
//
// usage: bench_scale [--quick]   (--quick: 100,000 stored, 10,000 per run)
#include <capnp/message.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "../tests/support/cluster.h"
#include "../tests/support/temp_dir.h"
#include "instant_worker.h"
#include "store.h"

namespace {

using namespace kvtune::testing;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr unsigned kLayers = 16;

// Resident and peak resident memory of a process, in MiB (/proc/PID/status).
std::pair<double, double> memory_mib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  double rss = 0, hwm = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VmRSS:")) rss = std::stod(line.substr(6)) / 1024;
    if (line.starts_with("VmHWM:")) hwm = std::stod(line.substr(6)) / 1024;
  }
  return {rss, hwm};
}

// `n` stored evaluations under random keys, in synced batches of 10,000.
void fill_store(const std::filesystem::path& db, std::size_t n) {
  kvtune::Store store(db);
  capnp::MallocMessageBuilder message;
  auto r = message.initRoot<kvtune::schema::EvalResult>();
  r.setKl(0.1);
  r.setAvgBits(4);
  r.initAttnRelErr(kLayers);
  r.setWorkerId("prefill");
  std::mt19937_64 rng(1);
  char key[33];
  for (std::size_t done = 0; done < n;) {
    kvtune::Store::Batch batch;
    for (std::size_t i = 0; i < 10000 && done < n; ++i, ++done) {
      std::snprintf(key, sizeof key, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                    static_cast<unsigned long long>(rng()));
      batch.put_result(key, r.asReader());
    }
    store.write(batch);
  }
}

// Evaluate jobs of `per_job` distinct random configs (16 layers, KVTuner's
// five pairs), `total` configs in all; `seed` makes each run's configs new.
std::vector<json> jobs(std::size_t total, std::size_t per_job, std::uint32_t seed) {
  const char* pairs[] = {"KV8", "K8V4", "KV4", "K4V2", "KV2"};
  std::mt19937 rng(seed);
  std::set<std::string> seen;
  std::vector<json> out;
  json configs = json::array();
  while (seen.size() < total) {
    std::string c;
    for (unsigned l = 0; l < kLayers; ++l) c += (l ? "," : "") + std::string(pairs[rng() % 5]);
    if (!seen.insert(c).second) continue;
    configs.push_back(c);
    if (configs.size() == per_job || seen.size() == total) {
      out.push_back({{"kind", "evaluate"},
                     {"model", "simulated.bin"},
                     {"data", "sample:1:4:" + std::to_string(seed)},
                     {"configs", configs}});
      configs = json::array();
    }
  }
  return out;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Run {
  double seconds = 0, rate = 0, job_p99 = 0, metrics_p99 = 0, job_max = 0, metrics_max = 0;
  double peak_mib = 0;
  std::size_t polls = 0;
  std::string last_job;
};

// Queues `total` evaluations as jobs and waits for all; polls both requests
// meanwhile.
Run run_jobs(CoordinatorProcess& c, std::size_t total, std::uint32_t seed) {
  std::vector<std::string> ids;
  const auto start = Clock::now();
  for (const json& spec : jobs(total, 8000, seed)) ids.push_back(c.submit(spec));
  std::vector<double> job_ms, metrics_ms;
  Run run;
  for (std::size_t finished = 0; finished < ids.size();) {
    const auto t0 = Clock::now();
    const json job = c.get("/v1/jobs/" + ids[finished] + "?view=summary");
    job_ms.push_back(ms_since(t0));
    const auto t1 = Clock::now();
    if (c.call("GET", "/metrics").status != 200) throw std::runtime_error("GET /metrics failed");
    metrics_ms.push_back(ms_since(t1));
    const std::string state = job["state"];
    if (state == "failed" || state == "cancelled") throw std::runtime_error(job.dump());
    if (state == "done") ++finished;
    run.peak_mib = std::max(run.peak_mib, memory_mib(c.process().pid()).first);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  run.seconds = ms_since(start) / 1000;
  run.rate = static_cast<double>(total) / run.seconds;
  run.job_p99 = percentile(job_ms, 0.99);
  run.metrics_p99 = percentile(metrics_ms, 0.99);
  run.job_max = percentile(job_ms, 1.0);
  run.metrics_max = percentile(metrics_ms, 1.0);
  run.polls = job_ms.size();
  run.last_job = ids.front();
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const std::size_t stored = quick ? 100000 : 1000000, per_run = quick ? 10000 : 100000;
  std::printf("bench_scale: loopback, %u hardware threads; %zu stored evaluations, %zu per run\n\n",
              std::thread::hardware_concurrency(), stored, per_run);
  TempDir dir("bench-scale");

  double empty_mib = 0;
  {  // The baseline: a coordinator on an empty store.
    CoordinatorProcess c(dir.file("empty-db"), dir.file("empty.log"));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    empty_mib = memory_mib(c.process().pid()).first;
  }
  const auto fill_start = Clock::now();
  fill_store(dir.file("db"), stored);
  std::printf("store filled with %zu evaluations in %.1f s\n", stored, ms_since(fill_start) / 1000);

  CoordinatorProcess c(dir.file("db"), dir.file("coordinator.log"));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const double filled_mib = memory_mib(c.process().pid()).first;
  std::printf("coordinator resident memory: empty store %.1f MiB, %zu stored %.1f MiB\n", empty_mib,
              stored, filled_mib);

  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (std::size_t target : {64u, 256u}) {
    while (workers.size() < target) {
      // At the lowest priority: on this one host the simulated fleet must not
      // starve the coordinator and the poller of the cores (a real fleet runs
      // on other machines).
      workers.emplace_back([&c, &stop, id = "sim" + std::to_string(workers.size())] {
        ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
        kvtune::bench::instant_worker(c.endpoint(), id, kLayers, stop);
      });
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));  // hellos
    const Run r = run_jobs(c, per_run, static_cast<std::uint32_t>(target));
    std::printf(
        "%3zu workers: %zu evaluations in %.1f s = %.0f /s dispatched and persisted "
        "(goal >= 2000 /s)\n"
        "             p99 GET /v1/jobs/{id}?view=summary %.1f ms (max %.1f), p99 GET /metrics "
        "%.1f ms (max %.1f), %zu polls each (goal <= 100 ms)\n"
        "             coordinator peak resident memory %.1f MiB with %zu tasks queued at start\n",
        target, per_run, r.seconds, r.rate, r.job_p99, r.job_max, r.metrics_p99, r.metrics_max,
        r.polls, r.peak_mib, per_run);
    // The full view reads each of the job's results from the store.
    std::vector<double> full_ms;
    for (int i = 0; i < 10; ++i) {
      const auto t0 = Clock::now();
      if (c.call("GET", "/v1/jobs/" + r.last_job).status != 200) return 1;
      full_ms.push_back(ms_since(t0));
    }
    std::printf("             GET /v1/jobs/{id} (full view, 8,000 results): p99 %.1f ms\n",
                percentile(full_ms, 0.99));
  }
  stop = true;
  for (auto& t : workers) t.join();
  return 0;
}
