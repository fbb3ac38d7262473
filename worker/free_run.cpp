// Free-running greedy generation through a real quantized decode cache,
// against the unquantized model's own continuation (evaluator.h, FreeRun).
#include <string>
#include <vector>

#include "evaluator.h"
#include "kvtune/common/error.h"

namespace kvtune::worker {

namespace {

// `count` greedy tokens after `prompt` (prefilled in one step).
std::vector<int64_t> greedy_continuation(const Transformer& transformer, KvCache& cache,
                                         const std::vector<int64_t>& prompt, int64_t count) {
  std::vector<int64_t> out;
  int64_t next = transformer.extend(prompt, cache)[-1].argmax().item<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    out.push_back(next);
    if (i + 1 < count) next = transformer.step(next, cache).argmax().item<int64_t>();
  }
  return out;
}

}  // namespace

nlohmann::json FreeRun::to_json() const {
  return {{"prompts", prompts},
          {"prompt_tokens", prompt_tokens},
          {"new_tokens", new_tokens},
          {"agreement", agreement},
          {"first_divergence", first_divergence}};
}

FreeRun Evaluator::free_run(const std::vector<PrecisionPair>& layers, const Scheme& scheme,
                            const ReadRule& rule, int64_t prompts, int64_t prompt_tokens,
                            int64_t new_tokens) {
  const ModelConfig& c = model_.config;
  if (prompts < 1 || prompts > static_cast<int64_t>(sequences_.size())) {
    throw Error("free-running generation: " + std::to_string(prompts) +
                " prompts asked; the data holds " + std::to_string(sequences_.size()) +
                " sequences");
  }
  if (new_tokens < 1) {
    throw Error("free-running generation: new tokens must be at least 1, got " +
                std::to_string(new_tokens));
  }
  for (int64_t p = 0; p < prompts; ++p) {
    const auto len = static_cast<int64_t>(sequences_[static_cast<size_t>(p)].size());
    if (prompt_tokens < 1 || prompt_tokens > len) {
      throw Error("free-running generation: a prompt of " + std::to_string(prompt_tokens) +
                  " tokens does not fit sequence " + std::to_string(p) + " of " +
                  std::to_string(len) + " tokens");
    }
  }
  if (prompt_tokens + new_tokens > c.max_seq_len) {
    throw Error("free-running generation: " + std::to_string(prompt_tokens) + " + " +
                std::to_string(new_tokens) + " tokens exceed the model's context of " +
                std::to_string(c.max_seq_len));
  }
  const auto qs = quantizers(layers, scheme);
  check_read_rule(qs, rule);
  const auto prompt_of = [&](int64_t p) {
    const auto& seq = sequences_[static_cast<size_t>(p)];
    return std::vector<int64_t>(seq.begin(), seq.begin() + prompt_tokens);
  };
  auto& reference = free_run_memo_[{prompts, prompt_tokens, new_tokens}];
  if (reference.empty()) {
    for (int64_t p = 0; p < prompts; ++p) {
      FullPrecisionCache cache;
      reference.push_back(greedy_continuation(transformer_, cache, prompt_of(p), new_tokens));
    }
  }
  int64_t agreeing = 0, divergence_sum = 0;
  for (int64_t p = 0; p < prompts; ++p) {
    QuantizedKvCache cache(qs, ReadPlan{prompt_tokens, rule});
    const auto tokens = greedy_continuation(transformer_, cache, prompt_of(p), new_tokens);
    const auto& ref = reference[static_cast<size_t>(p)];
    int64_t agree = 0, first = new_tokens;
    for (int64_t i = 0; i < new_tokens; ++i) {
      if (tokens[static_cast<size_t>(i)] == ref[static_cast<size_t>(i)]) {
        ++agree;
      } else if (first == new_tokens) {
        first = i;
      }
    }
    agreeing += agree;
    divergence_sum += first;
  }
  return {prompts, prompt_tokens, new_tokens,
          static_cast<double>(agreeing) / static_cast<double>(prompts * new_tokens),
          static_cast<double>(divergence_sum) / static_cast<double>(prompts)};
}

}  // namespace kvtune::worker
