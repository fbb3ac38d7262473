// The coordinator's writes to its store: every change is added to one
// pending Store::Batch and flush() writes it in one synced write (the event
// loop flushes once per turn, and before answering a submit or cancel).
// When the store cannot write (a full disk, an I/O error) the Ledger keeps
// the store's error as failure() and writes nothing more: the coordinator
// must stop (its event loop checks after every flush); restarted, it
// resumes from the last complete flush, as after kill -9.
// Results received but not flushed yet are visible through result_stored(),
// stored_kl() and result_metrics() as if stored. Owns the encoding of a Job
// and a TaskEntry as the stored JobRecord and TaskRecord (the format that
// existing databases hold: keep it).
#pragma once

#include <map>
#include <optional>
#include <string>

#include "state.h"
#include "store.h"

namespace kvtune::coord {

class Ledger {
 public:
  explicit Ledger(Store& store) : store_(store) {}

  Store& store() { return store_; }
  const Store& store() const { return store_; }

  bool pending() const { return !batch_.empty(); }
  // Writes the pending batch; true when it is written (or none is pending).
  // False when the store cannot write, now or at an earlier flush: the
  // batch is dropped unwritten and failure() names the database and cause.
  bool flush();
  bool failed() const { return !failure_.empty(); }
  // The store error that stopped the writes; empty while none.
  const std::string& failure() const { return failure_; }

  // Whether evaluation `key`'s result is stored (or received, not flushed).
  bool result_stored(const std::string& key) const;
  // The KL of a stored (or just received) evaluation.
  std::optional<double> stored_kl(const std::string& key) const;
  // The metrics (metrics_json) of a stored (or just received) evaluation.
  std::optional<json> result_metrics(const std::string& key) const;

  void put_result(const std::string& key, schema::EvalResult::Reader result);
  // Stamps job.updated_ms, then writes the job record.
  void put_job(Job& job);
  void put_task(const Job& job, std::size_t index);
  void put_search_state(const std::string& job_id, const std::string& state);
  void put_registry(const std::string& key, const std::string& entry);

 private:
  Store& store_;
  Store::Batch batch_;
  std::map<std::string, double> unflushed_results_;  // key -> KL
  std::map<std::string, json> unflushed_metrics_;
  std::string failure_;
};

}  // namespace kvtune::coord
