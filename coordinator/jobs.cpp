// Job life cycle: resume, submit, describe/expand, settle, finish, fail,
// cancel (jobs.h).
#include "jobs.h"

#include <algorithm>
#include <cstdlib>

#include "kvtune/common/error.h"
#include "kvtune/schemas/eval_key.h"
#include "search_driver.h"

namespace kvtune::coord {
namespace {

std::string layers_name(schema::EvalRequest::Reader request) {
  return format_layer_config(read_eval_request(request).layers);
}

void label_profile_task(TaskEntry& entry, schema::EvalRequest::Reader request) {
  const auto layers = read_eval_request(request).layers;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    if (layers[l] != PrecisionPair{KvFormat::full(), KvFormat::full()}) {
      entry.profile_layer = static_cast<int>(l);
      entry.pair = layers[l].name();
    }
  }
}

}  // namespace

void fail_job(Job& job, const std::string& error, Scheduler& scheduler, Ledger& ledger) {
  scheduler.cancel_job(job.id);
  job.state = JobState::FAILED;
  job.error = error;
  ledger.put_job(job);
  release_requests(job);
  log("job " + job.id + " failed: " + error);
}

void Jobs::resume() {
  const Store& store = ledger_.store();
  std::size_t resumed = 0, requeued = 0;
  for (const auto& record : store.list_jobs()) {
    const auto r = record.get();
    Job job;
    job.id = text(r.getId());
    try {
      job.spec = JobSpec::parse_text(text(r.getSpecJson()));
    } catch (const Error& e) {
      throw Error("database " + store.path().string() + ": job " + job.id +
                  " holds a spec this coordinator cannot read: " + e.what());
    }
    job.state = r.getState();
    job.created_ms = r.getCreatedMs();
    job.updated_ms = r.getUpdatedMs();
    job.error = text(r.getError());
    if (r.hasModel()) job.model = ModelInfo::read(r.getModel());
    for (const auto& task_record : store.list_tasks(job.id)) {
      const auto t = task_record.get();
      TaskEntry entry;
      entry.config = text(t.getConfig());
      entry.eval_key = bytes(t.getEvalKey());
      if (active(job.state)) entry.request = serialize_request(t.getRequest());
      entry.layers = layers_name(t.getRequest());
      entry.state = t.getState();
      for (auto e : t.getErrors()) entry.errors.push_back(text(e));
      if (job.spec.kind == JobSpec::Kind::Profile) label_profile_task(entry, t.getRequest());
      job.tasks.push_back(std::move(entry));
    }
    Job& stored = jobs_[job.id] = std::move(job);
    if (!active(stored.state)) {
      // A finished job keeps answering with its results after a restart.
      stored.done = stored.failed = 0;
      for (TaskEntry& t : stored.tasks) {
        if (t.state == TaskState::FAILED) {
          ++stored.failed;
        } else if (t.state == TaskState::DONE || ledger_.result_stored(t.eval_key)) {
          t.state = TaskState::DONE;
          ++stored.done;
        }
      }
      if (stored.spec.kind == JobSpec::Kind::Search && stored.model) {
        if (auto state = store.get_raw(Store::Area::Search, stored.id)) {
          stored.tasks.clear();
          stored.done = stored.failed = 0;
          search_.resume(stored, state, false);
          release_requests(stored);
        }
      }
      continue;
    }
    ++resumed;
    if (!stored.model) {
      queue_describe(stored);
      continue;
    }
    if (stored.spec.kind == JobSpec::Kind::Search) {
      stored.tasks.clear();
      stored.done = stored.failed = 0;
      search_.resume(stored, store.get_raw(Store::Area::Search, stored.id), true);
      continue;
    }
    requeued += queue_tasks(stored);
    stored.planned = planned_tasks(stored);
    if (stored.tasks.size() < stored.planned) expanding_.push_back(stored.id);
    maybe_finish(stored);
  }
  if (!ledger_.flush()) throw Error(ledger_.failure());
  if (resumed > 0) {
    log("resumed " + std::to_string(resumed) + " unfinished job(s); " + std::to_string(requeued) +
        " evaluation task(s) queued, the rest are stored");
  }
}

std::string Jobs::submit(const JobSpec& spec) {
  Job job;
  job.id = new_job_id();
  while (jobs_.contains(job.id)) job.id = new_job_id();
  job.spec = spec;
  job.created_ms = wall_ms();
  Job& stored = jobs_[job.id] = std::move(job);
  ledger_.put_job(stored);
  queue_describe(stored);
  if (!ledger_.flush()) return stored.id;  // not stored: the coordinator stops
  log("job " + stored.id + " (" + spec.kind_name() + ", model " + spec.model + ") submitted");
  return stored.id;
}

bool Jobs::cancel(Job& job) {
  if (!active(job.state)) return false;
  scheduler_.cancel_job(job.id);
  job.state = JobState::CANCELLED;
  ledger_.put_job(job);
  release_requests(job);
  if (!ledger_.flush()) return true;  // not stored: the coordinator stops
  log("job " + job.id + " cancelled");
  return true;
}

Job* Jobs::find(const std::string& id) {
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : &it->second;
}

std::pair<Job*, long> Jobs::locate(const std::string& task_id) {
  const auto slash = task_id.rfind('/');
  if (slash == std::string::npos) return {nullptr, -1};
  auto it = jobs_.find(task_id.substr(0, slash));
  if (it == jobs_.end()) return {nullptr, -1};
  const std::string rest = task_id.substr(slash + 1);
  if (rest == "describe") return {&it->second, -1};
  char* end = nullptr;
  const long index = std::strtol(rest.c_str(), &end, 10);
  if (*end != '\0' || index < 0 || static_cast<std::size_t>(index) >= it->second.tasks.size()) {
    return {nullptr, -1};
  }
  return {&it->second, index};
}

void Jobs::queue_describe(Job& job) {
  scheduler_.add(Scheduler::Task{job.id + "/describe", job.id, kDescribePrefix + job.id, ""});
}

std::size_t Jobs::planned_tasks(const Job& job) {
  if (job.spec.kind == JobSpec::Kind::Evaluate) return job.spec.configs.size();
  return job.model->layers * job.spec.candidates.size();
}

namespace {

// configs[i] of a described evaluate job, one pair per layer of its model.
std::vector<PrecisionPair> config_layers(const Job& job, std::size_t i) {
  const std::string& config = job.spec.configs[i];
  try {
    return parse_layer_config(config, static_cast<int>(job.model->layers));
  } catch (const Error& err) {
    throw Error("configs[" + std::to_string(i) + "] '" + config + "': " + err.what());
  }
}

}  // namespace

// Evaluation `i` of a described evaluate or profile job: its config name and
// layers (profile: one layer at a candidate pair, the others KV16), addressed.
TaskEntry Jobs::entry_at(const Job& job, std::size_t i) {
  const int n = static_cast<int>(job.model->layers);
  TaskEntry e;
  std::vector<PrecisionPair> layers;
  if (job.spec.kind == JobSpec::Kind::Evaluate) {
    e.config = job.spec.configs[i];
    layers = config_layers(job, i);
  } else {
    const std::size_t pairs = job.spec.candidates.size();
    const PrecisionPair& p = job.spec.candidates[i % pairs];
    layers.assign(static_cast<std::size_t>(n), PrecisionPair{KvFormat::full(), KvFormat::full()});
    layers[i / pairs] = p;
    e.layers = format_layer_config(layers);
    e.config = e.layers;
    e.profile_layer = static_cast<int>(i / pairs);
    e.pair = p.name();
  }
  address(job, layers, e);
  return e;
}

bool Jobs::expand_some(Clock::time_point until) {
  while (!expanding_.empty()) {
    Job* job = find(expanding_.front());
    if (job == nullptr || job->state != JobState::RUNNING) {
      expanding_.pop_front();  // cancelled or failed while it expanded
      continue;
    }
    try {
      // Chunks of tasks between clock reads; each new task is stored (the
      // stored tasks stay a prefix: a restart expands from the first missing
      // one) and queued unless its result is stored already.
      while (job->tasks.size() < job->planned) {
        for (int k = 0; k < 64 && job->tasks.size() < job->planned; ++k) {
          const std::size_t i = job->tasks.size();
          job->tasks.push_back(entry_at(*job, i));
          ledger_.put_task(*job, i);
          queue_task(*job, i);
        }
        if (Clock::now() >= until) return true;
      }
    } catch (const Error& e) {
      fail_job(*job, e.what(), scheduler_, ledger_);
      expanding_.pop_front();
      continue;
    }
    expanding_.pop_front();
    log("job " + job->id + ": model " + job->model->name + " (" +
        std::to_string(job->model->layers) + " layers), " + std::to_string(job->tasks.size()) +
        " evaluations, " + std::to_string(job->cached) + " already stored");
    maybe_finish(*job);
  }
  return false;
}

// Settles task `i` at once when it failed before or its result is stored,
// else adds it to the scheduler. Returns whether it was queued.
bool Jobs::queue_task(Job& job, std::size_t i) {
  TaskEntry& t = job.tasks[i];
  if (t.state == TaskState::FAILED) {
    ++job.failed;
    return false;
  }
  if (t.state == TaskState::DONE || ledger_.result_stored(t.eval_key)) {
    t.state = TaskState::DONE;
    ++job.done;
    ++job.cached;
    ++counters_.cache_hits;
    return false;
  }
  scheduler_.add(Scheduler::Task{job.id + "/" + task_number(i), job.id, t.eval_key, t.request});
  return true;
}

// Adds the job's unfinished tasks to the scheduler (queue_task). Returns how
// many were queued.
std::size_t Jobs::queue_tasks(Job& job) {
  std::size_t queued = 0;
  job.done = job.failed = job.cached = 0;
  for (std::size_t i = 0; i < job.tasks.size(); ++i) queued += queue_task(job, i) ? 1 : 0;
  return queued;
}

void Jobs::described(const std::string& describe_key, schema::ModelInfo::Reader model) {
  if (!describe_key.starts_with(kDescribePrefix)) return;
  auto it = jobs_.find(describe_key.substr(std::string(kDescribePrefix).size()));
  if (it == jobs_.end() || it->second.state != JobState::QUEUED || it->second.model) return;
  described(it->second, ModelInfo::read(model));
}

void Jobs::described(Job& job, const ModelInfo& model) {
  job.model = model;
  if (job.spec.kind == JobSpec::Kind::Search) {
    search_.start(job);
    return;
  }
  // Every config checked against the model first, so that a bad one fails
  // the job before any of its evaluations is stored or sent.
  if (job.spec.kind == JobSpec::Kind::Evaluate) {
    try {
      for (std::size_t i = 0; i < job.spec.configs.size(); ++i) config_layers(job, i);
    } catch (const Error& e) {
      fail_job(job, e.what(), scheduler_, ledger_);
      return;
    }
  }
  // Expanded in slices of the event loop (expand_some), so that a job of
  // many evaluations does not hold up the API and the workers.
  job.state = JobState::RUNNING;
  job.planned = planned_tasks(job);
  ledger_.put_job(job);
  expanding_.push_back(job.id);
}

void Jobs::maybe_finish(Job& job) {
  if (job.state != JobState::RUNNING || job.tasks.size() < job.planned ||
      job.done + job.failed < job.tasks.size()) {
    return;
  }
  if (job.failed > 0) {
    job.state = JobState::FAILED;
    job.error = std::to_string(job.failed) + " of " + std::to_string(job.tasks.size()) +
                " evaluations failed";
  } else {
    job.state = JobState::DONE;
  }
  ledger_.put_job(job);
  release_requests(job);
  log("job " + job.id + " " + state_name(job.state) + " (" + std::to_string(job.done) + "/" +
      std::to_string(job.tasks.size()) + " evaluations)");
}

void Jobs::completed(const std::vector<Scheduler::Task>& tasks, double kl) {
  for (const Scheduler::Task& t : tasks) {
    const auto [job, index] = locate(t.id);
    if (job == nullptr || index < 0) continue;
    TaskEntry& entry = job->tasks[static_cast<std::size_t>(index)];
    if (entry.state != TaskState::PENDING) continue;
    entry.state = TaskState::DONE;
    entry.kl = kl;
    ++job->done;
    if (job->search) {
      search_.task_settled(*job);
    } else {
      maybe_finish(*job);
    }
  }
}

void Jobs::failed(const Scheduler::Failure& failure) {
  // Each attempt's error, said once however many attempts gave it (a missing
  // model file fails the same way every time), in the order first seen.
  std::string errors;
  std::vector<std::pair<std::string, int>> distinct;
  for (const std::string& e : failure.errors) {
    const auto seen =
        std::find_if(distinct.begin(), distinct.end(), [&](const auto& d) { return d.first == e; });
    if (seen == distinct.end()) {
      distinct.emplace_back(e, 1);
    } else {
      ++seen->second;
    }
  }
  for (const auto& [e, times] : distinct) {
    errors += (errors.empty() ? "" : "; ") + e +
              (times > 1 ? " (" + std::to_string(times) + " attempts)" : "");
  }
  for (const Scheduler::Task& t : failure.tasks) {
    const auto [job, index] = locate(t.id);
    if (job == nullptr || !active(job->state)) continue;
    if (index < 0) {
      fail_job(*job,
               "describing model " + job->spec.model + " with data " + job->spec.data +
                   " failed: " + errors,
               scheduler_, ledger_);
      continue;
    }
    TaskEntry& entry = job->tasks[static_cast<std::size_t>(index)];
    if (entry.state != TaskState::PENDING) continue;
    entry.state = TaskState::FAILED;
    entry.errors = failure.errors;
    ++job->failed;
    if (job->search) {
      search_.task_settled(*job);
      continue;
    }
    ledger_.put_task(*job, static_cast<std::size_t>(index));
    maybe_finish(*job);
  }
}

}  // namespace kvtune::coord
