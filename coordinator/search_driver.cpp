// A search job <-> search::Search ask/tell, baselines and the registry merge
// (search_driver.h).
#include "search_driver.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <utility>
#include <vector>

#include "jobs.h"
#include "kvtune/common/error.h"
#include "registry.h"

namespace kvtune::coord {
search::Search::Options search_options(const JobSpec& spec) {
  search::Search::Options o = search::options_from_json(spec.search);
  const EngineTarget* target = spec.engine_target();
  if (target == nullptr) return o;
  if (spec.search.contains("candidates")) {
    for (const PrecisionPair& p : o.candidates) {
      if (std::string why = target->pair_refusal(p); !why.empty()) {
        throw Error("search: candidates: " + why);
      }
    }
  } else {
    o.candidates = target->candidates();
  }
  using Structure = EngineTarget::Structure;
  const std::optional<search::Strategy> fixed =
      target->structure == Structure::SkipLayers ? std::optional(search::Strategy::kSkipLayers)
      : target->structure == Structure::Uniform || target->structure == Structure::UniformKV
          ? std::optional(search::Strategy::kScan)
      : target->structure == Structure::FirstLast ? std::optional(search::Strategy::kFirstLast)
                                                  : std::nullopt;
  if (fixed) {
    if (spec.search.contains("strategy") && o.strategy != *fixed) {
      throw Error("search: strategy " + std::string(search::strategy_name(o.strategy)) +
                  ": target " + spec.target + " runs " +
                  std::string(structure_name(target->structure)) + " configurations, searched by " +
                  std::string(search::strategy_name(*fixed)));
    }
    o.strategy = *fixed;
  }
  return o;
}

std::vector<PrecisionPair> baseline_pairs(const Job& job) {
  std::vector<PrecisionPair> out;
  if (const EngineTarget* target = job.spec.engine_target()) {
    // One dtype for keys and values: a separate-types target's diagonal.
    for (const PrecisionPair& p : target->candidates()) {
      if (p.key.kind != KvFormat::Kind::Full && p.key == p.value &&
          shape_refusal(p, job.model->kv_heads, job.model->head_dim).empty()) {
        out.push_back(p);
      }
    }
    return out;
  }
  for (const char* name : {"KV8", "K8V4", "KV4", "K4V2", "KV2"}) {
    out.push_back(PrecisionPair::parse(name));
  }
  return out;
}

namespace {

// Drops the target's default candidates that the described model's cache
// shape cannot hold (nvfp4 with head_dim 8), saying so; candidates the spec
// names itself fail the job instead.
void fit_candidates(const Job& job, search::Search::Options& options) {
  std::vector<PrecisionPair> kept;
  for (const PrecisionPair& p : options.candidates) {
    const std::string why = shape_refusal(p, job.model->kv_heads, job.model->head_dim);
    if (why.empty()) {
      kept.push_back(p);
    } else if (job.spec.search.contains("candidates")) {
      throw Error("candidate " + why);
    } else {
      log("job " + job.id + ": candidate " + why + "; not searched");
    }
  }
  if (kept.empty()) throw Error("no candidate fits the model's cache");
  options.candidates = std::move(kept);
}

}  // namespace

void SearchDriver::start(Job& job) {
  try {
    search::Search::Options options = search_options(job.spec);
    fit_candidates(job, options);
    job.search.emplace(std::move(options), static_cast<int>(job.model->layers));
  } catch (const Error& e) {
    fail_job(job, std::string("search: ") + e.what(), scheduler_, ledger_);
    return;
  }
  job.state = JobState::RUNNING;
  ledger_.put_job(job);
  start_generation(job);
}

void SearchDriver::resume(Job& job, const std::optional<std::string>& state, bool go_on) {
  if (!state) {
    if (!go_on) return;
    start(job);
    return;
  }
  try {
    job.search.emplace(search::Search::from_json(json::parse(*state)));
  } catch (const std::exception& e) {
    throw Error("database " + ledger_.store().path().string() + ": the search state of job " +
                job.id + " cannot be read: " + e.what());
  }
  const search::Search& s = *job.search;
  std::vector<std::pair<std::vector<PrecisionPair>, double>> done;
  if (!s.profile().empty()) {
    const auto candidates = s.profile_candidates();
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
    if (validates(job)) start_validation(job, false);
  }
}

// Asks the search for its next generation and queues it; tells it at once
// when every config is stored already.
void SearchDriver::start_generation(Job& job) {
  while (job.state == JobState::RUNNING) {
    const auto configs =
        job.search->done() ? std::vector<std::vector<PrecisionPair>>{} : job.search->ask();
    ledger_.put_search_state(job.id, job.search->to_json().dump());
    if (configs.empty()) {
      finish(job);
      return;
    }
    job.generation_begin = job.tasks.size();
    for (const auto& layers : configs) {
      TaskEntry e;
      address(job, layers, e);
      e.config = e.layers;
      job.tasks.push_back(std::move(e));
    }
    // Queued in the order of their layer strings, so that consecutive
    // evaluations share leading layers (a worker starts each after the
    // layers it shares with its last one); task numbers keep the search's order.
    std::vector<std::size_t> order(job.tasks.size() - job.generation_begin);
    std::iota(order.begin(), order.end(), job.generation_begin);
    std::stable_sort(order.begin(), order.end(), [&job](std::size_t a, std::size_t b) {
      return job.tasks[a].layers < job.tasks[b].layers;
    });
    std::size_t queued = 0;
    for (const std::size_t i : order) {
      TaskEntry& t = job.tasks[i];
      if (auto kl = ledger_.stored_kl(t.eval_key)) {
        t.state = TaskState::DONE;
        t.kl = *kl;
        ++job.done;
        ++counters_.cache_hits;
        continue;
      }
      scheduler_.add(Scheduler::Task{job.id + "/" + task_number(i), job.id, t.eval_key, t.request});
      ++queued;
    }
    log("job " + job.id + ": search generation " + std::to_string(job.search->generation()) + ", " +
        std::to_string(configs.size()) + " configs, " + std::to_string(queued) + " queued");
    if (queued > 0) return;
    if (!tell_generation(job)) return;
  }
}

void SearchDriver::task_settled(Job& job) {
  for (std::size_t i = job.generation_begin; i < job.tasks.size(); ++i) {
    if (job.tasks[i].state == TaskState::PENDING) return;
  }
  if (job.evaluating_baselines) {
    finish(job);  // a failed baseline is listed under "failures"
    return;
  }
  if (tell_generation(job)) start_generation(job);
}

// Tells the search the pending generation's errors; false when the job failed.
bool SearchDriver::tell_generation(Job& job) {
  std::vector<double> errors;
  for (std::size_t i = job.generation_begin; i < job.tasks.size(); ++i) {
    const TaskEntry& t = job.tasks[i];
    if (t.state == TaskState::FAILED) {
      fail_job(job,
               "the search's evaluation of " + t.layers +
                   " failed: " + (t.errors.empty() ? std::string("?") : t.errors.back()),
               scheduler_, ledger_);
      return false;
    }
    errors.push_back(t.kl);
  }
  try {
    job.search->tell(errors);
  } catch (const Error& e) {
    fail_job(job, std::string("search: ") + e.what(), scheduler_, ledger_);
    return false;
  }
  return true;
}

// KVTuner's uniform baselines, evaluated beside every search's frontier
// (not told to the search: they are for comparison).
// With queue_missing false only stored ones are listed (a finished job
// reloaded after a restart).
void SearchDriver::start_baselines(Job& job, bool queue_missing) {
  job.evaluating_baselines = true;
  job.generation_begin = job.tasks.size();
  std::size_t queued = 0;
  for (const PrecisionPair& pair : baseline_pairs(job)) {
    const std::vector<PrecisionPair> layers(job.model->layers, pair);
    const std::string text = format_layer_config(layers);
    const bool known = std::any_of(job.tasks.begin(), job.tasks.end(),
                                   [&](const TaskEntry& t) { return t.layers == text; });
    if (known) continue;
    TaskEntry e;
    address(job, layers, e);
    e.config = pair.name();
    job.tasks.push_back(std::move(e));
    const std::size_t i = job.tasks.size() - 1;
    TaskEntry& t = job.tasks[i];
    if (auto kl = ledger_.stored_kl(t.eval_key)) {
      t.state = TaskState::DONE;
      t.kl = *kl;
      ++job.done;
      if (queue_missing) ++counters_.cache_hits;
      continue;
    }
    if (!queue_missing) {
      job.tasks.pop_back();
      continue;
    }
    scheduler_.add(Scheduler::Task{job.id + "/" + task_number(i), job.id, t.eval_key, t.request});
    ++queued;
  }
  if (queue_missing) {
    log("job " + job.id + ": baselines, " + std::to_string(queued) + " queued");
    if (queued == 0) finish(job);
  }
}

// The frontier's and the baselines' configs once more, on the validation
// data with the free run (not told to the search). With queue_missing false
// only stored ones are listed.
void SearchDriver::start_validation(Job& job, bool queue_missing) {
  job.validating = true;
  std::vector<std::string> wanted;
  for (const auto& f : job.search->frontier()) wanted.push_back(format_layer_config(f.layers));
  for (const PrecisionPair& pair : baseline_pairs(job)) {
    wanted.push_back(format_layer_config(std::vector<PrecisionPair>(job.model->layers, pair)));
  }
  const std::size_t calibrated = job.tasks.size();
  job.generation_begin = calibrated;
  std::size_t queued = 0;
  for (std::size_t c = 0; c < calibrated; ++c) {
    // Each wanted config once, named as its calibration task is.
    const TaskEntry& source = job.tasks[c];
    if (source.validation || source.state != TaskState::DONE) continue;
    const auto it = std::find(wanted.begin(), wanted.end(), source.layers);
    if (it == wanted.end()) continue;
    wanted.erase(it);
    TaskEntry e;
    address(job, parse_layer_config(source.layers, static_cast<int>(job.model->layers)), e, true);
    e.config = source.config;
    e.validation = true;
    if (auto kl = ledger_.stored_kl(e.eval_key)) {
      e.state = TaskState::DONE;
      e.kl = *kl;
      ++job.done;
      if (queue_missing) ++counters_.cache_hits;
      job.tasks.push_back(std::move(e));
      continue;
    }
    if (!queue_missing) continue;
    job.tasks.push_back(std::move(e));
    const std::size_t i = job.tasks.size() - 1;
    scheduler_.add(Scheduler::Task{job.id + "/" + task_number(i), job.id, job.tasks[i].eval_key,
                                   job.tasks[i].request});
    ++queued;
  }
  if (queue_missing) {
    log("job " + job.id + ": validation on " + job.spec.validation_data + ", " +
        std::to_string(queued) + " queued");
    if (queued == 0) finish(job);
  }
}

std::map<std::string, json> validation_table(const Job& job, const Ledger& ledger) {
  std::map<std::string, json> out;
  std::map<std::string, double> calibration_kl;
  for (const TaskEntry& t : job.tasks) {
    if (t.state != TaskState::DONE) continue;
    if (!t.validation) {
      calibration_kl.emplace(t.layers, t.kl);
    } else if (auto metrics = ledger.result_metrics(t.eval_key)) {
      out.emplace(t.layers, std::move(*metrics));
    }
  }
  std::vector<double> calibration, validation;
  for (const auto& [layers, metrics] : out) {
    calibration.push_back(calibration_kl.count(layers) ? calibration_kl.at(layers) : 0.0);
    validation.push_back(metrics.at("kl").get<double>());
  }
  const std::vector<bool> flips = rank_flips(calibration, validation);
  std::size_t i = 0;
  for (auto& [layers, metrics] : out) metrics["rank_flip"] = static_cast<bool>(flips[i++]);
  return out;
}

bool SearchDriver::validates(const Job& job) {
  // A job described before validation existed has no validation data.
  return job.spec.validates() && !job.model->validation_data_fingerprint.empty();
}

void SearchDriver::finish(Job& job) {
  if (!job.evaluating_baselines) {
    start_baselines(job);
    return;
  }
  if (!job.validating && validates(job)) {
    start_validation(job);
    return;
  }
  job.state = JobState::DONE;
  ledger_.put_job(job);
  release_requests(job);
  record_frontier(job);
  log("job " + job.id + " done: search of " + std::to_string(job.search->evaluations()) +
      " evaluations, " + std::to_string(job.search->frontier().size()) + " frontier configs");
}

// Merges a finished search's frontier into its registry entry.
void SearchDriver::record_frontier(const Job& job) {
  // A prompt or another read rule is another question: another entry.
  std::string scheme = job.spec.scheme.key();
  if (job.spec.prompt_tokens > 0 || !job.spec.read.is_default()) {
    scheme += "/T0=" + std::to_string(job.spec.prompt_tokens) +
              "/read=" + job.spec.read.key(job.spec.prompt_tokens);
  }
  const EngineTarget* target = job.spec.engine_target();
  if (target != nullptr) scheme += "/target=" + job.spec.target;
  const std::string key =
      registry::key(job.model->fingerprint, scheme, job.model->data_fingerprint, job.spec.metric);
  const std::map<std::string, json> validated = validation_table(job, ledger_);
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
      if (auto metrics = ledger_.result_metrics(t.eval_key)) c.metrics = std::move(*metrics);
      break;
    }
    if (auto it = validated.find(c.layers); it != validated.end()) c.validation = it->second;
    found.push_back(std::move(c));
  }
  json entry = {{"id", registry::entry_id(key)},
                {"key", key},
                {"model", job.model->name},
                {"model_spec", job.spec.model},
                {"fingerprint", job.model->fingerprint},
                {"layers", job.model->layers},
                {"scheme", job.spec.scheme.key()},
                {"prompt_tokens", job.spec.prompt_tokens},
                {"read", job.spec.read.name()},
                {"data", job.spec.data},
                {"data_fingerprint", job.model->data_fingerprint},
                {"metric", job.spec.metric},
                {"synthetic", job.model->synthetic}};
  if (validates(job)) entry["validation_data"] = job.spec.validation_data;
  entry["target"] = job.spec.target;
  if (target != nullptr) {
    // Whether a released engine runs this structure, or which pull request it needs.
    entry["released"] = target->needs.empty();
    if (!target->needs.empty()) entry["needs"] = target->needs;
    entry["kv_scales"] = kv_scales_name(job.spec.scheme.kv_scales);
    entry["rotate"] = rotation_name(job.spec.scheme.rotation);
  }
  std::vector<registry::Config> before;
  if (auto old = ledger_.store().get_raw(Store::Area::Registry, key)) {
    for (const json& c : json::parse(*old).at("frontier")) {
      before.push_back(registry::Config::from_json(c));
    }
  }
  json frontier = json::array();
  for (const auto& c : registry::merge_frontier(before, found)) frontier.push_back(c.to_json());
  entry["frontier"] = std::move(frontier);
  entry["updated_ms"] = wall_ms();
  entry["jobs"] = json::array({job.id});
  ledger_.put_registry(key, entry.dump());
  log("registry " + registry::entry_id(key) + " (" + job.model->name + ", " +
      job.spec.scheme.key() + "): " + std::to_string(entry["frontier"].size()) +
      " frontier configs");
}

}  // namespace kvtune::coord
