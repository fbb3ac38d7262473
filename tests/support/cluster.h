// Real processes for the cluster's integration tests: a coordinator and
// workers started from the build directory on loopback, their output in log
// files, killed with any signal.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "http.h"
#include "process.h"

namespace kvtune::testing {

// A coordinator process on ephemeral (or given) loopback ports.
class CoordinatorProcess {
 public:
  CoordinatorProcess(const std::string& db, const std::string& log_file,
                     std::vector<std::string> extra = {}, const std::string& api = "127.0.0.1:0",
                     const std::string& bind = "tcp://127.0.0.1:0") {
    std::vector<std::string> argv = {
        build_path("kvtune"), "coordinator", "--db", db, "--api", api, "--bind", bind};
    argv.insert(argv.end(), extra.begin(), extra.end());
    process_ = std::make_unique<Process>(argv, log_file);
    const bool up = eventually(
        [&] {
          const auto found = captures(process_->log(), "API http://([0-9.:]+), workers (\\S+)");
          const auto ends = captures(process_->log(), "API http://[0-9.:]+, workers (\\S+)");
          if (found.empty() || ends.empty()) return !process_->running();
          api_ = found.back();
          endpoint_ = ends.back();
          return true;
        },
        std::chrono::seconds(30));
    if (!up || api_.empty()) {
      throw std::runtime_error("the coordinator did not start:\n" + process_->log());
    }
  }

  Process& process() { return *process_; }
  const std::string& api() const { return api_; }
  const std::string& endpoint() const { return endpoint_; }

  http::ClientResponse call(const std::string& method, const std::string& target,
                            const std::string& body = {}, const std::string& token = {}) const {
    return http::request(api_, method, target, body, token);
  }
  nlohmann::json get(const std::string& target) const {
    const auto r = call("GET", target);
    if (r.status != 200) throw std::runtime_error("GET " + target + ": " + r.body);
    return nlohmann::json::parse(r.body);
  }
  std::string submit(const nlohmann::json& spec) const {
    const auto r = call("POST", "/v1/jobs", spec.dump());
    if (r.status != 201) throw std::runtime_error("POST /v1/jobs: " + r.body);
    return nlohmann::json::parse(r.body)["id"].get<std::string>();
  }
  // Waits until the job is done, failed or cancelled; returns its JSON.
  nlohmann::json wait_job(const std::string& id,
                          std::chrono::milliseconds timeout = std::chrono::seconds(180)) const {
    // Polls the summary (no results), then reads the whole job once.
    eventually(
        [&] {
          const std::string s = get("/v1/jobs/" + id + "?view=summary")["state"];
          return s == "done" || s == "failed" || s == "cancelled";
        },
        timeout);
    return get("/v1/jobs/" + id);
  }
  // A number from /metrics.
  double metric(const std::string& name) const {
    const auto r = call("GET", "/metrics");
    const auto values = captures(r.body, "\n" + name + " ([0-9.e+-]+)");
    if (values.empty()) throw std::runtime_error("no metric " + name + " in\n" + r.body);
    return std::stod(values.back());
  }

 private:
  std::unique_ptr<Process> process_;
  std::string api_, endpoint_;
};

inline std::unique_ptr<Process> start_worker(const std::string& endpoint, const std::string& id,
                                             const std::string& log_file,
                                             std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {build_path("kvtune"),
                                   "worker",
                                   "--connect",
                                   endpoint,
                                   "--id",
                                   id,
                                   "--threads",
                                   "1",
                                   "--heartbeat-ms",
                                   "200",
                                   "--coordinator-timeout-ms",
                                   "1500"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return std::make_unique<Process>(argv, log_file);
}

}  // namespace kvtune::testing
