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

// A child process whose stdout and stderr go to `log_file`; killed (SIGKILL)
// when destroyed if still running.
class Process {
 public:
  Process(std::vector<std::string> argv, std::string log_file) : log_(std::move(log_file)) {
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      std::vector<char*> args;
      for (std::string& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Process() {
    if (running()) kill(SIGKILL);
    wait();
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& log_file() const { return log_; }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  bool running() {
    if (exited_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      status_ = status;
    }
    return !exited_;
  }
  void kill(int signal) {
    if (!exited_) ::kill(pid_, signal);
  }
  // Waits for the exit; returns the exit code, or 128 + signal.
  int wait() {
    if (!exited_) {
      ::waitpid(pid_, &status_, 0);
      exited_ = true;
    }
    return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
  bool exited_ = false;
  int status_ = 0;
};

// Polls `condition` every 20 ms until it holds or `timeout` passes.
inline bool eventually(const std::function<bool()>& condition,
                       std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return condition();
}

// Every match of `pattern`'s first group in `text`.
inline std::vector<std::string> captures(const std::string& text, const std::string& pattern) {
  std::vector<std::string> out;
  const std::regex re(pattern);
  for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it) {
    out.push_back((*it)[1].str());
  }
  return out;
}

// A coordinator process on ephemeral (or given) loopback ports.
class CoordinatorProcess {
 public:
  CoordinatorProcess(const std::string& db, const std::string& log_file,
                     std::vector<std::string> extra = {}, const std::string& api = "127.0.0.1:0",
                     const std::string& bind = "tcp://127.0.0.1:0") {
    std::vector<std::string> argv = {build_path("kvtune"), "coordinator", "--db",  db,
                                     "--api",               api,           "--bind", bind};
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
    nlohmann::json job;
    eventually(
        [&] {
          job = get("/v1/jobs/" + id);
          const std::string s = job["state"];
          return s == "done" || s == "failed" || s == "cancelled";
        },
        timeout);
    return job;
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
