// The worker daemon's model/reference cache (see model_cache.h): loading a
// (model, data) pair and its reference, the checks that a cached entry still
// serves a request, the evaluation itself, and the daemon's LibTorch runtime
// calls. The only daemon file that includes LibTorch.
#include "model_cache.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>

#include "calibration.h"
#include "daemon_common.h"
#include "evaluator.h"
#include "fingerprint.h"
#include "kvtune/common/error.h"
#include "llama.h"

namespace kvtune::worker {

// A model with its calibration data and unquantized reference.
struct Entry {
  std::unique_ptr<Model> model;
  CalibrationData data;
  std::string model_fingerprint;
  std::string data_fingerprint;
  uint64_t tokens = 0;
  // Declared last, so destroyed first: it refers to *model.
  std::unique_ptr<Evaluator> evaluator;
};

namespace {

torch::ScalarType parse_dtype(const std::string& dtype) {
  if (dtype == "float32") return torch::kFloat32;
  if (dtype == "bfloat16") return torch::kBFloat16;
  if (dtype == "float16") return torch::kFloat16;
  throw Error("--dtype '" + dtype + "' is not one of float32, bfloat16, float16");
}

Model place(Model model, const std::string& device, const std::string& dtype) {
  const torch::ScalarType type = parse_dtype(dtype);
  if (device == "cpu" && type == torch::kFloat32) return model;
  return to_device(model, torch::Device(device), type);
}

// Runs `body`, turning a LibTorch error into a kvtune::Error without the
// backtrace.
template <class Body>
auto torch_errors_as_kvtune(Body&& body) {
  try {
    return body();
  } catch (const c10::Error& e) {
    throw Error(e.what_without_backtrace());
  }
}

void fill_model_info(const Entry& entry, schema::ModelInfo::Builder info) {
  const ModelConfig& c = entry.model->config;
  info.setName(c.name);
  info.setArchitecture(c.architecture);
  info.setSynthetic(c.synthetic);
  info.setLayers(static_cast<uint32_t>(c.n_layers));
  info.setKvHeads(static_cast<uint32_t>(c.n_kv_heads));
  info.setHeadDim(static_cast<uint32_t>(c.head_dim));
  info.setVocabSize(static_cast<uint32_t>(c.vocab_size));
  info.setFingerprint(entry.model_fingerprint);
  info.setDataFingerprint(entry.data_fingerprint);
  info.setSequences(static_cast<uint32_t>(entry.data.sequences.size()));
  info.setTokens(entry.tokens);
}

void fill_eval_result(const Metrics& m, const std::string& worker_id, double seconds,
                      schema::EvalResult::Builder out) {
  out.setKl(m.kl);
  out.setKlAll(m.kl_all);
  out.setDeltaNll(m.delta_nll);
  out.setPplFp(m.ppl_fp);
  out.setPplQ(m.ppl_q);
  out.setTop1Agreement(m.top1_agreement);
  out.setAvgBits(m.avg_bits);
  out.setBytesPerToken(m.bytes_per_token);
  auto errors = out.initAttnRelErr(static_cast<unsigned>(m.attn_rel_err.size()));
  for (unsigned i = 0; i < m.attn_rel_err.size(); ++i) errors.set(i, m.attn_rel_err[i]);
  out.setTokens(static_cast<uint64_t>(m.tokens));
  out.setWorkerId(worker_id);
  out.setSeconds(seconds);
}

// The engine dtypes' per-layer k/v scales of a configuration (what a
// checkpoint must carry for kv_scales "calibrated"); 0 for a layer without one.
void set_layer_scales(const LayerQuantizers& quantizers, schema::EvalResult::Builder out) {
  auto k = out.initKScales(static_cast<unsigned>(quantizers.size()));
  auto v = out.initVScales(static_cast<unsigned>(quantizers.size()));
  for (unsigned l = 0; l < quantizers.size(); ++l) {
    k.set(l, quantizers[l].first.layer_scale());
    v.set(l, quantizers[l].second.layer_scale());
  }
}

}  // namespace

// --- where the model runs (as `kvtune eval`'s --device/--dtype) -----------

void check_runtime(const std::string& device, const std::string& dtype) {
  torch_errors_as_kvtune([&] {
    const torch::ScalarType type = parse_dtype(dtype);
    if (device == "cpu") {
      // Debian's CPU LibTorch lacks reduced-precision batched matmuls.
      if (type != torch::kFloat32) {
        throw Error("--dtype " + dtype + " needs --device cuda; CPU evaluation runs in float32");
      }
      return;
    }
    if (!torch::cuda::is_available()) {
      throw Error("--device " + device + ": this worker's LibTorch sees no CUDA device");
    }
    const int index = std::stoi(device.substr(5));
    const auto count = static_cast<int>(torch::cuda::device_count());
    if (index >= count) {
      throw Error("--device " + device + ": this host has " + std::to_string(count) +
                  " CUDA device(s)");
    }
  });
}

void set_runtime_threads(int threads) {
  torch_errors_as_kvtune([&] { torch::set_num_threads(threads); });
}

int runtime_threads() {
  return torch_errors_as_kvtune([] { return static_cast<int>(torch::get_num_threads()); });
}

// --- loaded models -----------------------------------------------------------

ModelCache::ModelCache(std::size_t capacity, std::string device, std::string dtype,
                       std::string log_prefix, int64_t prefix_cache_bytes)
    : device_(std::move(device)),
      dtype_(std::move(dtype)),
      prefix_(std::move(log_prefix)),
      prefix_cache_bytes_(prefix_cache_bytes),
      cache_(capacity) {}

ModelCache::~ModelCache() = default;

void ModelCache::describe(const EvalInputs& in, schema::ModelInfo::Builder out) {
  torch_errors_as_kvtune([&] {
    const EntryKey key{in.model_spec, in.data_spec, in.seq_len, in.prompt_tokens};
    Entry* entry = cache_.find(key);
    // A describe reports what is on disk now: a cached entry is reused only
    // while the model file and (for token files) the data are unchanged.
    if (entry != nullptr && !still_current(*entry, key)) {
      drop(key);
      entry = nullptr;
    }
    if (entry == nullptr) entry = &load(key);
    fill_model_info(*entry, out);
  });
}

void ModelCache::evaluate(const EvalInputs& in, const std::string& worker_id,
                          schema::EvalResult::Builder out) {
  torch_errors_as_kvtune([&] {
    const EntryKey key{in.model_spec, in.data_spec, in.seq_len, in.prompt_tokens};
    Entry* entry = cache_.find(key);
    // The cached entry serves requests for exactly its content. A request
    // for other content is worth a reload only when the files changed since
    // the entry was loaded; otherwise it fails below without one.
    if (entry != nullptr &&
        (entry->model_fingerprint != in.model_fingerprint ||
         entry->data_fingerprint != in.data_fingerprint) &&
        !still_current(*entry, key)) {
      drop(key);
      entry = nullptr;
    }
    if (entry == nullptr) entry = &load(key);
    if (entry->model_fingerprint != in.model_fingerprint) {
      throw Error("model " + in.model_spec + " changed since the job was described: fingerprint " +
                  entry->model_fingerprint + ", expected " + in.model_fingerprint);
    }
    if (entry->data_fingerprint != in.data_fingerprint) {
      throw Error("data " + in.data_spec + " changed since the job was described: fingerprint " +
                  entry->data_fingerprint + ", expected " + in.data_fingerprint);
    }
    const int64_t layers = entry->model->config.n_layers;
    if (static_cast<int64_t>(in.layers.size()) != layers) {
      throw Error("layers: the request configures " + std::to_string(in.layers.size()) +
                  " layers but model " + in.model_spec + " has " + std::to_string(layers));
    }
    const auto start = Clock::now();
    const Metrics metrics = entry->evaluator->evaluate(in.layers, in.scheme, in.read);
    std::optional<FreeRun> run;
    if (const auto& f = in.free_run; f.prompts > 0) {
      try {
        run = entry->evaluator->free_run(in.layers, in.scheme, in.read, f.prompts, f.prompt_tokens,
                                         f.new_tokens);
      } catch (const Error& e) {
        throw Error("free run on " + in.data_spec + ": " + e.what());
      }
    }
    {
      std::lock_guard lock(mutex_);
      refresh_loaded_models();  // the evaluator's trail changed what it holds
    }
    fill_eval_result(metrics, worker_id, seconds_since(start), out);
    const bool layer_scales = std::any_of(in.layers.begin(), in.layers.end(), [](const auto& p) {
      return p.key.takes_layer_scale() || p.value.takes_layer_scale();
    });
    if (layer_scales) set_layer_scales(entry->evaluator->quantizers(in.layers, in.scheme), out);
    if (run) {
      out.setFreeRunPrompts(static_cast<uint32_t>(run->prompts));
      out.setFreeRunAgreement(run->agreement);
      out.setFreeRunFirstDivergence(run->first_divergence);
    }
  });
}

std::vector<std::string> ModelCache::loaded_models() const {
  std::lock_guard lock(mutex_);
  return loaded_models_;
}

uint64_t ModelCache::reference_bytes() const {
  std::lock_guard lock(mutex_);
  return reference_bytes_;
}

// Token-file data can change under a cached entry; sampled data is a
// function of the model, which the fingerprint covers.
bool ModelCache::still_current(const Entry& entry, const EntryKey& key) const {
  if (model_fingerprint(key.model_spec) != entry.model_fingerprint) return false;
  if (key.data_spec.rfind("sample:", 0) == 0) return true;
  const CalibrationData data = load_calibration(key.data_spec, key.seq_len, *entry.model);
  return data_fingerprint(data.sequences, data.prompts) == entry.data_fingerprint;
}

// Loads a model and its data and computes the reference, after evicting
// what must go to make room (so the old model's memory is freed first).
Entry& ModelCache::load(const EntryKey& key) {
  const auto start = Clock::now();
  {
    std::lock_guard lock(mutex_);
    cache_.make_room();
    refresh_loaded_models();
  }
  auto entry = std::make_unique<Entry>();
  entry->model_fingerprint = model_fingerprint(key.model_spec);
  entry->model = std::make_unique<Model>(place(load_model(key.model_spec), device_, dtype_));
  entry->data = load_calibration(key.data_spec, key.seq_len, *entry->model);
  entry->data_fingerprint = data_fingerprint(entry->data.sequences, entry->data.prompts);
  for (const auto& sequence : entry->data.sequences) entry->tokens += sequence.size();
  EvaluatorOptions options;
  options.prefix_cache_bytes = prefix_cache_bytes_;
  entry->evaluator =
      std::make_unique<Evaluator>(*entry->model, entry->data.sequences,
                                  prompt_lengths(entry->data, key.prompt_tokens), options);
  log_line(prefix_ + "loaded " + key.model_spec + " with data " + key.data_spec + " (" +
           std::to_string(entry->data.sequences.size()) + " sequences, " +
           std::to_string(entry->tokens) + " tokens) in " + seconds_text(seconds_since(start)) +
           " s" + (entry->data.note.empty() ? "" : "; " + entry->data.note));
  std::lock_guard lock(mutex_);
  Entry& stored = cache_.insert(key, std::move(entry));
  refresh_loaded_models();
  return stored;
}

void ModelCache::drop(const EntryKey& key) {
  std::lock_guard lock(mutex_);
  cache_.erase(key);
  refresh_loaded_models();
}

// Under mutex_.
void ModelCache::refresh_loaded_models() {
  reference_bytes_ = 0;
  cache_.for_each([this](const EntryKey&, const Entry& entry) {
    reference_bytes_ += static_cast<uint64_t>(entry.evaluator->reference_bytes());
  });
  loaded_models_.clear();
  for (const EntryKey& key : cache_.keys()) {
    if (std::find(loaded_models_.begin(), loaded_models_.end(), key.model_spec) ==
        loaded_models_.end()) {
      loaded_models_.push_back(key.model_spec);
    }
  }
}

}  // namespace kvtune::worker
