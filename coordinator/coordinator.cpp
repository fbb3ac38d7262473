#include "coordinator.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "kvtune/schemas/eval_key.h"
#include "exports.h"
#include "http.h"
#include "kvtune/common/error.h"
#include "kvtune/common/job_spec.h"
#include "registry.h"
#include "search.h"
#include "store.h"
#include "kvtune/schemas/transport.h"

namespace kvtune {
namespace {

using json = nlohmann::json;
using Clock = Scheduler::Clock;
using JobState = schema::JobRecord::State;
using TaskState = schema::TaskRecord::State;

constexpr const char* kDescribePrefix = "describe/";

int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::atomic<bool> g_log{true};
void log(const std::string& line) {
  if (g_log.load(std::memory_order_relaxed)) {
    std::cerr << "kvtune coordinator: " << line << std::endl;
  }
}

std::string text(capnp::Text::Reader t) {
  return std::string(t.cStr(), t.size());
}
std::string bytes(capnp::Data::Reader d) {
  return std::string(reinterpret_cast<const char*>(d.begin()), d.size());
}
capnp::Data::Reader as_data(const std::string& s) {
  return capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(s.data()), s.size());
}

std::string state_name(JobState s) {
  switch (s) {
    case JobState::QUEUED:
      return "queued";
    case JobState::RUNNING:
      return "running";
    case JobState::DONE:
      return "done";
    case JobState::FAILED:
      return "failed";
    case JobState::CANCELLED:
      return "cancelled";
  }
  return "unknown";
}

bool active(JobState s) {
  return s == JobState::QUEUED || s == JobState::RUNNING;
}

// Sortable, unique job ids: creation time, then randomness.
std::string new_job_id() {
  static std::mt19937_64 rng{std::random_device{}()};
  char buf[48];
  std::snprintf(buf, sizeof buf, "job-%013lld-%04x", static_cast<long long>(wall_ms()),
                static_cast<unsigned>(rng() & 0xffff));
  return buf;
}

std::string task_number(std::size_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%06zu", index);
  return buf;
}

// What `kvtune eval --json` prints for an evaluation, by the same names.
json metrics_json(schema::EvalResult::Reader r) {
  json attn = json::array();
  for (double e : r.getAttnRelErr()) attn.push_back(e);
  return {{"kl", r.getKl()},
          {"delta_nll", r.getDeltaNll()},
          {"ppl_fp", r.getPplFp()},
          {"ppl_q", r.getPplQ()},
          {"top1_agreement", r.getTop1Agreement()},
          {"avg_bits", r.getAvgBits()},
          {"bytes_per_token", r.getBytesPerToken()},
          {"attn_rel_err", attn},
          {"tokens", r.getTokens()}};
}

struct ModelInfo {
  std::string name, architecture, fingerprint, data_fingerprint;
  bool synthetic = false;
  uint32_t layers = 0, kv_heads = 0, head_dim = 0, vocab_size = 0, sequences = 0;
  uint64_t tokens = 0;

  static ModelInfo read(schema::ModelInfo::Reader r) {
    return {text(r.getName()),
            text(r.getArchitecture()),
            text(r.getFingerprint()),
            text(r.getDataFingerprint()),
            r.getSynthetic(),
            r.getLayers(),
            r.getKvHeads(),
            r.getHeadDim(),
            r.getVocabSize(),
            r.getSequences(),
            r.getTokens()};
  }
  void write(schema::ModelInfo::Builder b) const {
    b.setName(name);
    b.setArchitecture(architecture);
    b.setFingerprint(fingerprint);
    b.setDataFingerprint(data_fingerprint);
    b.setSynthetic(synthetic);
    b.setLayers(layers);
    b.setKvHeads(kv_heads);
    b.setHeadDim(head_dim);
    b.setVocabSize(vocab_size);
    b.setSequences(sequences);
    b.setTokens(tokens);
  }
  json to_json() const {
    return {{"name", name},
            {"architecture", architecture},
            {"synthetic", synthetic},
            {"layers", layers},
            {"kv_heads", kv_heads},
            {"head_dim", head_dim},
            {"vocab_size", vocab_size},
            {"fingerprint", fingerprint},
            {"data_fingerprint", data_fingerprint},
            {"sequences", sequences},
            {"tokens", tokens}};
  }
};

struct TaskEntry {
  std::string config;  // as the job names it
  std::string layers;  // one pair per layer
  std::string eval_key;
  std::string request;  // the EvalRequest, a flat Cap'n Proto message
  TaskState state = TaskState::PENDING;
  std::vector<std::string> errors;
  int profile_layer = -1;  // profile jobs: the layer quantized alone
  std::string pair;        // profile jobs: its pair
  double kl = 0;           // the result's KL once done (what a search is told)
};

struct Job {
  std::string id;
  JobSpec spec;
  JobState state = JobState::QUEUED;
  int64_t created_ms = 0, updated_ms = 0;
  std::string error;
  std::optional<ModelInfo> model;
  std::vector<TaskEntry> tasks;
  std::size_t done = 0, failed = 0;
  // Search jobs: the driver, and where its pending generation starts in tasks.
  std::optional<search::Search> search;
  std::size_t generation_begin = 0;
  bool evaluating_baselines = false;  // the search is over; its baselines run
};

struct WorkerInfo {
  std::string device;
  uint64_t memory_bytes = 0;
  uint32_t threads = 0;
  std::vector<std::string> loaded_models;
  int64_t connected_ms = 0;
  uint64_t results = 0;
};

std::string serialize_request(schema::EvalRequest::Reader request) {
  capnp::MallocMessageBuilder message;
  message.setRoot(request);
  const auto words = capnp::messageToFlatArray(message);
  return std::string(reinterpret_cast<const char*>(words.asBytes().begin()),
                     words.asBytes().size());
}

// A flat message copied into aligned words (the std::string's own buffer
// need not be 8-byte aligned).
kj::Array<capnp::word> aligned_words(const std::string& flat) {
  auto words = kj::heapArray<capnp::word>(flat.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), flat.data(), words.size() * sizeof(capnp::word));
  return words;
}

http::Response json_response(int status, const json& body) {
  return {status, body.dump() + "\n", "application/json"};
}
http::Response error_response(int status, const std::string& message) {
  return json_response(status, {{"error", message}});
}

}  // namespace

class Coordinator::Impl {
 public:
  explicit Impl(const CoordinatorOptions& options)
      : options_(options),
        store_(options.db),
        scheduler_(options.scheduler),
        socket_(bind_socket(options)),
        http_(
            io_, options.api, [this](const http::Request& r) { return handle_http(r); },
            http_options(options)) {
    resume();
  }

  std::string api_address() const { return http_.address(); }
  std::string worker_endpoint() const { return socket_.endpoint(); }

  void run(const std::atomic<bool>& stop) {
    log("serving the API on http://" + http_.address() + " and workers on " + socket_.endpoint() +
        " (database " + store_.path().string() + ")");
    auto next_heartbeat = Clock::now();
    while (!stop.load()) {
      // Everything that has arrived, then one synced write for all of it.
      std::chrono::milliseconds wait =
          batch_.empty() ? std::chrono::milliseconds(2) : std::chrono::milliseconds(0);
      for (int i = 0; i < 4096; ++i) {
        std::optional<transport::CoordinatorSocket::Incoming> incoming;
        try {
          incoming = socket_.receive(i == 0 ? wait : std::chrono::milliseconds(0));
        } catch (const zmq::error_t& e) {
          if (e.num() != EINTR) throw;  // a signal: the loop checks `stop`
        }
        if (!incoming) break;
        handle_worker(incoming->worker_identity, incoming->message.get());
      }
      flush();
      io_.poll();
      flush();
      const auto now = Clock::now();
      expire(now);
      dispatch(now);
      if (now >= next_heartbeat) {
        heartbeat_all();
        next_heartbeat = now + options_.heartbeat_interval;
      }
      flush();
    }
    log("stopping");
  }

 private:
  static transport::CoordinatorSocket bind_socket(const CoordinatorOptions& options);
  static http::ServerOptions http_options(const CoordinatorOptions& options) {
    http::ServerOptions o;
    o.bearer_token = options.api_token;
    o.max_body_bytes = options.max_request_bytes;
    return o;
  }

  // --- persistence --------------------------------------------------------

  void flush() {
    if (batch_.empty()) return;
    store_.write(batch_);
    unflushed_results_.clear();
    unflushed_metrics_.clear();
  }

  bool result_stored(const std::string& key) const {
    return unflushed_results_.contains(key) || store_.has_result(key);
  }

  void persist_job(Job& job) {
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

  void persist_task(const Job& job, std::size_t index) {
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

  // --- jobs ---------------------------------------------------------------

  void resume() {
    std::size_t resumed = 0, requeued = 0;
    for (const auto& record : store_.list_jobs()) {
      const auto r = record.get();
      Job job;
      job.id = text(r.getId());
      try {
        job.spec = JobSpec::parse_text(text(r.getSpecJson()));
      } catch (const Error& e) {
        throw Error("database " + store_.path().string() + ": job " + job.id +
                    " holds a spec this coordinator cannot read: " + e.what());
      }
      job.state = r.getState();
      job.created_ms = r.getCreatedMs();
      job.updated_ms = r.getUpdatedMs();
      job.error = text(r.getError());
      if (r.hasModel()) job.model = ModelInfo::read(r.getModel());
      for (const auto& task_record : store_.list_tasks(job.id)) {
        const auto t = task_record.get();
        TaskEntry entry;
        entry.config = text(t.getConfig());
        entry.eval_key = bytes(t.getEvalKey());
        entry.request = serialize_request(t.getRequest());
        entry.layers = layers_name(t.getRequest());
        entry.state = t.getState();
        for (auto e : t.getErrors()) entry.errors.push_back(text(e));
        if (job.spec.kind == JobSpec::Kind::Profile) label_profile_task(entry, t.getRequest());
        job.tasks.push_back(std::move(entry));
      }
      Job& stored = jobs_[job.id] = std::move(job);
      if (!active(stored.state)) {
        if (stored.spec.kind == JobSpec::Kind::Search && stored.model) {
          if (auto state = store_.get_raw(Store::Area::Search, stored.id)) {
            stored.tasks.clear();
            stored.done = 0;
            resume_search(stored, state, false);
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
        resume_search(stored, store_.get_raw(Store::Area::Search, stored.id), true);
        continue;
      }
      requeued += queue_tasks(stored);
      maybe_finish(stored);
    }
    flush();
    if (resumed > 0) {
      log("resumed " + std::to_string(resumed) + " unfinished job(s); " + std::to_string(requeued) +
          " evaluation task(s) queued, the rest are stored");
    }
  }

  static std::string layers_name(schema::EvalRequest::Reader request) {
    return format_layer_config(read_eval_request(request).layers);
  }

  static void label_profile_task(TaskEntry& entry, schema::EvalRequest::Reader request) {
    const auto layers = read_eval_request(request).layers;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      if (layers[l] != PrecisionPair{KvFormat::full(), KvFormat::full()}) {
        entry.profile_layer = static_cast<int>(l);
        entry.pair = layers[l].name();
      }
    }
  }

  std::string submit(const JobSpec& spec) {
    Job job;
    job.id = new_job_id();
    while (jobs_.contains(job.id)) job.id = new_job_id();
    job.spec = spec;
    job.created_ms = wall_ms();
    Job& stored = jobs_[job.id] = std::move(job);
    persist_job(stored);
    queue_describe(stored);
    flush();
    log("job " + stored.id + " (" + spec.kind_name() + ", model " + spec.model + ") submitted");
    return stored.id;
  }

  void queue_describe(Job& job) {
    scheduler_.add(Scheduler::Task{job.id + "/describe", job.id, kDescribePrefix + job.id, ""});
  }

  // The evaluations of a described job, as (config name, layers) in order.
  std::vector<TaskEntry> expand(const Job& job) {
    const int n = static_cast<int>(job.model->layers);
    std::vector<TaskEntry> entries;
    if (job.spec.kind == JobSpec::Kind::Evaluate) {
      for (std::size_t i = 0; i < job.spec.configs.size(); ++i) {
        TaskEntry e;
        e.config = job.spec.configs[i];
        try {
          e.layers = format_layer_config(parse_layer_config(e.config, n));
        } catch (const Error& err) {
          throw Error("configs[" + std::to_string(i) + "] '" + e.config + "': " + err.what());
        }
        entries.push_back(std::move(e));
      }
    } else {
      for (int l = 0; l < n; ++l) {
        for (const PrecisionPair& p : job.spec.candidates) {
          std::vector<PrecisionPair> layers(static_cast<std::size_t>(n),
                                            PrecisionPair{KvFormat::full(), KvFormat::full()});
          layers[static_cast<std::size_t>(l)] = p;
          TaskEntry e;
          e.layers = format_layer_config(layers);
          e.config = e.layers;
          e.profile_layer = l;
          e.pair = p.name();
          entries.push_back(std::move(e));
        }
      }
    }
    for (TaskEntry& e : entries) address(job, parse_layer_config(e.layers, n), e);
    return entries;
  }

  // Fills the request and evaluation key of `e` for `layers` of the job's model.
  static void address(const Job& job, const std::vector<PrecisionPair>& layers, TaskEntry& e) {
    EvalInputs in;
    in.model_spec = job.spec.model;
    in.model_fingerprint = job.model->fingerprint;
    in.data_spec = job.spec.data;
    in.data_fingerprint = job.model->data_fingerprint;
    in.seq_len = job.spec.seq_len;
    in.scheme = job.spec.scheme;
    in.layers = layers;
    in.metric = job.spec.metric;
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<schema::EvalRequest>();
    build_eval_request(in, request);
    e.layers = format_layer_config(layers);
    e.eval_key = evaluation_key(request.asReader());
    e.request = serialize_request(request.asReader());
  }

  // --- search jobs: one generation of evaluations at a time --------------

  void start_search(Job& job) {
    try {
      job.search.emplace(search::options_from_json(job.spec.search),
                         static_cast<int>(job.model->layers));
    } catch (const Error& e) {
      fail_job(job, std::string("search: ") + e.what());
      return;
    }
    job.state = JobState::RUNNING;
    persist_job(job);
    start_generation(job);
  }

  // Resumes a search from its stored state: what it evaluated is listed as
  // done, and its pending generation (asked again: identical) is queued.
  void resume_search(Job& job, const std::optional<std::string>& state, bool go_on) {
    if (!state) {
      if (!go_on) return;
      start_search(job);
      return;
    }
    try {
      job.search.emplace(search::Search::from_json(json::parse(*state)));
    } catch (const std::exception& e) {
      throw Error("database " + store_.path().string() + ": the search state of job " + job.id +
                  " cannot be read: " + e.what());
    }
    const search::Search& s = *job.search;
    std::vector<std::pair<std::vector<PrecisionPair>, double>> done;
    if (!s.profile().empty()) {
      const auto& candidates = s.options().candidates;
      for (std::size_t l = 0; l < s.profile().size(); ++l) {
        for (std::size_t p = 0; p < candidates.size(); ++p) {
          std::vector<PrecisionPair> layers(s.profile().size(),
                                            PrecisionPair{KvFormat::full(), KvFormat::full()});
          layers[l] = candidates[p];
          done.emplace_back(layers, s.profile()[l][p]);
        }
      }
    }
    for (const auto& e : s.evaluated()) done.emplace_back(e.layers, e.error);
    for (const auto& [layers, error] : done) {
      TaskEntry e;
      address(job, layers, e);
      e.config = e.layers;
      e.state = TaskState::DONE;
      e.kl = error;
      job.tasks.push_back(std::move(e));
      ++job.done;
    }
    job.generation_begin = job.tasks.size();
    if (go_on) {
      start_generation(job);
    } else {
      start_baselines(job, false);
    }
  }

  // Asks the search for its next generation and queues it; tells it at once
  // when every config is stored already.
  void start_generation(Job& job) {
    while (job.state == JobState::RUNNING) {
      const auto configs =
          job.search->done() ? std::vector<std::vector<PrecisionPair>>{} : job.search->ask();
      batch_.put_search_state(job.id, job.search->to_json().dump());
      if (configs.empty()) {
        finish_search(job);
        return;
      }
      job.generation_begin = job.tasks.size();
      for (const auto& layers : configs) {
        TaskEntry e;
        address(job, layers, e);
        e.config = e.layers;
        job.tasks.push_back(std::move(e));
      }
      std::size_t queued = 0;
      for (std::size_t i = job.generation_begin; i < job.tasks.size(); ++i) {
        TaskEntry& t = job.tasks[i];
        if (auto kl = stored_kl(t.eval_key)) {
          t.state = TaskState::DONE;
          t.kl = *kl;
          ++job.done;
          ++cache_hits_;
          continue;
        }
        scheduler_.add(
            Scheduler::Task{job.id + "/" + task_number(i), job.id, t.eval_key, t.request});
        ++queued;
      }
      log("job " + job.id + ": search generation " + std::to_string(job.search->generation()) +
          ", " + std::to_string(configs.size()) + " configs, " + std::to_string(queued) +
          " queued");
      if (queued > 0) return;
      if (!tell_generation(job)) return;
    }
  }

  // After a task of the pending generation settled: when all have, tells the
  // search and starts the next generation.
  void search_task_settled(Job& job) {
    for (std::size_t i = job.generation_begin; i < job.tasks.size(); ++i) {
      if (job.tasks[i].state == TaskState::PENDING) return;
    }
    if (job.evaluating_baselines) {
      finish_search(job);  // a failed baseline is listed under "failures"
      return;
    }
    if (tell_generation(job)) start_generation(job);
  }

  // Tells the search the pending generation's errors; false when the job failed.
  bool tell_generation(Job& job) {
    std::vector<double> errors;
    for (std::size_t i = job.generation_begin; i < job.tasks.size(); ++i) {
      const TaskEntry& t = job.tasks[i];
      if (t.state == TaskState::FAILED) {
        fail_job(job, "the search's evaluation of " + t.layers +
                          " failed: " + (t.errors.empty() ? std::string("?") : t.errors.back()));
        return false;
      }
      errors.push_back(t.kl);
    }
    try {
      job.search->tell(errors);
    } catch (const Error& e) {
      fail_job(job, std::string("search: ") + e.what());
      return false;
    }
    return true;
  }

  // KVTuner's uniform baselines, evaluated beside every search's frontier
  // (not told to the search: they are for comparison).
  // With queue_missing false only stored ones are listed (a finished job
  // reloaded after a restart).
  void start_baselines(Job& job, bool queue_missing = true) {
    job.evaluating_baselines = true;
    job.generation_begin = job.tasks.size();
    std::size_t queued = 0;
    for (const char* name : {"KV8", "K8V4", "KV4", "K4V2", "KV2"}) {
      const std::vector<PrecisionPair> layers(job.model->layers, PrecisionPair::parse(name));
      const std::string text = format_layer_config(layers);
      const bool known = std::any_of(job.tasks.begin(), job.tasks.end(),
                                     [&](const TaskEntry& t) { return t.layers == text; });
      if (known) continue;
      TaskEntry e;
      address(job, layers, e);
      e.config = name;
      job.tasks.push_back(std::move(e));
      const std::size_t i = job.tasks.size() - 1;
      TaskEntry& t = job.tasks[i];
      if (auto kl = stored_kl(t.eval_key)) {
        t.state = TaskState::DONE;
        t.kl = *kl;
        ++job.done;
        if (queue_missing) ++cache_hits_;
        continue;
      }
      if (!queue_missing) {
        job.tasks.pop_back();
        continue;
      }
      scheduler_.add(Scheduler::Task{job.id + "/" + task_number(i), job.id, t.eval_key, t.request});
      ++queued;
    }
    if (queued == 0 && queue_missing) finish_search(job);
  }

  void finish_search(Job& job) {
    if (!job.evaluating_baselines) {
      start_baselines(job);
      return;
    }
    job.state = JobState::DONE;
    persist_job(job);
    record_frontier(job);
    log("job " + job.id + " done: search of " + std::to_string(job.search->evaluations()) +
        " evaluations, " + std::to_string(job.search->frontier().size()) + " frontier configs");
  }

  // Merges a finished search's frontier into its registry entry.
  void record_frontier(const Job& job) {
    const std::string key = registry::key(job.model->fingerprint, job.spec.scheme.key(),
                                          job.model->data_fingerprint, job.spec.metric);
    std::vector<registry::Config> found;
    for (const auto& f : job.search->frontier()) {
      registry::Config c;
      c.layers = format_layer_config(f.layers);
      c.avg_bits = f.bits;
      c.kl = f.error;
      c.job = job.id;
      for (const TaskEntry& t : job.tasks) {
        if (t.layers != c.layers || t.state != TaskState::DONE) continue;
        c.eval_key = t.eval_key;
        if (auto it = unflushed_metrics_.find(t.eval_key); it != unflushed_metrics_.end()) {
          c.metrics = it->second;
        } else if (auto r = store_.get_result(t.eval_key)) {
          c.metrics = metrics_json(r->get());
        }
        break;
      }
      found.push_back(std::move(c));
    }
    json entry = {{"id", registry::entry_id(key)},
                  {"key", key},
                  {"model", job.model->name},
                  {"model_spec", job.spec.model},
                  {"fingerprint", job.model->fingerprint},
                  {"layers", job.model->layers},
                  {"scheme", job.spec.scheme.key()},
                  {"data", job.spec.data},
                  {"data_fingerprint", job.model->data_fingerprint},
                  {"metric", job.spec.metric},
                  {"synthetic", job.model->synthetic}};
    std::vector<registry::Config> before;
    if (auto old = store_.get_raw(Store::Area::Registry, key)) {
      for (const json& c : json::parse(*old).at("frontier")) {
        before.push_back(registry::Config::from_json(c));
      }
    }
    json frontier = json::array();
    for (const auto& c : registry::merge_frontier(before, found)) frontier.push_back(c.to_json());
    entry["frontier"] = std::move(frontier);
    entry["updated_ms"] = wall_ms();
    entry["jobs"] = json::array({job.id});
    batch_.put_registry(key, entry.dump());
    log("registry " + registry::entry_id(key) + " (" + job.model->name + ", " +
        job.spec.scheme.key() + "): " + std::to_string(entry["frontier"].size()) +
        " frontier configs");
  }

  // The KL of a stored (or just received) evaluation.
  std::optional<double> stored_kl(const std::string& key) const {
    if (auto it = unflushed_results_.find(key); it != unflushed_results_.end()) return it->second;
    if (auto r = store_.get_result(key)) return r->get().getKl();
    return std::nullopt;
  }

  // Adds the job's unfinished tasks to the scheduler; a stored result
  // completes a task at once. Returns how many were queued.
  std::size_t queue_tasks(Job& job) {
    std::size_t queued = 0;
    job.done = job.failed = 0;
    for (std::size_t i = 0; i < job.tasks.size(); ++i) {
      TaskEntry& t = job.tasks[i];
      if (t.state == TaskState::FAILED) {
        ++job.failed;
        continue;
      }
      if (t.state == TaskState::DONE || result_stored(t.eval_key)) {
        t.state = TaskState::DONE;
        ++job.done;
        ++cache_hits_;
        continue;
      }
      scheduler_.add(Scheduler::Task{job.id + "/" + task_number(i), job.id, t.eval_key, t.request});
      ++queued;
    }
    return queued;
  }

  void described(Job& job, const ModelInfo& model) {
    job.model = model;
    if (job.spec.kind == JobSpec::Kind::Search) {
      start_search(job);
      return;
    }
    try {
      job.tasks = expand(job);
    } catch (const Error& e) {
      fail_job(job, e.what());
      return;
    }
    job.state = JobState::RUNNING;
    persist_job(job);
    for (std::size_t i = 0; i < job.tasks.size(); ++i) persist_task(job, i);
    const std::size_t queued = queue_tasks(job);
    log("job " + job.id + ": model " + model.name + " (" + std::to_string(model.layers) +
        " layers), " + std::to_string(job.tasks.size()) + " evaluations, " +
        std::to_string(job.done) + " already stored, " + std::to_string(queued) + " queued");
    maybe_finish(job);
  }

  void fail_job(Job& job, const std::string& error) {
    scheduler_.cancel_job(job.id);
    job.state = JobState::FAILED;
    job.error = error;
    persist_job(job);
    log("job " + job.id + " failed: " + error);
  }

  void maybe_finish(Job& job) {
    if (job.state != JobState::RUNNING || job.done + job.failed < job.tasks.size()) return;
    if (job.failed > 0) {
      job.state = JobState::FAILED;
      job.error = std::to_string(job.failed) + " of " + std::to_string(job.tasks.size()) +
                  " evaluations failed";
    } else {
      job.state = JobState::DONE;
    }
    persist_job(job);
    log("job " + job.id + " " + state_name(job.state) + " (" + std::to_string(job.done) + "/" +
        std::to_string(job.tasks.size()) + " evaluations)");
  }

  // The job and task index of a scheduler task id "JOB/NNNNNN" (index -1 for
  // the describe task); nullptr when the job is unknown.
  std::pair<Job*, long> locate(const std::string& task_id) {
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

  // --- worker messages ----------------------------------------------------

  void handle_worker(const std::string& worker, schema::WorkerMessage::Reader msg) {
    const auto now = Clock::now();
    switch (msg.which()) {
      case schema::WorkerMessage::HELLO: {
        const auto h = msg.getHello();
        WorkerInfo& info = workers_[worker];
        info.device = text(h.getDevice());
        info.memory_bytes = h.getMemoryBytes();
        info.threads = h.getThreads();
        info.loaded_models.clear();
        for (auto m : h.getLoadedModels()) info.loaded_models.push_back(text(m));
        if (info.connected_ms == 0) info.connected_ms = wall_ms();
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
        if (auto failure = scheduler_.fail(worker, key, error, now)) on_failure(*failure);
        return;
      }
      case schema::WorkerMessage::GOODBYE: {
        const std::string task_id = text(msg.getGoodbye().getHandBackTaskId());
        if (!task_id.empty()) {
          const auto [job, index] = locate(task_id);
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
        for (const auto& failure : scheduler_.worker_gone(worker)) on_failure(failure);
        return;
      }
      case schema::WorkerMessage::DESCRIBED: {
        const auto d = msg.getDescribed();
        const std::string key = bytes(d.getDescribeKey());
        scheduler_.complete(worker, key, now);
        if (!key.starts_with(kDescribePrefix)) return;
        auto it = jobs_.find(key.substr(std::string(kDescribePrefix).size()));
        if (it == jobs_.end() || it->second.state != JobState::QUEUED || it->second.model) return;
        described(it->second, ModelInfo::read(d.getModel()));
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
    if (result_stored(key)) {
      ++duplicate_results_;
    } else {
      batch_.put_result(key, r.getResult());
      unflushed_results_[key] = r.getResult().getKl();
      unflushed_metrics_[key] = metrics_json(r.getResult());
      ++evaluations_total_;
      recent_results_.push_back(now);
      if (auto w = workers_.find(worker); w != workers_.end()) ++w->second.results;
    }
    for (const Scheduler::Task& t : tasks) {
      const auto [job, index] = locate(t.id);
      if (job == nullptr || index < 0) continue;
      TaskEntry& entry = job->tasks[static_cast<std::size_t>(index)];
      if (entry.state != TaskState::PENDING) continue;
      entry.state = TaskState::DONE;
      entry.kl = r.getResult().getKl();
      ++job->done;
      if (job->search) {
        search_task_settled(*job);
      } else {
        maybe_finish(*job);
      }
    }
  }

  void on_failure(const Scheduler::Failure& failure) {
    std::string errors;
    for (const std::string& e : failure.errors) errors += (errors.empty() ? "" : "; ") + e;
    for (const Scheduler::Task& t : failure.tasks) {
      const auto [job, index] = locate(t.id);
      if (job == nullptr || !active(job->state)) continue;
      if (index < 0) {
        fail_job(*job, "describing model " + job->spec.model + " with data " + job->spec.data +
                           " failed: " + errors);
        continue;
      }
      TaskEntry& entry = job->tasks[static_cast<std::size_t>(index)];
      if (entry.state != TaskState::PENDING) continue;
      entry.state = TaskState::FAILED;
      entry.errors = failure.errors;
      ++job->failed;
      if (job->search) {
        search_task_settled(*job);
        continue;
      }
      persist_task(*job, static_cast<std::size_t>(index));
      maybe_finish(*job);
    }
  }

  void expire(Clock::time_point now) {
    auto result = scheduler_.expire(now);
    for (const std::string& w : result.lost_workers) {
      log("worker " + w + " went silent; its leases are requeued");
      workers_.erase(w);
    }
    for (const auto& f : result.failed) on_failure(f);
  }

  void dispatch(Clock::time_point now) {
    while (auto a = scheduler_.next_assignment(now)) {
      capnp::MallocMessageBuilder message;
      auto root = message.initRoot<schema::CoordinatorMessage>();
      const Scheduler::Task& t = a->task;
      if (t.eval_key.starts_with(kDescribePrefix)) {
        const Job& job = jobs_.at(t.job_id);
        auto d = root.initDescribe();
        d.setTaskId(t.id);
        d.setDescribeKey(as_data(t.eval_key));
        d.setModelSpec(job.spec.model);
        d.setDataSpec(job.spec.data);
        d.setSeqLen(static_cast<uint32_t>(job.spec.seq_len));
      } else {
        auto task = root.initTask();
        task.setTaskId(t.id);
        task.setEvalKey(as_data(t.eval_key));
        auto words = aligned_words(t.payload);
        capnp::FlatArrayMessageReader request(words);
        task.setRequest(request.getRoot<schema::EvalRequest>());
      }
      if (t.eval_key.starts_with(kDescribePrefix)) {
        log("describe job " + t.job_id + " on " + a->worker_id);
      } else {
        ++dispatched_;
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

  // --- HTTP API -----------------------------------------------------------

  http::Response handle_http(const http::Request& r) {
    const std::string& p = r.path;
    if (p == "/healthz") return json_response(200, {{"status", "ok"}});
    if (p == "/metrics") {
      if (r.method != "GET") return error_response(405, "use GET " + p);
      return {200, metrics_text(), "text/plain; version=0.0.4"};
    }
    if (p == "/v1/workers") {
      if (r.method != "GET") return error_response(405, "use GET " + p);
      return json_response(200, workers_json());
    }
    if (p == "/v1/jobs") {
      if (r.method == "POST") return post_job(r.body);
      if (r.method == "GET") return json_response(200, jobs_json());
      return error_response(405, "use GET or POST " + p);
    }
    if (p == "/v1/registry" || p.starts_with("/v1/registry/")) {
      if (r.method != "GET") return error_response(405, "use GET " + p);
      return registry_request(p, r.query);
    }
    const std::string prefix = "/v1/jobs/";
    if (p.starts_with(prefix)) {
      std::string id = p.substr(prefix.size());
      const bool cancel = id.ends_with("/cancel");
      if (cancel) id.resize(id.size() - std::string("/cancel").size());
      auto it = jobs_.find(id);
      if (it == jobs_.end()) return error_response(404, "no job '" + id + "'");
      if (cancel) {
        if (r.method != "POST") return error_response(405, "use POST " + p);
        return cancel_job(it->second);
      }
      if (r.method != "GET") return error_response(405, "use GET " + p);
      return json_response(200, job_json(it->second, true));
    }
    return error_response(404, "no such endpoint: " + r.method + " " + p);
  }

  http::Response post_job(const std::string& body) {
    JobSpec spec;
    try {
      spec = JobSpec::parse_text(body);
    } catch (const JobSpecError& e) {
      json fields = json::array();
      for (const FieldError& f : e.fields()) {
        fields.push_back({{"field", f.field}, {"message", f.message}});
      }
      log("refused a job spec: " + std::string(e.what()));
      return json_response(400, {{"error", "invalid job spec"}, {"fields", fields}});
    }
    if (spec.kind == JobSpec::Kind::Search) {
      try {
        search::options_from_json(spec.search);
      } catch (const Error& e) {
        return json_response(400, {{"error", "invalid job spec"},
                                   {"fields", {{{"field", "search"}, {"message", e.what()}}}}});
      }
    }
    const std::string id = submit(spec);
    return json_response(201, {{"id", id}, {"state", "queued"}});
  }

  // GET /v1/registry, /v1/registry/{id}, /v1/registry/{id}/best?max_bits=B&max_kl=E&format=F
  http::Response registry_request(const std::string& path, const std::string& query) {
    const auto entries = store_.list_raw(Store::Area::Registry);
    if (path == "/v1/registry") {
      json list = json::array();
      for (const auto& [key, value] : entries) {
        json e = json::parse(value);
        e["configs"] = e["frontier"].size();
        e.erase("frontier");
        list.push_back(std::move(e));
      }
      return json_response(200, {{"entries", list}});
    }
    std::string rest = path.substr(std::string("/v1/registry/").size());
    const bool best_query = rest.ends_with("/best");
    if (best_query) rest.resize(rest.size() - std::string("/best").size());
    json entry;
    for (const auto& [key, value] : entries) {
      if (registry::entry_id(key) == rest) entry = json::parse(value);
    }
    if (entry.is_null()) return error_response(404, "no registry entry '" + rest + "'");
    if (!best_query) return json_response(200, entry);

    std::map<std::string, std::string> params;
    for (std::size_t start = 0; start < query.size();) {
      const std::size_t amp = std::min(query.find('&', start), query.size());
      const std::string item = query.substr(start, amp - start);
      const std::size_t eq = item.find('=');
      if (eq != std::string::npos) params[item.substr(0, eq)] = item.substr(eq + 1);
      start = amp + 1;
    }
    std::optional<double> max_bits, max_kl;
    try {
      if (params.contains("max_bits")) max_bits = std::stod(params["max_bits"]);
      if (params.contains("max_kl")) max_kl = std::stod(params["max_kl"]);
    } catch (const std::exception&) {
      return error_response(400, "max_bits and max_kl must be numbers");
    }
    if (!max_bits && !max_kl) return error_response(400, "give max_bits and/or max_kl");
    std::vector<registry::Config> frontier;
    for (const json& c : entry["frontier"]) frontier.push_back(registry::Config::from_json(c));
    const auto chosen = registry::best(frontier, max_bits, max_kl);
    if (!chosen)
      return error_response(404, "no frontier config of entry " + rest + " meets the budget");
    if (params.contains("format")) {
      try {
        const auto layers = parse_layer_config(chosen->layers, entry["layers"].get<int>());
        return {200, exports::export_config(params["format"], layers), "text/plain"};
      } catch (const Error& e) {
        return error_response(400, e.what());
      }
    }
    return json_response(200, chosen->to_json());
  }

  http::Response cancel_job(Job& job) {
    if (!active(job.state)) {
      return error_response(409, "job " + job.id + " is already " + state_name(job.state));
    }
    scheduler_.cancel_job(job.id);
    job.state = JobState::CANCELLED;
    persist_job(job);
    flush();
    log("job " + job.id + " cancelled");
    return json_response(200, {{"id", job.id}, {"state", "cancelled"}});
  }

  json progress_json(const Job& job) const {
    std::size_t total = job.tasks.size();
    if (!job.model && job.spec.kind == JobSpec::Kind::Evaluate) total = job.spec.configs.size();
    if (job.search && active(job.state)) {
      total = std::max(total, static_cast<std::size_t>(job.search->options().max_evaluations));
    }
    return {{"done", job.done}, {"failed", job.failed}, {"total", total}};
  }

  json job_json(const Job& job, bool full) const {
    json out = {{"id", job.id},
                {"kind", job.spec.kind_name()},
                {"state", state_name(job.state)},
                {"model", job.spec.model},
                {"progress", progress_json(job)},
                {"created_ms", job.created_ms},
                {"updated_ms", job.updated_ms}};
    if (!job.spec.name.empty()) out["name"] = job.spec.name;
    if (!job.error.empty()) out["error"] = job.error;
    if (!full) return out;
    out["spec"] = job.spec.to_json();
    if (job.model) out["model_info"] = job.model->to_json();
    json results = json::array();
    json failures = json::array();
    std::map<int, json> sensitivity;
    for (const TaskEntry& t : job.tasks) {
      if (t.state == TaskState::FAILED) {
        failures.push_back({{"config", t.config}, {"errors", t.errors}});
        continue;
      }
      if (t.state != TaskState::DONE) continue;
      const auto result = store_.get_result(t.eval_key);
      if (!result) continue;
      const auto r = result->get();
      json entry = {{"config", t.config},
                    {"layers", t.layers},
                    {"eval_key", t.eval_key},
                    {"metrics", metrics_json(r)},
                    {"worker", text(r.getWorkerId())},
                    {"seconds", r.getSeconds()}};
      if (t.profile_layer >= 0) {
        entry["layer"] = t.profile_layer;
        entry["pair"] = t.pair;
        json& row = sensitivity[t.profile_layer];
        row["layer"] = t.profile_layer;
        row["kl"][t.pair] = r.getKl();
        const auto attn = r.getAttnRelErr();
        if (static_cast<unsigned>(t.profile_layer) < attn.size()) {
          row["attn_rel_err"][t.pair] = attn[static_cast<unsigned>(t.profile_layer)];
        }
      }
      results.push_back(std::move(entry));
    }
    if (job.search) {
      // The frontier and the uniform baselines, in the shape of "results".
      std::map<std::string, json> by_layers;
      for (const json& r : results) by_layers.emplace(r["layers"].get<std::string>(), r);
      json frontier = json::array(), baselines = json::array();
      for (const auto& f : job.search->frontier()) {
        if (auto it = by_layers.find(format_layer_config(f.layers)); it != by_layers.end()) {
          frontier.push_back(it->second);
        }
      }
      for (const auto& [layers, r] : by_layers) {
        const auto pairs = parse_layer_config(layers, static_cast<int>(job.model->layers));
        if (std::all_of(pairs.begin(), pairs.end(), [&](const auto& p) { return p == pairs[0]; })) {
          baselines.push_back(r);
        }
      }
      const auto& candidates = job.search->options().candidates;
      json grouping = json::array();
      for (const auto& g : job.search->grouping()) {
        json pairs = json::array();
        for (int p : g.pairs) pairs.push_back(candidates[static_cast<std::size_t>(p)].name());
        grouping.push_back({{"layers", g.layers}, {"pairs", pairs}});
      }
      json predicted = json::array();
      for (const auto& a : job.search->additive_frontier()) {
        predicted.push_back({{"layers", format_layer_config(a.layers)},
                             {"avg_bits", a.bits},
                             {"predicted_kl", a.error}});
      }
      out["frontier"] = std::move(frontier);
      out["baselines"] = std::move(baselines);
      out["search"] = {{"strategy", search::strategy_name(job.search->options().strategy)},
                       {"evaluations", job.search->evaluations()},
                       {"generation", job.search->generation()},
                       {"grouping", grouping},
                       {"additive_frontier", predicted}};
    }
    out["results"] = std::move(results);
    if (!failures.empty()) out["failures"] = std::move(failures);
    if (job.spec.kind == JobSpec::Kind::Profile) {
      json candidates = json::array();
      for (const PrecisionPair& p : job.spec.candidates) candidates.push_back(p.name());
      json layers = json::array();
      for (auto& [layer, row] : sensitivity) layers.push_back(row);
      out["sensitivity"] = {{"candidates", candidates}, {"layers", layers}};
    }
    return out;
  }

  json jobs_json() const {
    json jobs = json::array();
    for (const auto& [id, job] : jobs_) jobs.push_back(job_json(job, false));
    return {{"jobs", jobs}};
  }

  json workers_json() const {
    json list = json::array();
    const auto now = Clock::now();
    for (const auto& w : scheduler_.workers()) {
      json entry = {
          {"id", w.id},
          {"credit", w.credit},
          {"leases", w.leases},
          {"last_seen_ms_ago",
           std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_seen).count()}};
      if (auto it = workers_.find(w.id); it != workers_.end()) {
        entry["device"] = it->second.device;
        entry["memory_bytes"] = it->second.memory_bytes;
        entry["threads"] = it->second.threads;
        entry["loaded_models"] = it->second.loaded_models;
        entry["connected_ms"] = it->second.connected_ms;
        entry["results"] = it->second.results;
      }
      list.push_back(std::move(entry));
    }
    return {{"workers", list}};
  }

  std::string metrics_text() {
    const auto now = Clock::now();
    while (!recent_results_.empty() && now - recent_results_.front() > std::chrono::seconds(60)) {
      recent_results_.pop_front();
    }
    std::map<std::string, std::size_t> by_state;
    for (const char* s : {"queued", "running", "done", "failed", "cancelled"}) by_state[s] = 0;
    for (const auto& [id, job] : jobs_) ++by_state[state_name(job.state)];
    std::ostringstream out;
    auto metric = [&](const char* name, const char* type, const char* help, double value) {
      out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
          << name << " " << value << "\n";
    };
    metric("kvtune_queue_depth", "gauge", "Evaluations waiting for a worker.",
           static_cast<double>(scheduler_.queued()));
    metric("kvtune_leases", "gauge", "Evaluations leased to workers.",
           static_cast<double>(scheduler_.leased()));
    metric("kvtune_workers", "gauge", "Connected workers.",
           static_cast<double>(scheduler_.workers().size()));
    metric("kvtune_evaluations_total", "counter",
           "Evaluation results stored by this coordinator process.",
           static_cast<double>(evaluations_total_));
    metric("kvtune_evaluations_per_second", "gauge",
           "Evaluation results stored per second, over the last minute.",
           static_cast<double>(recent_results_.size()) / 60.0);
    metric("kvtune_dispatched_total", "counter", "Evaluations sent to workers.",
           static_cast<double>(dispatched_));
    metric("kvtune_cache_hits_total", "counter",
           "Job evaluations answered from stored results without dispatch.",
           static_cast<double>(cache_hits_));
    metric("kvtune_duplicate_results_total", "counter",
           "Results for evaluations already stored (ignored).",
           static_cast<double>(duplicate_results_));
    metric("kvtune_refused_messages_total", "counter",
           "Malformed worker messages refused by the socket.",
           static_cast<double>(socket_.refused()));
    metric("kvtune_refused_handshakes_total", "counter",
           "Worker connections refused by CURVE authentication.",
           static_cast<double>(socket_.refused_handshakes()));
    metric("kvtune_refused_http_requests_total", "counter",
           "Malformed, oversized or unauthorized HTTP requests.",
           static_cast<double>(http_.refused()));
    out << "# HELP kvtune_jobs Jobs by state.\n# TYPE kvtune_jobs gauge\n";
    for (const auto& [state, count] : by_state) {
      out << "kvtune_jobs{state=\"" << state << "\"} " << count << "\n";
    }
    return out.str();
  }

  CoordinatorOptions options_;
  Store store_;
  Scheduler scheduler_;
  transport::CoordinatorSocket socket_;
  boost::asio::io_context io_;
  http::Server http_;
  Store::Batch batch_;
  std::map<std::string, double> unflushed_results_;  // key -> KL
  std::map<std::string, json> unflushed_metrics_;
  std::map<std::string, Job> jobs_;
  std::map<std::string, WorkerInfo> workers_;
  std::deque<Clock::time_point> recent_results_;
  uint64_t evaluations_total_ = 0, dispatched_ = 0, cache_hits_ = 0, duplicate_results_ = 0;
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
    : impl_((g_log.store(options.log), std::make_unique<Impl>(options))) {}
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
