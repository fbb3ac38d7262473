// The pending batch of store writes and the Job/Task record encoding (ledger.h).
#include "ledger.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "kvtune/common/error.h"

namespace kvtune::coord {

bool Ledger::flush() {
  if (failed()) return false;
  if (batch_.empty()) return true;
  try {
    store_.write(batch_);
  } catch (const Error& e) {
    failure_ = e.what();
    batch_ = Store::Batch();
    return false;
  }
  unflushed_results_.clear();
  unflushed_metrics_.clear();
  return true;
}

bool Ledger::result_stored(const std::string& key) const {
  return unflushed_results_.contains(key) || store_.has_result(key);
}

std::optional<double> Ledger::stored_kl(const std::string& key) const {
  if (auto it = unflushed_results_.find(key); it != unflushed_results_.end()) return it->second;
  if (auto r = store_.get_result(key)) return r->get().getKl();
  return std::nullopt;
}

std::optional<json> Ledger::result_metrics(const std::string& key) const {
  if (auto it = unflushed_metrics_.find(key); it != unflushed_metrics_.end()) return it->second;
  if (auto r = store_.get_result(key)) return metrics_json(r->get());
  return std::nullopt;
}

void Ledger::put_result(const std::string& key, schema::EvalResult::Reader result) {
  batch_.put_result(key, result);
  unflushed_results_[key] = result.getKl();
  unflushed_metrics_[key] = metrics_json(result);
}

void Ledger::put_job(Job& job) {
  job.updated_ms = wall_ms();
  capnp::MallocMessageBuilder message;
  auto record = message.initRoot<schema::JobRecord>();
  record.setId(job.id);
  record.setSpecJson(job.spec.to_json().dump());
  record.setState(job.state);
  record.setCreatedMs(job.created_ms);
  record.setUpdatedMs(job.updated_ms);
  record.setError(job.error);
  if (job.model) job.model->write(record.initModel());
  batch_.put_job(record.asReader());
}

void Ledger::put_task(const Job& job, std::size_t index) {
  const TaskEntry& t = job.tasks[index];
  capnp::MallocMessageBuilder message;
  auto record = message.initRoot<schema::TaskRecord>();
  record.setId(task_number(index));
  record.setJobId(job.id);
  record.setEvalKey(as_data(t.eval_key));
  auto words = aligned_words(t.request);
  capnp::FlatArrayMessageReader request(words);
  record.setRequest(request.getRoot<schema::EvalRequest>());
  record.setState(t.state);
  auto errors = record.initErrors(static_cast<unsigned>(t.errors.size()));
  for (unsigned i = 0; i < t.errors.size(); ++i) errors.set(i, t.errors[i]);
  record.setConfig(t.config);
  batch_.put_task(record.asReader());
}

void Ledger::put_search_state(const std::string& job_id, const std::string& state) {
  batch_.put_search_state(job_id, state);
}

void Ledger::put_registry(const std::string& key, const std::string& entry) {
  batch_.put_registry(key, entry);
}

}  // namespace kvtune::coord
