// The coordinator's in-memory records, shared by its parts (coordinator.cpp,
// ledger, jobs, search_driver, api): a job and its tasks as the coordinator
// holds them, a connected worker, the process's counters, and small helpers
// (logging, Cap'n Proto text/bytes, job states, ids, the metrics of a
// result, building a task's request and evaluation key). Nothing here owns
// a socket or the store. Internal to the coordinator (namespace coord).
#pragma once

#include <capnp/message.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kvtune/common/job_spec.h"
#include "kvtune/common/precision.h"
#include "kvtune/schemas/kvtune.capnp.h"
#include "scheduler.h"
#include "search.h"

namespace kvtune::coord {

using json = nlohmann::json;
using Clock = Scheduler::Clock;
using JobState = schema::JobRecord::State;
using TaskState = schema::TaskRecord::State;

// The scheduler key of a job's describe task is this prefix and the job id.
constexpr const char* kDescribePrefix = "describe/";

int64_t wall_ms();

// One line on stderr per event, unless turned off (CoordinatorOptions::log).
void set_logging(bool on);
void log(const std::string& line);

inline std::string text(capnp::Text::Reader t) {
  return std::string(t.cStr(), t.size());
}
inline std::string bytes(capnp::Data::Reader d) {
  return std::string(reinterpret_cast<const char*>(d.begin()), d.size());
}
inline capnp::Data::Reader as_data(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(s.data()), s.size());
}

std::string state_name(JobState s);
inline bool active(JobState s) {
  return s == JobState::QUEUED || s == JobState::RUNNING;
}

// Sortable, unique job ids: creation time, then randomness.
std::string new_job_id();
// A task's id within its job ("000042"); the scheduler's is "JOB/000042".
std::string task_number(std::size_t index);

// What `kvtune eval --json` prints for an evaluation, by the same names.
json metrics_json(schema::EvalResult::Reader r);

// For configs with these calibration and validation KLs: whether each one's
// order against another config is reversed on validation (its ranking flips).
std::vector<bool> rank_flips(const std::vector<double>& calibration,
                             const std::vector<double>& validation);

// An EvalRequest as a flat Cap'n Proto message, and back: a flat message
// copied into aligned words (the std::string's own buffer need not be 8-byte
// aligned).
std::string serialize_request(schema::EvalRequest::Reader request);
kj::Array<capnp::word> aligned_words(const std::string& flat);

struct ModelInfo {
  std::string name, architecture, fingerprint, data_fingerprint;
  bool synthetic = false;
  uint32_t layers = 0, kv_heads = 0, head_dim = 0, vocab_size = 0, sequences = 0;
  uint64_t tokens = 0;
  std::string validation_data_fingerprint;  // a search's validation data

  static ModelInfo read(schema::ModelInfo::Reader r);
  void write(schema::ModelInfo::Builder b) const;
  json to_json() const;
};

struct TaskEntry {
  std::string config;  // as the job names it
  std::string layers;  // one pair per layer
  std::string eval_key;
  std::string request;  // the EvalRequest, a flat Cap'n Proto message
  TaskState state = TaskState::PENDING;
  std::vector<std::string> errors;
  int profile_layer = -1;   // profile jobs: the layer quantized alone
  std::string pair;         // profile jobs: its pair
  double kl = 0;            // the result's KL once done (what a search is told)
  bool validation = false;  // a search's validation of a frontier or baseline config
};

struct Job {
  std::string id;
  JobSpec spec;
  JobState state = JobState::QUEUED;
  int64_t created_ms = 0, updated_ms = 0;
  std::string error;
  std::optional<ModelInfo> model;
  std::vector<TaskEntry> tasks;
  std::size_t done = 0, failed = 0;
  std::size_t cached = 0;  // of done: results the store held when the task was queued
  // Evaluate and profile jobs: their evaluations once expanded (the tasks
  // grow to it in slices of the event loop).
  std::size_t planned = 0;
  // Search jobs: the driver, and where its pending generation starts in tasks.
  std::optional<search::Search> search;
  std::size_t generation_begin = 0;
  bool evaluating_baselines = false;  // the search is over; its baselines run
  bool validating = false;            // ... and then its frontier's validation
};

struct WorkerInfo {
  std::string device;
  uint64_t memory_bytes = 0;
  uint64_t reference_bytes = 0;  // the loaded evaluators' references (heartbeats)
  uint32_t threads = 0;
  std::vector<std::string> loaded_models;
  int64_t connected_ms = 0;
  uint64_t results = 0;
};

// What /metrics counts, for this process.
struct Counters {
  std::deque<Clock::time_point> recent_results;  // when results arrived (last minute)
  uint64_t evaluations_total = 0, dispatched = 0, cache_hits = 0, duplicate_results = 0;
};

// Frees the requests of a job that is no longer active: what its views show
// stays, what ran its evaluations goes (memory follows the unfinished tasks).
void release_requests(Job& job);

// Fills the request and evaluation key of `e` for `layers` of the job's
// (described) model: on its calibration data, or (`validation`, a search's)
// on its validation data with its free run.
void address(const Job& job, const std::vector<PrecisionPair>& layers, TaskEntry& e,
             bool validation = false);

}  // namespace kvtune::coord
