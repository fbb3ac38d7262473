// The worker daemon's evaluation runner: the thread that takes jobs (an
// evaluation or a describe) one at a time, runs them on the model cache and
// turns each into the message for the coordinator (result, described or
// failure), handed back to the protocol loop through a mutex-guarded queue.
// Torch-free: LibTorch stays behind model_cache.h.
#pragma once

#include <capnp/message.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "daemon_common.h"
#include "kvtune/schemas/eval_key.h"
#include "model_cache.h"

namespace kvtune::worker {

// Work for the runner thread.
struct Job {
  enum class Kind { kDescribe, kEvaluate };
  Kind kind = Kind::kEvaluate;
  std::string task_id;
  std::string key;    // evalKey or describeKey, as received
  EvalInputs inputs;  // a describe uses model_spec, data_spec, seq_len and prompt_tokens
  std::string validation_data_spec;  // a describe: also fingerprint this data
};

// A message for the coordinator, built by the runner, sent by the main thread.
struct Reply {
  std::unique_ptr<capnp::MallocMessageBuilder> message;
  bool finishes_task = false;  // a task's result or failure (counts for --max-tasks)
};

// The failure message for `job` (a task's failure finishes it).
Reply failure_reply(const Job& job, const std::string& error);

// Runs jobs one at a time on its own thread and keeps the LRU of loaded
// (model, data) entries, which only that thread touches.
class EvalRunner {
 public:
  EvalRunner(const DaemonOptions& options, std::string worker_id);
  EvalRunner(const EvalRunner&) = delete;
  EvalRunner& operator=(const EvalRunner&) = delete;
  // Waits for a running job: call only when idle() (or accept the wait).
  ~EvalRunner();

  // Queues a job; true when the runner was idle (the job starts now).
  bool submit(Job job);

  std::optional<Reply> take_reply();

  // Nothing running, queued or waiting to be sent.
  bool idle() const;

  // The task id of the running job; empty when none runs.
  std::string busy_task_id() const;
  // The running job's task id and when it started (wall_ms()); {"", 0}
  // when none runs.
  std::pair<std::string, int64_t> busy_task() const;

  // Drops jobs that have not started; returns their task ids.
  std::vector<std::string> drop_queued();

  // Model specs in the cache, most recently used first, without repeats.
  std::vector<std::string> loaded_models() const { return cache_.loaded_models(); }
  // Bytes the loaded evaluators' references hold.
  uint64_t reference_bytes() const { return cache_.reference_bytes(); }

 private:
  void run();
  Reply execute(const Job& job);
  Reply run_describe(const Job& job);
  Reply run_evaluation(const Job& job);

  const DaemonOptions& options_;
  const std::string id_;
  const std::string prefix_;

  mutable std::mutex mutex_;  // guards the queues and the running state
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  std::deque<Reply> replies_;
  bool running_ = false;
  std::string running_task_id_;
  int64_t running_since_ms_ = 0;
  bool stop_ = false;
  ModelCache cache_;  // runner thread only, but for loaded_models()

  std::thread thread_;
};

}  // namespace kvtune::worker
