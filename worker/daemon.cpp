// The worker daemon (see daemon.h): its command line, the connection to the
// coordinator and the protocol loop. Two threads: the main thread, here, owns
// the ZeroMQ socket (hello, credit, heartbeats, replies, shutdown); the runner
// thread (eval_runner.h) loads models and evaluates, one job at a time, and
// hands finished replies back through a mutex-guarded queue. Signals only set
// a flag. Torch-free: LibTorch stays behind model_cache.h.
#include "daemon.h"

#include <capnp/message.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/program_options.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "daemon_common.h"
#include "eval_runner.h"
#include "health.h"
#include "kvtune/common/error.h"
#include "kvtune/schemas/eval_key.h"
#include "kvtune/schemas/transport.h"
#include "model_cache.h"

namespace kvtune::worker {
namespace po = boost::program_options;

namespace {

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

std::string default_worker_id() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    std::snprintf(host, sizeof(host), "worker");
  }
  return std::string(host) + "-" + std::to_string(::getpid());
}

// --- the device: its name (as `kvtune eval`'s --device) and memory ---------

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

// --- the main thread: the coordinator link -------------------------------

class Daemon {
 public:
  Daemon(const DaemonOptions& options, std::string id, std::string device,
         transport::WorkerSocket& socket)
      : options_(options),
        id_(std::move(id)),
        prefix_(log_prefix(id_)),
        device_(std::move(device)),
        memory_bytes_(device_memory_bytes(device_)),
        socket_(socket),
        runner_(options, id_) {}

  int run() {
    say_hello(true);
    auto last_heartbeat = Clock::now();
    last_heard_ = Clock::now();
    write_health(true);
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
        write_health(false);
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
      last_message_ms_ = wall_ms();
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
        job.inputs.prompt_tokens = describe.getPromptTokens();
        job.validation_data_spec = describe.getValidationDataSpec();
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
    // Gone: a probe now says "no status file" rather than reading an old one.
    if (!options_.health_file.empty()) std::remove(options_.health_file.c_str());
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
    hello.setThreads(static_cast<uint32_t>(runtime_threads()));
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
    auto heartbeat = message.initRoot<schema::WorkerMessage>().initHeartbeat();
    heartbeat.setBusyTaskId(runner_.busy_task_id());
    heartbeat.setReferenceBytes(runner_.reference_bytes());
    send(message, "heartbeat");
  }

  // Rewrites the --health-file status (health.h). A failure at start is an
  // error; later ones are logged once, until a write succeeds again.
  void write_health(bool first) {
    if (options_.health_file.empty()) return;
    HealthStatus status;
    status.pid = ::getpid();
    status.worker_id = id_;
    status.coordinator = options_.endpoint;
    status.heartbeat_ms = options_.heartbeat_ms;
    status.coordinator_timeout_ms = options_.coordinator_timeout_ms;
    status.started_ms = started_ms_;
    status.last_coordinator_message_ms = last_message_ms_;
    std::tie(status.busy_task_id, status.busy_since_ms) = runner_.busy_task();
    status.written_ms = wall_ms();
    try {
      write_health_file(options_.health_file, status);
      health_failing_ = false;
    } catch (const Error& e) {
      if (first) throw;
      if (!health_failing_) log_line(prefix_ + e.what() + " (a health probe will fail)");
      health_failing_ = true;
    }
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
  EvalRunner runner_;
  Clock::time_point last_heard_;
  const int64_t started_ms_ = wall_ms();
  int64_t last_message_ms_ = 0;  // wall_ms() of the last coordinator message; 0: none
  bool health_failing_ = false;
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
  check_runtime(options.device, options.dtype);
  if (options.threads > 0) set_runtime_threads(options.threads);
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
           options.device + ", LibTorch threads " + std::to_string(runtime_threads()) +
           ", cache of " + std::to_string(options.cache_entries) + " (model, data) entries)");
  Daemon daemon(options, id, options.device, *socket);
  return daemon.run();
}

}  // namespace

int worker_command(const std::vector<std::string>& args) {
  // `kvtune worker health ...`: the check a probe runs (health.h).
  if (!args.empty() && args[0] == "health") {
    return health_command(std::vector<std::string>(args.begin() + 1, args.end()));
  }
  DaemonOptions o;
  po::options_description opts(
      "kvtune worker [options]\n(kvtune worker health --help: the health check of a worker "
      "started with --health-file)");
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
      "loaded (model, data) pairs kept, with their unquantized reference")(
      "prefix-cache-mb", po::value<int64_t>()->default_value(-1),
      "per loaded (model, data), MiB of hidden states kept at layer boundaries so that an "
      "evaluation starts at its first quantized layer (-1: up to a quarter of the device's "
      "free memory; 0: none)")("max-tasks", po::value(&o.max_tasks)->default_value(o.max_tasks),
                               "exit after this many evaluations (0: no limit)")(
      "prefetch", po::value(&o.prefetch)->default_value(o.prefetch),
      "tasks to queue beyond the running one (hides the coordinator round trip between "
      "short evaluations; a queued task waits if this worker is slow)")(
      "curve-server-key", po::value(&o.curve_server_key),
      "the coordinator's CURVE public key file (COORD.key.pub): connect with CURVE")(
      "curve-keys", po::value(&o.curve_keys),
      "this worker's CURVE key pair file (kvtune keygen --out FILE)")(
      "health-file", po::value(&o.health_file),
      "rewrite this JSON status file every heartbeat, for `kvtune worker health "
      "--health-file PATH` (a Kubernetes probe)");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  po::notify(vm);
  if (const int64_t mb = vm["prefix-cache-mb"].as<int64_t>(); mb >= 0) {
    o.prefix_cache_bytes = mb << 20;
  } else if (mb != -1) {
    throw Error("--prefix-cache-mb must be -1 (automatic), 0 (none) or a size in MiB, got " +
                std::to_string(mb));
  }
  return run_daemon(o);
}

}  // namespace kvtune::worker
