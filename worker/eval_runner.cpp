// The worker daemon's evaluation runner (see eval_runner.h): the runner
// thread's loop, the job queue and reply queue it shares with the protocol
// loop, and the result, described and failure messages it builds.
#include "eval_runner.h"

#include <pthread.h>

#include <csignal>
#include <exception>
#include <utility>

#include "fingerprint.h"
#include "kvtune/common/error.h"
#include "kvtune/schemas/transport.h"

namespace kvtune::worker {

namespace {

kj::ArrayPtr<const kj::byte> bytes(const std::string& text) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(text.data()), text.size());
}

}  // namespace

Reply failure_reply(const Job& job, const std::string& error) {
  Reply reply{std::make_unique<capnp::MallocMessageBuilder>(), job.kind == Job::Kind::kEvaluate};
  auto failure = reply.message->initRoot<schema::WorkerMessage>().initFailure();
  failure.setTaskId(job.task_id);
  failure.setEvalKey(bytes(job.key));
  failure.setError(error);
  return reply;
}

EvalRunner::EvalRunner(const DaemonOptions& options, std::string worker_id)
    : options_(options),
      id_(std::move(worker_id)),
      prefix_(log_prefix(id_)),
      cache_(static_cast<std::size_t>(options.cache_entries), options.device, options.dtype,
             prefix_, options.prefix_cache_bytes) {
  // The thread (and LibTorch's pool threads it starts) never takes
  // SIGTERM/SIGINT: they reach the main thread, which polls the flag.
  sigset_t stop_signals, previous;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, &previous);
  thread_ = std::thread([this] { run(); });
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

EvalRunner::~EvalRunner() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool EvalRunner::submit(Job job) {
  bool was_idle;
  {
    std::lock_guard lock(mutex_);
    was_idle = !running_ && jobs_.empty();
    jobs_.push_back(std::move(job));
  }
  wake_.notify_one();
  return was_idle;
}

std::optional<Reply> EvalRunner::take_reply() {
  std::lock_guard lock(mutex_);
  if (replies_.empty()) return std::nullopt;
  Reply reply = std::move(replies_.front());
  replies_.pop_front();
  return reply;
}

bool EvalRunner::idle() const {
  std::lock_guard lock(mutex_);
  return !running_ && jobs_.empty() && replies_.empty();
}

std::string EvalRunner::busy_task_id() const {
  std::lock_guard lock(mutex_);
  return running_ ? running_task_id_ : std::string();
}

std::pair<std::string, int64_t> EvalRunner::busy_task() const {
  std::lock_guard lock(mutex_);
  if (!running_) return {};
  return {running_task_id_, running_since_ms_};
}

std::vector<std::string> EvalRunner::drop_queued() {
  std::lock_guard lock(mutex_);
  std::vector<std::string> dropped;
  for (const Job& job : jobs_) dropped.push_back(job.task_id);
  jobs_.clear();
  return dropped;
}

void EvalRunner::run() {
  if (options_.threads > 0) set_runtime_threads(options_.threads);
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (stop_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
      running_ = true;
      running_task_id_ = job.task_id;
      running_since_ms_ = wall_ms();
    }
    Reply reply = execute(job);
    {
      std::lock_guard lock(mutex_);
      replies_.push_back(std::move(reply));
      running_ = false;
      running_task_id_.clear();
      running_since_ms_ = 0;
    }
  }
}

Reply EvalRunner::execute(const Job& job) {
  const auto start = Clock::now();
  const bool evaluate = job.kind == Job::Kind::kEvaluate;
  const std::string what = evaluate ? transport::hex_escape(job.key) : job.inputs.model_spec;
  log_line(prefix_ + (evaluate ? "evaluating " : "describing ") + what + " (task " + job.task_id +
           ")");
  std::string error;
  try {
    Reply reply = evaluate ? run_evaluation(job) : run_describe(job);
    log_line(prefix_ + (evaluate ? "done " : "described ") + what + " in " +
             seconds_text(seconds_since(start)) + " s");
    return reply;
  } catch (const std::exception& e) {  // LibTorch's errors arrive as kvtune::Error
    error = e.what();
  }
  log_line(prefix_ + "failed " + what + " in " + seconds_text(seconds_since(start)) +
           " s: " + error);
  return failure_reply(job, error);
}

Reply EvalRunner::run_describe(const Job& job) {
  Reply reply{std::make_unique<capnp::MallocMessageBuilder>(), false};
  auto described = reply.message->initRoot<schema::WorkerMessage>().initDescribed();
  described.setTaskId(job.task_id);
  described.setDescribeKey(bytes(job.key));
  auto model = described.initModel();
  if (!job.validation_data_spec.empty()) {
    // A model that cannot be read is the model's error, not the validation
    // data's (its fingerprint is cached per host: the describe below reuses it).
    model_fingerprint(job.inputs.model_spec);
    // First, so that the calibration entry is the most recently used.
    EvalInputs validation = job.inputs;
    validation.data_spec = job.validation_data_spec;
    capnp::MallocMessageBuilder scratch;
    auto info = scratch.initRoot<schema::ModelInfo>();
    try {
      cache_.describe(validation, info);
    } catch (const Error& e) {
      throw Error("validation data: " + std::string(e.what()));
    }
    model.setValidationDataFingerprint(info.getDataFingerprint());
  }
  cache_.describe(job.inputs, model);
  return reply;
}

Reply EvalRunner::run_evaluation(const Job& job) {
  Reply reply{std::make_unique<capnp::MallocMessageBuilder>(), true};
  auto result = reply.message->initRoot<schema::WorkerMessage>().initResult();
  result.setTaskId(job.task_id);
  result.setEvalKey(bytes(job.key));
  cache_.evaluate(job.inputs, id_, result.initResult());
  return reply;
}

}  // namespace kvtune::worker
