// The worker daemon (see daemon.h). Two threads: the main thread owns the
// ZeroMQ socket (hello, credit, heartbeats, replies, shutdown); the runner
// thread loads models and evaluates, one job at a time, and hands finished
// replies back through a mutex-guarded queue. Signals only set a flag.
#include "daemon.h"

#include <capnp/message.h>
#include <dlfcn.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/program_options.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "calibration.h"
#include "kvtune/schemas/eval_key.h"
#include "evaluator.h"
#include "fingerprint.h"
#include "kvtune/common/error.h"
#include "llama.h"
#include "kvtune/schemas/transport.h"

namespace kvtune::worker {
namespace po = boost::program_options;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How long the socket is given to deliver the goodbye before the process
// exits (the transport closes its sockets with linger 0).
constexpr milliseconds kFlushTime{500};
// Receive slices: short while a job runs, so a finished reply leaves quickly.
constexpr milliseconds kBusySlice{5};
constexpr milliseconds kIdleSlice{50};
// At most one hello per this interval in answer to "say hello" rejections.
constexpr milliseconds kHelloInterval{1000};

std::atomic<int> g_signals{0};
static_assert(std::atomic<int>::is_always_lock_free);

extern "C" void on_stop_signal(int) {
  g_signals.fetch_add(1, std::memory_order_relaxed);
}

struct DaemonOptions {
  std::string endpoint = "tcp://127.0.0.1:8471";
  std::string id;
  std::string device = "cpu";
  std::string dtype = "float32";
  int threads = 0;
  int heartbeat_ms = 1000;
  int coordinator_timeout_ms = 5000;
  double grace_seconds = 30;
  int cache_entries = 2;
  int64_t max_tasks = 0;
  int prefetch = 0;  // tasks queued beyond the running one
  // CURVE (workers off-host): the coordinator's public key file and this
  // worker's key pair file (kvtune keygen); both or neither.
  std::string curve_server_key;
  std::string curve_keys;
};

// One log line to stderr, written whole (both threads log).
void log_line(const std::string& line) {
  static std::mutex mutex;
  const std::string text = line + "\n";
  std::lock_guard lock(mutex);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.3f", seconds);
  return text;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string default_worker_id() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    std::snprintf(host, sizeof(host), "worker");
  }
  return std::string(host) + "-" + std::to_string(::getpid());
}

// --- where the model runs (as `kvtune eval`'s --device/--dtype) -----------

// "cpu", or "cuda:N" for "cuda" / "cuda:N". Throws kvtune::Error otherwise.
std::string normalize_device(const std::string& device) {
  if (device == "cpu") return device;
  if (device == "cuda") return "cuda:0";
  if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.size() <= 8 &&
      std::all_of(device.begin() + 5, device.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return "cuda:" + std::to_string(std::stoi(device.substr(5)));
  }
  throw Error("--device '" + device + "' is not one of cpu, cuda, cuda:N");
}

torch::ScalarType parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return torch::kFloat32;
  if (dtype == "bfloat16") return torch::kBFloat16;
  if (dtype == "float16") return torch::kFloat16;
  throw Error("--dtype '" + dtype + "' is not one of float32, bfloat16, float16");
}

// Fails fast, before connecting, on a device or dtype this host cannot run.
void check_runtime(const DaemonOptions& o) {
  const torch::ScalarType type = parse_dtype(o.dtype);
  if (o.device == "cpu") {
    // Debian's CPU LibTorch lacks reduced-precision batched matmuls.
    if (type != torch::kFloat32) {
      throw Error("--dtype " + o.dtype + " needs --device cuda; CPU evaluation runs in float32");
    }
    return;
  }
  if (!torch::cuda::is_available()) {
    throw Error("--device " + o.device + ": this worker's LibTorch sees no CUDA device");
  }
  const int index = std::stoi(o.device.substr(5));
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (index >= count) {
    throw Error("--device " + o.device + ": this host has " + std::to_string(count) +
                " CUDA device(s)");
  }
}

Model place(Model model, const DaemonOptions& o) {
  const torch::ScalarType type = parse_dtype(o.dtype);
  if (o.device == "cpu" && type == torch::kFloat32) return model;
  return to_device(model, torch::Device(o.device), type);
}

// Physical memory, or the cgroup (container) limit when that is lower.
uint64_t host_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGE_SIZE);
  uint64_t bytes = pages > 0 && page_size > 0 ? static_cast<uint64_t>(pages) * page_size : 0;
  std::ifstream limit("/sys/fs/cgroup/memory.max");
  uint64_t cgroup = 0;
  if (limit >> cgroup && cgroup > 0 && (bytes == 0 || cgroup < bytes)) bytes = cgroup;
  return bytes;
}

// Total memory of CUDA device `ordinal` via the driver API, loaded at run
// time so that CPU-only builds need no CUDA headers; 0 when unknown.
uint64_t gpu_memory_bytes(int ordinal) {
  void* lib = ::dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (lib == nullptr) return 0;
  using InitFn = int (*)(unsigned);
  using DeviceGetFn = int (*)(int*, int);
  using TotalMemFn = int (*)(size_t*, int);
  const auto init = reinterpret_cast<InitFn>(::dlsym(lib, "cuInit"));
  const auto device_get = reinterpret_cast<DeviceGetFn>(::dlsym(lib, "cuDeviceGet"));
  const auto total_mem = reinterpret_cast<TotalMemFn>(::dlsym(lib, "cuDeviceTotalMem_v2"));
  int device = 0;
  size_t bytes = 0;
  if (init == nullptr || device_get == nullptr || total_mem == nullptr || init(0) != 0 ||
      device_get(&device, ordinal) != 0 || total_mem(&bytes, device) != 0) {
    return 0;
  }
  return bytes;
}

uint64_t device_memory_bytes(const std::string& device) {
  return device == "cpu" ? host_memory_bytes() : gpu_memory_bytes(std::stoi(device.substr(5)));
}

// --- loaded models -----------------------------------------------------------

struct EntryKey {
  std::string model_spec;
  std::string data_spec;
  int64_t seq_len = 0;
  bool operator==(const EntryKey&) const = default;
};

// A model with its calibration data and unquantized reference.
struct Entry {
  std::unique_ptr<Model> model;
  CalibrationData data;
  std::string model_fingerprint;
  std::string data_fingerprint;
  uint64_t tokens = 0;
  // Declared last, so destroyed first: it refers to *model.
  std::unique_ptr<Evaluator> evaluator;
};

// Work for the runner thread.
struct Job {
  enum class Kind { kDescribe, kEvaluate };
  Kind kind = Kind::kEvaluate;
  std::string task_id;
  std::string key;    // evalKey or describeKey, as received
  EvalInputs inputs;  // a describe uses model_spec, data_spec and seq_len
};

// A message for the coordinator, built by the runner, sent by the main thread.
struct Reply {
  std::unique_ptr<capnp::MallocMessageBuilder> message;
  bool finishes_task = false;  // a task's result or failure (counts for --max-tasks)
};

Reply failure_reply(const Job& job, const std::string& error) {
  Reply reply{std::make_unique<capnp::MallocMessageBuilder>(), job.kind == Job::Kind::kEvaluate};
  auto failure = reply.message->initRoot<schema::WorkerMessage>().initFailure();
  failure.setTaskId(job.task_id);
  failure.setEvalKey(
      kj::arrayPtr(reinterpret_cast<const kj::byte*>(job.key.data()), job.key.size()));
  failure.setError(error);
  return reply;
}

void fill_model_info(const Entry& entry, schema::ModelInfo::Builder info) {
  const ModelConfig& c = entry.model->config;
  info.setName(c.name);
  info.setArchitecture(c.architecture);
  info.setSynthetic(c.synthetic);
  info.setLayers(static_cast<uint32_t>(c.n_layers));
  info.setKvHeads(static_cast<uint32_t>(c.n_kv_heads));
  info.setHeadDim(static_cast<uint32_t>(c.head_dim));
  info.setVocabSize(static_cast<uint32_t>(c.vocab_size));
  info.setFingerprint(entry.model_fingerprint);
  info.setDataFingerprint(entry.data_fingerprint);
  info.setSequences(static_cast<uint32_t>(entry.data.sequences.size()));
  info.setTokens(entry.tokens);
}

void fill_eval_result(const Metrics& m, const std::string& worker_id, double seconds,
                      schema::EvalResult::Builder out) {
  out.setKl(m.kl);
  out.setDeltaNll(m.delta_nll);
  out.setPplFp(m.ppl_fp);
  out.setPplQ(m.ppl_q);
  out.setTop1Agreement(m.top1_agreement);
  out.setAvgBits(m.avg_bits);
  out.setBytesPerToken(m.bytes_per_token);
  auto errors = out.initAttnRelErr(static_cast<unsigned>(m.attn_rel_err.size()));
  for (unsigned i = 0; i < m.attn_rel_err.size(); ++i) errors.set(i, m.attn_rel_err[i]);
  out.setTokens(static_cast<uint64_t>(m.tokens));
  out.setWorkerId(worker_id);
  out.setSeconds(seconds);
}

// Runs jobs one at a time on its own thread and keeps the LRU of loaded
// (model, data) entries, which only that thread touches.
class Runner {
 public:
  Runner(const DaemonOptions& options, std::string worker_id)
      : options_(options),
        id_(std::move(worker_id)),
        prefix_("kvtune worker " + id_ + ": "),
        cache_(static_cast<std::size_t>(options.cache_entries)) {
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
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;
  // Waits for a running job: call only when idle() (or accept the wait).
  ~Runner() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  // Queues a job; true when the runner was idle (the job starts now).
  bool submit(Job job) {
    bool was_idle;
    {
      std::lock_guard lock(mutex_);
      was_idle = !running_ && jobs_.empty();
      jobs_.push_back(std::move(job));
    }
    wake_.notify_one();
    return was_idle;
  }

  std::optional<Reply> take_reply() {
    std::lock_guard lock(mutex_);
    if (replies_.empty()) return std::nullopt;
    Reply reply = std::move(replies_.front());
    replies_.pop_front();
    return reply;
  }

  // Nothing running, queued or waiting to be sent.
  bool idle() const {
    std::lock_guard lock(mutex_);
    return !running_ && jobs_.empty() && replies_.empty();
  }

  // The task id of the running job; empty when none runs.
  std::string busy_task_id() const {
    std::lock_guard lock(mutex_);
    return running_ ? running_task_id_ : std::string();
  }

  // Drops jobs that have not started; returns their task ids.
  std::vector<std::string> drop_queued() {
    std::lock_guard lock(mutex_);
    std::vector<std::string> dropped;
    for (const Job& job : jobs_) dropped.push_back(job.task_id);
    jobs_.clear();
    return dropped;
  }

  // Model specs in the cache, most recently used first, without repeats.
  std::vector<std::string> loaded_models() const {
    std::lock_guard lock(mutex_);
    return loaded_models_;
  }

 private:
  void run() {
    if (options_.threads > 0) torch::set_num_threads(options_.threads);
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
      }
      Reply reply = execute(job);
      {
        std::lock_guard lock(mutex_);
        replies_.push_back(std::move(reply));
        running_ = false;
        running_task_id_.clear();
      }
    }
  }

  Reply execute(const Job& job) {
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
    } catch (const c10::Error& e) {
      error = e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    }
    log_line(prefix_ + "failed " + what + " in " + seconds_text(seconds_since(start)) +
             " s: " + error);
    return failure_reply(job, error);
  }

  Reply run_describe(const Job& job) {
    const EvalInputs& in = job.inputs;
    const EntryKey key{in.model_spec, in.data_spec, in.seq_len};
    Entry* entry = cache_.find(key);
    // A describe reports what is on disk now: a cached entry is reused only
    // while the model file and (for token files) the data are unchanged.
    if (entry != nullptr && !still_current(*entry, key)) {
      drop(key);
      entry = nullptr;
    }
    if (entry == nullptr) entry = &load(key);
    Reply reply{std::make_unique<capnp::MallocMessageBuilder>(), false};
    auto described = reply.message->initRoot<schema::WorkerMessage>().initDescribed();
    described.setTaskId(job.task_id);
    described.setDescribeKey(
        kj::arrayPtr(reinterpret_cast<const kj::byte*>(job.key.data()), job.key.size()));
    fill_model_info(*entry, described.initModel());
    return reply;
  }

  Reply run_evaluation(const Job& job) {
    const EvalInputs& in = job.inputs;
    const EntryKey key{in.model_spec, in.data_spec, in.seq_len};
    Entry* entry = cache_.find(key);
    // The cached entry serves requests for exactly its content. A request
    // for other content is worth a reload only when the files changed since
    // the entry was loaded; otherwise it fails below without one.
    if (entry != nullptr &&
        (entry->model_fingerprint != in.model_fingerprint ||
         entry->data_fingerprint != in.data_fingerprint) &&
        !still_current(*entry, key)) {
      drop(key);
      entry = nullptr;
    }
    if (entry == nullptr) entry = &load(key);
    if (entry->model_fingerprint != in.model_fingerprint) {
      throw Error("model " + in.model_spec + " changed since the job was described: fingerprint " +
                  entry->model_fingerprint + ", expected " + in.model_fingerprint);
    }
    if (entry->data_fingerprint != in.data_fingerprint) {
      throw Error("data " + in.data_spec + " changed since the job was described: fingerprint " +
                  entry->data_fingerprint + ", expected " + in.data_fingerprint);
    }
    const int64_t layers = entry->model->config.n_layers;
    if (static_cast<int64_t>(in.layers.size()) != layers) {
      throw Error("layers: the request configures " + std::to_string(in.layers.size()) +
                  " layers but model " + in.model_spec + " has " + std::to_string(layers));
    }
    const auto start = Clock::now();
    const Metrics metrics = entry->evaluator->evaluate(in.layers, in.scheme);
    const double seconds = seconds_since(start);
    Reply reply{std::make_unique<capnp::MallocMessageBuilder>(), true};
    auto result = reply.message->initRoot<schema::WorkerMessage>().initResult();
    result.setTaskId(job.task_id);
    result.setEvalKey(
        kj::arrayPtr(reinterpret_cast<const kj::byte*>(job.key.data()), job.key.size()));
    fill_eval_result(metrics, id_, seconds, result.initResult());
    return reply;
  }

  // Token-file data can change under a cached entry; sampled data is a
  // function of the model, which the fingerprint covers.
  bool still_current(const Entry& entry, const EntryKey& key) const {
    if (model_fingerprint(key.model_spec) != entry.model_fingerprint) return false;
    if (key.data_spec.rfind("sample:", 0) == 0) return true;
    const CalibrationData data = load_calibration(key.data_spec, key.seq_len, *entry.model);
    return data_fingerprint(data.sequences) == entry.data_fingerprint;
  }

  // Loads a model and its data and computes the reference, after evicting
  // what must go to make room (so the old model's memory is freed first).
  Entry& load(const EntryKey& key) {
    const auto start = Clock::now();
    {
      std::lock_guard lock(mutex_);
      cache_.make_room();
      refresh_loaded_models();
    }
    auto entry = std::make_unique<Entry>();
    entry->model_fingerprint = model_fingerprint(key.model_spec);
    entry->model = std::make_unique<Model>(place(load_model(key.model_spec), options_));
    entry->data = load_calibration(key.data_spec, key.seq_len, *entry->model);
    entry->data_fingerprint = data_fingerprint(entry->data.sequences);
    for (const auto& sequence : entry->data.sequences) entry->tokens += sequence.size();
    entry->evaluator = std::make_unique<Evaluator>(*entry->model, entry->data.sequences);
    log_line(prefix_ + "loaded " + key.model_spec + " with data " + key.data_spec + " (" +
             std::to_string(entry->data.sequences.size()) + " sequences, " +
             std::to_string(entry->tokens) + " tokens) in " + seconds_text(seconds_since(start)) +
             " s" + (entry->data.note.empty() ? "" : "; " + entry->data.note));
    std::lock_guard lock(mutex_);
    Entry& stored = cache_.insert(key, std::move(entry));
    refresh_loaded_models();
    return stored;
  }

  void drop(const EntryKey& key) {
    std::lock_guard lock(mutex_);
    cache_.erase(key);
    refresh_loaded_models();
  }

  // Under mutex_.
  void refresh_loaded_models() {
    loaded_models_.clear();
    for (const EntryKey& key : cache_.keys()) {
      if (std::find(loaded_models_.begin(), loaded_models_.end(), key.model_spec) ==
          loaded_models_.end()) {
        loaded_models_.push_back(key.model_spec);
      }
    }
  }

  const DaemonOptions& options_;
  const std::string id_;
  const std::string prefix_;

  mutable std::mutex mutex_;  // guards everything below but the cache's values
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  std::deque<Reply> replies_;
  bool running_ = false;
  std::string running_task_id_;
  bool stop_ = false;
  LruCache<EntryKey, Entry> cache_;  // structure under mutex_; entries runner-only
  std::vector<std::string> loaded_models_;

  std::thread thread_;
};

// --- the main thread: the coordinator link -------------------------------

class Daemon {
 public:
  Daemon(const DaemonOptions& options, std::string id, std::string device,
         transport::WorkerSocket& socket)
      : options_(options),
        id_(std::move(id)),
        prefix_("kvtune worker " + id_ + ": "),
        device_(std::move(device)),
        memory_bytes_(device_memory_bytes(device_)),
        socket_(socket),
        runner_(options, id_) {}

  int run() {
    say_hello(true);
    auto last_heartbeat = Clock::now();
    last_heard_ = Clock::now();
    for (;;) {
      auto now = Clock::now();
      const int signals = g_signals.load(std::memory_order_relaxed);
      if (signals > 0 && !stopping_) begin_stop("signal received", now);
      if (signals > 1 && stopping_ && grace_deadline_ > now) {
        log_line(prefix_ + "second signal: not waiting for the running evaluation");
        grace_deadline_ = now;
      }
      while (auto reply = runner_.take_reply()) deliver(std::move(*reply));

      if (stopping_) {
        // A job that never started (it came on surplus credit) goes back.
        if (runner_.idle()) return finish(not_started_.empty() ? "" : not_started_.front());
        if (Clock::now() >= grace_deadline_) {
          const std::string task = runner_.busy_task_id();
          log_line(prefix_ + "grace period over; handing back task " + task);
          finish(task);
          // The evaluation thread may run on for minutes; do not wait for it.
          std::fflush(nullptr);
          std::_Exit(0);
        }
      }

      now = Clock::now();
      if (now - last_heartbeat >= milliseconds(options_.heartbeat_ms)) {
        send_heartbeat();
        last_heartbeat = now;
      }
      if (now - last_heard_ >= milliseconds(options_.coordinator_timeout_ms)) {
        log_line(prefix_ + "nothing from the coordinator for " +
                 std::to_string(options_.coordinator_timeout_ms) +
                 " ms; assuming it restarted, saying hello again");
        say_hello(!stopping_ && runner_.idle());
        last_heard_ = now;
      }

      std::optional<transport::DecodeResult<schema::CoordinatorMessage>> incoming;
      try {
        incoming = socket_.receive(runner_.idle() ? kIdleSlice : kBusySlice);
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;  // a signal: handled at the top
        throw;
      }
      if (!incoming) continue;
      last_heard_ = Clock::now();
      if (!incoming->ok()) {
        log_line(prefix_ + "refused a message from the coordinator: " + incoming->error);
        continue;
      }
      handle(incoming->message->get());
    }
  }

 private:
  void handle(schema::CoordinatorMessage::Reader message) {
    switch (message.which()) {
      case schema::CoordinatorMessage::HEARTBEAT:
        return;
      case schema::CoordinatorMessage::REJECT: {
        const std::string reason = message.getReject().getReason();
        log_line(prefix_ + "the coordinator rejected a message: " + reason);
        const auto now = Clock::now();
        if (reason.find("hello") != std::string::npos && now - last_hello_ >= kHelloInterval) {
          say_hello(!stopping_ && runner_.idle());
        }
        return;
      }
      case schema::CoordinatorMessage::TASK: {
        const auto task = message.getTask();
        Job job;
        job.kind = Job::Kind::kEvaluate;
        job.task_id = task.getTaskId();
        const auto key = task.getEvalKey();
        job.key.assign(reinterpret_cast<const char*>(key.begin()), key.size());
        if (stopping_) {
          log_line(prefix_ + "shutting down; not starting task " + job.task_id);
          return;
        }
        try {
          job.inputs = read_eval_request(task.getRequest());
        } catch (const std::exception& e) {
          const std::string error = std::string("request: ") + e.what();
          log_line(prefix_ + "refused task " + job.task_id + " (" + transport::hex_escape(job.key) +
                   "): " + error);
          deliver(failure_reply(job, error));
          return;
        }
        enqueue(std::move(job));
        return;
      }
      case schema::CoordinatorMessage::DESCRIBE: {
        const auto describe = message.getDescribe();
        Job job;
        job.kind = Job::Kind::kDescribe;
        job.task_id = describe.getTaskId();
        const auto key = describe.getDescribeKey();
        job.key.assign(reinterpret_cast<const char*>(key.begin()), key.size());
        job.inputs.model_spec = describe.getModelSpec();
        job.inputs.data_spec = describe.getDataSpec();
        job.inputs.seq_len = static_cast<int>(describe.getSeqLen());
        if (stopping_) {
          log_line(prefix_ + "shutting down; not starting task " + job.task_id);
          return;
        }
        enqueue(std::move(job));
        return;
      }
    }
    log_line(prefix_ + "ignored a coordinator message of unknown kind " +
             std::to_string(static_cast<int>(message.which())));
  }

  void enqueue(Job job) {
    const std::string task_id = job.task_id;
    if (!runner_.submit(std::move(job))) {
      log_line(prefix_ + "task " + task_id + " queued behind the running one");
    }
  }

  // Sends a finished job's reply, then asks for the next job.
  void deliver(Reply reply) {
    send(*reply.message, "reply");
    if (reply.finishes_task) ++tasks_done_;
    if (options_.max_tasks > 0 && tasks_done_ >= options_.max_tasks && !stopping_) {
      begin_stop(std::to_string(tasks_done_) + " tasks done (--max-tasks)", Clock::now());
    }
    if (!stopping_) send_credit();
  }

  void begin_stop(const std::string& why, Clock::time_point now) {
    stopping_ = true;
    grace_deadline_ = now + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(options_.grace_seconds));
    not_started_ = runner_.drop_queued();
    const std::string busy = runner_.busy_task_id();
    std::string line = prefix_ + why + "; stopping";
    if (!busy.empty()) {
      line += ", waiting up to " + seconds_text(options_.grace_seconds) + " s for task " + busy;
    }
    for (const std::string& task : not_started_) line += "; not starting queued task " + task;
    log_line(line);
  }

  // Says goodbye (handing back `hand_back`, if any), lets the socket deliver
  // it, and returns the exit code.
  int finish(const std::string& hand_back) {
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::WorkerMessage>().initGoodbye().setHandBackTaskId(hand_back);
    send(message, "goodbye");
    log_line(prefix_ + "goodbye" +
             (hand_back.empty() ? "" : " (handed back task " + hand_back + ")"));
    const auto until = Clock::now() + kFlushTime;
    while (Clock::now() < until) {
      try {
        socket_.receive(std::chrono::duration_cast<milliseconds>(until - Clock::now()));
      } catch (const zmq::error_t&) {
      }
    }
    return 0;
  }

  void say_hello(bool with_credit) {
    capnp::MallocMessageBuilder message;
    auto hello = message.initRoot<schema::WorkerMessage>().initHello();
    hello.setWorkerId(id_);
    hello.setDevice(device_);
    hello.setMemoryBytes(memory_bytes_);
    hello.setThreads(static_cast<uint32_t>(torch::get_num_threads()));
    const std::vector<std::string> models = runner_.loaded_models();
    auto list = hello.initLoadedModels(static_cast<unsigned>(models.size()));
    for (unsigned i = 0; i < models.size(); ++i) list.set(i, models[i]);
    send(message, "hello");
    // A new session: one task to run, and --prefetch more to queue so that
    // short evaluations do not wait for a round trip between them.
    if (with_credit) send_credit(1 + static_cast<uint32_t>(options_.prefetch));
    last_hello_ = Clock::now();
  }

  void send_credit(uint32_t count = 1) {
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::WorkerMessage>().initCredit().setCount(count);
    send(message, "credit");
  }

  void send_heartbeat() {
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::WorkerMessage>().initHeartbeat().setBusyTaskId(runner_.busy_task_id());
    send(message, "heartbeat");
  }

  void send(capnp::MessageBuilder& message, const char* what) {
    if (!socket_.send(message)) {
      log_line(prefix_ + "the outgoing queue is full; dropped a " + what + " message");
    }
  }

  const DaemonOptions& options_;
  const std::string id_;
  const std::string prefix_;
  const std::string device_;
  const uint64_t memory_bytes_;
  transport::WorkerSocket& socket_;
  Runner runner_;
  Clock::time_point last_heard_;
  Clock::time_point last_hello_;
  bool stopping_ = false;
  Clock::time_point grace_deadline_;
  std::vector<std::string> not_started_;  // queued jobs dropped when stopping
  int64_t tasks_done_ = 0;
};

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
}

int run_daemon(DaemonOptions options) {
  options.device = normalize_device(options.device);
  if (options.heartbeat_ms <= 0) throw Error("--heartbeat-ms must be positive");
  if (options.prefetch < 0 || options.prefetch > 64) {
    throw Error("--prefetch " + std::to_string(options.prefetch) + " must be 0 to 64");
  }
  if (options.coordinator_timeout_ms <= 0) throw Error("--coordinator-timeout-ms must be positive");
  if (!(options.grace_seconds >= 0)) throw Error("--grace-seconds must not be negative");
  if (options.cache_entries < 1) throw Error("--cache-entries must be at least 1");
  if (options.max_tasks < 0) throw Error("--max-tasks must not be negative");
  if (options.threads < 0) throw Error("--threads must not be negative");
  check_runtime(options);
  if (options.threads > 0) torch::set_num_threads(options.threads);
  const std::string id = options.id.empty() ? default_worker_id() : options.id;

  install_signal_handlers();
  transport::WorkerSocket::Options socket_options;
  socket_options.reconnect_interval = milliseconds(100);
  socket_options.reconnect_interval_max = milliseconds(5000);
  if (options.curve_server_key.empty() != options.curve_keys.empty()) {
    throw Error("--curve-server-key and --curve-keys go together (CURVE needs both)");
  }
  if (!options.curve_keys.empty()) {
    socket_options.curve =
        transport::CurveClient{transport::load_curve_public_key(options.curve_server_key),
                               transport::load_curve_keypair(options.curve_keys)};
  }
  std::optional<transport::WorkerSocket> socket;
  try {
    socket.emplace(options.endpoint, id, socket_options);
  } catch (const zmq::error_t& e) {
    throw Error("--connect " + options.endpoint + ": " + e.what());
  } catch (const std::invalid_argument& e) {
    throw Error("--id '" + id + "': " + e.what());
  }
  log_line("kvtune worker " + id + ": connecting to " + options.endpoint + " (device " +
           options.device + ", LibTorch threads " + std::to_string(torch::get_num_threads()) +
           ", cache of " + std::to_string(options.cache_entries) + " (model, data) entries)");
  Daemon daemon(options, id, options.device, *socket);
  return daemon.run();
}

}  // namespace

int worker_command(const std::vector<std::string>& args) {
  DaemonOptions o;
  po::options_description opts("kvtune worker [options]");
  opts.add_options()("help,h", "show this help")(
      "connect", po::value(&o.endpoint)->default_value(o.endpoint), "the coordinator's endpoint")(
      "id", po::value(&o.id), "worker id (default: HOSTNAME-PID)")(
      "device", po::value(&o.device)->default_value(o.device), "cpu or cuda[:N]")(
      "dtype", po::value(&o.dtype)->default_value(o.dtype), "float32, bfloat16 or float16")(
      "threads", po::value(&o.threads)->default_value(o.threads),
      "LibTorch intra-op threads (0: its default)")(
      "heartbeat-ms", po::value(&o.heartbeat_ms)->default_value(o.heartbeat_ms),
      "heartbeat interval, idle or busy")(
      "coordinator-timeout-ms",
      po::value(&o.coordinator_timeout_ms)->default_value(o.coordinator_timeout_ms),
      "silence after which the coordinator is assumed restarted (hello again)")(
      "grace-seconds", po::value(&o.grace_seconds)->default_value(o.grace_seconds),
      "on SIGTERM/SIGINT, how long a running evaluation may finish before it is handed back")(
      "cache-entries", po::value(&o.cache_entries)->default_value(o.cache_entries),
      "loaded (model, data) pairs kept, with their reference logits")(
      "max-tasks", po::value(&o.max_tasks)->default_value(o.max_tasks),
      "exit after this many evaluations (0: no limit)")(
      "prefetch", po::value(&o.prefetch)->default_value(o.prefetch),
      "tasks to queue beyond the running one (hides the coordinator round trip between "
      "short evaluations; a queued task waits if this worker is slow)")(
      "curve-server-key", po::value(&o.curve_server_key),
      "the coordinator's CURVE public key file (COORD.key.pub): connect with CURVE")(
      "curve-keys", po::value(&o.curve_keys),
      "this worker's CURVE key pair file (kvtune keygen --out FILE)");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  po::notify(vm);
  try {
    return run_daemon(o);
  } catch (const c10::Error& e) {
    throw Error(e.what_without_backtrace());
  }
}

}  // namespace kvtune::worker
