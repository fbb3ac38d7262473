// The worker daemon (`kvtune-worker worker`) against a scripted coordinator:
// a ROUTER socket in the test plays the coordinator, so every message the
// worker sends is checked in order. Results must equal the in-process
// Evaluator's; bad requests and stale fingerprints become failures; SIGTERM
// gives a goodbye (handing back an evaluation that outlives the grace
// period); a restarted or forgetful coordinator gets a new hello. The LRU
// cache is tested on its own.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../support/process.h"
#include "../support/shared_files.h"
#include "../support/temp_dir.h"
#include "calibration.h"
#include "daemon.h"
#include "evaluator.h"
#include "fingerprint.h"
#include "kvtune/schemas/eval_key.h"
#include "kvtune/schemas/transport.h"
#include "llama.h"

namespace kvtune::worker {
namespace {

using namespace std::chrono_literals;
using transport::CoordinatorSocket;

const std::string& kModel = testing::kStoriesModel;
const std::string kData = "sample:2:32:0";

// --- the LRU cache -----------------------------------------------------------

struct Counted {
  explicit Counted(int* live) : live_(live) { ++*live_; }
  ~Counted() { --*live_; }
  int* live_;
};

TEST(LruCache, EvictsTheLeastRecentlyUsedAndFreesIt) {
  int live = 0;
  LruCache<std::string, Counted> cache(2);
  cache.insert("a", std::make_unique<Counted>(&live));
  cache.insert("b", std::make_unique<Counted>(&live));
  EXPECT_EQ(live, 2);
  ASSERT_NE(cache.find("a"), nullptr);  // a is now the most recent
  cache.insert("c", std::make_unique<Counted>(&live));
  EXPECT_EQ(live, 2);
  EXPECT_EQ(cache.find("b"), nullptr);
  EXPECT_EQ(cache.keys(), (std::vector<std::string>{"c", "a"}));
  cache.make_room();  // before building a new value: the old one goes first
  EXPECT_EQ(live, 1);
  EXPECT_EQ(cache.keys(), (std::vector<std::string>{"c"}));
  cache.insert("c", std::make_unique<Counted>(&live));  // replaces
  EXPECT_EQ(live, 1);
  cache.erase("c");
  EXPECT_EQ(live, 0);
  EXPECT_EQ(cache.size(), 0u);
}

TEST(LruCache, HoldsAtLeastOneValue) {
  int live = 0;
  LruCache<int, Counted> cache(0);
  EXPECT_EQ(cache.capacity(), 1u);
  cache.insert(1, std::make_unique<Counted>(&live));
  cache.insert(2, std::make_unique<Counted>(&live));
  EXPECT_EQ(live, 1);
  EXPECT_NE(cache.find(2), nullptr);
}

// --- a worker process and a scripted coordinator ----------------------------

// The argv of `kvtune-worker worker ARGS...`.
std::vector<std::string> worker_argv(std::vector<std::string> args) {
  args.insert(args.begin(), {testing::build_path("kvtune-worker"), "worker"});
  return args;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

std::string text(capnp::Text::Reader t) {
  return std::string(t.cStr(), t.size());
}
std::string bytes(capnp::Data::Reader d) {
  return std::string(reinterpret_cast<const char*>(d.begin()), d.size());
}
kj::ArrayPtr<const kj::byte> as_data(const std::string& s) {
  return kj::arrayPtr(reinterpret_cast<const kj::byte*>(s.data()), s.size());
}

// How long a worker process may take to exit once it has said goodbye: it
// takes well under a second, but LibTorch's teardown on a machine busy with
// a parallel build and test run has taken seconds. Waits return at the exit.
constexpr auto kExit = 60s;

// The next message from the worker that is not a heartbeat (nor a hello or
// credit when `skip_hello`).
transport::CoordinatorSocket::Incoming next(CoordinatorSocket& socket,
                                            std::chrono::milliseconds timeout = 60s,
                                            bool skip_hello = false) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    auto in = socket.receive(std::max(left, 0ms));
    if (!in) throw std::runtime_error("no message from the worker in time");
    const auto which = in->message.get().which();
    if (which == schema::WorkerMessage::HEARTBEAT) continue;
    if (skip_hello &&
        (which == schema::WorkerMessage::HELLO || which == schema::WorkerMessage::CREDIT)) {
      continue;
    }
    return std::move(*in);
  }
}

void expect_hello_and_credit(CoordinatorSocket& socket, const std::string& id) {
  auto hello = next(socket);
  ASSERT_EQ(hello.message.get().which(), schema::WorkerMessage::HELLO);
  EXPECT_EQ(hello.worker_identity, id);
  const auto h = hello.message.get().getHello();
  EXPECT_EQ(text(h.getWorkerId()), id);
  EXPECT_EQ(text(h.getDevice()), "cpu");
  EXPECT_GT(h.getMemoryBytes(), 0u);
  EXPECT_EQ(h.getThreads(), 1u);
  auto credit = next(socket);
  ASSERT_EQ(credit.message.get().which(), schema::WorkerMessage::CREDIT);
  EXPECT_EQ(credit.message.get().getCredit().getCount(), 1u);
}

void expect_credit(CoordinatorSocket& socket) {
  auto credit = next(socket);
  ASSERT_EQ(credit.message.get().which(), schema::WorkerMessage::CREDIT);
  EXPECT_EQ(credit.message.get().getCredit().getCount(), 1u);
}

void send_describe(CoordinatorSocket& socket, const std::string& id, const std::string& task_id,
                   const std::string& key, const std::string& data) {
  capnp::MallocMessageBuilder message;
  auto d = message.initRoot<schema::CoordinatorMessage>().initDescribe();
  d.setTaskId(task_id);
  d.setDescribeKey(as_data(key));
  d.setModelSpec(kModel);
  d.setDataSpec(data);
  d.setSeqLen(0);
  ASSERT_TRUE(socket.send(id, message));
}

// Sends a task for `inputs`; returns its evaluation key.
std::string send_task(CoordinatorSocket& socket, const std::string& id, const std::string& task_id,
                      const EvalInputs& inputs) {
  capnp::MallocMessageBuilder message;
  auto task = message.initRoot<schema::CoordinatorMessage>().initTask();
  task.setTaskId(task_id);
  build_eval_request(inputs, task.initRequest());
  const std::string key = evaluation_key(task.getRequest().asReader());
  task.setEvalKey(as_data(key));
  EXPECT_TRUE(socket.send(id, message));
  return key;
}

void send_reject(CoordinatorSocket& socket, const std::string& id, const std::string& reason) {
  capnp::MallocMessageBuilder message;
  message.initRoot<schema::CoordinatorMessage>().initReject().setReason(reason);
  ASSERT_TRUE(socket.send(id, message));
}

bool wait_connected(CoordinatorSocket& socket, const std::string& id) {
  // A ROUTER knows a peer's identity once its connection is up; heartbeats
  // to an unknown identity are refused, so retry until one goes through.
  for (int i = 0; i < 500; ++i) {
    capnp::MallocMessageBuilder message;
    message.initRoot<schema::CoordinatorMessage>().setHeartbeat();
    if (socket.send(id, message)) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

void expect_same(const schema::EvalResult::Reader& got, const Metrics& want) {
  const auto near = [](double a, double b) { return std::abs(a - b) <= 1e-6 * (1 + std::abs(b)); };
  EXPECT_PRED2(near, got.getKl(), want.kl);
  EXPECT_PRED2(near, got.getDeltaNll(), want.delta_nll);
  EXPECT_PRED2(near, got.getPplFp(), want.ppl_fp);
  EXPECT_PRED2(near, got.getPplQ(), want.ppl_q);
  EXPECT_PRED2(near, got.getTop1Agreement(), want.top1_agreement);
  EXPECT_EQ(got.getAvgBits(), want.avg_bits);
  EXPECT_EQ(got.getBytesPerToken(), want.bytes_per_token);
  ASSERT_EQ(got.getAttnRelErr().size(), want.attn_rel_err.size());
  for (unsigned l = 0; l < want.attn_rel_err.size(); ++l) {
    EXPECT_PRED2(near, got.getAttnRelErr()[l], want.attn_rel_err[l]) << "layer " << l;
  }
  EXPECT_EQ(got.getTokens(), static_cast<uint64_t>(want.tokens));
  EXPECT_GE(got.getSeconds(), 0.0);
}

std::vector<std::string> worker_args(const std::string& endpoint, const std::string& id,
                                     std::vector<std::string> extra = {}) {
  // The scripted coordinator sends no heartbeats: only the test that wants
  // the worker to time out lets it.
  std::vector<std::string> args = {"--connect", endpoint, "--id",           id,
                                   "--threads", "1",      "--heartbeat-ms", "100"};
  if (std::find(extra.begin(), extra.end(), "--coordinator-timeout-ms") == extra.end()) {
    extra.insert(extra.end(), {"--coordinator-timeout-ms", "600000"});
  }
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

TEST(WorkerDaemon, DescribesEvaluatesLikeTheEvaluatorAndSaysGoodbye) {
  SKIP_WITHOUT_STORIES();
  testing::TempDir dir("kvtune-daemon");
  CoordinatorSocket socket("tcp://127.0.0.1:0");
  const std::string id = "daemon-test-1";
  testing::Process worker(worker_argv(worker_args(socket.endpoint(), id)), dir.file("worker.log"));
  expect_hello_and_credit(socket, id);

  // The same model and data, evaluated here.
  torch::set_num_threads(1);
  const Model model = load_model(kModel);
  const CalibrationData data = load_calibration(kData, 0, model);
  Evaluator evaluator(model, data.sequences);

  send_describe(socket, id, "job-1/describe", "describe/job-1", kData);
  auto described = next(socket);
  ASSERT_EQ(described.message.get().which(), schema::WorkerMessage::DESCRIBED) << worker.log();
  const auto d = described.message.get().getDescribed();
  EXPECT_EQ(text(d.getTaskId()), "job-1/describe");
  EXPECT_EQ(bytes(d.getDescribeKey()), "describe/job-1");
  const auto info = d.getModel();
  EXPECT_EQ(text(info.getName()), "stories260K.bin");
  EXPECT_EQ(text(info.getArchitecture()), model.config.architecture);
  EXPECT_FALSE(info.getSynthetic());
  EXPECT_EQ(info.getLayers(), 5u);
  EXPECT_EQ(info.getKvHeads(), 4u);
  EXPECT_EQ(info.getHeadDim(), 8u);
  EXPECT_EQ(info.getVocabSize(), 512u);
  EXPECT_EQ(text(info.getFingerprint()), model_fingerprint(kModel));
  EXPECT_EQ(text(info.getDataFingerprint()), data_fingerprint(data.sequences));
  EXPECT_EQ(info.getSequences(), 2u);
  EXPECT_EQ(info.getTokens(), 64u);
  expect_credit(socket);

  EvalInputs base;
  base.model_spec = kModel;
  base.model_fingerprint = text(info.getFingerprint());
  base.data_spec = kData;
  base.data_fingerprint = text(info.getDataFingerprint());
  base.seq_len = 0;
  const std::vector<std::pair<std::string, Scheme>> configs = {
      {"KV8", Scheme{}},
      {"K2V4,KV4,K8V2,KV2,K4V8", Scheme{}},
      {"K4V2", Scheme::parse("kivi", 8, 16, "float")},
      {"Kfp8Vnvfp4", Scheme{}},
  };
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < configs.size(); ++i) {
    EvalInputs inputs = base;
    inputs.layers = parse_layer_config(configs[i].first, 5);
    inputs.scheme = configs[i].second;
    const std::string task_id = "job-1/" + std::to_string(i);
    keys.push_back(send_task(socket, id, task_id, inputs));
    auto result = next(socket);
    ASSERT_EQ(result.message.get().which(), schema::WorkerMessage::RESULT) << worker.log();
    const auto r = result.message.get().getResult();
    EXPECT_EQ(text(r.getTaskId()), task_id);
    EXPECT_EQ(bytes(r.getEvalKey()), keys.back());
    EXPECT_EQ(text(r.getResult().getWorkerId()), id);
    SCOPED_TRACE(configs[i].first);
    expect_same(r.getResult(), evaluator.evaluate(inputs.layers, inputs.scheme));
    expect_credit(socket);
  }

  // Failures name what is wrong, and are followed by credit too.
  const auto expect_failure = [&](const std::string& task_id, const EvalInputs& inputs,
                                  const std::string& message) {
    const std::string key = send_task(socket, id, task_id, inputs);
    auto failure = next(socket);
    ASSERT_EQ(failure.message.get().which(), schema::WorkerMessage::FAILURE) << worker.log();
    const auto f = failure.message.get().getFailure();
    EXPECT_EQ(text(f.getTaskId()), task_id);
    EXPECT_EQ(bytes(f.getEvalKey()), key);
    EXPECT_NE(text(f.getError()).find(message), std::string::npos) << text(f.getError());
    expect_credit(socket);
  };
  EvalInputs stale = base;
  stale.layers = parse_layer_config("KV4", 5);
  stale.model_fingerprint = std::string(32, '0');
  expect_failure("job-1/stale", stale,
                 "model " + kModel + " changed since the job was described: fingerprint " +
                     base.model_fingerprint + ", expected " + stale.model_fingerprint);
  EvalInputs short_config = base;
  short_config.layers = parse_layer_config("KV4", 3);
  expect_failure("job-1/short", short_config, "has 5");
  EvalInputs bad_metric = base;
  bad_metric.layers = parse_layer_config("KV4", 5);
  bad_metric.metric = "mse";
  expect_failure("job-1/metric", bad_metric, "metric 'mse'");
  EvalInputs missing = base;
  missing.model_spec = dir.file("missing.bin");
  missing.layers = parse_layer_config("KV4", 5);
  expect_failure("job-1/missing", missing, "missing.bin");

  worker.kill(SIGTERM);
  auto goodbye = next(socket);
  ASSERT_EQ(goodbye.message.get().which(), schema::WorkerMessage::GOODBYE);
  EXPECT_EQ(text(goodbye.message.get().getGoodbye().getHandBackTaskId()), "");
  EXPECT_EQ(worker.wait(kExit), 0) << worker.log();

  const std::string log = worker.log();
  for (const std::string& key : keys) {
    EXPECT_EQ(count(log, "kvtune worker " + id + ": evaluating " + key + " (task "), 1u) << log;
    EXPECT_EQ(count(log, "kvtune worker " + id + ": done " + key + " in "), 1u) << log;
  }
  // The model was loaded once (describe), then reloaded for the missing file only.
  EXPECT_EQ(count(log, ": loaded " + kModel), 1u) << log;
}

TEST(WorkerDaemon, FinishesWithinTheGracePeriodOrHandsTheTaskBack) {
  SKIP_WITHOUT_STORIES();
  testing::TempDir dir("kvtune-daemon");
  // A task without a describe first: the worker loads the model and samples
  // the data as part of it, which takes a while with this much data.
  EvalInputs slow;
  slow.model_spec = kModel;
  slow.model_fingerprint = model_fingerprint(kModel);
  slow.data_spec = "sample:12:256:5";
  slow.data_fingerprint = std::string(32, 'f');  // never reached
  slow.layers = parse_layer_config("KV4", 5);

  {  // --grace-seconds 0: the running task is handed back at once.
    CoordinatorSocket socket("tcp://127.0.0.1:0");
    const std::string id = "daemon-test-2";
    testing::Process worker(
        worker_argv(worker_args(socket.endpoint(), id, {"--grace-seconds", "0"})),
        dir.file("a.log"));
    expect_hello_and_credit(socket, id);
    send_task(socket, id, "job-2/0", slow);
    ASSERT_TRUE(worker.wait_for_log(": evaluating ", 120s)) << worker.log();
    // While it works, its heartbeats name the task.
    std::string busy;
    for (int i = 0; i < 50 && busy.empty(); ++i) {
      auto in = socket.receive(30s);  // heartbeats come every 100 ms when not starved
      ASSERT_TRUE(in.has_value());
      if (in->message.get().which() == schema::WorkerMessage::HEARTBEAT) {
        busy = text(in->message.get().getHeartbeat().getBusyTaskId());
      }
    }
    EXPECT_EQ(busy, "job-2/0");
    const auto start = std::chrono::steady_clock::now();
    worker.kill(SIGTERM);
    auto goodbye = next(socket);
    ASSERT_EQ(goodbye.message.get().which(), schema::WorkerMessage::GOODBYE) << worker.log();
    EXPECT_EQ(text(goodbye.message.get().getGoodbye().getHandBackTaskId()), "job-2/0");
    EXPECT_EQ(worker.wait(kExit), 0) << worker.log();
    // At once, not after the evaluation: the hand-back and the absent
    // ": done" say so; the bound only has to hold on a loaded machine.
    EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
    EXPECT_EQ(worker.log().find(": done "), std::string::npos) << worker.log();
  }
  {  // A long grace period: the task finishes (here: fails) and is reported first.
    // The task takes seconds; 600 s outlasts it on a machine busy with a
    // parallel test run (the default 30 s did not, once).
    CoordinatorSocket socket("tcp://127.0.0.1:0");
    const std::string id = "daemon-test-3";
    testing::Process worker(
        worker_argv(worker_args(socket.endpoint(), id, {"--grace-seconds", "600"})),
        dir.file("b.log"));
    expect_hello_and_credit(socket, id);
    const std::string key = send_task(socket, id, "job-3/0", slow);
    ASSERT_TRUE(worker.wait_for_log(": evaluating ", 120s)) << worker.log();
    worker.kill(SIGTERM);
    auto failure = next(socket);
    ASSERT_EQ(failure.message.get().which(), schema::WorkerMessage::FAILURE) << worker.log();
    EXPECT_EQ(bytes(failure.message.get().getFailure().getEvalKey()), key);
    EXPECT_NE(text(failure.message.get().getFailure().getError()).find("data sample:12:256:5"),
              std::string::npos);
    auto goodbye = next(socket);  // no credit: it is leaving
    ASSERT_EQ(goodbye.message.get().which(), schema::WorkerMessage::GOODBYE);
    EXPECT_EQ(text(goodbye.message.get().getGoodbye().getHandBackTaskId()), "");
    EXPECT_EQ(worker.wait(kExit), 0) << worker.log();
  }
}

TEST(WorkerDaemon, SaysHelloAgainWhenTheCoordinatorAsks) {
  SKIP_WITHOUT_STORIES();
  testing::TempDir dir("kvtune-daemon");
  CoordinatorSocket socket("tcp://127.0.0.1:0");
  const std::string id = "daemon-test-4";
  testing::Process worker(worker_argv(worker_args(socket.endpoint(), id)), dir.file("worker.log"));
  expect_hello_and_credit(socket, id);
  // "unknown worker: say hello" gets a hello, and credit as the worker is
  // idle; at most once a second.
  std::this_thread::sleep_for(1100ms);
  send_reject(socket, id, "unknown worker: say hello");
  send_reject(socket, id, "unknown worker: say hello");
  expect_hello_and_credit(socket, id);
  int hellos = 0;
  for (auto until = std::chrono::steady_clock::now() + 600ms;
       std::chrono::steady_clock::now() < until;) {
    auto in = socket.receive(50ms);
    if (in && in->message.get().which() == schema::WorkerMessage::HELLO) ++hellos;
  }
  EXPECT_EQ(hellos, 0) << "the second rejection must not get a second hello within a second";
  worker.kill(SIGINT);
  auto goodbye = next(socket);
  EXPECT_EQ(goodbye.message.get().which(), schema::WorkerMessage::GOODBYE);
  EXPECT_EQ(worker.wait(kExit), 0) << worker.log();
}

TEST(WorkerDaemon, SaysHelloAgainToARestartedCoordinator) {
  SKIP_WITHOUT_STORIES();
  testing::TempDir dir("kvtune-daemon");
  const std::string id = "daemon-test-5";
  EvalInputs inputs;
  inputs.model_spec = kModel;
  inputs.model_fingerprint = model_fingerprint(kModel);
  inputs.data_spec = "sample:1:16:0";
  inputs.layers = parse_layer_config("KV8", 5);
  {
    torch::set_num_threads(1);
    const Model model = load_model(kModel);
    inputs.data_fingerprint =
        data_fingerprint(load_calibration(inputs.data_spec, 0, model).sequences);
  }

  auto socket = std::make_unique<CoordinatorSocket>("tcp://127.0.0.1:0");
  const std::string endpoint = socket->endpoint();
  testing::Process worker(
      worker_argv(
          worker_args(endpoint, id, {"--coordinator-timeout-ms", "700", "--max-tasks", "1"})),
      dir.file("worker.log"));
  expect_hello_and_credit(*socket, id);
  // The coordinator restarts on the same endpoint: it hears nothing useful
  // until the worker, finding it silent, says hello again.
  socket.reset();
  socket = std::make_unique<CoordinatorSocket>(endpoint);
  expect_hello_and_credit(*socket, id);
  EXPECT_NE(worker.log().find("assuming it restarted"), std::string::npos) << worker.log();

  // --max-tasks 1: one evaluation, then a goodbye (no credit) and exit 0.
  ASSERT_TRUE(wait_connected(*socket, id));
  const std::string key = send_task(*socket, id, "job-5/0", inputs);
  auto result = next(*socket, 60s, /*skip_hello=*/true);
  ASSERT_EQ(result.message.get().which(), schema::WorkerMessage::RESULT) << worker.log();
  EXPECT_EQ(bytes(result.message.get().getResult().getEvalKey()), key);
  auto goodbye = next(*socket, 60s, /*skip_hello=*/true);
  ASSERT_EQ(goodbye.message.get().which(), schema::WorkerMessage::GOODBYE) << worker.log();
  EXPECT_EQ(worker.wait(kExit), 0) << worker.log();
}

}  // namespace
}  // namespace kvtune::worker
