// The worker's status file and `kvtune worker health` (see health.h).
#include "health.h"

#include <signal.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "daemon_common.h"
#include "kvtune/common/error.h"

namespace kvtune::worker {
namespace po = boost::program_options;

namespace {

// Seconds from `then_ms` to `now_ms`, never negative (a clock step back).
double seconds_between(int64_t then_ms, int64_t now_ms) {
  return std::max<int64_t>(0, now_ms - then_ms) / 1000.0;
}

std::string secs(double seconds) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f s", seconds);
  return text;
}

// Whether process `pid` exists in this PID namespace.
bool process_exists(int64_t pid) {
  if (pid <= 0) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

}  // namespace

std::string health_json(const HealthStatus& s) {
  const nlohmann::json json = {
      {"pid", s.pid},
      {"worker_id", s.worker_id},
      {"coordinator", s.coordinator},
      {"heartbeat_ms", s.heartbeat_ms},
      {"coordinator_timeout_ms", s.coordinator_timeout_ms},
      {"started_ms", s.started_ms},
      {"last_coordinator_message_ms", s.last_coordinator_message_ms},
      {"busy_task_id", s.busy_task_id},
      {"busy_since_ms", s.busy_since_ms},
      {"written_ms", s.written_ms},
  };
  return json.dump() + "\n";
}

HealthStatus parse_health_json(const std::string& text) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("not JSON: ") + e.what());
  }
  if (!json.is_object()) throw Error("not a JSON object");
  HealthStatus s;
  try {
    s.pid = json.value("pid", int64_t{0});
    s.worker_id = json.value("worker_id", std::string());
    s.coordinator = json.value("coordinator", std::string());
    s.heartbeat_ms = json.value("heartbeat_ms", int64_t{0});
    s.coordinator_timeout_ms = json.value("coordinator_timeout_ms", int64_t{0});
    s.started_ms = json.value("started_ms", int64_t{0});
    s.last_coordinator_message_ms = json.value("last_coordinator_message_ms", int64_t{0});
    s.busy_task_id = json.value("busy_task_id", std::string());
    s.busy_since_ms = json.value("busy_since_ms", int64_t{0});
    s.written_ms = json.at("written_ms").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("not a worker status file: ") + e.what());
  }
  return s;
}

void write_health_file(const std::string& path, const HealthStatus& status) {
  const std::string text = health_json(status);
  const std::string temporary = path + ".tmp";
  FILE* file = std::fopen(temporary.c_str(), "w");
  if (file == nullptr) {
    throw Error("--health-file " + path + ": cannot write " + temporary + ": " +
                std::strerror(errno));
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  const int error = errno;
  if (std::fclose(file) != 0 || !written) {
    std::remove(temporary.c_str());
    throw Error("--health-file " + path + ": cannot write " + temporary + ": " +
                std::strerror(written ? errno : error));
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int rename_error = errno;
    std::remove(temporary.c_str());
    throw Error("--health-file " + path + ": cannot rename " + temporary +
                " to it: " + std::strerror(rename_error));
  }
}

HealthVerdict judge_health(const HealthStatus& s, int64_t now_ms, const HealthLimits& limits) {
  const double max_stale =
      limits.max_stale_s.value_or(std::max(10.0, 10 * static_cast<double>(s.heartbeat_ms) / 1000));
  // The coordinator heartbeats every second: allow one beyond the worker's
  // own patience before it says hello again.
  const double max_silence =
      limits.max_silence_s.value_or(static_cast<double>(s.coordinator_timeout_ms) / 1000 + 1.0);
  const double max_task = limits.max_task_s.value_or(kDefaultLeaseSeconds);
  const std::string who = "worker " + s.worker_id + " (pid " + std::to_string(s.pid) + ")";

  std::vector<std::string> problems;
  const double age = seconds_between(s.written_ms, now_ms);
  if (age > max_stale) {
    problems.push_back(
        "stale status file: " + who + " last wrote it " + secs(age) + " ago (limit " +
        secs(max_stale) + "; " +
        (process_exists(s.pid) ? "the process is wedged or stopped" : "the process is gone") + ")");
  }
  const bool heard = s.last_coordinator_message_ms > 0;
  const double silence = seconds_between(s.last_coordinator_message_ms, now_ms);
  if (!heard) {
    problems.push_back("not connected: no message from the coordinator " + s.coordinator +
                       " yet (the worker started " + secs(seconds_between(s.started_ms, now_ms)) +
                       " ago)");
  } else if (silence > max_silence) {
    problems.push_back("no message from the coordinator " + s.coordinator + " for " +
                       secs(silence) + " (limit " + secs(max_silence) + ")");
  }
  const double busy = s.busy_task_id.empty() ? 0 : seconds_between(s.busy_since_ms, now_ms);
  if (!s.busy_task_id.empty() && busy > max_task) {
    problems.push_back("task " + s.busy_task_id + " busy for " + secs(busy) + " (limit " +
                       secs(max_task) + ")");
  }

  HealthVerdict verdict;
  verdict.healthy = problems.empty();
  if (verdict.healthy) {
    verdict.line = "healthy: " + who + ", coordinator " + s.coordinator + " heard " +
                   secs(silence) + " ago, " +
                   (s.busy_task_id.empty() ? std::string("idle")
                                           : "task " + s.busy_task_id + " busy for " + secs(busy));
    return verdict;
  }
  verdict.line = "unhealthy: " + who + ": ";
  for (size_t i = 0; i < problems.size(); ++i) verdict.line += (i ? "; " : "") + problems[i];
  return verdict;
}

int health_command(const std::vector<std::string>& args) {
  std::string path;
  double max_silence = 0, max_task = 0, max_stale = 0;
  po::options_description opts(
      "kvtune worker health --health-file PATH [options]: whether the worker writing PATH "
      "(kvtune worker --health-file PATH) is healthy; prints one line, exits 0 (healthy) or 1");
  opts.add_options()("help,h", "show this help")("health-file", po::value(&path),
                                                 "the status file the worker writes (required)")(
      "max-silence-s", po::value(&max_silence),
      "longest silence from the coordinator (default: the worker's --coordinator-timeout-ms "
      "plus 1 s)")("max-task-s", po::value(&max_task),
                   "longest time one task may run (default: 600, the coordinator's default "
                   "--lease-seconds)")(
      "max-stale-s", po::value(&max_stale),
      "oldest the status file may be (default: 10 of the worker's heartbeats, at least 10 s)");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(opts).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "kvtune worker health: " << e.what() << "\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  if (path.empty()) {
    std::cerr << "kvtune worker health: --health-file PATH is required\n";
    return 2;
  }
  HealthLimits limits;
  for (const auto& [name, value, limit] :
       {std::tuple{"max-silence-s", max_silence, &limits.max_silence_s},
        std::tuple{"max-task-s", max_task, &limits.max_task_s},
        std::tuple{"max-stale-s", max_stale, &limits.max_stale_s}}) {
    if (!vm.count(name)) continue;
    if (!(value > 0)) {
      std::cerr << "kvtune worker health: --" << name << " must be positive\n";
      return 2;
    }
    *limit = value;
  }

  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    std::cout << "unhealthy: no status file " << path
              << " (the worker has not started, has stopped, or runs without --health-file " << path
              << ")\n";
    return 1;
  }
  HealthStatus status;
  try {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in) throw Error(std::strerror(errno));
    status = parse_health_json(text.str());
  } catch (const Error& e) {
    std::cout << "unhealthy: status file " << path << ": " << e.what() << "\n";
    return 1;
  }
  const HealthVerdict verdict = judge_health(status, wall_ms(), limits);
  std::cout << verdict.line << "\n";
  return verdict.healthy ? 0 : 1;
}

}  // namespace kvtune::worker
