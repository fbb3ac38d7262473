// What the worker daemon's parts share: its options (the command line of
// `kvtune worker`), the clock, and whole-line logging to stderr (every thread
// logs). Torch-free and ZeroMQ-free.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace kvtune::worker {

using Clock = std::chrono::steady_clock;

struct DaemonOptions {
  std::string endpoint = "tcp://127.0.0.1:8471";
  std::string id;
  std::string device = "cpu";
  std::string dtype = "float32";
  int threads = 0;
  int heartbeat_ms = 1000;
  int coordinator_timeout_ms = 5000;
  double grace_seconds = 30;
  int cache_entries = 2;
  // Per loaded (model, data), bytes of hidden states kept at layer
  // boundaries for prefix reuse (-1: a quarter of the device's free memory).
  int64_t prefix_cache_bytes = -1;
  int64_t max_tasks = 0;
  int prefetch = 0;  // tasks queued beyond the running one
  // CURVE (workers off-host): the coordinator's public key file and this
  // worker's key pair file (kvtune keygen); both or neither.
  std::string curve_server_key;
  std::string curve_keys;
  // A status file rewritten every heartbeat for `kvtune worker health`
  // (health.h); empty: none.
  std::string health_file;
};

// The prefix of this worker's log lines.
inline std::string log_prefix(const std::string& worker_id) {
  return "kvtune worker " + worker_id + ": ";
}

// One log line to stderr, written whole (both threads log).
inline void log_line(const std::string& line) {
  static std::mutex mutex;
  const std::string text = line + "\n";
  std::lock_guard lock(mutex);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

inline std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.3f", seconds);
  return text;
}

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Wall-clock milliseconds since the Unix epoch (the status file's times).
inline int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace kvtune::worker
