#include "scheduler.h"

#include <algorithm>

#include "kvtune/common/error.h"

namespace kvtune {

Scheduler::Scheduler(Options options) : options_(options) {
  if (options_.max_attempts < 1) {
    throw Error("scheduler: max_attempts must be at least 1, got " +
                std::to_string(options_.max_attempts));
  }
  if (options_.lease <= Clock::duration::zero() ||
      options_.heartbeat_timeout <= Clock::duration::zero()) {
    throw Error("scheduler: lease and heartbeat_timeout must be positive");
  }
}

Scheduler::Added Scheduler::add(Task task, bool cached) {
  if (cached) return Added::kDone;
  auto it = evaluations_.find(task.eval_key);
  if (it != evaluations_.end()) {
    it->second.tasks.push_back(std::move(task));
    return Added::kAttached;
  }
  const std::string key = task.eval_key;
  Evaluation& eval = evaluations_[key];
  eval.seq = next_seq_++;
  eval.tasks.push_back(std::move(task));
  enqueue_back(key, eval);
  return Added::kQueued;
}

void Scheduler::enqueue_back(const std::string& eval_key, Evaluation& eval) {
  eval.ticket = next_ticket_++;
  queue_.emplace_back(eval_key, eval.ticket);
  ++queued_count_;
}

void Scheduler::worker_seen(const std::string& worker_id, Clock::time_point now) {
  auto [it, inserted] = workers_.try_emplace(worker_id);
  if (inserted || now > it->second.last_seen) it->second.last_seen = now;
}

void Scheduler::hello(const std::string& worker_id, Clock::time_point now) {
  worker_seen(worker_id, now);
  workers_[worker_id].credit = 0;
}

void Scheduler::touch(const std::string& worker_id, Clock::time_point now) {
  auto it = workers_.find(worker_id);
  if (it != workers_.end() && now > it->second.last_seen) it->second.last_seen = now;
}

bool Scheduler::credit(const std::string& worker_id, std::uint32_t n, Clock::time_point now) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return false;
  touch(worker_id, now);
  it->second.credit += n;
  return true;
}

Scheduler::Worker* Scheduler::pick_worker() {
  if (workers_.empty()) return nullptr;
  // The first worker with credit after the last one served, wrapping around.
  auto it = workers_.upper_bound(last_worker_);
  for (std::size_t i = 0; i < workers_.size(); ++i, ++it) {
    if (it == workers_.end()) it = workers_.begin();
    if (it->second.credit > 0) {
      last_worker_ = it->first;
      return &it->second;
    }
  }
  return nullptr;
}

std::optional<Scheduler::Assignment> Scheduler::next_assignment(Clock::time_point now) {
  if (queued_count_ == 0) return std::nullopt;
  Worker* worker = pick_worker();
  if (worker == nullptr) return std::nullopt;
  while (!queue_.empty()) {
    auto [key, ticket] = std::move(queue_.front());
    queue_.pop_front();
    auto it = evaluations_.find(key);
    if (it == evaluations_.end() || it->second.lease || it->second.ticket != ticket) continue;
    Evaluation& eval = it->second;
    --queued_count_;
    eval.lease = Lease{last_worker_, now + options_.lease};
    ++leased_count_;
    ++eval.attempts;
    --worker->credit;
    worker->leases.insert(key);
    return Assignment{last_worker_, eval.tasks.front()};
  }
  return std::nullopt;  // unreachable while queued_count_ is consistent
}

void Scheduler::release(const std::string& eval_key, Evaluation& eval) {
  if (!eval.lease) return;
  auto it = workers_.find(eval.lease->worker_id);
  if (it != workers_.end()) it->second.leases.erase(eval_key);
  eval.lease.reset();
  --leased_count_;
}

std::vector<Scheduler::Task> Scheduler::complete(const std::string& worker_id,
                                                 const std::string& eval_key,
                                                 Clock::time_point now) {
  touch(worker_id, now);
  auto it = evaluations_.find(eval_key);
  if (it == evaluations_.end()) return {};
  if (it->second.lease) {
    release(eval_key, it->second);
  } else {
    --queued_count_;  // its queue entry goes stale with the evaluation
  }
  std::vector<Task> done = std::move(it->second.tasks);
  evaluations_.erase(it);
  return done;
}

std::size_t Scheduler::cancel_job(const std::string& job_id) {
  std::size_t removed = 0;
  for (auto it = evaluations_.begin(); it != evaluations_.end();) {
    auto& tasks = it->second.tasks;
    const auto before = tasks.size();
    std::erase_if(tasks, [&](const Task& t) { return t.job_id == job_id; });
    removed += before - tasks.size();
    if (!tasks.empty()) {
      ++it;
      continue;
    }
    if (it->second.lease) {
      release(it->first, it->second);
    } else {
      --queued_count_;  // its queue entry goes stale with the evaluation
    }
    it = evaluations_.erase(it);
  }
  return removed;
}

std::optional<Scheduler::Failure> Scheduler::fail(const std::string& worker_id,
                                                  const std::string& eval_key,
                                                  const std::string& error_message,
                                                  Clock::time_point now) {
  touch(worker_id, now);
  auto it = evaluations_.find(eval_key);
  if (it == evaluations_.end() || !it->second.lease || it->second.lease->worker_id != worker_id) {
    return std::nullopt;
  }
  it->second.errors.push_back(worker_id + ": " + error_message);
  release(eval_key, it->second);
  std::vector<Failure> failed = settle({eval_key});
  if (failed.empty()) return std::nullopt;
  return std::move(failed.front());
}

bool Scheduler::hand_back(const std::string& worker_id, const std::string& eval_key,
                          Clock::time_point now) {
  touch(worker_id, now);
  auto it = evaluations_.find(eval_key);
  if (it == evaluations_.end() || !it->second.lease || it->second.lease->worker_id != worker_id) {
    return false;
  }
  release(eval_key, it->second);
  --it->second.attempts;
  settle({eval_key});  // attempts < max_attempts now: always requeued
  return true;
}

std::vector<std::string> Scheduler::drop_leases(const std::string& worker_id, Worker& worker,
                                                const std::string& why) {
  std::vector<std::string> keys(worker.leases.begin(), worker.leases.end());
  for (const std::string& key : keys) {
    Evaluation& eval = evaluations_.at(key);
    eval.errors.push_back(worker_id + ": " + why);
    release(key, eval);
  }
  return keys;
}

std::vector<Scheduler::Failure> Scheduler::worker_gone(const std::string& worker_id) {
  auto it = workers_.find(worker_id);
  if (it == workers_.end()) return {};
  std::vector<std::string> keys = drop_leases(worker_id, it->second, "worker left");
  workers_.erase(it);
  return settle(std::move(keys));
}

Scheduler::ExpireResult Scheduler::expire(Clock::time_point now) {
  ExpireResult result;
  std::vector<std::string> keys;
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (now - it->second.last_seen > options_.heartbeat_timeout) {
      for (std::string& key : drop_leases(it->first, it->second, "worker went silent")) {
        keys.push_back(std::move(key));
      }
      result.lost_workers.push_back(it->first);
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [worker_id, worker] : workers_) {
    std::vector<std::string> expired;
    for (const std::string& key : worker.leases) {
      if (now > evaluations_.at(key).lease->deadline) expired.push_back(key);
    }
    for (std::string& key : expired) {
      Evaluation& eval = evaluations_.at(key);
      eval.errors.push_back(worker_id + ": lease expired");
      release(key, eval);
      keys.push_back(std::move(key));
    }
  }
  result.failed = settle(std::move(keys));
  return result;
}

std::vector<Scheduler::Failure> Scheduler::settle(std::vector<std::string> keys) {
  std::vector<Failure> failed;
  // Requeued at the front in arrival order: push the latest first.
  std::sort(keys.begin(), keys.end(), [this](const std::string& a, const std::string& b) {
    return evaluations_.at(a).seq > evaluations_.at(b).seq;
  });
  for (const std::string& key : keys) {
    auto it = evaluations_.find(key);
    Evaluation& eval = it->second;
    if (eval.attempts >= options_.max_attempts) {
      failed.push_back(Failure{key, std::move(eval.tasks), std::move(eval.errors)});
      evaluations_.erase(it);
      continue;
    }
    eval.ticket = next_ticket_++;
    queue_.emplace_front(key, eval.ticket);
    ++queued_count_;
  }
  std::reverse(failed.begin(), failed.end());  // arrival order
  return failed;
}

std::vector<Scheduler::WorkerInfo> Scheduler::workers() const {
  std::vector<WorkerInfo> out;
  out.reserve(workers_.size());
  for (const auto& [id, worker] : workers_) {
    out.push_back(WorkerInfo{id, worker.credit, worker.leases.size(), worker.last_seen});
  }
  return out;
}

Scheduler::State Scheduler::state(const std::string& eval_key) const {
  auto it = evaluations_.find(eval_key);
  if (it == evaluations_.end()) return State::kUnknown;
  return it->second.lease ? State::kLeased : State::kQueued;
}

std::optional<std::string> Scheduler::holder(const std::string& eval_key) const {
  auto it = evaluations_.find(eval_key);
  if (it == evaluations_.end() || !it->second.lease) return std::nullopt;
  return it->second.lease->worker_id;
}

int Scheduler::attempts(const std::string& eval_key) const {
  auto it = evaluations_.find(eval_key);
  return it == evaluations_.end() ? 0 : it->second.attempts;
}

}  // namespace kvtune
