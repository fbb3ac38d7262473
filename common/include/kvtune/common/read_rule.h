// The read rule of a cache: which tokens a query's attention reads from the
// quantized cache and which it reads as the fresh, full-precision K/V of the
// step (../shared/ENGINES.md, "Read rules"). A calibration sequence is a
// prompt of T0 tokens, prefilled in one step, and a continuation decoded one
// token at a time; T0 = 0 is a sequence decoded from its first token.
#pragma once

#include <cstdint>
#include <string>

namespace kvtune {

struct ReadRule {
  enum class Source { Fresh, Cache };

  // The prompt's own attention during prefill: the fresh K/V (KVTuner, HF
  // QuantizedCache, SGLang's ragged prefill) or what was just written to the
  // cache (llama.cpp, vLLM V1).
  Source prefill = Source::Fresh;
  // A decoded token's own K/V: fresh, or read back from the cache it was
  // just written to.
  Source current = Source::Fresh;
  // kivi's full-precision windows are counted from position 0 whatever the
  // rule (KIVI's own code: the prompt's last T0 mod R tokens stay in full
  // precision after prefill), and kivi reads its window, the current token
  // included, in full precision: it takes the fresh rule only.

  // "fresh" (the default), "cache", "fresh-prefill", or the list form
  // "prefill=fresh|cache,current=fresh|cache".
  std::string name() const;
  // Canonical, for cache keys: with T0 = 0 the prefill cannot matter and is
  // left out, so equal evaluations get equal keys.
  std::string key(int64_t prompt_tokens) const;
  bool is_default() const { return *this == ReadRule{}; }
  // Whether any token is read back from the quantized cache it was written to.
  bool reads_cache() const { return prefill == Source::Cache || current == Source::Cache; }
  // A name from name() (presets, or the list form). Throws kvtune::Error
  // naming the bad part.
  static ReadRule parse(const std::string& text);

  bool operator==(const ReadRule&) const = default;
};

}  // namespace kvtune
