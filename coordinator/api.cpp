// HTTP routes, job/worker JSON and the metrics text (api.h).
#include "api.h"

#include <algorithm>
#include <optional>
#include <sstream>
#include <utility>

#include "exports.h"
#include "kvtune/common/engine_target.h"
#include "kvtune/common/error.h"
#include "kvtune/schemas/transport.h"
#include "registry.h"
#include "search_driver.h"
#include "web.h"

namespace kvtune::coord {
namespace {

// Strings that are not UTF-8 (none should get here: the server refuses such
// targets and job specs are validated) are dumped with U+FFFD, not thrown.
http::Response json_response(int status, const json& body) {
  return {status, body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n",
          "application/json"};
}
// `message` may echo client input: bytes that are not UTF-8 become \xNN.
http::Response error_response(int status, const std::string& message) {
  return json_response(status, {{"error", http::escape_utf8(message)}});
}

// "a=1&b=2" -> {a: 1, b: 2}; items without '=' are ignored.
std::map<std::string, std::string> query_params(const std::string& query) {
  std::map<std::string, std::string> params;
  for (std::size_t start = 0; start < query.size();) {
    const std::size_t amp = std::min(query.find('&', start), query.size());
    const std::string item = query.substr(start, amp - start);
    const std::size_t eq = item.find('=');
    if (eq != std::string::npos) params[item.substr(0, eq)] = item.substr(eq + 1);
    start = amp + 1;
  }
  return params;
}

}  // namespace

http::Response Api::handle(const http::Request& r) {
  const std::string& p = r.path;
  if (p == "/healthz") return json_response(200, {{"status", "ok"}});
  if (const auto asset = web::web_asset(p)) {  // the web page: no token needed (http.cpp)
    if (r.method != "GET" && r.method != "HEAD") return error_response(405, "use GET " + p);
    return {200, std::string(asset->body), std::string(asset->content_type)};
  }
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
    // /v1/jobs/{id}/cancel, or a view of the job for the web page (web.h).
    std::string action;
    if (const auto slash = id.find('/'); slash != std::string::npos) {
      action = id.substr(slash + 1);
      id.resize(slash);
    }
    Job* job = jobs_.find(id);
    if (job == nullptr) return error_response(404, "no job '" + id + "'");
    if (action == "cancel") {
      if (r.method != "POST") return error_response(405, "use POST " + p);
      return cancel_job(*job);
    }
    if (!action.empty()) {
      if (r.method != "GET") return error_response(405, "use GET " + p);
      if (auto view = web::job_view(action, job_json(*job, true))) return std::move(*view);
      return error_response(404, "no such endpoint: " + r.method + " " + p);
    }
    if (r.method != "GET") return error_response(405, "use GET " + p);
    // ?view=summary: state and progress without the results, for pollers.
    const auto params = query_params(r.query);
    const auto view = params.find("view");
    if (view != params.end() && view->second != "full" && view->second != "summary") {
      return error_response(400, "view must be full or summary, not '" + view->second + "'");
    }
    return json_response(200, job_json(*job, view == params.end() || view->second == "full"));
  }
  return error_response(404, "no such endpoint: " + r.method + " " + p);
}

http::Response Api::post_job(const std::string& body) {
  JobSpec spec;
  try {
    spec = JobSpec::parse_text(body);
  } catch (const JobSpecError& e) {
    json fields = json::array();
    for (const FieldError& f : e.fields()) {
      fields.push_back(
          {{"field", http::escape_utf8(f.field)}, {"message", http::escape_utf8(f.message)}});
    }
    log("refused a job spec: " + http::escape_utf8(e.what()));
    return json_response(400, {{"error", "invalid job spec"}, {"fields", fields}});
  }
  if (spec.kind == JobSpec::Kind::Search) {
    try {
      search::check_satisfiable(search_options(spec), spec.scheme);
    } catch (const Error& e) {
      std::string message = e.what();
      if (message.starts_with("search: ")) message.erase(0, 8);  // the field says it
      return json_response(
          400, {{"error", "invalid job spec"},
                {"fields", {{{"field", "search"}, {"message", http::escape_utf8(message)}}}}});
    }
  }
  const std::string id = jobs_.submit(spec);
  if (ledger_.failed()) return error_response(503, "not stored: " + ledger_.failure());
  return json_response(201, {{"id", id}, {"state", "queued"}});
}

namespace {

// Where a config deploys: the model as the job named it, the source of its
// k/v scales, the rotation of llama.cpp's types, and the scales its
// evaluation applied (`metrics`).
exports::DeployOptions deploy_options(std::string model, KvScales kv_scales, Rotation rotation,
                                      const json& metrics) {
  exports::DeployOptions o;
  o.model = std::move(model);
  o.kv_scales = kv_scales;
  o.rotation = rotation;
  if (metrics.contains("k_scales") && metrics.contains("v_scales")) {
    o.k_scales = metrics["k_scales"].get<std::vector<float>>();
    o.v_scales = metrics["v_scales"].get<std::vector<float>>();
  }
  return o;
}

// How a config of an engine target deploys: the export's format and text,
// and whether a released engine runs it (else the pull request it needs).
json deploy_json(const EngineTarget& target, const std::vector<PrecisionPair>& layers,
                 const exports::DeployOptions& options) {
  json out = {{"format", target.deploy}, {"released", target.needs.empty()}};
  if (!target.needs.empty()) out["needs"] = target.needs;
  try {
    out["text"] = exports::export_config(target.deploy, layers, options);
  } catch (const Error& e) {
    out["error"] = e.what();
  }
  return out;
}

}  // namespace

// GET /v1/registry, /v1/registry/{id}, /v1/registry/{id}/best?max_bits=B&max_kl=E&format=F
http::Response Api::registry_request(const std::string& path, const std::string& query) {
  const auto entries = ledger_.store().list_raw(Store::Area::Registry);
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

  std::map<std::string, std::string> params = query_params(query);
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
  const auto layers = parse_layer_config(chosen->layers, entry["layers"].get<int>());
  const exports::DeployOptions deploy =
      deploy_options(entry.value("model_spec", entry.value("model", std::string("MODEL"))),
                     parse_kv_scales(entry.value("kv_scales", "one")),
                     parse_rotation(entry.value("rotate", "auto")), chosen->metrics);
  if (params.contains("format")) {
    try {
      return {200, exports::export_config(params["format"], layers, deploy), "text/plain"};
    } catch (const Error& e) {
      return error_response(400, e.what());
    }
  }
  json out = chosen->to_json();
  if (const EngineTarget* target = find_engine_target(entry.value("target", ""))) {
    out["deploy"] = deploy_json(*target, layers, deploy);
  }
  return json_response(200, out);
}

http::Response Api::cancel_job(Job& job) {
  if (!jobs_.cancel(job)) {
    return error_response(409, "job " + job.id + " is already " + state_name(job.state));
  }
  if (ledger_.failed()) return error_response(503, "not stored: " + ledger_.failure());
  return json_response(200, {{"id", job.id}, {"state", "cancelled"}});
}

json Api::progress_json(const Job& job) const {
  std::size_t total = std::max(job.tasks.size(), job.planned);
  if (!job.model && job.spec.kind == JobSpec::Kind::Evaluate) total = job.spec.configs.size();
  if (job.search && active(job.state)) {
    total = std::max(total, static_cast<std::size_t>(job.search->options().max_evaluations));
  }
  json out = {{"done", job.done}, {"failed", job.failed}, {"total", total}};
  // What the job is doing now, for a progress line.
  if (!active(job.state)) {
    out["phase"] = state_name(job.state);
  } else if (!job.model) {
    out["phase"] = "describe";
  } else if (!job.search) {
    out["phase"] = job.spec.kind_name();
  } else if (job.validating) {
    out["phase"] = "validation";
  } else if (job.evaluating_baselines) {
    out["phase"] = "baselines";
  } else if (job.search->profiling()) {
    // (a first-last profile measures each role apart: fewer pairs than candidates)
    const auto candidates = std::max<std::size_t>(1, job.search->profile_candidates().size());
    const int layers = job.search->num_layers();
    const int layer = std::min(layers, static_cast<int>(job.done / candidates) + 1);
    out["phase"] = "profile layer " + std::to_string(layer) + "/" + std::to_string(layers);
  } else {
    out["phase"] = "generation " + std::to_string(job.search->generation() + 1);
  }
  if (job.search) {
    // The lowest-KL config measured so far within the budget (the frontier's
    // last point under max_bits: it is ordered by bits, KL falling).
    const double budget = job.search->options().max_bits;
    std::optional<search::Evaluated> best;
    for (const auto& f : job.search->frontier()) {
      if (f.bits <= budget + 1e-9) best = f;
    }
    if (best) {
      out["best"] = {{"layers", format_layer_config(best->layers)},
                     {"avg_bits", best->bits},
                     {"kl", best->error}};
    }
  }
  return out;
}

json Api::job_json(const Job& job, bool full) const {
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
      if (t.validation) failures.back()["validation"] = true;
      continue;
    }
    if (t.state != TaskState::DONE || t.validation) continue;  // validation: below
    const auto result = ledger_.store().get_result(t.eval_key);
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
    // Each validated config's metrics on the validation data, beside its own.
    const std::map<std::string, json> validated = validation_table(job, ledger_);
    for (json& r : results) {
      if (auto it = validated.find(r["layers"].get<std::string>()); it != validated.end()) {
        r["validation"] = it->second;
      }
    }
    // The frontier and the uniform baselines, in the shape of "results".
    std::map<std::string, json> by_layers;
    for (const json& r : results) by_layers.emplace(r["layers"].get<std::string>(), r);
    json frontier = json::array(), baselines = json::array();
    std::map<std::string, double> predicted_kl;  // the additive model's, where it predicted
    for (const auto& a : job.search->additive_frontier()) {
      predicted_kl.emplace(format_layer_config(a.layers), a.error);
    }
    const EngineTarget* target = job.spec.engine_target();
    for (const auto& f : job.search->frontier()) {
      const std::string layers = format_layer_config(f.layers);
      auto it = by_layers.find(layers);
      if (it == by_layers.end()) continue;
      json entry = it->second;
      if (auto p = predicted_kl.find(layers); p != predicted_kl.end()) {
        entry["predicted_kl"] = p->second;
      }
      if (target != nullptr) {
        entry["deploy"] = deploy_json(*target, f.layers,
                                      deploy_options(job.spec.model, job.spec.scheme.kv_scales,
                                                     job.spec.scheme.rotation, entry["metrics"]));
      }
      frontier.push_back(std::move(entry));
    }
    // Uniform configs; of a separate key/value type target (llama.cpp, a
    // scan of every pair) only those whose keys and values share the type.
    const bool diagonal =
        target != nullptr && (target->structure == EngineTarget::Structure::UniformKV ||
                              target->structure == EngineTarget::Structure::FirstLast);
    for (const auto& [layers, r] : by_layers) {
      const auto pairs = parse_layer_config(layers, static_cast<int>(job.model->layers));
      if (std::all_of(pairs.begin(), pairs.end(), [&](const auto& p) { return p == pairs[0]; }) &&
          (!diagonal || pairs[0].key == pairs[0].value)) {
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
    if (SearchDriver::validates(job)) {
      out["validation"] = {{"data", job.spec.validation_data},
                           {"data_fingerprint", job.model->validation_data_fingerprint},
                           {"free_run", job.spec.to_json()["free_run"]}};
    }
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

json Api::jobs_json() const {
  json jobs = json::array();
  for (const auto& [id, job] : jobs_.all()) jobs.push_back(job_json(job, false));
  return {{"jobs", jobs}};
}

json Api::workers_json() const {
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
      entry["reference_bytes"] = it->second.reference_bytes;
      entry["threads"] = it->second.threads;
      entry["loaded_models"] = it->second.loaded_models;
      entry["connected_ms"] = it->second.connected_ms;
      entry["results"] = it->second.results;
    }
    list.push_back(std::move(entry));
  }
  return {{"workers", list}};
}

std::string Api::metrics_text() {
  const auto now = Clock::now();
  auto& recent = counters_.recent_results;
  while (!recent.empty() && now - recent.front() > std::chrono::seconds(60)) recent.pop_front();
  std::map<std::string, std::size_t> by_state;
  for (const char* s : {"queued", "running", "done", "failed", "cancelled"}) by_state[s] = 0;
  for (const auto& [id, job] : jobs_.all()) ++by_state[state_name(job.state)];
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
         static_cast<double>(counters_.evaluations_total));
  metric("kvtune_evaluations_per_second", "gauge",
         "Evaluation results stored per second, over the last minute.",
         static_cast<double>(recent.size()) / 60.0);
  metric("kvtune_dispatched_total", "counter", "Evaluations sent to workers.",
         static_cast<double>(counters_.dispatched));
  metric("kvtune_cache_hits_total", "counter",
         "Job evaluations answered from stored results without dispatch.",
         static_cast<double>(counters_.cache_hits));
  metric("kvtune_duplicate_results_total", "counter",
         "Results for evaluations already stored (ignored).",
         static_cast<double>(counters_.duplicate_results));
  metric("kvtune_refused_messages_total", "counter",
         "Malformed worker messages refused by the socket.",
         static_cast<double>(socket_.refused()));
  metric("kvtune_refused_handshakes_total", "counter",
         "Worker connections refused by CURVE authentication.",
         static_cast<double>(socket_.refused_handshakes()));
  metric("kvtune_refused_http_requests_total", "counter",
         "Malformed, oversized or unauthorized HTTP requests.",
         static_cast<double>(server_.refused()));
  out << "# HELP kvtune_jobs Jobs by state.\n# TYPE kvtune_jobs gauge\n";
  for (const auto& [state, count] : by_state) {
    out << "kvtune_jobs{state=\"" << state << "\"} " << count << "\n";
  }
  return out.str();
}

}  // namespace kvtune::coord
