// The worker daemon's model/reference cache and its LibTorch side: an LRU of
// loaded (model, data) entries, each with its calibration data, content
// fingerprints and unquantized reference (an Evaluator), the evaluations run
// on them, and the few runtime calls the rest of the daemon needs (device
// check, thread count).
//
// This header is torch-free (an entry is only declared here), so the protocol
// loop and the evaluation runner compile without LibTorch; model_cache.cpp is
// the daemon's only file that includes it. LibTorch errors (c10::Error) leave
// these functions as kvtune::Error, without a backtrace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "daemon.h"
#include "kvtune/schemas/eval_key.h"

namespace kvtune::worker {

// Fails fast, before connecting, on a device ("cpu" or "cuda:N", normalized)
// or a dtype (float32, bfloat16, float16) this host cannot run.
void check_runtime(const std::string& device, const std::string& dtype);

// LibTorch's intra-op threads (set per thread that runs LibTorch).
void set_runtime_threads(int threads);
int runtime_threads();

struct EntryKey {
  std::string model_spec;
  std::string data_spec;
  int64_t seq_len = 0;
  int64_t prompt_tokens = 0;  // the Evaluator's reference depends on it
  bool operator==(const EntryKey&) const = default;
};

// A model with its calibration data and unquantized reference (model_cache.cpp).
struct Entry;

// describe() and evaluate() run on one thread (the runner's), which alone
// touches the entries; loaded_models() may be called from any thread.
class ModelCache {
 public:
  // Models are placed on `device` in `dtype` (as check_runtime() accepts);
  // `log_prefix` starts the lines it logs when it loads.
  // `prefix_cache_bytes`: EvaluatorOptions::prefix_cache_bytes of each entry.
  ModelCache(std::size_t capacity, std::string device, std::string dtype, std::string log_prefix,
             int64_t prefix_cache_bytes = -1);
  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;
  ~ModelCache();

  // Fills `out` with what is on disk now for (model_spec, data_spec,
  // seq_len): a cached entry is reused only while the model file and (for
  // token files) the data are unchanged.
  void describe(const EvalInputs& in, schema::ModelInfo::Builder out);

  // Evaluates `in` on its entry (loaded if needed) and fills `out`. Throws
  // when the model or data fingerprints are not the request's, or the layer
  // count is not the model's.
  void evaluate(const EvalInputs& in, const std::string& worker_id,
                schema::EvalResult::Builder out);

  // Model specs in the cache, most recently used first, without repeats.
  std::vector<std::string> loaded_models() const;
  // Bytes the loaded evaluators' references hold (any thread).
  uint64_t reference_bytes() const;

 private:
  bool still_current(const Entry& entry, const EntryKey& key) const;
  Entry& load(const EntryKey& key);
  void drop(const EntryKey& key);
  // Recomputes loaded_models_ and reference_bytes_ (under mutex_).
  void refresh_loaded_models();

  const std::string device_;
  const std::string dtype_;
  const std::string prefix_;
  const int64_t prefix_cache_bytes_;

  // loaded_models_ and reference_bytes_ are read by other threads, so they
  // change under mutex_ (as does the cache when it evicts); the cache itself
  // is the runner's.
  mutable std::mutex mutex_;
  LruCache<EntryKey, Entry> cache_;
  std::vector<std::string> loaded_models_;
  uint64_t reference_bytes_ = 0;
};

}  // namespace kvtune::worker
