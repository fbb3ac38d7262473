// Drives a search job's `search::Search` (ask/tell) with the cluster: asks
// for a generation of configs, queues those whose result is not stored,
// tells the search their errors once all have settled, then evaluates
// KVTuner's uniform baselines beside the frontier and merges the frontier
// into the job's registry entry. Also rebuilds a search from its stored
// state after a restart. Its state is in the Job (job.search and the
// generation bookkeeping); the search state is stored after every ask.
// Last, when the job validates, the frontier and the baselines are evaluated
// on its validation data with a free run, and the registry entry records it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ledger.h"
#include "scheduler.h"
#include "state.h"

namespace kvtune::coord {

// The search options of a search job: its "search" object, and for an
// engine target (JobSpec::engine_target) the target's candidates by default
// and the strategy its structure allows (skip-layers, scan, first-last; per-layer targets
// take kvtune's or the one given). Throws kvtune::Error naming the field.
search::Search::Options search_options(const JobSpec& spec);

// The uniform configs evaluated beside a described search's frontier, as
// pairs: KVTuner's KV8, K8V4, KV4, K4V2, KV2, or an engine target's dtypes
// that the model's cache shape fits.
std::vector<PrecisionPair> baseline_pairs(const Job& job);

// A search's validation so far: for each validated config (by layer string)
// its metrics on the validation data, with "rank_flip": whether its KL order
// against another validated config is reversed there.
std::map<std::string, json> validation_table(const Job& job, const Ledger& ledger);

class SearchDriver {
 public:
  SearchDriver(Ledger& ledger, Scheduler& scheduler, Counters& counters)
      : ledger_(ledger), scheduler_(scheduler), counters_(counters) {}

  // A described search job: creates its search and queues its first generation
  // (fails the job when the search options are refused).
  void start(Job& job);

  // Resumes a search from its stored state: what it evaluated is listed as
  // done, and its pending generation (asked again: identical) is queued.
  // Without a stored state a running job starts afresh. With go_on false
  // (a finished job reloaded) nothing is queued: only the stored baselines
  // are listed. Throws kvtune::Error when the state cannot be read.
  void resume(Job& job, const std::optional<std::string>& state, bool go_on);

  // After a task of the pending generation settled: when all have, tells the
  // search and starts the next generation (or finishes the job).
  void task_settled(Job& job);

  // Whether a described search job runs (or ran) its validation phase.
  static bool validates(const Job& job);

 private:
  void start_generation(Job& job);
  bool tell_generation(Job& job);
  void start_baselines(Job& job, bool queue_missing = true);
  void start_validation(Job& job, bool queue_missing = true);
  void finish(Job& job);
  void record_frontier(const Job& job);

  Ledger& ledger_;
  Scheduler& scheduler_;
  Counters& counters_;
};

}  // namespace kvtune::coord
