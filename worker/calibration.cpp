// Calibration data: token-id files, JSONL, or sequences sampled from the model.
#include "calibration.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string_view>

#include "kvtune/common/error.h"
#include "kvtune/common/sample_spec.h"
#include "llama.h"
#include "mapped_file.h"

namespace kvtune::worker {
namespace {

constexpr int64_t kBos = 1;  // llama2.c's and Llama's beginning-of-sequence id
constexpr const char* kAcceptedForms =
    "PATH.u16, PATH.u32 (little-endian token ids), PATH.jsonl ({\"tokens\": [...]} per line) "
    "or sample:N:L:SEED";

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// `where` names the file and the sequence or line, e.g. "data.u16: sequence 3".
void check_token(int64_t id, int64_t position, const std::string& where, const Model& model) {
  const int64_t vocab = model.config.vocab_size;
  if (id < 0 || id >= vocab) {
    throw Error(where + ", position " + std::to_string(position) + ": token id " +
                std::to_string(id) + " is outside the model's vocabulary of " +
                std::to_string(vocab) + " (ids 0.." + std::to_string(vocab - 1) + ")");
  }
}

void check_seq_len(int64_t seq_len, const Model& model) {
  if (seq_len < 2) {
    throw Error("--seq-len " + std::to_string(seq_len) + " is too short: at least 2 tokens");
  }
  if (seq_len > model.config.max_seq_len) {
    throw Error("--seq-len " + std::to_string(seq_len) + " exceeds the model's context of " +
                std::to_string(model.config.max_seq_len) + " tokens");
  }
}

uint32_t read_le(const std::byte* p, size_t width) {
  uint32_t v = 0;
  for (size_t b = 0; b < width; ++b) v |= static_cast<uint32_t>(p[b]) << (8 * b);
  return v;
}

// Raw little-endian ids of `width` bytes, cut into consecutive seq_len-token
// sequences.
CalibrationData load_token_file(const std::string& path, size_t width, int64_t seq_len,
                                const Model& model) {
  check_seq_len(seq_len, model);
  const auto file = MappedFile::open(path);
  if (file->size() == 0) throw Error(path + ": the file is empty: no token ids");
  if (file->size() % width != 0) {
    throw Error(path + ": the size " + std::to_string(file->size()) +
                " bytes is not a multiple of " + std::to_string(width) + " (one " +
                std::to_string(8 * width) + "-bit token id each): wrong extension, or truncated?");
  }
  const auto tokens = static_cast<int64_t>(file->size() / width);
  const int64_t count = tokens / seq_len;
  if (count == 0) {
    throw Error(path + ": holds " + std::to_string(tokens) +
                " tokens, fewer than one sequence of " + "--seq-len " + std::to_string(seq_len));
  }
  CalibrationData data;
  data.sequences.reserve(static_cast<size_t>(count));
  for (int64_t s = 0; s < count; ++s) {
    const std::string where = path + ": sequence " + std::to_string(s);
    std::vector<int64_t>& seq = data.sequences.emplace_back(static_cast<size_t>(seq_len));
    for (int64_t i = 0; i < seq_len; ++i) {
      const std::byte* p = file->data() + static_cast<size_t>(s * seq_len + i) * width;
      seq[static_cast<size_t>(i)] = read_le(p, width);
      check_token(seq[static_cast<size_t>(i)], i, where, model);
    }
  }
  const int64_t dropped = tokens - count * seq_len;
  if (dropped > 0) {
    data.note = "dropped a trailing partial sequence of " + std::to_string(dropped) + " tokens";
  }
  return data;
}

// One {"tokens": [...], "prompt": T0} line (the prompt optional, -1 when
// absent); `where` is "file:line".
std::pair<std::vector<int64_t>, int64_t> parse_jsonl_line(const std::string& line,
                                                          const std::string& where,
                                                          const Model& model) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(where + ": malformed JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("tokens")) {
    throw Error(where + ": expected an object {\"tokens\": [...]}, got " + j.dump().substr(0, 80));
  }
  const nlohmann::json& tokens = j["tokens"];
  if (!tokens.is_array()) throw Error(where + ": \"tokens\" is not an array");
  if (tokens.empty()) throw Error(where + ": \"tokens\" is empty");
  const auto len = static_cast<int64_t>(tokens.size());
  if (len > model.config.max_seq_len) {
    throw Error(where + ": a sequence of " + std::to_string(len) +
                " tokens is longer than the model's context of " +
                std::to_string(model.config.max_seq_len));
  }
  std::vector<int64_t> seq;
  seq.reserve(tokens.size());
  for (const nlohmann::json& t : tokens) {
    const auto position = static_cast<int64_t>(seq.size());
    if (t.is_number_unsigned() &&
        t.get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}) {
      throw Error(where + ", position " + std::to_string(position) + ": token id " + t.dump() +
                  " is outside the model's vocabulary of " +
                  std::to_string(model.config.vocab_size));
    }
    if (!t.is_number_integer()) {
      throw Error(where + ", position " + std::to_string(position) + ": " + t.dump() +
                  " is not an integer token id");
    }
    seq.push_back(t.get<int64_t>());
    check_token(seq.back(), position, where, model);
  }
  int64_t prompt = -1;
  if (j.contains("prompt")) {
    const nlohmann::json& p = j["prompt"];
    if (!p.is_number_integer() || p.get<int64_t>() < 0 || p.get<int64_t>() > len - 2) {
      throw Error(where + ": \"prompt\" is " + p.dump() + "; it must be a whole number of tokens " +
                  "from 0 to " + std::to_string(std::max<int64_t>(0, len - 2)) +
                  " (at least 2 of the sequence's " + std::to_string(len) + " tokens continue it)");
    }
    prompt = p.get<int64_t>();
  }
  return {seq, prompt};
}

CalibrationData load_jsonl(const std::string& path, const Model& model) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open: " + std::strerror(errno));
  CalibrationData data;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto [seq, prompt] = parse_jsonl_line(line, path + ":" + std::to_string(number), model);
    data.sequences.push_back(std::move(seq));
    data.prompts.push_back(prompt);
  }
  if (in.bad()) throw Error(path + ": read error: " + std::strerror(errno));
  if (data.sequences.empty()) throw Error(path + ": the file holds no sequences");
  return data;
}

// The spec's syntax (common), then L against the model's context.
SampleSpec sample_spec_for(const std::string& spec, const Model& model) {
  const SampleSpec s = *parse_sample_spec(spec);
  if (s.length > model.config.max_seq_len) {
    throw Error("calibration spec '" + spec + "': L = " + std::to_string(s.length) +
                " tokens is outside [2, " + std::to_string(model.config.max_seq_len) +
                "] (2 up to the model's context)");
  }
  return s;
}

// Inverse-CDF draw from softmax(logits) with probabilities accumulated in
// double, so that the choice depends only on the logits and the RNG stream.
int64_t sample_token(const torch::Tensor& logits, std::mt19937_64& rng) {
  const torch::Tensor probs = torch::softmax(logits.to(torch::kFloat64), 0).contiguous();
  const double* p = probs.data_ptr<double>();
  const int64_t n = probs.numel();
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += p[i];
  // Uniform in [0, total) from the top 53 bits (std's distributions are not
  // specified bit-exactly across standard libraries).
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
  double cumulative = 0;
  int64_t last_nonzero = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] <= 0) continue;
    cumulative += p[i];
    last_nonzero = i;
    if (u < cumulative) return i;
  }
  return last_nonzero;  // u landed in the rounding slack at the top
}

CalibrationData sample_from_model(const std::string& spec, const Model& model) {
  const SampleSpec s = sample_spec_for(spec, model);
  if (model.config.vocab_size <= kBos) {
    throw Error("calibration spec '" + spec + "': the model's vocabulary of " +
                std::to_string(model.config.vocab_size) + " has no BOS token (id 1)");
  }
  const Transformer transformer(model);
  CalibrationData data;
  for (int64_t n = 0; n < s.count; ++n) {
    // One stream per sequence: a sequence does not depend on how many came before.
    std::seed_seq seeds{static_cast<uint32_t>(s.seed), static_cast<uint32_t>(s.seed >> 32),
                        static_cast<uint32_t>(n), static_cast<uint32_t>(n >> 32)};
    std::mt19937_64 rng(seeds);
    FullPrecisionCache cache;
    std::vector<int64_t>& seq = data.sequences.emplace_back();
    seq.reserve(static_cast<size_t>(s.length));
    seq.push_back(kBos);
    while (static_cast<int64_t>(seq.size()) < s.length) {
      seq.push_back(sample_token(transformer.step(seq.back(), cache), rng));
    }
  }
  return data;
}

}  // namespace

CalibrationData load_calibration(const std::string& spec, int64_t seq_len, const Model& model) {
  CalibrationData data;
  if (spec.rfind("sample:", 0) == 0) {
    data = sample_from_model(spec, model);
  } else if (ends_with(spec, ".u16")) {
    data = load_token_file(spec, 2, seq_len, model);
  } else if (ends_with(spec, ".u32")) {
    data = load_token_file(spec, 4, seq_len, model);
  } else if (ends_with(spec, ".jsonl")) {
    data = load_jsonl(spec, model);
  } else {
    throw Error("calibration data '" + spec + "': unknown form; expected " + kAcceptedForms);
  }
  data.spec = spec;
  return data;
}

std::vector<int64_t> prompt_lengths(const CalibrationData& data, int64_t prompt_tokens) {
  std::vector<int64_t> out(data.sequences.size(), prompt_tokens);
  for (size_t i = 0; i < data.prompts.size() && i < out.size(); ++i) {
    if (data.prompts[i] >= 0) out[i] = data.prompts[i];
  }
  return out;
}

}  // namespace kvtune::worker
