// The helpers and record conversions declared in state.h.
#include "state.h"

#include <capnp/serialize.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>

#include "kvtune/schemas/eval_key.h"

namespace kvtune::coord {

int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {
std::atomic<bool> g_log{true};
}  // namespace

void set_logging(bool on) {
  g_log.store(on);
}

void log(const std::string& line) {
  if (g_log.load(std::memory_order_relaxed)) {
    std::cerr << "kvtune coordinator: " << line << std::endl;
  }
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

json metrics_json(schema::EvalResult::Reader r) {
  json attn = json::array();
  for (double e : r.getAttnRelErr()) attn.push_back(e);
  json out = {{"kl", r.getKl()},
              {"kl_all", r.getKlAll() == 0 ? r.getKl() : r.getKlAll()},
              {"delta_nll", r.getDeltaNll()},
              {"ppl_fp", r.getPplFp()},
              {"ppl_q", r.getPplQ()},
              {"top1_agreement", r.getTop1Agreement()},
              {"avg_bits", r.getAvgBits()},
              {"bytes_per_token", r.getBytesPerToken()},
              {"attn_rel_err", attn},
              {"tokens", r.getTokens()}};
  if (r.hasKScales() && r.getKScales().size() > 0) {
    // The engine dtypes' per-layer scales applied (0: a layer without one).
    json k = json::array(), v = json::array();
    for (float x : r.getKScales()) k.push_back(x);
    for (float x : r.getVScales()) v.push_back(x);
    out["k_scales"] = std::move(k);
    out["v_scales"] = std::move(v);
  }
  if (r.getFreeRunPrompts() > 0) {
    out["free_run"] = {{"prompts", r.getFreeRunPrompts()},
                       {"agreement", r.getFreeRunAgreement()},
                       {"first_divergence", r.getFreeRunFirstDivergence()}};
  }
  return out;
}

std::vector<bool> rank_flips(const std::vector<double>& calibration,
                             const std::vector<double>& validation) {
  std::vector<bool> flipped(calibration.size(), false);
  for (std::size_t i = 0; i < calibration.size(); ++i) {
    for (std::size_t j = i + 1; j < calibration.size(); ++j) {
      const double c = calibration[i] - calibration[j], v = validation[i] - validation[j];
      if ((c < 0 && v > 0) || (c > 0 && v < 0)) flipped[i] = flipped[j] = true;
    }
  }
  return flipped;
}

std::string serialize_request(schema::EvalRequest::Reader request) {
  capnp::MallocMessageBuilder message;
  message.setRoot(request);
  const auto words = capnp::messageToFlatArray(message);
  return std::string(reinterpret_cast<const char*>(words.asBytes().begin()),
                     words.asBytes().size());
}

kj::Array<capnp::word> aligned_words(const std::string& flat) {
  auto words = kj::heapArray<capnp::word>(flat.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), flat.data(), words.size() * sizeof(capnp::word));
  return words;
}

ModelInfo ModelInfo::read(schema::ModelInfo::Reader r) {
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
          r.getTokens(),
          text(r.getValidationDataFingerprint())};
}

void ModelInfo::write(schema::ModelInfo::Builder b) const {
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
  b.setValidationDataFingerprint(validation_data_fingerprint);
}

json ModelInfo::to_json() const {
  json out = {{"name", name},
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
  if (!validation_data_fingerprint.empty()) {
    out["validation_data_fingerprint"] = validation_data_fingerprint;
  }
  return out;
}

void release_requests(Job& job) {
  for (TaskEntry& t : job.tasks) std::string().swap(t.request);
}

void address(const Job& job, const std::vector<PrecisionPair>& layers, TaskEntry& e,
             bool validation) {
  EvalInputs in;
  in.model_spec = job.spec.model;
  in.model_fingerprint = job.model->fingerprint;
  if (validation) {
    in.data_spec = job.spec.validation_data;
    in.data_fingerprint = job.model->validation_data_fingerprint;
    in.free_run = {job.spec.free_run.prompts, job.spec.free_run.prompt_tokens,
                   job.spec.free_run.new_tokens};
  } else {
    in.data_spec = job.spec.data;
    in.data_fingerprint = job.model->data_fingerprint;
  }
  in.seq_len = job.spec.seq_len;
  in.scheme = job.spec.scheme;
  in.layers = layers;
  in.metric = job.spec.metric;
  in.prompt_tokens = job.spec.prompt_tokens;
  in.read = job.spec.read;
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<schema::EvalRequest>();
  build_eval_request(in, request);
  e.layers = format_layer_config(layers);
  e.eval_key = evaluation_key(request.asReader());
  e.request = serialize_request(request.asReader());
}

}  // namespace kvtune::coord
