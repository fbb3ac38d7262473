// Tests of the coordinator's RocksDB store and of evaluation keys.
#include <capnp/message.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <rocksdb/db.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "kvtune/common/error.h"
#include "kvtune/schemas/eval_key.h"
#include "store.h"

namespace kvtune {
namespace {

namespace fs = std::filesystem;
using schema::EvalResult;
using schema::JobRecord;
using schema::TaskRecord;

EvalInputs sample_inputs() {
  EvalInputs in;
  in.model_spec = "stories260K.bin";
  in.model_fingerprint = "model-fp-1";
  in.data_spec = "sample:seed=1,n=4";
  in.data_fingerprint = "data-fp-1";
  in.seq_len = 64;
  in.scheme = Scheme::parse("kivi", 32, 64, "int");
  in.layers = parse_layer_config("K8V4,KV4,KV2,K4V2,KVfp8", 5);
  return in;
}

std::string key_of(const EvalInputs& in) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::EvalRequest>();
  build_eval_request(in, request);
  return evaluation_key(request.asReader());
}

// Expects `fn` to throw kvtune::Error whose message contains every `needles`.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no kvtune::Error thrown";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos)
          << "'" << needle << "' missing from: " << message;
    }
  }
}

TEST(EvalKey, EqualInputsGiveEqualKeys) {
  const std::string key = key_of(sample_inputs());
  EXPECT_EQ(key, key_of(sample_inputs()));
  ASSERT_EQ(key.size(), 32u);
  EXPECT_EQ(key.find_first_not_of("0123456789abcdef"), std::string::npos);
}

TEST(EvalKey, AnyInputChangesTheKey) {
  const std::string base = key_of(sample_inputs());
  std::vector<EvalInputs> variants(6, sample_inputs());
  variants[0].layers[3] = PrecisionPair::parse("K4V4");
  variants[1].scheme = Scheme::parse("kivi", 32, 32, "int");
  variants[2].data_fingerprint = "data-fp-2";
  variants[3].model_fingerprint = "model-fp-2";
  variants[4].seq_len = 65;
  variants[5].scheme = Scheme::parse("kivi", 32, 64, "float");
  std::vector<std::string> keys{base};
  for (const EvalInputs& v : variants) keys.push_back(key_of(v));
  for (size_t i = 0; i < keys.size(); ++i) {
    for (size_t j = i + 1; j < keys.size(); ++j) EXPECT_NE(keys[i], keys[j]) << i << " vs " << j;
  }
}

TEST(EvalKey, PromptAndReadRuleChangeTheKeyAndTheirDefaultsLeaveItAsItWas) {
  // Keys written before prompts and read rules existed (computed by that
  // code): an existing database still finds its results.
  EXPECT_EQ(key_of(sample_inputs()), "2dace2651f3f35cccfb7c8582de6dac3");
  EvalInputs per_token = sample_inputs();
  per_token.scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  EXPECT_EQ(key_of(per_token), "367b4a2530355cb355de30d3f0b05a20");

  EvalInputs prompted = per_token, cached = per_token, both = per_token;
  prompted.prompt_tokens = 17;
  cached.read = ReadRule::parse("cache");
  both.prompt_tokens = 17;
  both.read = ReadRule::parse("cache");
  const std::set<std::string> keys{key_of(per_token), key_of(prompted), key_of(cached),
                                   key_of(both)};
  EXPECT_EQ(keys.size(), 4u);
  // Without a prompt, the prefill rule reads nothing and does not count.
  EvalInputs prefill_only = per_token;
  prefill_only.read = ReadRule::parse("prefill=cache,current=fresh");
  EXPECT_EQ(key_of(prefill_only), key_of(per_token));
  prefill_only.prompt_tokens = 17;
  EXPECT_NE(key_of(prefill_only), key_of(prompted));

  // The request carries them to the worker.
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::EvalRequest>();
  build_eval_request(both, request);
  const EvalInputs back = read_eval_request(request.asReader());
  EXPECT_EQ(back.prompt_tokens, 17);
  EXPECT_EQ(back.read, ReadRule::parse("cache"));
}

TEST(EvalKey, AFreeRunHasItsOwnKeyAndCrossesTheWire) {
  EvalInputs plain = sample_inputs(), run = sample_inputs(), longer = sample_inputs();
  run.free_run = {4, 16, 32};
  longer.free_run = {4, 16, 48};
  const std::set<std::string> keys{key_of(plain), key_of(run), key_of(longer)};
  EXPECT_EQ(keys.size(), 3u);
  EXPECT_EQ(key_of(plain), "2dace2651f3f35cccfb7c8582de6dac3");  // as before free runs

  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::EvalRequest>();
  build_eval_request(run, request);
  EXPECT_EQ(read_eval_request(request.asReader()).free_run, run.free_run);
  request.getFreeRun().setNewTokens(0);
  expect_error([&] { read_eval_request(request.asReader()); }, {"freeRun", "newTokens"});
  EvalInputs negative = sample_inputs();
  negative.free_run = {-1, 16, 32};
  expect_error([&] { key_of(negative); }, {"free_run", "-1"});
}

TEST(EvalKey, KvtunerTargetHasItsOwnKeysAndCrossesTheWire) {
  EvalInputs idealized = sample_inputs(), token = sample_inputs(), channel = sample_inputs();
  idealized.scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  idealized.layers = token.layers = channel.layers =
      parse_layer_config("K8V4,KV4,KV2,K4V2,KV16", 5);
  token.scheme = Scheme::kvtuner("per-token-asym");
  channel.scheme = Scheme::kvtuner("per-channel-asym");
  EvalInputs token_r4 = token;
  token_r4.scheme.residual = 4;  // per-token settings differ by R, unlike kvtune's
  const std::set<std::string> keys{key_of(idealized), key_of(token), key_of(channel),
                                   key_of(token_r4)};
  EXPECT_EQ(keys.size(), 4u);
  for (const EvalInputs& in : {token, channel, token_r4}) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<schema::EvalRequest>();
    build_eval_request(in, request);
    EXPECT_EQ(read_eval_request(request.asReader()).scheme.key(), in.scheme.key());
  }
}

TEST(EvalKey, EngineDtypesCrossTheWireAndScaleSourcesCountOnlyWhereUsed) {
  EvalInputs vllm = sample_inputs(), sglang = sample_inputs();
  vllm.layers = parse_layer_config("KVvllm:fp8,KV16,KVvllm:fp8,KVvllm:fp8,KV16", 5);
  sglang.layers = parse_layer_config("KVsglang:fp8_e4m3,KV16,KVvllm:fp8,KVvllm:fp8,KV16", 5);
  EvalInputs calibrated = vllm;
  calibrated.scheme.kv_scales = KvScales::Calibrated;
  const std::set<std::string> keys{key_of(vllm), key_of(sglang), key_of(calibrated)};
  EXPECT_EQ(keys.size(), 3u);
  for (const EvalInputs& in : {vllm, sglang, calibrated}) {
    capnp::MallocMessageBuilder message;
    auto request = message.initRoot<schema::EvalRequest>();
    build_eval_request(in, request);
    const EvalInputs back = read_eval_request(request.asReader());
    EXPECT_EQ(back.layers, in.layers);
    EXPECT_EQ(back.scheme.kv_scales, in.scheme.kv_scales);
  }
  // Formats without a per-layer scale do not depend on where scales come from.
  EvalInputs per_head = sample_inputs();
  per_head.layers = parse_layer_config("KVvllm:fp8_per_token_head,KVsglang:fp4_e2m1", 2);
  EvalInputs per_head_calibrated = per_head;
  per_head_calibrated.scheme.kv_scales = KvScales::Calibrated;
  EXPECT_EQ(key_of(per_head), key_of(per_head_calibrated));
  // An unknown engine dtype on the wire is named.
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::EvalRequest>();
  build_eval_request(vllm, request);
  request.getLayers()[1].getKey().setKind(schema::KvFormat::Kind::ENGINE);
  request.getLayers()[1].getKey().setEngineDtype("vllm:fp9");
  expect_error([&] { read_eval_request(request.asReader()); },
               {"layers[1].key", "unknown engine dtype 'vllm:fp9'", "vllm:fp8_e5m2"});
}

TEST(EvalKey, UnsetMetricEqualsDefaultAndPerTokenIgnoresGroups) {
  capnp::MallocMessageBuilder a, b;
  auto ra = a.initRoot<schema::EvalRequest>();
  build_eval_request(sample_inputs(), ra);
  auto rb = b.initRoot<schema::EvalRequest>();
  build_eval_request(sample_inputs(), rb);
  rb.disownMetric();  // unset reads as the default "kl"
  EXPECT_EQ(evaluation_key(ra.asReader()), evaluation_key(rb.asReader()));

  EvalInputs p1 = sample_inputs(), p2 = sample_inputs();
  p1.scheme = Scheme::parse("per-token-asym", 32, 32, "int");
  p2.scheme = Scheme::parse("per-token-asym", 16, 64, "int");
  EXPECT_EQ(key_of(p1), key_of(p2));
  EXPECT_NE(key_of(p1), key_of(sample_inputs()));
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("kvtune-store-" + std::to_string(getpid()) + "-" +
                                        info->name() + "-" + std::to_string(counter++));
    fs::remove_all(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes `value` at `key` of column family `family`, bypassing the Store.
  void raw_write(const std::string& family, const std::string& key, const std::string& value) {
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), dir_.string(), &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const auto& n : names) descriptors.emplace_back(n, rocksdb::ColumnFamilyOptions());
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(
        rocksdb::DB::Open(rocksdb::DBOptions(), dir_.string(), descriptors, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    std::vector<std::unique_ptr<rocksdb::ColumnFamilyHandle>> owned(handles.begin(), handles.end());
    bool written = false;
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == family) {
        EXPECT_TRUE(db->Put(rocksdb::WriteOptions(), owned[i].get(), key, value).ok());
        written = true;
      }
    }
    EXPECT_TRUE(written) << "no column family " << family;
    owned.clear();
  }

  fs::path dir_;
};

void fill_job(JobRecord::Builder job, const std::string& id, JobRecord::State state) {
  job.setId(id);
  job.setSpecJson(R"({"kind": "evaluate", "configs": ["KV4"]})");
  job.setState(state);
  job.setCreatedMs(1000);
  job.setUpdatedMs(2000);
}

void fill_task(TaskRecord::Builder task, const std::string& job_id, const std::string& id,
               const std::string& eval_key, TaskRecord::State state) {
  task.setId(id);
  task.setJobId(job_id);
  task.setEvalKey(
      kj::arrayPtr(reinterpret_cast<const capnp::byte*>(eval_key.data()), eval_key.size()));
  build_eval_request(sample_inputs(), task.initRequest());
  task.setState(state);
  task.setAttempts(1);
  task.initErrors(1).set(0, "worker w1 died");
}

void fill_result(EvalResult::Builder result, double kl) {
  result.setKl(kl);
  result.setDeltaNll(0.01);
  result.setPplFp(10.5);
  result.setPplQ(10.7);
  result.setTop1Agreement(0.97);
  result.setAvgBits(4.5);
  result.setBytesPerToken(123.0);
  auto attn = result.initAttnRelErr(2);
  attn.set(0, 0.1);
  attn.set(1, 0.2);
  result.setTokens(256);
  result.setWorkerId("w1");
  result.setSeconds(0.5);
}

// Writes job j1 with tasks t1, t2, job j2 with t3, and the result of t1.
void write_sample(Store& store, const std::string& eval_key) {
  for (const char* id : {"j1", "j2"}) {
    capnp::MallocMessageBuilder m;
    fill_job(m.initRoot<JobRecord>(), id, JobRecord::State::RUNNING);
    store.put_job(m.getRoot<JobRecord>().asReader());
  }
  for (auto [job, task] : {std::pair{"j1", "t1"}, {"j1", "t2"}, {"j2", "t3"}}) {
    capnp::MallocMessageBuilder m;
    fill_task(m.initRoot<TaskRecord>(), job, task, eval_key, TaskRecord::State::LEASED);
    store.put_task(m.getRoot<TaskRecord>().asReader());
  }
  capnp::MallocMessageBuilder r, t;
  fill_result(r.initRoot<EvalResult>(), 0.25);
  fill_task(t.initRoot<TaskRecord>(), "j1", "t1", eval_key, TaskRecord::State::DONE);
  store.put_result(eval_key, r.getRoot<EvalResult>().asReader(),
                   t.getRoot<TaskRecord>().asReader());
}

void expect_sample(const Store& store, const std::string& eval_key) {
  auto job = store.get_job("j1");
  ASSERT_TRUE(job);
  EXPECT_EQ(std::string(job->get().getId().cStr()), "j1");
  EXPECT_EQ(job->get().getState(), JobRecord::State::RUNNING);
  EXPECT_EQ(job->get().getCreatedMs(), 1000);
  EXPECT_EQ(std::string(job->get().getSpecJson().cStr()),
            R"({"kind": "evaluate", "configs": ["KV4"]})");
  EXPECT_EQ(store.list_jobs().size(), 2u);
  EXPECT_FALSE(store.get_job("j3"));

  auto task = store.get_task("j1", "t1");
  ASSERT_TRUE(task);
  EXPECT_EQ(task->get().getState(), TaskRecord::State::DONE);
  EXPECT_EQ(task->get().getAttempts(), 1u);
  ASSERT_EQ(task->get().getErrors().size(), 1u);
  EXPECT_EQ(std::string(task->get().getErrors()[0].cStr()), "worker w1 died");
  EXPECT_EQ(evaluation_key(task->get().getRequest()), eval_key);
  const auto key_bytes = task->get().getEvalKey();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(key_bytes.begin()), key_bytes.size()),
            eval_key);

  const auto tasks = store.list_tasks("j1");
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(std::string(tasks[0].get().getId().cStr()), "t1");
  EXPECT_EQ(std::string(tasks[1].get().getId().cStr()), "t2");
  EXPECT_EQ(tasks[1].get().getState(), TaskRecord::State::LEASED);
  ASSERT_EQ(store.list_tasks("j2").size(), 1u);
  EXPECT_TRUE(store.list_tasks("j").empty());  // a prefix of a job id is not that job

  auto result = store.get_result(eval_key);
  ASSERT_TRUE(result);
  EXPECT_DOUBLE_EQ(result->get().getKl(), 0.25);
  EXPECT_DOUBLE_EQ(result->get().getTop1Agreement(), 0.97);
  ASSERT_EQ(result->get().getAttnRelErr().size(), 2u);
  EXPECT_DOUBLE_EQ(result->get().getAttnRelErr()[1], 0.2);
  EXPECT_EQ(result->get().getTokens(), 256u);
  EXPECT_EQ(std::string(result->get().getWorkerId().cStr()), "w1");
  EXPECT_TRUE(store.has_result(eval_key));
  EXPECT_FALSE(store.has_result("0123456789abcdef0123456789abcdef"));
  EXPECT_FALSE(store.get_result("0123456789abcdef0123456789abcdef"));
  EXPECT_EQ(store.count_results(), 1u);
}

TEST_F(StoreTest, RoundTripsAndSurvivesReopen) {
  const std::string eval_key = key_of(sample_inputs());
  {
    Store store(dir_);
    write_sample(store, eval_key);
    expect_sample(store, eval_key);
    store.put_raw(Store::Area::Registry, "model-fp-1/kivi", "frontier-bytes");
    store.put_raw(Store::Area::Search, "j1/generation", std::string("\0\1\2", 3));
  }
  Store store(dir_);
  expect_sample(store, eval_key);
  EXPECT_EQ(store.get_raw(Store::Area::Registry, "model-fp-1/kivi"), "frontier-bytes");
  EXPECT_EQ(store.get_raw(Store::Area::Search, "j1/generation"), std::string("\0\1\2", 3));
  EXPECT_FALSE(store.get_raw(Store::Area::Search, "model-fp-1/kivi"));
}

TEST_F(StoreTest, PutResultUpdatesTheTaskAtomically) {
  Store store(dir_);
  const std::string eval_key = key_of(sample_inputs());
  capnp::MallocMessageBuilder leased;
  fill_task(leased.initRoot<TaskRecord>(), "j1", "t1", eval_key, TaskRecord::State::LEASED);
  store.put_task(leased.getRoot<TaskRecord>().asReader());
  EXPECT_FALSE(store.has_result(eval_key));
  EXPECT_EQ(store.count_results(), 0u);

  capnp::MallocMessageBuilder r, t;
  fill_result(r.initRoot<EvalResult>(), 0.5);
  fill_task(t.initRoot<TaskRecord>(), "j1", "t1", eval_key, TaskRecord::State::DONE);
  store.put_result(eval_key, r.getRoot<EvalResult>().asReader(),
                   t.getRoot<TaskRecord>().asReader());
  EXPECT_EQ(store.get_task("j1", "t1")->get().getState(), TaskRecord::State::DONE);
  EXPECT_DOUBLE_EQ(store.get_result(eval_key)->get().getKl(), 0.5);
  EXPECT_EQ(store.count_results(), 1u);
}

// Runs `work` on an open Store in a child process, then, with the store still
// open there, `while_open` here, and kills the child with SIGKILL.
template <typename Work, typename WhileOpen>
void with_child_holding_store(const fs::path& dir, Work&& work, WhileOpen&& while_open) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(ready[0]);
    int code = 0;
    try {
      Store store(dir);
      work(store);
      const char ok = 'k';
      if (write(ready[1], &ok, 1) != 1) code = 2;
      pause();  // killed here, with the database open
    } catch (...) {
      code = 3;
    }
    _exit(code);
  }
  close(ready[1]);
  pollfd fd{ready[0], POLLIN, 0};
  const int polled = poll(&fd, 1, 60'000);
  char byte = 0;
  const bool got = polled == 1 && read(ready[0], &byte, 1) == 1;
  close(ready[0]);
  if (got) while_open();
  kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(got) << "the child did not open the store and write";
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

TEST_F(StoreTest, SyncedWritesSurviveSigkill) {
  const std::string eval_key = key_of(sample_inputs());
  with_child_holding_store(
      dir_, [&](Store& store) { write_sample(store, eval_key); }, [] {});
  Store store(dir_);
  expect_sample(store, eval_key);
}

TEST_F(StoreTest, StoreOpenInAnotherProcessIsRefused) {
  with_child_holding_store(
      dir_, [](Store&) {},
      [&] {
        expect_error([&] { Store second(dir_); }, {"in use", dir_.string(), "LOCK"});
      });
  Store after_the_crash(dir_);  // the lock dies with its process
}

TEST_F(StoreTest, SecondStoreOnTheSamePathIsRefused) {
  Store first(dir_);
  expect_error([&] { Store second(dir_); }, {"in use", dir_.string(), "LOCK"});
  // The first is unharmed.
  first.put_raw(Store::Area::Registry, "k", "v");
  EXPECT_EQ(first.get_raw(Store::Area::Registry, "k"), "v");
}

TEST_F(StoreTest, GarbageCurrentFileIsAClearError) {
  { Store store(dir_); }
  std::ofstream(dir_ / "CURRENT", std::ios::trunc) << "this is not a manifest name";
  expect_error([&] { Store store(dir_); }, {dir_.string()});
}

TEST_F(StoreTest, TruncatedManifestIsAClearError) {
  {
    Store store(dir_);
    write_sample(store, key_of(sample_inputs()));
  }
  int manifests = 0;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    if (entry.path().filename().string().rfind("MANIFEST-", 0) == 0) {
      fs::resize_file(entry.path(), 10);
      ++manifests;
    }
  }
  ASSERT_GT(manifests, 0);
  expect_error([&] { Store store(dir_); }, {dir_.string()});
}

TEST_F(StoreTest, PathThatIsAFileIsAClearError) {
  std::ofstream(dir_) << "a file";
  expect_error([&] { Store store(dir_); }, {dir_.string(), "file"});
}

TEST_F(StoreTest, SchemaVersionMismatchNamesBothVersions) {
  { Store store(dir_); }
  raw_write("default", "schema_version", "999");
  expect_error([&] { Store store(dir_); },
               {dir_.string(), "999", std::to_string(Store::schema_version())});
}

TEST_F(StoreTest, GarbageRecordIsAClearError) {
  { Store store(dir_); }
  raw_write("evaluations", "deadbeef", "garbage!");
  raw_write("evaluations", "odd", "xyz");
  raw_write("jobs", "j1", std::string(16, '\xff'));
  Store store(dir_);
  expect_error([&] { store.get_result("deadbeef"); }, {"evaluations", "deadbeef"});
  expect_error([&] { store.get_result("odd"); }, {"evaluations", "odd"});
  expect_error([&] { store.get_job("j1"); }, {"jobs", "j1"});
  expect_error([&] { store.list_jobs(); }, {"jobs", "j1"});
  EXPECT_TRUE(store.has_result("deadbeef"));
}

}  // namespace
}  // namespace kvtune
