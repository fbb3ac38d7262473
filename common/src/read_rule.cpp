#include "kvtune/common/read_rule.h"

#include <array>
#include <utility>

#include "kvtune/common/error.h"

namespace kvtune {
namespace {

using Source = ReadRule::Source;

// The named rules and what each engine path runs (ENGINES.md, "Read rules").
const std::array<std::pair<const char*, ReadRule>, 3> kPresets = {{
    // KVTuner, HF QuantizedCache, TensorRT-LLM non-paged context / MMHA.
    {"fresh", {Source::Fresh, Source::Fresh}},
    // llama.cpp, vLLM V1 (FlashAttention, Triton, FlashInfer), SGLang FA3,
    // TensorRT-LLM paged context FMHA / XQA: write, then read the cache.
    {"cache", {Source::Cache, Source::Cache}},
    // SGLang FlashInfer / Triton: fresh among the prompt's own tokens,
    // decode reads the cache.
    {"fresh-prefill", {Source::Fresh, Source::Cache}},
}};

const char* source_name(Source s) {
  return s == Source::Fresh ? "fresh" : "cache";
}

}  // namespace

std::string ReadRule::name() const {
  for (const auto& [preset, rule] : kPresets) {
    if (rule == *this) return preset;
  }
  return std::string("prefill=") + source_name(prefill) + ",current=" + source_name(current);
}

std::string ReadRule::key(int64_t prompt_tokens) const {
  if (prompt_tokens == 0) return std::string("current=") + source_name(current);
  return name();
}

ReadRule ReadRule::parse(const std::string& text) {
  for (const auto& [preset, rule] : kPresets) {
    if (text == preset) return rule;
  }
  const std::string expected =
      "read rule '" + text +
      "' is not fresh, cache, fresh-prefill or prefill=fresh|cache,current=fresh|cache";
  ReadRule r;
  bool seen[2] = {false, false};
  for (std::size_t start = 0; start <= text.size();) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) throw Error(expected);
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    const auto source = [&](Source& out, bool& once) {
      if (once) throw Error("read rule '" + text + "' names " + k + " twice");
      once = true;
      if (v == "fresh") {
        out = Source::Fresh;
      } else if (v == "cache") {
        out = Source::Cache;
      } else {
        throw Error("read rule '" + text + "': " + k + " is '" + v + "', not fresh or cache");
      }
    };
    if (k == "prefill") {
      source(r.prefill, seen[0]);
    } else if (k == "current") {
      source(r.current, seen[1]);
    } else {
      throw Error(expected);
    }
    start = comma + 1;
  }
  return r;
}

}  // namespace kvtune
