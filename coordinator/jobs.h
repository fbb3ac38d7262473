// The coordinator's jobs and their life cycle: submit (queue the describe
// task), expand a described evaluate/profile job into its evaluations,
// settle tasks as results and failures arrive, finish, fail and cancel, and
// resume every stored job when the coordinator starts. Search jobs are
// handed to the SearchDriver once described. Every change is written
// through the Ledger; tasks are leased through the Scheduler.
#pragma once

#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kvtune/common/job_spec.h"
#include "ledger.h"
#include "scheduler.h"
#include "state.h"

namespace kvtune::coord {

class SearchDriver;

// Marks a job failed with `error` and drops its queued work.
void fail_job(Job& job, const std::string& error, Scheduler& scheduler, Ledger& ledger);

class Jobs {
 public:
  Jobs(Ledger& ledger, Scheduler& scheduler, Counters& counters, SearchDriver& search)
      : ledger_(ledger), scheduler_(scheduler), counters_(counters), search_(search) {}

  // Loads the stored jobs and queues the work of the unfinished ones (a
  // stored result completes a task at once). Throws kvtune::Error naming the
  // database when a stored job cannot be read or what resuming changed
  // cannot be written.
  void resume();

  // A new job (already validated): stored, its describe task queued. Its id.
  // When the store cannot write it (ledger failed() afterwards) the job is
  // not stored: the caller answers an error and the coordinator stops.
  std::string submit(const JobSpec& spec);
  // Cancels an active job; false (and nothing done) when it is not active.
  // As for submit, the cancel is not stored when the ledger failed().
  bool cancel(Job& job);

  Job* find(const std::string& id);
  const Job& at(const std::string& id) const { return jobs_.at(id); }
  const std::map<std::string, Job>& all() const { return jobs_; }

  // The job and task index of a scheduler task id "JOB/NNNNNN" (index -1 for
  // the describe task); nullptr when the job is unknown.
  std::pair<Job*, long> locate(const std::string& task_id);

  // A worker described the model and data of the job whose describe key is
  // `describe_key`; ignored unless that job still waits for it.
  void described(const std::string& describe_key, schema::ModelInfo::Reader model);
  // Expands described evaluate and profile jobs into their evaluations,
  // stored and queued, until `until`; true when some job is still expanding.
  bool expand_some(Clock::time_point until);
  bool expanding() const { return !expanding_.empty(); }

  // Scheduler tasks completed by a result with this KL.
  void completed(const std::vector<Scheduler::Task>& tasks, double kl);
  // Scheduler tasks that failed for good.
  void failed(const Scheduler::Failure& failure);

 private:
  void queue_describe(Job& job);
  static std::size_t planned_tasks(const Job& job);
  static TaskEntry entry_at(const Job& job, std::size_t i);
  bool queue_task(Job& job, std::size_t i);
  std::size_t queue_tasks(Job& job);
  void described(Job& job, const ModelInfo& model);
  void maybe_finish(Job& job);

  Ledger& ledger_;
  Scheduler& scheduler_;
  Counters& counters_;
  SearchDriver& search_;
  std::map<std::string, Job> jobs_;
  std::deque<std::string> expanding_;  // described jobs not yet fully expanded, in order
};

}  // namespace kvtune::coord
