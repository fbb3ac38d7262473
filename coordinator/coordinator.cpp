// The public Coordinator and its event loop: each turn drains the worker
// socket (hello, credit, heartbeat, result, failure, goodbye, described),
// flushes the store batch, polls the HTTP API, expands described jobs a
// slice at a time, expires silent workers, dispatches leased tasks and sends
// heartbeats. What the messages mean for
// jobs is in jobs.cpp and search_driver.cpp; the routes are in api.cpp;
// the store writes go through ledger.cpp. When the store cannot write, the
// loop stops at once (nothing more is written, sent or answered) and run()
// throws the store's error.
#include "coordinator.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <map>
#include <optional>

#include "api.h"
#include "http.h"
#include "jobs.h"
#include "kvtune/common/error.h"
#include "kvtune/schemas/transport.h"
#include "ledger.h"
#include "search_driver.h"
#include "state.h"
#include "store.h"
#include "web.h"

namespace kvtune {

using coord::as_data;
using coord::bytes;
using coord::Clock;
using coord::kDescribePrefix;
using coord::log;
using coord::text;

class Coordinator::Impl {
 public:
  explicit Impl(const CoordinatorOptions& options)
      : options_(options),
        store_(options.db),
        ledger_(store_),
        scheduler_(options.scheduler),
        socket_(bind_socket(options)),
        http_(
            std::in_place, io_, options.api,
            [this](const http::Request& r) { return api_.handle(r); }, http_options(options)),
        api_address_(http_->address()),
        search_(ledger_, scheduler_, counters_),
        jobs_(ledger_, scheduler_, counters_, search_),
        api_(jobs_, ledger_, scheduler_, workers_, counters_, socket_, *http_) {
    jobs_.resume();
  }

  std::string api_address() const { return api_address_; }
  std::string worker_endpoint() const { return socket_.endpoint(); }

  void run(const std::atomic<bool>& stop) {
    if (!ledger_.failed()) serve(stop);
    if (!ledger_.failed()) return;
    // The store cannot write: answer nothing more (closing the API resets
    // its connections, so a client waiting on it hears at once), keep what
    // the store holds (a restart resumes from there) and report why.
    http_.reset();
    log("stopping: the store cannot write");
    throw Error(ledger_.failure() +
                "; the coordinator stopped (nothing more was written: restarted on this "
                "database, it resumes from its last complete write)");
  }

 private:
  void serve(const std::atomic<bool>& stop) {
    log("serving the API and the web page on http://" + api_address_ + "/ and workers on " +
        socket_.endpoint() + " (database " + store_.path().string() + ")");
    auto next_heartbeat = Clock::now();
    while (!stop.load()) {
      // Everything that has arrived, then one synced write for all of it.
      std::chrono::milliseconds wait = ledger_.pending() || jobs_.expanding()
                                           ? std::chrono::milliseconds(0)
                                           : std::chrono::milliseconds(2);
      // Up to a time slice of messages, so that the API is polled at least
      // every few slices however fast results arrive (its latency under load).
      const auto slice_end = Clock::now() + kSlice;
      for (int i = 0; i < 4096 && (i == 0 || Clock::now() < slice_end); ++i) {
        std::optional<transport::CoordinatorSocket::Incoming> incoming;
        try {
          incoming = socket_.receive(i == 0 ? wait : std::chrono::milliseconds(0));
        } catch (const zmq::error_t& e) {
          if (e.num() != EINTR) throw;  // a signal: the loop checks `stop`
        }
        if (!incoming) break;
        handle_worker(incoming->worker_identity, incoming->message.get());
      }
      if (!ledger_.flush()) return;
      io_.poll();
      if (!ledger_.flush()) return;  // a submit or cancel could not be stored
      jobs_.expand_some(Clock::now() + kSlice);
      const auto now = Clock::now();
      expire(now);
      dispatch(now);
      if (now >= next_heartbeat) {
        heartbeat_all();
        next_heartbeat = now + options_.heartbeat_interval;
      }
      if (!ledger_.flush()) return;
    }
    log("stopping");
  }

  // The longest the loop handles messages, or dispatches, before it turns to
  // the HTTP API again.
  static constexpr std::chrono::milliseconds kSlice{10};

  static transport::CoordinatorSocket bind_socket(const CoordinatorOptions& options);
  static http::ServerOptions http_options(const CoordinatorOptions& options) {
    http::ServerOptions o;
    o.bearer_token = options.api_token;
    o.public_paths = coord::web::asset_paths();  // the page loads, then asks for the token
    o.max_body_bytes = options.max_request_bytes;
    return o;
  }

  // --- worker messages ----------------------------------------------------

  void handle_worker(const std::string& worker, schema::WorkerMessage::Reader msg) {
    const auto now = Clock::now();
    switch (msg.which()) {
      case schema::WorkerMessage::HELLO: {
        const auto h = msg.getHello();
        coord::WorkerInfo& info = workers_[worker];
        info.device = text(h.getDevice());
        info.memory_bytes = h.getMemoryBytes();
        info.threads = h.getThreads();
        info.loaded_models.clear();
        for (auto m : h.getLoadedModels()) info.loaded_models.push_back(text(m));
        if (info.connected_ms == 0) info.connected_ms = coord::wall_ms();
        scheduler_.hello(worker, now);
        log("worker " + worker + " says hello (" + info.device + ", " +
            std::to_string(info.threads) + " threads)");
        return;
      }
      case schema::WorkerMessage::CREDIT:
        if (!scheduler_.credit(worker, msg.getCredit().getCount(), now)) ask_hello(worker);
        return;
      case schema::WorkerMessage::HEARTBEAT:
        if (!workers_.contains(worker)) {
          ask_hello(worker);
          return;
        }
        workers_[worker].reference_bytes = msg.getHeartbeat().getReferenceBytes();
        scheduler_.worker_seen(worker, now);
        return;
      case schema::WorkerMessage::RESULT:
        on_result(worker, msg.getResult(), now);
        return;
      case schema::WorkerMessage::FAILURE: {
        const auto f = msg.getFailure();
        const std::string key = bytes(f.getEvalKey());
        const std::string error = text(f.getError());
        log("worker " + worker + " failed " + key + ": " + error);
        if (auto failure = scheduler_.fail(worker, key, error, now)) jobs_.failed(*failure);
        return;
      }
      case schema::WorkerMessage::GOODBYE: {
        const std::string task_id = text(msg.getGoodbye().getHandBackTaskId());
        if (!task_id.empty()) {
          const auto [job, index] = jobs_.locate(task_id);
          const std::string key = job == nullptr ? ""
                                  : index < 0
                                      ? kDescribePrefix + job->id
                                      : job->tasks[static_cast<std::size_t>(index)].eval_key;
          if (!key.empty() && scheduler_.hand_back(worker, key, now)) {
            log("worker " + worker + " handed back " + key);
          }
        }
        log("worker " + worker + " says goodbye");
        workers_.erase(worker);
        for (const auto& failure : scheduler_.worker_gone(worker)) jobs_.failed(failure);
        return;
      }
      case schema::WorkerMessage::DESCRIBED: {
        const auto d = msg.getDescribed();
        const std::string key = bytes(d.getDescribeKey());
        scheduler_.complete(worker, key, now);
        jobs_.described(key, d.getModel());
        return;
      }
    }
    log("worker " + worker + " sent a message kind this coordinator does not know; ignored");
  }

  void ask_hello(const std::string& worker) {
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::CoordinatorMessage>().initReject().setReason(
        "unknown worker: say hello");
    socket_.send(worker, message);
  }

  void on_result(const std::string& worker, schema::WorkerMessage::Result::Reader r,
                 Clock::time_point now) {
    const std::string key = bytes(r.getEvalKey());
    if (key.starts_with(kDescribePrefix)) {
      log("worker " + worker + " sent an evaluation result for a describe task; ignored");
      return;
    }
    const std::vector<Scheduler::Task> tasks = scheduler_.complete(worker, key, now);
    if (ledger_.result_stored(key)) {
      ++counters_.duplicate_results;
    } else {
      ledger_.put_result(key, r.getResult());
      ++counters_.evaluations_total;
      counters_.recent_results.push_back(now);
      if (auto w = workers_.find(worker); w != workers_.end()) ++w->second.results;
    }
    jobs_.completed(tasks, r.getResult().getKl());
  }

  void expire(Clock::time_point now) {
    auto result = scheduler_.expire(now);
    for (const std::string& w : result.lost_workers) {
      log("worker " + w + " went silent; its leases are requeued");
      workers_.erase(w);
    }
    for (const auto& f : result.failed) jobs_.failed(f);
  }

  void dispatch(Clock::time_point now) {
    // At most a time slice of assignments per turn (the rest next turn).
    const auto slice_end = Clock::now() + kSlice;
    while (Clock::now() < slice_end) {
      auto a = scheduler_.next_assignment(now);
      if (!a) break;
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<schema::CoordinatorMessage>();
      const Scheduler::Task& t = a->task;
      if (t.eval_key.starts_with(kDescribePrefix)) {
        const coord::Job& job = jobs_.at(t.job_id);
        auto d = root.initDescribe();
        d.setTaskId(t.id);
        d.setDescribeKey(as_data(t.eval_key));
        d.setModelSpec(job.spec.model);
        d.setDataSpec(job.spec.data);
        d.setSeqLen(static_cast<uint32_t>(job.spec.seq_len));
        d.setPromptTokens(static_cast<uint32_t>(job.spec.prompt_tokens));
        d.setValidationDataSpec(job.spec.validates() ? job.spec.validation_data : "");
      } else {
        auto task = root.initTask();
        task.setTaskId(t.id);
        task.setEvalKey(as_data(t.eval_key));
        auto words = coord::aligned_words(t.payload);
        capnp::FlatArrayMessageReader request(words);
        task.setRequest(request.getRoot<schema::EvalRequest>());
      }
      if (t.eval_key.starts_with(kDescribePrefix)) {
        log("describe job " + t.job_id + " on " + a->worker_id);
      } else {
        ++counters_.dispatched;
        log("dispatch " + t.eval_key + " (task " + t.id + ") to " + a->worker_id);
      }
      if (!socket_.send(a->worker_id, message)) {
        log("worker " + a->worker_id + " is not connected; " + t.eval_key +
            " waits for its lease to expire");
      }
    }
  }

  void heartbeat_all() {
    for (const auto& [id, info] : workers_) {
      capnp::MallocMessageBuilder message;
      message.initRoot<schema::CoordinatorMessage>().setHeartbeat();
      socket_.send(id, message);
    }
  }

  CoordinatorOptions options_;
  Store store_;
  coord::Ledger ledger_;
  Scheduler scheduler_;
  transport::CoordinatorSocket socket_;
  boost::asio::io_context io_;
  std::optional<http::Server> http_;  // reset when the store fails
  std::string api_address_;
  coord::Counters counters_;
  std::map<std::string, coord::WorkerInfo> workers_;
  coord::SearchDriver search_;
  coord::Jobs jobs_;
  coord::Api api_;
};

transport::CoordinatorSocket Coordinator::Impl::bind_socket(const CoordinatorOptions& options) {
  transport::CoordinatorSecurity security;
  if (!options.curve_secret_file.empty()) {
    security.server_keys = transport::load_curve_keypair(options.curve_secret_file);
    security.authorized_workers = transport::load_authorized_keys(options.curve_authorized);
    if (security.authorized_workers.empty()) {
      throw Error("--curve-authorized " + options.curve_authorized.string() +
                  " lists no worker keys: no worker could connect");
    }
  }
  try {
    return transport::CoordinatorSocket(options.bind, security);
  } catch (const zmq::error_t& e) {
    throw Error("cannot bind the worker endpoint " + options.bind + ": " + e.what());
  }
}

Coordinator::Coordinator(const CoordinatorOptions& options)
    : impl_((coord::set_logging(options.log), std::make_unique<Impl>(options))) {}
Coordinator::~Coordinator() = default;
std::string Coordinator::api_address() const {
  return impl_->api_address();
}
std::string Coordinator::worker_endpoint() const {
  return impl_->worker_endpoint();
}
void Coordinator::run(const std::atomic<bool>& stop) {
  impl_->run(stop);
}

}  // namespace kvtune
