// The coordinator's task scheduler: which evaluation goes to which worker, and
// what happens when a worker fails, goes silent or leaves. It is the lease
// bookkeeping of the zguide "Paranoid Pirate" pattern as pure logic: no
// sockets, no store, no threads, no clock of its own. The transport feeds it
// worker messages (hello/heartbeat, credit, result, error, hand-back,
// goodbye) and the current time; it answers with assignments to send and
// tasks that are now done or failed, which the caller persists.
//
// - Evaluations are content-addressed: tasks (of any job) with the same
//   evaluation key share one evaluation, dispatched once; its result
//   completes all of them.
// - A worker takes as many tasks as it has granted credit; assignments go
//   FIFO over queued evaluations, round-robin over workers with credit.
// - A lease has a deadline. A lease past its deadline, or held by a worker
//   silent for longer than the heartbeat timeout, is requeued at the front of
//   the queue; an evaluation leased max_attempts times without a result fails
//   with every worker's error message. A hand-back (worker shutting down)
//   requeues without counting the attempt.
// - Results are idempotent: a result for an evaluation that is not pending
//   (a duplicate, a late one, an unknown key) changes nothing. A result from a
//   worker that does not hold the lease is accepted (the work is valid).
//
// Finished evaluations are forgotten; the store remembers them (the caller
// checks it before add() and passes `cached`).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kvtune {

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    Clock::duration lease = std::chrono::seconds(60);
    Clock::duration heartbeat_timeout = std::chrono::seconds(10);
    int max_attempts = 3;  // >= 1
  };

  struct Task {
    std::string id;
    std::string job_id;
    std::string eval_key;
    std::string payload;  // opaque: the serialized EvalRequest
  };

  // An evaluation to send to a worker (the task is the first one added).
  struct Assignment {
    std::string worker_id;
    Task task;
  };

  // An evaluation that failed max_attempts times: every task that shared it,
  // and each attempt's error as "WORKER: message", in order.
  struct Failure {
    std::string eval_key;
    std::vector<Task> tasks;
    std::vector<std::string> errors;
  };

  struct ExpireResult {
    std::vector<std::string> lost_workers;  // silent ones, now removed
    std::vector<Failure> failed;            // evaluations out of attempts
  };

  enum class Added { kQueued, kAttached, kDone };
  enum class State { kUnknown, kQueued, kLeased };

  struct WorkerInfo {
    std::string id;
    std::uint32_t credit = 0;
    std::size_t leases = 0;
    Clock::time_point last_seen;
  };

  // Throws kvtune::Error for max_attempts < 1 or a non-positive duration.
  explicit Scheduler(Options options);
  Scheduler() : Scheduler(Options{}) {}

  // kDone when `cached` (the result is already stored: nothing to dispatch),
  // kAttached when an evaluation with the same key is pending (the task
  // completes with it), kQueued when it starts a new evaluation.
  Added add(Task task, bool cached = false);

  // A worker's hello or heartbeat: registers it (no credit) or refreshes it.
  void worker_seen(const std::string& worker_id, Clock::time_point now);
  // A worker's hello: a new session. As worker_seen, and its credit restarts
  // at zero (a worker says hello with the credit it then grants); its leases
  // are kept (it may still deliver them).
  void hello(const std::string& worker_id, Clock::time_point now);
  // The worker may take n more tasks. False (and ignored) for an unknown
  // worker, which must say hello first.
  bool credit(const std::string& worker_id, std::uint32_t n, Clock::time_point now);

  // The next evaluation to send, leased until now + lease; decrements the
  // worker's credit and counts an attempt. nullopt when nothing is queued or
  // no worker has credit. Call until nullopt.
  std::optional<Assignment> next_assignment(Clock::time_point now);

  // A result: returns every task of the evaluation, now done, or an empty
  // vector when the key is not pending (duplicate, late, unknown).
  std::vector<Task> complete(const std::string& worker_id, const std::string& eval_key,
                             Clock::time_point now);

  // An error from the worker holding the lease: recorded; the evaluation is
  // requeued at the front, or fails (returned) when it has been attempted
  // max_attempts times. Ignored when the worker does not hold the lease.
  std::optional<Failure> fail(const std::string& worker_id, const std::string& eval_key,
                              const std::string& error_message, Clock::time_point now);

  // A worker shutting down returns its lease: requeued at the front, the
  // attempt not counted. False when the worker does not hold the lease.
  bool hand_back(const std::string& worker_id, const std::string& eval_key, Clock::time_point now);

  // An explicit goodbye: the worker is removed and its leases requeued as
  // for silence. Returns the evaluations that ran out of attempts.
  std::vector<Failure> worker_gone(const std::string& worker_id);

  // Removes workers silent for longer than heartbeat_timeout and requeues
  // their leases, and requeues leases past their deadline, all at the front
  // of the queue with the attempt counted. Call periodically.
  ExpireResult expire(Clock::time_point now);

  // Forgets every task of `job_id`. An evaluation left without tasks is
  // dropped from the queue; one that is leased is forgotten too (its result,
  // when it comes, is a late one). Returns how many tasks were removed.
  std::size_t cancel_job(const std::string& job_id);

  // Introspection (for /metrics, /v1/workers and tests).
  std::size_t queued() const { return queued_count_; }
  std::size_t leased() const { return leased_count_; }
  std::vector<WorkerInfo> workers() const;
  State state(const std::string& eval_key) const;
  std::optional<std::string> holder(const std::string& eval_key) const;
  int attempts(const std::string& eval_key) const;  // 0 when not pending

 private:
  struct Lease {
    std::string worker_id;
    Clock::time_point deadline;
  };
  struct Evaluation {
    std::vector<Task> tasks;
    std::uint64_t seq = 0;     // order of arrival
    std::uint64_t ticket = 0;  // identifies its live queue entry
    std::optional<Lease> lease;
    int attempts = 0;
    std::vector<std::string> errors;
  };
  struct Worker {
    Clock::time_point last_seen;
    std::uint32_t credit = 0;
    std::set<std::string> leases;
  };

  void touch(const std::string& worker_id, Clock::time_point now);
  void release(const std::string& eval_key, Evaluation& eval);
  void enqueue_back(const std::string& eval_key, Evaluation& eval);
  // Requeues (front, in arrival order) or fails the given released evaluations.
  std::vector<Failure> settle(std::vector<std::string> keys);
  // Leases of a departing worker: released, each with an error.
  std::vector<std::string> drop_leases(const std::string& worker_id, Worker& worker,
                                       const std::string& why);
  Worker* pick_worker();

  Options options_;
  std::unordered_map<std::string, Evaluation> evaluations_;  // pending ones
  // Queue entries (key, ticket); an entry whose ticket no longer matches a
  // queued evaluation is stale and skipped.
  std::deque<std::pair<std::string, std::uint64_t>> queue_;
  std::size_t queued_count_ = 0;
  std::size_t leased_count_ = 0;
  std::uint64_t next_seq_ = 0;
  std::uint64_t next_ticket_ = 0;
  std::map<std::string, Worker> workers_;
  std::string last_worker_;  // round-robin position
};

}  // namespace kvtune
