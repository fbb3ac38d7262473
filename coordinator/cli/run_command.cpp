// `kvtune run`: one job on this machine, with everything embedded: a
// coordinator (its store in a temporary directory, or --db to keep it and
// resume), local worker processes on loopback, the job, its results.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "commands.h"
#include "coordinator.h"
#include "http.h"
#include "kvtune/common/error.h"
#include "kvtune/common/job_spec.h"
#include "report.h"

namespace kvtune::cli {
namespace {

namespace po = boost::program_options;
using json = nlohmann::json;

// Local worker processes (`kvtune worker`), stopped with SIGTERM at the end,
// and killed by the kernel if this process dies first. Started from the main
// thread (PR_SET_PDEATHSIG fires when the forking thread ends).
class LocalWorkers {
 public:
  LocalWorkers(int count, const std::string& endpoint, const std::filesystem::path& log_dir) {
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe");
    for (int i = 0; i < count; ++i) {
      const std::string id = "local-" + std::to_string(i);
      const std::string log = (log_dir / (id + ".log")).string();
      std::vector<std::string> argv = {self.string(), "worker", "--connect", endpoint,
                                       "--id",        id,       "--threads", "1"};
      const pid_t parent = ::getpid();
      const pid_t pid = ::fork();
      if (pid < 0) throw Error("cannot start a local worker: fork failed");
      if (pid == 0) {
        // The worker ends with this process, however it ends (kill -9
        // included): its coordinator is embedded here, so there is nothing
        // to hand work back to. The signal survives the execs below; the
        // parent check covers a parent that died before prctl.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(1);
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
          ::dup2(fd, 1);
          ::dup2(fd, 2);
        }
        std::vector<char*> args;
        for (std::string& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        ::execv(args[0], args.data());
        ::_exit(127);
      }
      pids_.push_back(pid);
    }
  }
  ~LocalWorkers() {
    for (pid_t pid : pids_) ::kill(pid, SIGTERM);
    for (pid_t pid : pids_) ::waitpid(pid, nullptr, 0);
  }
  LocalWorkers(const LocalWorkers&) = delete;
  LocalWorkers& operator=(const LocalWorkers&) = delete;

  // True when every worker is still running.
  bool alive() const {
    for (pid_t pid : pids_) {
      if (::waitpid(pid, nullptr, WNOHANG) != 0) return false;
    }
    return true;
  }

 private:
  std::vector<pid_t> pids_;
};

// A fresh directory removed at the end, unless the user named one.
class WorkDir {
 public:
  explicit WorkDir(const std::string& given) {
    if (!given.empty()) {
      path_ = given;
      std::filesystem::create_directories(path_);
      return;
    }
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("kvtune-run-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 100000));
    std::filesystem::create_directories(path_);
    owned_ = true;
  }
  ~WorkDir() {
    std::error_code ignored;
    if (owned_) std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  bool owned_ = false;
};

// --free-run N,P,M (or 0) as the spec's free_run.
json free_run_spec(const std::string& text) {
  if (text == "0") return {{"prompts", 0}};
  const JobSpec::FreeRun f = parse_free_run(text, "--free-run");
  return {{"prompts", f.prompts}, {"prompt_tokens", f.prompt_tokens}, {"new_tokens", f.new_tokens}};
}

// The report folder of a finished search (--report DIR, else
// ./kvtune-report/ID) and one line saying where it is; with --json on
// stderr, so that stdout holds only the job's JSON.
void write_run_report(const json& job, const std::string& id, const std::string& dir,
                      bool json_output) {
  if (!job.contains("frontier")) {
    if (!dir.empty()) std::cerr << "kvtune run: no report: only a search has a frontier\n";
    return;
  }
  const std::filesystem::path out =
      dir.empty() ? report::default_dir(id) : std::filesystem::path(dir);
  report::write_report(job, out);
  (json_output ? std::cerr : std::cout) << "report: " << (out / "index.html").string() << "\n";
}

}  // namespace

int run_command(const std::vector<std::string>& args) {
  std::string spec_file, model = "builtin:demo", data = "sample:8:128:0", kind,
                         scheme = "per-token-asym", zero_point = "int", read = "fresh", db,
                         cache_target = "kvtune", kv_scales = "one", rotate = "auto",
                         validation_data, free_run;
  std::vector<std::string> configs, candidates, config_files;
  int seq_len = 256, group_size = 32, residual = 0, max_evaluations = 200, seed = 0,
      prompt_tokens = 0;
  double max_bits = 16;
  int workers = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  bool json_output = false, verbose = false, no_report = false;
  std::string report_dir;
  po::options_description opts(
      "kvtune run [options]: one job on this machine, with an embedded coordinator and store and "
      "local worker processes");
  opts.add_options()("help,h", "show this help")(
      "spec", po::value(&spec_file), "a job spec (JSON, as for kvtune submit); else the options:")(
      "kind", po::value(&kind),
      "search (the default), profile or evaluate (the default when configs are given)")(
      "model", po::value(&model)->default_value(model),
      "llama2.c .bin, Hugging Face directory, builtin:demo or builtin:demo-hd64")(
      "data", po::value(&data)->default_value(data), "calibration data")(
      "seq-len", po::value(&seq_len)->default_value(seq_len), "sequence length for token files")(
      "target", po::value(&cache_target)->default_value(cache_target),
      "kvtune (its idealized caches), kvtuner (KVTuner's own cache), or an engine: vllm, "
      "sglang, trtllm, llama.cpp (released), vllm-per-layer-pr, trtllm-per-layer-pr, "
      "ik_llama.cpp")("scheme", po::value(&scheme)->default_value(scheme),
                      "per-token-asym or kivi; target kvtuner: per-token-asym or per-channel-asym")(
      "group-size", po::value(&group_size)->default_value(group_size),
      "kivi group size G (kvtuner: q_group_size, -1 head_dim; default its setting's)")(
      "residual", po::value(&residual)->default_value(residual),
      "kivi window R (0: R = G); kvtuner: residual_length (default its setting's)")(
      "zero-point", po::value(&zero_point)->default_value(zero_point), "int or float")(
      "kv-scales", po::value(&kv_scales)->default_value(kv_scales),
      "engine dtypes' per-layer k/v scales: one, calculated (vLLM --calculate-kv-scales) or "
      "calibrated (a calibrated checkpoint)")(
      "rotate", po::value(&rotate)->default_value(rotate),
      "llama.cpp types: the Hadamard rotation, auto (the engine's rule: llama.cpp's; off for "
      "ik_llama.cpp, where it is opt-in), on or off")(
      "prompt-tokens", po::value(&prompt_tokens)->default_value(prompt_tokens),
      "T0: each sequence's first T0 tokens are a prompt; metrics over the continuation")(
      "read", po::value(&read)->default_value(read),
      "read rule: fresh, cache, fresh-prefill, or prefill=fresh|cache,current=fresh|cache")(
      "config", po::value(&configs)->composing(), "a config to evaluate (repeatable)")(
      "config-file", po::value(&config_files)->composing(),
      "a config to evaluate from a KVTuner YAML preset or JSON list (repeatable)")(
      "candidate", po::value(&candidates)->composing(),
      "a pair to profile or search (repeatable; default the nine of {8,4,2}^2)")(
      "max-bits", po::value(&max_bits)->default_value(max_bits), "search: average bits budget")(
      "max-evaluations", po::value(&max_evaluations)->default_value(max_evaluations),
      "search: evaluation budget, the profile included")(
      "seed", po::value(&seed)->default_value(seed), "search: random seed")(
      "validation-data", po::value(&validation_data),
      "search: data the frontier is checked on (default: the calibration sample's next seed; "
      "none: no validation)")(
      "free-run", po::value(&free_run),
      "search validation: N,P,M = N prompts of P tokens, M new tokens each (default 4,16,32; "
      "0: none)")("workers", po::value(&workers)->default_value(workers), "local worker processes")(
      "db", po::value(&db),
      "keep the store in this directory (run again to resume); default: a temporary one")(
      "report", po::value(&report_dir),
      "search: write the report folder (plots, tables, exports, index.html) here; default "
      "./kvtune-report/JOB_ID")("no-report", po::bool_switch(&no_report), "write no report")(
      "json", po::bool_switch(&json_output), "print the job's JSON")(
      "verbose", po::bool_switch(&verbose), "show the coordinator's log");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (workers < 1) throw Error("--workers " + std::to_string(workers) + " must be at least 1");
  if (kind.empty()) kind = configs.empty() && config_files.empty() ? "search" : "evaluate";

  json spec;
  if (!spec_file.empty()) {
    std::ifstream in(spec_file);
    if (!in) throw Error("cannot read job spec " + spec_file);
    std::stringstream text;
    text << in.rdbuf();
    try {
      spec = json::parse(text.str());
    } catch (const json::parse_error& e) {
      throw Error("job spec " + spec_file + " is not valid JSON: " + e.what());
    }
  } else {
    spec = {{"kind", kind},
            {"model", model},
            {"data", data},
            {"seq_len", seq_len},
            {"target", cache_target},
            {"scheme", {{"name", scheme}, {"zero_point", zero_point}}},
            {"prompt_tokens", prompt_tokens}};
    // An engine target reads as its engine does unless --read says otherwise.
    if (!vm["read"].defaulted()) spec["read"] = read;
    if (kv_scales != "one") spec["kv_scales"] = kv_scales;
    if (rotate != "auto") spec["rotate"] = rotate;
    if (cache_target == "kvtuner") {  // KVTuner's setting unless given
      if (!vm["group-size"].defaulted()) spec["scheme"]["group_size"] = group_size;
      if (!vm["residual"].defaulted()) spec["scheme"]["residual"] = residual;
    } else {
      spec["scheme"]["group_size"] = group_size;
      spec["scheme"]["residual"] = residual == 0 ? group_size : residual;
    }
    if (!configs.empty()) spec["configs"] = configs;
    if (kind == "search") {
      spec["search"] = {
          {"max_bits", max_bits}, {"max_evaluations", max_evaluations}, {"seed", seed}};
      if (!candidates.empty()) spec["search"]["candidates"] = candidates;
      if (!validation_data.empty()) spec["validation_data"] = validation_data;
      if (!free_run.empty()) spec["free_run"] = free_run_spec(free_run);
    } else if (!candidates.empty()) {
      spec["candidates"] = candidates;
    }
  }
  absolutize_path(spec, "model");
  absolutize_path(spec, "data");
  absolutize_path(spec, "validation_data");
  add_config_files(spec, config_files);
  try {
    JobSpec::parse(spec);
  } catch (const JobSpecError& e) {
    throw Error((spec_file.empty() ? std::string("the options give an ") : spec_file + ": ") +
                e.what());
  }

  const std::atomic<bool>& interrupted = stop_on_signals();

  const WorkDir dir(db);
  CoordinatorOptions options;
  options.db = dir.path() / "store";
  options.api = "127.0.0.1:0";
  options.bind = "tcp://127.0.0.1:0";
  options.log = verbose;
  Coordinator coordinator(options);
  // The coordinator serves on its own thread; what it throws (its store
  // cannot write: a full disk) ends the job here, on the main thread, after
  // the workers are stopped (an exception escaping a std::thread would
  // abort the process).
  std::atomic<bool> stop{false}, served{false};
  std::exception_ptr serving_error;
  std::thread serving([&] {
    try {
      coordinator.run(stop);
    } catch (...) {
      serving_error = std::current_exception();
    }
    served = true;  // publishes serving_error
  });
  struct StopServing {
    std::atomic<bool>& stop;
    std::thread& serving;
    ~StopServing() {
      stop = true;
      serving.join();
    }
  } stop_serving{stop, serving};
  // Rethrows the coordinator's error once it stopped, waiting up to `grace`
  // for it to (an API call that failed may be the first sign of it).
  const auto rethrow_if_stopped = [&](std::chrono::milliseconds grace) {
    const auto deadline = std::chrono::steady_clock::now() + grace;
    while (!served.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!served.load()) return;
    if (serving_error) std::rethrow_exception(serving_error);
    throw Error("the embedded coordinator stopped");
  };
  // One API call; when it fails because the coordinator stopped, the
  // coordinator's error instead.
  const auto call = [&](const std::string& method, const std::string& target,
                        const std::string& body = {}) {
    try {
      return http::request(coordinator.api_address(), method, target, body);
    } catch (const Error&) {
      rethrow_if_stopped(std::chrono::seconds(5));
      throw;
    }
  };

  const LocalWorkers local(workers, coordinator.worker_endpoint(), dir.path());
  // Run again with the same --db and arguments: the store already holds this
  // job, which the coordinator resumes where it stopped.
  std::string id;
  if (!db.empty()) {
    const json wanted = JobSpec::parse(spec).to_json();
    const json listed = json::parse(call("GET", "/v1/jobs").body);
    for (const json& j : listed["jobs"]) {
      const std::string state = j.value("state", "");
      if (state == "failed" || state == "cancelled") continue;
      const std::string candidate = j.value("id", "");
      const json job = json::parse(call("GET", "/v1/jobs/" + candidate).body);
      if (job.value("spec", json()) == wanted) id = candidate;
    }
  }
  const bool resumed = !id.empty();
  if (!resumed) {
    const http::ClientResponse created = call("POST", "/v1/jobs", spec.dump());
    if (created.status != 201) {
      rethrow_if_stopped(std::chrono::seconds(5));
      // The API names each bad field; say them as lines.
      std::string why = created.body;
      const json body = json::parse(created.body, nullptr, false);
      if (body.is_object() && body.contains("fields")) {
        why.clear();
        for (const json& f : body["fields"]) {
          why += "\n  " + f.value("field", "") + ": " + f.value("message", "");
        }
      }
      throw Error("the job was refused:" + (why.starts_with("\n") ? why : " " + why));
    }
    id = json::parse(created.body)["id"];
  }
  std::cerr << "kvtune run: " << (resumed ? "resuming job " : "job ") << id << " on " << workers
            << " local worker(s), store " << options.db.string()
            << (db.empty() ? " (temporary)" : "") << "\n";

  json job;
  ProgressLine progress(::isatty(2) != 0);
  while (true) {
    rethrow_if_stopped(std::chrono::milliseconds(0));
    job = json::parse(call("GET", "/v1/jobs/" + id + "?view=summary").body);
    if (job_finished(job.value("state", ""))) break;
    if (interrupted.load()) {
      progress.finish();
      std::cerr << "kvtune run: interrupted; "
                << (db.empty() ? "nothing is kept (give --db DIR to make a run resumable)"
                               : "job " + id + " is kept in " + db +
                                     ": run the same command again to resume it")
                << "\n";
      return 130;
    }
    if (!local.alive()) {
      throw Error("a local worker exited; its log is in " + dir.path().string() +
                  " (use --db DIR to keep it)");
    }
    progress.update(job);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  progress.finish(job);
  job = json::parse(call("GET", "/v1/jobs/" + id).body);
  if (json_output) {
    std::cout << job.dump() << "\n";
  } else {
    print_job(job);
  }
  const bool done = job.value("state", "") == "done";
  if (done && !no_report) write_run_report(job, id, report_dir, json_output);
  return done ? 0 : 1;
}

}  // namespace kvtune::cli
