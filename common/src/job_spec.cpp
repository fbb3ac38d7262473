#include "kvtune/common/job_spec.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <set>
#include <string_view>

#include "kvtune/common/engine_target.h"
#include "kvtune/common/int_list.h"
#include "kvtune/common/sample_spec.h"
#include "kvtune/common/utf8.h"

namespace kvtune {
namespace {

using json = nlohmann::json;

std::string describe(const std::vector<FieldError>& fields) {
  std::string out = "invalid job spec:";
  for (const FieldError& f : fields) {
    out += "\n  " + (f.field.empty() ? std::string("(spec)") : f.field) + ": " + f.message;
  }
  return out;
}

std::string type_name(const json& value) {
  return value.type_name();
}

// JSON text nested deeper than this is refused before it is parsed: copying,
// comparing and dumping nlohmann values recurse, and a 1 MiB body of "[[[..."
// would overflow the stack. Real specs nest 3 deep.
constexpr int kMaxDepth = 64;

// Whether arrays and objects in `text` nest deeper than kMaxDepth (brackets
// outside strings; malformed text is left to the parser).
bool too_deep(std::string_view text) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxDepth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

constexpr char kHex[] = "0123456789ABCDEF";

// Text that is not UTF-8 is parsed once more with each bad byte replaced by
// this marker (the noncharacter U+FDD0) and its two hex digits, to name the
// fields that hold it.
constexpr std::string_view kMarker = "\xEF\xB7\x90";

std::string unmark(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    if (text.substr(i, kMarker.size()) == kMarker && i + kMarker.size() + 2 <= text.size()) {
      out += "\\x";
      out.append(text.substr(i + kMarker.size(), 2));
      i += kMarker.size() + 2;
    } else {
      out += text[i++];
    }
  }
  return out;
}

// A field error for each object key and string in `value` that bad() finds
// (paths as the Reader names fields: "scheme.name", "configs[2]"), shown
// with show().
void bad_text_fields(const json& value, const std::string& path,
                     const std::function<bool(const std::string&)>& bad,
                     const std::function<std::string(const std::string&)>& show,
                     std::vector<FieldError>& out) {
  if (value.is_string()) {
    const auto& text = value.get_ref<const std::string&>();
    if (bad(text)) out.push_back({show(path), "is not valid UTF-8: \"" + show(text) + "\""});
  } else if (value.is_array()) {
    for (std::size_t i = 0; i < value.size(); ++i) {
      bad_text_fields(value[i], path + "[" + std::to_string(i) + "]", bad, show, out);
    }
  } else if (value.is_object()) {
    for (const auto& [key, child] : value.items()) {
      const std::string child_path = path.empty() ? key : path + "." + key;
      if (bad(key)) out.push_back({show(child_path), "the field name is not valid UTF-8"});
      bad_text_fields(child, child_path, bad, show, out);
    }
  }
}

// Why JSON text that is not UTF-8 was refused: the fields that hold the bad
// bytes, or (when the text does not parse even with them marked) the
// parser's message.
std::vector<FieldError> not_utf8_errors(const std::string& text,
                                        const std::string& parser_message) {
  std::vector<FieldError> fields;
  if (text.find(kMarker) == std::string::npos) {
    const json marked = json::parse(
        map_invalid_utf8(
            text,
            [](unsigned char b) { return std::string(kMarker) + kHex[b >> 4] + kHex[b & 0xF]; }),
        nullptr, /*allow_exceptions=*/false);
    if (!marked.is_discarded()) {
      bad_text_fields(
          marked, "", [](const std::string& t) { return t.find(kMarker) != std::string::npos; },
          unmark, fields);
    }
  }
  if (fields.empty()) fields.push_back({"", "not valid JSON: " + escape_utf8(parser_message)});
  return fields;
}

// Collects field errors while reading a JSON object.
class Reader {
 public:
  explicit Reader(std::vector<FieldError>& errors) : errors_(errors) {}

  void fail(const std::string& field, const std::string& message) {
    errors_.push_back({field, message});
  }

  // The string at `obj[key]`, or nullopt (with an error when it is there but
  // not a string, or missing and required).
  std::optional<std::string> string(const json& obj, const std::string& key,
                                    const std::string& path, bool required) {
    if (!obj.contains(key)) {
      if (required) fail(path, "is required");
      return std::nullopt;
    }
    const json& v = obj.at(key);
    if (!v.is_string()) {
      fail(path, "must be a string, not " + type_name(v));
      return std::nullopt;
    }
    return v.get<std::string>();
  }

  std::optional<int> integer(const json& obj, const std::string& key, const std::string& path,
                             int min, int max) {
    if (!obj.contains(key)) return std::nullopt;
    const json& v = obj.at(key);
    if (!v.is_number_integer()) {
      fail(path, "must be an integer, not " + (v.is_number() ? v.dump() : type_name(v)));
      return std::nullopt;
    }
    const auto n = v.get<int64_t>();
    if (n < min || n > max) {
      fail(path, std::to_string(n) + " is out of range [" + std::to_string(min) + ", " +
                     std::to_string(max) + "]");
      return std::nullopt;
    }
    return static_cast<int>(n);
  }

  // Every key of `obj` must be in `known`.
  void only(const json& obj, const std::set<std::string>& known, const std::string& prefix) {
    for (const auto& [key, value] : obj.items()) {
      if (!known.contains(key)) {
        std::string list;
        for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
        fail(prefix + key, "unknown field (known: " + list + ")");
      }
    }
  }

 private:
  std::vector<FieldError>& errors_;
};

// The kvtuner target's scheme: KVTuner's settings by name, sizes as it takes them.
void read_kvtuner_scheme(const json& obj, Reader& r, Scheme& scheme) {
  std::string name = "per-token-asym";
  if (auto n = r.string(obj, "name", "scheme.name", false)) {
    if (*n != "per-token-asym" && *n != "per-channel-asym") {
      r.fail("scheme.name", "'" + *n +
                                "' is not one of KVTuner's per-token-asym, per-channel-asym "
                                "(target kvtuner)");
      return;
    }
    name = *n;
  }
  scheme = Scheme::kvtuner(name);
  if (auto zp = r.string(obj, "zero_point", "scheme.zero_point", false); zp && *zp != "int") {
    r.fail("scheme.zero_point", "'" + *zp + "': KVTuner's quantizer has an integer zero point");
  }
  // q_group_size: -1 (or 0) is head_dim, for per-token-asym only.
  if (auto g = r.integer(obj, "group_size", "scheme.group_size", -1, 1 << 16)) {
    if (*g <= 0 && scheme.grouping == kernels::Grouping::Kivi) {
      r.fail("scheme.group_size", std::to_string(*g) + ": per-channel-asym needs a group size");
    }
    scheme.group_size = std::max(*g, 0);
  }
  if (auto res = r.integer(obj, "residual", "scheme.residual", 0, 1 << 20)) scheme.residual = *res;
}

void read_scheme(const json& obj, Reader& r, Scheme& scheme) {
  if (!obj.is_object()) {
    r.fail("scheme", "must be an object, not " + type_name(obj));
    return;
  }
  r.only(obj, {"name", "group_size", "residual", "zero_point"}, "scheme.");
  if (scheme.target == Scheme::Target::Kvtuner) {
    read_kvtuner_scheme(obj, r, scheme);
    return;
  }
  if (auto name = r.string(obj, "name", "scheme.name", false)) {
    if (*name == "kivi") {
      scheme.grouping = kernels::Grouping::Kivi;
    } else if (*name == "per-token-asym") {
      scheme.grouping = kernels::Grouping::PerToken;
    } else {
      r.fail("scheme.name", "'" + *name + "' is not one of per-token-asym, kivi");
    }
  }
  if (auto zp = r.string(obj, "zero_point", "scheme.zero_point", false)) {
    if (*zp == "int") {
      scheme.zero_point = kernels::ZeroPoint::Int;
    } else if (*zp == "float") {
      scheme.zero_point = kernels::ZeroPoint::Float;
    } else {
      r.fail("scheme.zero_point", "'" + *zp + "' is not one of int, float");
    }
  }
  const std::optional<int> g = r.integer(obj, "group_size", "scheme.group_size", 1, 1 << 16);
  const std::optional<int> res = r.integer(obj, "residual", "scheme.residual", 1, 1 << 20);
  if (g) scheme.group_size = *g;
  scheme.residual = res ? *res : scheme.group_size;
  if ((g || !obj.contains("group_size")) && (res || !obj.contains("residual")) &&
      scheme.residual % scheme.group_size != 0) {
    r.fail("scheme.residual", std::to_string(scheme.residual) +
                                  " must be a multiple of group_size " +
                                  std::to_string(scheme.group_size));
  }
}

// Calls use(path, text) for each string of the array obj[key], in order.
template <class Use>
void for_each_string(const json& obj, const std::string& key, Reader& r, Use use) {
  const json& v = obj.at(key);
  if (!v.is_array()) {
    r.fail(key, "must be an array of strings, not " + type_name(v));
    return;
  }
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string path = key + "[" + std::to_string(i) + "]";
    if (!v[i].is_string()) {
      r.fail(path, "must be a string, not " + type_name(v[i]));
    } else {
      use(path, v[i].get<std::string>());
    }
  }
}

// A search's validation_data and free_run (refused on other kinds).
void read_validation(const json& spec, Reader& r, JobSpec& out) {
  if (out.kind != JobSpec::Kind::Search) {
    for (const char* field : {"validation_data", "free_run"}) {
      if (spec.contains(field)) r.fail(field, "only a search job is validated");
    }
    return;
  }
  out.validation_data = default_validation_data(out.data);
  if (auto v = r.string(spec, "validation_data", "validation_data", false)) {
    if (v->empty()) {
      r.fail("validation_data", "must not be empty (\"none\" skips the validation)");
    } else {
      out.validation_data = *v;
    }
  }
  if (spec.contains("free_run")) {
    const json& f = spec.at("free_run");
    if (!f.is_object()) {
      r.fail("free_run", "must be an object, not " + type_name(f));
      return;
    }
    r.only(f, {"prompts", "prompt_tokens", "new_tokens"}, "free_run.");
    if (auto n = r.integer(f, "prompts", "free_run.prompts", 0, 1 << 16)) out.free_run.prompts = *n;
    if (auto p = r.integer(f, "prompt_tokens", "free_run.prompt_tokens", 1, 1 << 20)) {
      out.free_run.prompt_tokens = *p;
    }
    if (auto m = r.integer(f, "new_tokens", "free_run.new_tokens", 1, 1 << 20)) {
      out.free_run.new_tokens = *m;
    }
  }
  // A sampled validation set's size is known here: the free run must fit it.
  if (out.free_run.prompts == 0) return;
  std::optional<SampleSpec> sample;
  try {
    sample = parse_sample_spec(out.validation_data);
  } catch (const Error&) {
    return;  // a malformed sample: spec is the worker's to name when it describes
  }
  if (!sample) return;
  const int n = static_cast<int>(std::min<int64_t>(sample->count, 1 << 20));
  const int len = static_cast<int>(std::min<int64_t>(sample->length, 1 << 20));
  if (!spec.contains("free_run")) {
    // The defaults shrink to a small validation sample; given sizes are checked.
    out.free_run.prompts = std::min(out.free_run.prompts, n);
    out.free_run.prompt_tokens = std::min(out.free_run.prompt_tokens, len / 2);
  }
  const std::string& v = out.validation_data;
  if (out.free_run.prompts > n) {
    r.fail("free_run.prompts", std::to_string(out.free_run.prompts) + " prompts but " + v +
                                   " has " + std::to_string(n) + " sequences");
  }
  if (out.free_run.prompt_tokens > len) {
    r.fail("free_run.prompt_tokens", std::to_string(out.free_run.prompt_tokens) +
                                         " tokens but the sequences of " + v + " have " +
                                         std::to_string(len));
  }
}

}  // namespace

JobSpecError::JobSpecError(std::vector<FieldError> fields)
    : Error(describe(fields)), fields_(std::move(fields)) {}

std::string to_string(JobSpec::Kind kind) {
  switch (kind) {
    case JobSpec::Kind::Evaluate:
      return "evaluate";
    case JobSpec::Kind::Profile:
      return "profile";
    case JobSpec::Kind::Search:
      return "search";
  }
  return "?";
}

std::string default_validation_data(const std::string& data) {
  try {
    if (std::optional<SampleSpec> s = parse_sample_spec(data)) {
      ++s->seed;  // the next seed: other sequences of the same shape
      return s->str();
    }
  } catch (const Error&) {
    // a malformed sample: spec is the worker's to name when it describes
  }
  return "sample:8:128:1";
}

JobSpec::FreeRun parse_free_run(const std::string& text, const std::string& option) {
  const std::vector<int64_t> sizes = parse_int_list(text, 1, [&](const std::string& item) {
    return option + " '" + text + "': '" + item + "' is not a positive integer";
  });
  if (sizes.size() != 3) {
    throw Error(option + " '" + text + "' takes N,P,M (prompts, prompt tokens, new tokens)");
  }
  constexpr int64_t kMax = 1 << 20;
  for (const int64_t n : sizes) {
    if (n > kMax) throw Error(option + " '" + text + "': " + std::to_string(n) + " is too large");
  }
  return {static_cast<int>(sizes[0]), static_cast<int>(sizes[1]), static_cast<int>(sizes[2])};
}

std::string JobSpec::kind_name() const {
  return to_string(kind);
}

JobSpec JobSpec::parse_text(const std::string& text) {
  if (too_deep(text)) {
    throw JobSpecError(
        {{"", "arrays and objects nest deeper than " + std::to_string(kMaxDepth) + " levels"}});
  }
  json spec;
  try {
    spec = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for 1e400
    // nlohmann's parser refuses strings that are not UTF-8 (and its message
    // quotes the bad bytes): name the fields instead.
    if (!valid_utf8(text)) throw JobSpecError(not_utf8_errors(text, e.what()));
    throw JobSpecError({{"", "not valid JSON: " + escape_utf8(e.what())}});
  }
  return parse(spec);
}

JobSpec JobSpec::parse(const json& spec) {
  std::vector<FieldError> errors;
  Reader r(errors);
  JobSpec out;
  if (!spec.is_object())
    throw JobSpecError({{"", "must be a JSON object, not " + type_name(spec)}});
  // Text that is not UTF-8 is refused first: the messages below quote values,
  // and a JSON answer with such bytes in it cannot be written.
  bad_text_fields(
      spec, "", [](const std::string& t) { return !valid_utf8(t); },
      [](const std::string& t) { return escape_utf8(t); }, errors);
  if (!errors.empty()) throw JobSpecError(std::move(errors));
  r.only(spec,
         {"kind", "name", "model", "data", "seq_len", "target", "scheme", "kv_scales", "rotate",
          "prompt_tokens", "read", "metric", "configs", "candidates", "search", "validation_data",
          "free_run"},
         "");

  if (auto kind = r.string(spec, "kind", "kind", true)) {
    if (*kind == "evaluate") {
      out.kind = Kind::Evaluate;
    } else if (*kind == "profile") {
      out.kind = Kind::Profile;
    } else if (*kind == "search") {
      out.kind = Kind::Search;
    } else {
      r.fail("kind", "'" + *kind + "' is not one of evaluate, profile, search");
    }
  }
  if (auto name = r.string(spec, "name", "name", false)) out.name = *name;
  if (auto model = r.string(spec, "model", "model", true)) {
    if (model->empty()) {
      r.fail("model", "must not be empty");
    } else {
      out.model = *model;
    }
  }
  if (auto data = r.string(spec, "data", "data", false)) {
    if (data->empty()) {
      r.fail("data", "must not be empty");
    } else {
      out.data = *data;
    }
  }
  if (auto seq_len = r.integer(spec, "seq_len", "seq_len", 2, 1 << 20)) out.seq_len = *seq_len;
  if (auto target = r.string(spec, "target", "target", false)) {
    if (*target == "kvtuner") {
      out.scheme = Scheme::kvtuner("per-token-asym");
    } else if (*target != "kvtune" && find_engine_target(*target) == nullptr) {
      r.fail("target", "'" + *target + "' is not one of " + target_names());
    }
    if (*target == "kvtuner" || *target == "kvtune" || find_engine_target(*target) != nullptr) {
      out.target = *target;
    }
  }
  const EngineTarget* engine = out.engine_target();
  if (engine != nullptr) out.read = engine->read_rule();  // unless "read" says otherwise
  if (spec.contains("scheme")) read_scheme(spec.at("scheme"), r, out.scheme);
  if (engine != nullptr && out.scheme.grouping == kernels::Grouping::Kivi) {
    r.fail("scheme.name", "kivi: the " + out.target +
                              " target's engine dtypes have their own arithmetic (no integer "
                              "scheme)");
  }
  if (auto scales = r.string(spec, "kv_scales", "kv_scales", false)) {
    try {
      out.scheme.kv_scales = parse_kv_scales(*scales);
    } catch (const Error& e) {
      r.fail("kv_scales", e.what());
    }
  }
  if (auto rotate = r.string(spec, "rotate", "rotate", false)) {
    try {
      out.scheme.rotation = parse_rotation(*rotate);
    } catch (const Error& e) {
      r.fail("rotate", e.what());
    }
  }
  out.scheme.rotation = target_rotation(out.target, out.scheme.rotation);
  if (auto t0 = r.integer(spec, "prompt_tokens", "prompt_tokens", 0, 1 << 20)) {
    out.prompt_tokens = *t0;
  }
  if (auto read = r.string(spec, "read", "read", false)) {
    try {
      out.read = ReadRule::parse(*read);
      if (!out.read.is_default() && out.scheme.target == Scheme::Target::Kvtuner) {
        r.fail("read", "'" + *read +
                           "': the kvtuner target reads as KVTuner's cache does (the prompt and "
                           "each new token fresh) and takes the fresh rule");
      } else if (out.read.reads_cache() && out.scheme.grouping == kernels::Grouping::Kivi) {
        r.fail("read", "'" + *read +
                           "' reads tokens back from the quantized cache; the kivi scheme keeps "
                           "its window in full precision and takes the fresh rule");
      }
    } catch (const Error& e) {
      r.fail("read", e.what());
    }
  }
  if (auto metric = r.string(spec, "metric", "metric", false)) {
    if (*metric != "kl") {
      r.fail("metric", "'" + *metric + "' is not supported (kl)");
    } else {
      out.metric = *metric;
    }
  }

  if (spec.contains("configs")) {
    for_each_string(spec, "configs", r, [&](const std::string& path, const std::string& c) {
      try {
        const auto count = static_cast<int>(std::count(c.begin(), c.end(), ',') + 1);
        const std::vector<PrecisionPair> layers = parse_layer_config(c, count);
        for (const PrecisionPair& p : layers) {
          for (const KvFormat& f : {p.key, p.value}) {
            if (const std::string why = out.scheme.refusal(f); !why.empty()) throw Error(why);
          }
        }
        if (engine != nullptr) {
          if (const std::string why = engine->refusal(layers); !why.empty()) {
            throw Error("target " + out.target + ": " + why);
          }
        }
        out.configs.push_back(c);
      } catch (const Error& e) {
        r.fail(path, e.what());
      }
    });
    if (spec.at("configs").is_array() && spec.at("configs").empty()) {
      r.fail("configs", "must list at least one configuration");
    }
  } else if (out.kind == Kind::Evaluate && spec.contains("kind")) {
    r.fail("configs", "is required for an evaluate job");
  }

  if (spec.contains("candidates")) {
    for_each_string(spec, "candidates", r, [&](const std::string& path, const std::string& c) {
      try {
        const PrecisionPair p = PrecisionPair::parse(c);
        for (const KvFormat& f : {p.key, p.value}) {
          if (const std::string why = out.scheme.refusal(f); !why.empty()) throw Error(why);
        }
        if (engine != nullptr) {
          if (const std::string why = engine->pair_refusal(p); !why.empty()) throw Error(why);
        }
        if (std::find(out.candidates.begin(), out.candidates.end(), p) != out.candidates.end()) {
          r.fail(path, p.name() + " is listed twice");
        }
        out.candidates.push_back(p);
      } catch (const Error& e) {
        r.fail(path, e.what());
      }
    });
    if (spec.at("candidates").is_array() && spec.at("candidates").empty()) {
      r.fail("candidates", "must list at least one pair");
    }
  } else if (engine != nullptr) {
    for (const PrecisionPair& p : engine->candidates()) {
      if (p.key.kind != KvFormat::Kind::Full) out.candidates.push_back(p);  // KV16 alone: KL 0
    }
  } else {
    out.candidates = kvtuner_candidates();
  }

  if (spec.contains("search")) {
    if (!spec.at("search").is_object()) {
      r.fail("search", "must be an object, not " + type_name(spec.at("search")));
    } else {
      out.search = spec.at("search");
    }
  }
  read_validation(spec, r, out);
  if (!errors.empty()) throw JobSpecError(std::move(errors));
  return out;
}

json JobSpec::to_json() const {
  json candidate_names = json::array();
  for (const PrecisionPair& p : candidates) candidate_names.push_back(p.name());
  json out = {{"kind", kind_name()},
              {"model", model},
              {"data", data},
              {"seq_len", seq_len},
              {"target", target},
              {"scheme",
               {{"name", scheme.name()},
                {"group_size", scheme.group_size},
                {"residual", scheme.residual},
                {"zero_point", scheme.zero_point == kernels::ZeroPoint::Int ? "int" : "float"}}},
              {"prompt_tokens", prompt_tokens},
              {"read", read.name()},
              {"metric", metric},
              {"candidates", candidate_names}};
  if (!name.empty()) out["name"] = name;
  if (scheme.kv_scales != KvScales::One) out["kv_scales"] = kv_scales_name(scheme.kv_scales);
  if (scheme.rotation != Rotation::Auto) out["rotate"] = rotation_name(scheme.rotation);
  if (kind == Kind::Evaluate) out["configs"] = configs;
  if (kind == Kind::Search) {
    out["search"] = search;
    out["validation_data"] = validation_data;
    out["free_run"] = {{"prompts", free_run.prompts},
                       {"prompt_tokens", free_run.prompt_tokens},
                       {"new_tokens", free_run.new_tokens}};
  }
  return out;
}

}  // namespace kvtune
