// The cluster's commands: `kvtune coordinator` (the server) and the API
// clients `submit`, `jobs`, `status`, `cancel`, `report`, `workers`.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "commands.h"
#include "coordinator.h"
#include "http.h"
#include "kvtune/common/config_file.h"
#include "kvtune/common/error.h"
#include "kvtune/common/job_spec.h"
#include "report.h"

namespace kvtune::cli {
namespace {

namespace po = boost::program_options;
using json = nlohmann::json;

std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) {
  g_stop.store(true);
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.starts_with("127.");
}

// Options every API client takes.
struct ClientOptions {
  std::string api = env_or("KVTUNE_API", "127.0.0.1:8470");
  std::string token = env_or("KVTUNE_API_TOKEN", "");
  bool json_output = false;

  void add_to(po::options_description& opts) {
    opts.add_options()("api", po::value(&api)->default_value(api),
                       "coordinator API HOST:PORT (env KVTUNE_API)")(
        "token", po::value(&token), "bearer token (env KVTUNE_API_TOKEN)")(
        "json", po::bool_switch(&json_output), "print the API's JSON");
  }

  // The response body as JSON; a non-2xx status is an error with the API's message.
  json call(const std::string& method, const std::string& target,
            const std::string& body = {}) const {
    const http::ClientResponse r = http::request(api, method, target, body, token);
    json parsed;
    try {
      parsed = json::parse(r.body);
    } catch (const json::parse_error&) {
      throw Error("the coordinator at " + api + " answered " + std::to_string(r.status) +
                  " with a body that is not JSON: " + r.body.substr(0, 200));
    }
    if (r.status < 200 || r.status >= 300) {
      std::string message = parsed.value("error", r.body);
      if (parsed.contains("fields")) {
        for (const auto& f : parsed["fields"]) {
          message +=
              "\n  " + f.value("field", std::string()) + ": " + f.value("message", std::string());
        }
      }
      throw Error("HTTP " + std::to_string(r.status) + ": " + message);
    }
    return parsed;
  }
};

}  // namespace

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

bool job_finished(const std::string& state) {
  return state == "done" || state == "failed" || state == "cancelled";
}

int coordinator_command(const std::vector<std::string>& args) {
  CoordinatorOptions o;
  o.db = "kvtune.db";
  o.api_token = env_or("KVTUNE_API_TOKEN", "");
  std::string db = o.db.string(), secret, authorized;
  double lease_s = 600, silence_s = 10;
  int attempts = 3;
  po::options_description opts("kvtune coordinator [options]");
  opts.add_options()("help,h", "show this help")("db", po::value(&db)->default_value(db),
                                                 "RocksDB directory (created when missing)")(
      "api", po::value(&o.api)->default_value(o.api), "HTTP API address HOST:PORT")(
      "bind", po::value(&o.bind)->default_value(o.bind), "ZeroMQ endpoint for workers")(
      "api-token", po::value(&o.api_token), "bearer token the API requires (env KVTUNE_API_TOKEN)")(
      "curve-secret", po::value(&secret),
      "CURVE key pair file of the coordinator (kvtune keygen): workers must use CURVE")(
      "curve-authorized", po::value(&authorized),
      "file of authorized worker public keys, one per line (with --curve-secret)")(
      "lease-seconds", po::value(&lease_s)->default_value(lease_s),
      "longest time one evaluation may take before it is re-leased")(
      "heartbeat-timeout-seconds", po::value(&silence_s)->default_value(silence_s),
      "a worker silent this long is presumed dead and its lease re-queued")(
      "max-attempts", po::value(&attempts)->default_value(attempts),
      "workers an evaluation may fail on before it fails");
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  if (lease_s <= 0 || silence_s <= 0)
    throw Error("--lease-seconds and --heartbeat-timeout-seconds must be positive");
  o.db = db;
  o.curve_secret_file = secret;
  o.curve_authorized = authorized;
  if (!secret.empty() && authorized.empty()) {
    throw Error("--curve-secret needs --curve-authorized (the workers' public keys)");
  }
  o.scheduler.lease = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(lease_s));
  o.scheduler.heartbeat_timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(silence_s));
  o.scheduler.max_attempts = attempts;
  if (!is_loopback(http::parse_host_port(o.api).first) && o.api_token.empty()) {
    std::cerr << "kvtune coordinator: warning: the API listens on " << o.api
              << " without --api-token: anyone who can reach it can submit and cancel jobs\n";
  }

  const std::atomic<bool>& stop = stop_on_signals();

  Coordinator coordinator(o);
  std::cout << "kvtune coordinator: API http://" << coordinator.api_address() << ", workers "
            << coordinator.worker_endpoint() << std::endl;
  coordinator.run(stop);
  return 0;
}

// Polls the job's summary (no results) with a progress line until it finishes.
static void watch_job(const ClientOptions& client, const std::string& id) {
  ProgressLine progress(::isatty(2) != 0);
  json summary;
  while (true) {
    summary = client.call("GET", "/v1/jobs/" + id + "?view=summary");
    if (job_finished(summary.value("state", ""))) break;
    progress.update(summary);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  progress.finish(summary);
}

int submit_command(const std::vector<std::string>& args) {
  ClientOptions client;
  std::string file;
  std::vector<std::string> config_files;
  bool wait = false;
  po::options_description opts(
      "kvtune submit FILE [options]   (FILE: a JSON job spec, - for stdin)");
  opts.add_options()("help,h", "show this help")("file", po::value(&file)->required(), "job spec")(
      "wait", po::bool_switch(&wait), "wait for the job to finish and print its results")(
      "config-file", po::value(&config_files)->composing(),
      "add a config to an evaluate job from a KVTuner YAML preset or JSON list (repeatable)");
  client.add_to(opts);
  po::positional_options_description positional;
  positional.add("file", 1);
  po::variables_map vm;
  if (!parse_options(args, opts, vm, &positional)) return 0;

  std::stringstream text;
  if (file == "-") {
    text << std::cin.rdbuf();
  } else {
    std::ifstream in(file);
    if (!in) throw Error("cannot read job spec " + file);
    text << in.rdbuf();
  }
  json spec;
  try {
    spec = json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw Error("job spec " + file + " is not valid JSON: " + e.what());
  }
  absolutize_path(spec, "model");
  absolutize_path(spec, "data");
  add_config_files(spec, config_files);
  try {
    JobSpec::parse(spec);  // the same checks the coordinator makes, before the round trip
  } catch (const JobSpecError& e) {
    throw Error(file + ": " + e.what());
  }
  const json created = client.call("POST", "/v1/jobs", spec.dump());
  const std::string id = created.value("id", "");
  if (!wait) {
    std::cout << (client.json_output ? created.dump() : id) << "\n";
    return 0;
  }
  // Polls the summary (no results), then reads the whole job once.
  watch_job(client, id);
  const json job = client.call("GET", "/v1/jobs/" + id);
  if (client.json_output) {
    std::cout << job.dump() << "\n";
  } else {
    print_job(job);
  }
  return job.value("state", "") == "done" ? 0 : 1;
}

int jobs_command(const std::vector<std::string>& args) {
  ClientOptions client;
  po::options_description opts("kvtune jobs [options]");
  opts.add_options()("help,h", "show this help");
  client.add_to(opts);
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  const json jobs = client.call("GET", "/v1/jobs");
  if (client.json_output) {
    std::cout << jobs.dump() << "\n";
    return 0;
  }
  std::printf("%-24s %-9s %-10s %-11s %s\n", "id", "kind", "state", "progress", "model");
  for (const auto& j : jobs["jobs"]) {
    const std::string progress = std::to_string(j["progress"].value("done", 0)) + "/" +
                                 std::to_string(j["progress"].value("total", 0));
    std::printf("%-24s %-9s %-10s %-11s %s\n", j.value("id", "").c_str(),
                j.value("kind", "").c_str(), j.value("state", "").c_str(), progress.c_str(),
                j.value("model", "").c_str());
  }
  return 0;
}

namespace {

// The job id argument and client options of `status`, `cancel` and
// `report`; false when --help was printed.
bool parse_job_command(const std::vector<std::string>& args, const char* usage,
                       ClientOptions& client, std::string& id, bool* watch = nullptr,
                       std::string* out = nullptr) {
  po::options_description opts(usage);
  opts.add_options()("help,h", "show this help")("id", po::value(&id)->required(), "job id");
  if (watch != nullptr) {
    opts.add_options()("watch", po::bool_switch(watch),
                       "show the job's progress until it finishes, then its results");
  }
  if (out != nullptr) {
    opts.add_options()("out", po::value(out), "report folder (default ./kvtune-report/JOB_ID)");
  }
  client.add_to(opts);
  po::positional_options_description positional;
  positional.add("id", 1);
  po::variables_map vm;
  return parse_options(args, opts, vm, &positional);
}

}  // namespace

int status_command(const std::vector<std::string>& args) {
  ClientOptions client;
  std::string id;
  bool watch = false;
  if (!parse_job_command(args, "kvtune status JOB_ID [options]", client, id, &watch)) return 0;
  if (watch) watch_job(client, id);
  const json job = client.call("GET", "/v1/jobs/" + id);
  if (client.json_output) {
    std::cout << job.dump() << "\n";
  } else {
    print_job(job);
  }
  return 0;
}

int cancel_command(const std::vector<std::string>& args) {
  ClientOptions client;
  std::string id;
  if (!parse_job_command(args, "kvtune cancel JOB_ID [options]", client, id)) return 0;
  const json r = client.call("POST", "/v1/jobs/" + id + "/cancel");
  std::cout << (client.json_output ? r.dump() : id + " cancelled") << "\n";
  return 0;
}

int report_command(const std::vector<std::string>& args) {
  ClientOptions client;
  std::string id, out;
  if (!parse_job_command(args, "kvtune report JOB_ID [options]", client, id, {}, &out)) return 0;
  const std::filesystem::path dir =
      out.empty() ? report::default_dir(id) : std::filesystem::path(out);
  report::write_report(client.call("GET", "/v1/jobs/" + id), dir);  // refuses unfinished jobs
  std::cout << "report: " << (dir / "index.html").string() << "\n";
  return 0;
}

int registry_command(const std::vector<std::string>& args) {
  ClientOptions client;
  std::string action, id, format;
  double max_bits = 0, max_kl = 0;
  po::options_description opts(
      "kvtune registry list | show ID | best ID (--max-bits B | --max-kl E) [--format F]\n"
      "formats: kvtuner, trtllm, sglang, hf_quant_config (see README: export formats)");
  opts.add_options()("help,h", "show this help")("action", po::value(&action)->required(),
                                                 "list, show or best")(
      "id", po::value(&id), "registry entry id (from list)")(
      "max-bits", po::value(&max_bits), "average bits budget")("max-kl", po::value(&max_kl),
                                                               "KL budget (nats/token)")(
      "format", po::value(&format), "print the config in an engine's format");
  client.add_to(opts);
  po::positional_options_description positional;
  positional.add("action", 1).add("id", 1);
  po::variables_map vm;
  if (!parse_options(args, opts, vm, &positional)) return 0;
  if (action == "list") {
    const json entries = client.call("GET", "/v1/registry");
    if (client.json_output) {
      std::cout << entries.dump() << "\n";
      return 0;
    }
    std::printf("%-16s %-20s %-26s %-22s %7s\n", "id", "model", "scheme", "data", "configs");
    for (const auto& e : entries["entries"]) {
      std::printf("%-16s %-20s %-26s %-22s %7d\n", e.value("id", "").c_str(),
                  e.value("model", "").c_str(), e.value("scheme", "").c_str(),
                  e.value("data", "").c_str(), e.value("configs", 0));
    }
    return 0;
  }
  if (id.empty()) throw Error("registry " + action + " needs an entry id (kvtune registry list)");
  if (action == "show") {
    const json entry = client.call("GET", "/v1/registry/" + id);
    if (client.json_output) {
      std::cout << entry.dump() << "\n";
      return 0;
    }
    std::cout << "model   " << entry.value("model", "") << " (" << entry.value("model_spec", "")
              << ")\nscheme  " << entry.value("scheme", "") << "\ndata    "
              << entry.value("data", "") << "\n\n";
    if (entry.contains("validation_data")) {
      std::cout << "validation data " << entry.value("validation_data", "") << "\n\n";
    }
    std::printf("%8s %12s %12s %8s  %s\n", "avg bits", "KL", "val KL", "free-run", "layers");
    for (const auto& c : entry["frontier"]) {
      std::string val = "-", agree = "-";
      if (c.contains("validation")) {
        const json& v = c["validation"];
        val = fixed(v.value("kl", 0.0), 6) + (v.value("rank_flip", false) ? "*" : "");
        if (v.contains("free_run")) agree = fixed(v["free_run"].value("agreement", 0.0), 3);
      }
      std::printf("%8.3f %12.6f %12s %8s  %s\n", c.value("avg_bits", 0.0), c.value("kl", 0.0),
                  val.c_str(), agree.c_str(), c.value("layers", "").c_str());
    }
    return 0;
  }
  if (action != "best") throw Error("registry: unknown action '" + action + "' (list, show, best)");
  std::string query;
  if (vm.count("max-bits")) query += "max_bits=" + std::to_string(max_bits);
  if (vm.count("max-kl"))
    query += std::string(query.empty() ? "" : "&") + "max_kl=" + std::to_string(max_kl);
  if (query.empty()) throw Error("registry best needs --max-bits and/or --max-kl");
  if (!format.empty()) {
    const http::ClientResponse r = http::request(
        client.api, "GET", "/v1/registry/" + id + "/best?" + query + "&format=" + format, {},
        client.token);
    if (r.status != 200) {
      const json body = json::parse(r.body, nullptr, false);  // discarded when not JSON
      throw Error("HTTP " + std::to_string(r.status) + ": " +
                  (body.is_object() ? body.value("error", r.body) : r.body));
    }
    std::cout << r.body;
    if (!r.body.empty() && r.body.back() != '\n') std::cout << "\n";
    return 0;
  }
  const json best = client.call("GET", "/v1/registry/" + id + "/best?" + query);
  if (client.json_output) {
    std::cout << best.dump() << "\n";
  } else {
    std::printf("%s\navg bits %.3f, KL %.6f\n", best.value("layers", "").c_str(),
                best.value("avg_bits", 0.0), best.value("kl", 0.0));
    if (best.contains("deploy") && best["deploy"].contains("text")) {
      const json& d = best["deploy"];
      if (!d.value("released", false)) std::cout << "needs " << d.value("needs", "") << "\n";
      std::cout << d["text"].get<std::string>();
    }
  }
  return 0;
}

int workers_command(const std::vector<std::string>& args) {
  ClientOptions client;
  po::options_description opts("kvtune workers [options]");
  opts.add_options()("help,h", "show this help");
  client.add_to(opts);
  po::variables_map vm;
  if (!parse_options(args, opts, vm)) return 0;
  const json workers = client.call("GET", "/v1/workers");
  if (client.json_output) {
    std::cout << workers.dump() << "\n";
    return 0;
  }
  std::printf("%-28s %-8s %7s %7s %8s %s\n", "id", "device", "threads", "leases", "results",
              "loaded models");
  for (const auto& w : workers["workers"]) {
    std::string models;
    for (const auto& m : w.value("loaded_models", json::array())) {
      models += (models.empty() ? "" : ", ") + m.get<std::string>();
    }
    std::printf("%-28s %-8s %7d %7d %8d %s\n", w.value("id", "").c_str(),
                w.value("device", "?").c_str(), w.value("threads", 0), w.value("leases", 0),
                w.value("results", 0), models.c_str());
  }
  return 0;
}

void add_config_files(nlohmann::json& spec, const std::vector<std::string>& files) {
  for (const std::string& file : files) {
    if (!spec.contains("configs")) spec["configs"] = json::array();
    spec["configs"].push_back(read_layer_config_file(file));
  }
}

// A path the spec names, made absolute when it exists here (workers resolve
// relative paths in their own working directory, which is rarely the same).
void absolutize_path(nlohmann::json& spec, const char* field) {
  if (!spec.contains(field) || !spec[field].is_string()) return;
  const std::string value = spec[field].get<std::string>();
  if (value.empty() || value.starts_with("builtin:") || value.starts_with("sample:")) return;
  std::error_code ec;
  if (std::filesystem::path(value).is_relative() && std::filesystem::exists(value, ec)) {
    spec[field] = std::filesystem::absolute(value).lexically_normal().string();
  }
}

bool parse_options(const std::vector<std::string>& args,
                   const boost::program_options::options_description& opts,
                   boost::program_options::variables_map& vm,
                   const boost::program_options::positional_options_description* positional) {
  po::command_line_parser parser(args);
  parser.options(opts);
  if (positional != nullptr) parser.positional(*positional);
  po::store(parser.run(), vm);
  if (vm.count("help")) {
    std::cout << opts;
    return false;
  }
  po::notify(vm);
  return true;
}

const std::atomic<bool>& stop_on_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  return g_stop;
}

}  // namespace kvtune::cli
