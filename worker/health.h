// The worker daemon's health, for probes that cannot reach its memory (a
// Kubernetes exec probe runs a new process in the container): with
// --health-file PATH the daemon rewrites a small JSON status file every
// heartbeat (a temporary file renamed over PATH, so a reader sees a whole
// one), and `kvtune worker health --health-file PATH` reads it and says
// whether the worker is healthy:
//
//   - the file exists and was written recently (else the daemon's loop is
//     not running: wedged, stopped or dead);
//   - a message from the coordinator has arrived, and recently (it heartbeats
//     every second: silence means the coordinator is gone or unreachable; a
//     worker that has heard nothing yet is not connected, hence not healthy);
//   - no one task has been running longer than the coordinator's lease (past
//     it, the coordinator has given the evaluation to another worker).
//
// Torch-free and ZeroMQ-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kvtune::worker {

// What the status file holds. Times are wall-clock milliseconds since the
// Unix epoch (the reader is another process); 0 means "none".
struct HealthStatus {
  int64_t pid = 0;
  std::string worker_id;
  std::string coordinator;  // the --connect endpoint
  int64_t heartbeat_ms = 0;
  int64_t coordinator_timeout_ms = 0;
  int64_t started_ms = 0;
  int64_t last_coordinator_message_ms = 0;  // 0: nothing received yet
  std::string busy_task_id;                 // empty: idle
  int64_t busy_since_ms = 0;
  int64_t written_ms = 0;
};

std::string health_json(const HealthStatus& status);
// Throws kvtune::Error when `text` is no status file.
HealthStatus parse_health_json(const std::string& text);

// Writes `status` to `path` through `path`.tmp and a rename; throws
// kvtune::Error naming the path on failure.
void write_health_file(const std::string& path, const HealthStatus& status);

// The limits of `kvtune worker health`, in seconds; unset: the defaults
// (max_silence: the worker's coordinator timeout plus one coordinator
// heartbeat; max_task: the coordinator's default lease; max_stale: ten of the
// worker's heartbeats, at least 10 s).
struct HealthLimits {
  std::optional<double> max_silence_s;
  std::optional<double> max_task_s;
  std::optional<double> max_stale_s;
};

// The coordinator's default --lease-seconds (kvtune coordinator --help).
constexpr double kDefaultLeaseSeconds = 600;

struct HealthVerdict {
  bool healthy = false;
  std::string line;  // "healthy: ..." or "unhealthy: ..."
};

// The verdict on `status` at wall-clock time `now_ms`.
HealthVerdict judge_health(const HealthStatus& status, int64_t now_ms, const HealthLimits& limits);

// `kvtune worker health --health-file PATH [--max-silence-s S] [--max-task-s
// T] [--max-stale-s A]`: prints one line; returns 0 when healthy, 1 when not
// (or no readable status file), 2 on a usage error.
int health_command(const std::vector<std::string>& args);

}  // namespace kvtune::worker
