// Hugging Face checkpoints: config.json plus safetensors weights (one file or
// shards listed in model.safetensors.index.json), and the loader dispatch.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "demo_model.h"
#include "kvtune/common/error.h"
#include "llama.h"
#include "mapped_file.h"

namespace kvtune::worker {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------
// config.json

// Typed field access that names config.json and the field in every error, so
// a user can fix a hand-edited or unusual config without reading code.
class ConfigReader {
 public:
  ConfigReader(std::string path, const json& j) : path_(std::move(path)), j_(j) {}

  const std::string& path() const { return path_; }

  // A field that is absent or null reads as missing.
  const json* find(const json& obj, const std::string& key) const {
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }

  int64_t integer(const std::string& key) const { return integer_in(j_, key, key); }
  int64_t integer(const std::string& key, int64_t fallback) const {
    return find(j_, key) ? integer(key) : fallback;
  }
  double number(const std::string& key) const { return number_in(j_, key, key); }
  double number(const std::string& key, double fallback) const {
    return find(j_, key) ? number(key) : fallback;
  }
  bool boolean(const std::string& key, bool fallback) const {
    const json* v = find(j_, key);
    if (!v) return fallback;
    if (!v->is_boolean()) throw bad_type(key, "a boolean", *v);
    return v->get<bool>();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    const json* v = find(j_, key);
    if (!v) return fallback;
    if (!v->is_string()) throw bad_type(key, "a string", *v);
    return v->get<std::string>();
  }

  // `label` is how the field is named in errors, e.g. "rope_scaling.factor".
  int64_t integer_in(const json& obj, const std::string& key, const std::string& label) const {
    const json* v = find(obj, key);
    if (!v) throw missing(label);
    if (!v->is_number_integer()) throw bad_type(label, "an integer", *v);
    return v->get<int64_t>();
  }
  double number_in(const json& obj, const std::string& key, const std::string& label) const {
    const json* v = find(obj, key);
    if (!v) throw missing(label);
    if (!v->is_number()) throw bad_type(label, "a number", *v);
    return v->get<double>();
  }
  int64_t positive(const std::string& key, std::optional<int64_t> fallback = {}) const {
    const int64_t v = fallback && !find(j_, key) ? *fallback : integer(key);
    if (v <= 0) {
      throw Error(path_ + ": field '" + key + "' must be positive, got " + std::to_string(v));
    }
    return v;
  }

  Error missing(const std::string& label) const {
    return Error(path_ + ": missing field '" + label + "'");
  }
  Error bad_type(const std::string& label, const std::string& want, const json& got) const {
    return Error(path_ + ": field '" + label + "' must be " + want + ", got " + got.dump());
  }

 private:
  std::string path_;
  const json& j_;
};

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
}

RopeScaling parse_rope_scaling(const ConfigReader& r, const json& cfg) {
  RopeScaling rs;
  const json* scaling = r.find(cfg, "rope_scaling");
  if (!scaling) return rs;
  if (!scaling->is_object()) throw r.bad_type("rope_scaling", "an object or null", *scaling);
  // Transformers renamed "type" to "rope_type"; older configs carry only "type".
  std::string key = "rope_type";
  const json* type = r.find(*scaling, key);
  if (!type) type = r.find(*scaling, key = "type");
  if (!type) throw r.missing("rope_scaling.rope_type");
  if (!type->is_string()) throw r.bad_type("rope_scaling." + key, "a string", *type);
  const std::string name = type->get<std::string>();
  if (name == "default") return rs;  // Transformers' spelling of "no scaling"
  if (name != "llama3") {
    throw Error(r.path() + ": rope_scaling." + key + " '" + name +
                "' is not supported (supported: llama3)");
  }
  rs.enabled = true;
  const auto field = [&](const char* k) {
    return r.number_in(*scaling, k, std::string("rope_scaling.") + k);
  };
  rs.factor = field("factor");
  rs.low_freq_factor = field("low_freq_factor");
  rs.high_freq_factor = field("high_freq_factor");
  rs.original_max_position_embeddings = field("original_max_position_embeddings");
  if (rs.factor <= 0 || rs.low_freq_factor <= 0 || rs.original_max_position_embeddings <= 0 ||
      rs.high_freq_factor <= rs.low_freq_factor) {
    throw Error(r.path() +
                ": rope_scaling needs factor, low_freq_factor and "
                "original_max_position_embeddings > 0 and high_freq_factor > low_freq_factor");
  }
  return rs;
}

ModelConfig parse_config(const std::string& path) {
  const json cfg = read_json_file(path);
  if (!cfg.is_object()) throw Error(path + ": not a JSON object");
  const ConfigReader r(path, cfg);

  ModelConfig c;
  const json* archs = r.find(cfg, "architectures");
  if (!archs) throw r.missing("architectures");
  if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    throw r.bad_type("architectures", "a non-empty list of names", *archs);
  }
  c.architecture = (*archs)[0].get<std::string>();
  const bool llama = c.architecture == "LlamaForCausalLM";
  const bool mistral = c.architecture == "MistralForCausalLM";
  const bool qwen2 = c.architecture == "Qwen2ForCausalLM";
  if (!llama && !mistral && !qwen2) {
    throw Error(path + ": architectures[0] '" + c.architecture +
                "' is not supported (supported: LlamaForCausalLM, MistralForCausalLM, "
                "Qwen2ForCausalLM)");
  }

  c.dim = r.positive("hidden_size");
  c.hidden_dim = r.positive("intermediate_size");
  c.n_layers = r.positive("num_hidden_layers");
  c.n_heads = r.positive("num_attention_heads");
  c.n_kv_heads = r.positive("num_key_value_heads", c.n_heads);
  c.vocab_size = r.positive("vocab_size");
  c.max_seq_len = r.positive("max_position_embeddings");
  // Some models (e.g. Mistral NeMo) set head_dim apart from hidden_size / heads.
  if (r.find(cfg, "head_dim")) {
    c.head_dim = r.positive("head_dim");
  } else if (c.dim % c.n_heads != 0) {
    throw Error(path + ": hidden_size " + std::to_string(c.dim) +
                " is not a multiple of num_attention_heads " + std::to_string(c.n_heads) +
                " and there is no head_dim");
  } else {
    c.head_dim = c.dim / c.n_heads;
  }
  if (c.head_dim % 2 != 0) {
    throw Error(path + ": head_dim " + std::to_string(c.head_dim) + " is odd; RoPE needs pairs");
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    throw Error(path + ": num_attention_heads " + std::to_string(c.n_heads) +
                " is not a multiple of num_key_value_heads " + std::to_string(c.n_kv_heads));
  }
  c.rope_theta = r.number("rope_theta", 10000.0);
  c.norm_eps = r.number("rms_norm_eps", 1e-6);  // Transformers' default for all three
  c.tied_embeddings = r.boolean("tie_word_embeddings", false);
  c.rope_scaling = parse_rope_scaling(r, cfg);
  c.rope_style = RopeStyle::HalfSplit;  // Transformers' rotate_half layout

  // The Transformer has SwiGLU feed-forward blocks and bias-free o_proj and
  // MLP; configs asking for anything else are refused rather than misread.
  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu") {
    throw Error(path + ": hidden_act '" + act + "' is not supported (supported: silu)");
  }
  if (r.boolean("mlp_bias", false)) {
    throw Error(path + ": mlp_bias true is not supported (MLP projections without bias only)");
  }
  if (qwen2) {
    // Qwen2 always has q/k/v biases (and none on o_proj); the config says nothing.
    c.attention_bias = true;
  } else if (r.boolean("attention_bias", false)) {
    // Llama's attention_bias also adds an o_proj bias, which Model has no slot for.
    throw Error(path + ": attention_bias true is not supported for " + c.architecture +
                " (it adds an o_proj bias)");
  }
  // Sliding-window attention (Mistral's sliding_window; Qwen2's only when
  // use_sliding_window) equals full causal attention on every sequence no
  // longer than the window. Rather than implement the window, the context is
  // capped at it, so Transformer::forward refuses a longer sequence instead of
  // silently computing something else. Calibration sequences are far shorter.
  if (mistral || (qwen2 && r.boolean("use_sliding_window", false))) {
    const int64_t window = r.integer("sliding_window", 0);
    if (window > 0) c.max_seq_len = std::min(c.max_seq_len, window);
  }
  return c;
}

// ---------------------------------------------------------------------------
// safetensors

size_t dtype_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

struct TensorEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // relative to the data buffer
};

// One memory-mapped safetensors file with its header parsed and every entry's
// extent checked against the file, so a truncated or corrupt file fails at
// open with the file and tensor named, not later with a crash.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path) : file_(MappedFile::open(path)) {
    const size_t size = file_->size();
    if (size < 8) {
      throw Error(path + ": " + std::to_string(size) +
                  " bytes is too short for a safetensors header length");
    }
    uint64_t header_len = 0;
    std::memcpy(&header_len, file_->data(), 8);  // little-endian, as is the host
    if (header_len > size - 8) {
      throw Error(path + ": bad header length " + std::to_string(header_len) +
                  ": the file has only " + std::to_string(size - 8) +
                  " bytes after the 8-byte length (truncated, or not a safetensors file?)");
    }
    data_start_ = 8 + header_len;
    const size_t buffer_size = size - data_start_;
    const auto* begin = reinterpret_cast<const char*>(file_->data()) + 8;
    json header;
    try {
      header = json::parse(begin, begin + header_len);
    } catch (const json::parse_error& e) {
      throw Error(path + ": malformed header JSON: " + e.what());
    }
    if (!header.is_object()) throw Error(path + ": the header is not a JSON object");

    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      const std::string where = path + ": tensor '" + name + "'";
      const auto dtype = entry.find("dtype");
      const auto shape = entry.find("shape");
      const auto offsets = entry.find("data_offsets");
      if (!entry.is_object() || dtype == entry.end() || !dtype->is_string() ||
          shape == entry.end() || !shape->is_array() || offsets == entry.end() ||
          !offsets->is_array() || offsets->size() != 2) {
        throw Error(where + ": header entry needs dtype, shape and data_offsets [begin, end]: " +
                    entry.dump());
      }
      TensorEntry t;
      t.dtype = dtype->get<std::string>();
      uint64_t count = 1;
      for (const json& d : *shape) {
        if (!d.is_number_unsigned()) throw Error(where + ": bad shape " + shape->dump());
        t.shape.push_back(d.get<int64_t>());
        if (__builtin_mul_overflow(count, d.get<uint64_t>(), &count)) {
          throw Error(where + ": shape " + shape->dump() + " overflows");
        }
      }
      for (const json& o : *offsets) {
        if (!o.is_number_unsigned()) throw Error(where + ": bad data_offsets " + offsets->dump());
      }
      const auto b = (*offsets)[0].get<uint64_t>(), e = (*offsets)[1].get<uint64_t>();
      if (b > e || e > buffer_size) {
        throw Error(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                    "] lie outside the " + std::to_string(buffer_size) +
                    "-byte data buffer (truncated file?)");
      }
      // Unknown dtypes are refused when (and only if) the tensor is loaded.
      if (const size_t es = dtype_size(t.dtype); es != 0) {
        uint64_t bytes = 0;
        if (__builtin_mul_overflow(count, es, &bytes) || bytes != e - b) {
          throw Error(where + ": data_offsets span " + std::to_string(e - b) + " bytes but " +
                      t.dtype + " " + shape->dump() + " needs " + std::to_string(count) + " × " +
                      std::to_string(es));
        }
      }
      t.begin = b;
      t.end = e;
      entries_.emplace(name, std::move(t));
    }
  }

  const std::string& path() const { return file_->path(); }
  const TensorEntry* find(const std::string& name) const {
    const auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second;
  }

  // The tensor as float32 with `expected` shape. F32 data is viewed in place
  // in the mapping when aligned; F16/BF16 is widened with one copy.
  torch::Tensor load(const std::string& name, const std::vector<int64_t>& expected) const {
    const TensorEntry* t = find(name);
    if (!t) throw Error(path() + ": no tensor '" + name + "'");
    if (t->shape != expected) {
      throw Error(path() + ": tensor '" + name + "' has shape " + shape_string(t->shape) +
                  ", expected " + shape_string(expected));
    }
    torch::ScalarType type;
    if (t->dtype == "F32") {
      type = torch::kFloat32;
    } else if (t->dtype == "F16") {
      type = torch::kFloat16;
    } else if (t->dtype == "BF16") {
      type = torch::kBFloat16;
    } else {
      throw Error(path() + ": tensor '" + name + "' has dtype " + t->dtype +
                  ", not supported (F32, F16, BF16)");
    }
    const std::byte* data = file_->data() + data_start_ + t->begin;
    const size_t bytes = t->end - t->begin;
    torch::Tensor raw;
    // The format does not align the data buffer (the header length is
    // arbitrary), and viewing a misaligned float is undefined behaviour, so
    // such tensors are copied into an aligned buffer instead.
    if (reinterpret_cast<uintptr_t>(data) % torch::elementSize(type) == 0) {
      auto keep_alive = file_;
      raw = torch::from_blob(
          const_cast<std::byte*>(data), t->shape, [keep_alive](void*) {}, type);
    } else {
      raw = torch::empty(t->shape, type);
      std::memcpy(raw.data_ptr(), data, bytes);
    }
    return type == torch::kFloat32 ? raw : raw.to(torch::kFloat32);
  }

 private:
  std::shared_ptr<const MappedFile> file_;
  size_t data_start_ = 0;
  std::map<std::string, TensorEntry> entries_;
};

// Where each tensor lives: one model.safetensors, or the shards named by
// model.safetensors.index.json (opened once each, on first use).
class WeightSource {
 public:
  explicit WeightSource(const fs::path& dir) : dir_(dir) {
    const fs::path single = dir / "model.safetensors";
    const fs::path index = dir / "model.safetensors.index.json";
    if (fs::exists(index)) {
      index_path_ = index.string();
      const json j = read_json_file(index_path_);
      const auto map = j.find("weight_map");
      if (!j.is_object() || map == j.end() || !map->is_object()) {
        throw Error(index_path_ + ": missing field 'weight_map' (tensor name -> shard file)");
      }
      for (const auto& [name, shard] : map->items()) {
        if (!shard.is_string()) {
          throw Error(index_path_ + ": weight_map['" + name + "'] must be a file name, got " +
                      shard.dump());
        }
        weight_map_[name] = shard.get<std::string>();
      }
    } else if (fs::exists(single)) {
      single_ = single.string();
    } else {
      throw Error(dir.string() +
                  ": no model.safetensors or model.safetensors.index.json (only safetensors "
                  "weights are supported)");
    }
  }

  torch::Tensor get(const std::string& name, const std::vector<int64_t>& shape) {
    std::string file = single_;
    if (!index_path_.empty()) {
      const auto it = weight_map_.find(name);
      if (it == weight_map_.end()) {
        throw Error("missing tensor '" + name + "': not in the weight_map of " + index_path_);
      }
      file = (dir_ / it->second).string();
    }
    SafetensorsFile& f = shard(file);
    const TensorEntry* entry = f.find(name);
    if (!entry) {
      throw Error("missing tensor '" + name + "': searched " + file +
                  (index_path_.empty() ? "" : " (named for it by " + index_path_ + ")"));
    }
    torch::Tensor t = f.load(name, shape);
    elements_by_dtype_[entry->dtype] += t.numel();
    return t;
  }

  // The stored dtype holding most of the weights loaded so far (checkpoints
  // sometimes keep norms in float32 beside bf16 projections).
  std::string weight_dtype() const {
    std::string best;
    int64_t most = -1;
    for (const auto& [dtype, n] : elements_by_dtype_) {
      if (n > most) most = n, best = dtype;
    }
    if (best == "BF16") return "bfloat16";
    if (best == "F16") return "float16";
    return "float32";
  }

 private:
  SafetensorsFile& shard(const std::string& file) {
    auto& slot = shards_[file];
    if (!slot) slot = std::make_unique<SafetensorsFile>(file);
    return *slot;
  }

  fs::path dir_;
  std::string single_, index_path_;
  std::map<std::string, std::string> weight_map_;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, int64_t> elements_by_dtype_;
};

std::string base_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "dir/" normalizes to "dir/"
  return p.filename().string();
}

}  // namespace

Model load_hf(const std::string& directory) {
  const fs::path dir(directory);
  ModelConfig c = parse_config((dir / "config.json").string());
  c.name = base_name(directory);
  WeightSource w(dir);

  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  Model m;
  m.embedding = w.get("model.embed_tokens.weight", {c.vocab_size, c.dim});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights lw;
    lw.attn_norm = w.get(p + "input_layernorm.weight", {c.dim});
    lw.wq = w.get(p + "self_attn.q_proj.weight", {q_dim, c.dim});
    lw.wk = w.get(p + "self_attn.k_proj.weight", {kv_dim, c.dim});
    lw.wv = w.get(p + "self_attn.v_proj.weight", {kv_dim, c.dim});
    lw.wo = w.get(p + "self_attn.o_proj.weight", {c.dim, q_dim});
    if (c.attention_bias) {
      lw.bq = w.get(p + "self_attn.q_proj.bias", {q_dim});
      lw.bk = w.get(p + "self_attn.k_proj.bias", {kv_dim});
      lw.bv = w.get(p + "self_attn.v_proj.bias", {kv_dim});
    }
    lw.ffn_norm = w.get(p + "post_attention_layernorm.weight", {c.dim});
    lw.w1 = w.get(p + "mlp.gate_proj.weight", {c.hidden_dim, c.dim});
    lw.w3 = w.get(p + "mlp.up_proj.weight", {c.hidden_dim, c.dim});
    lw.w2 = w.get(p + "mlp.down_proj.weight", {c.dim, c.hidden_dim});
    m.layers.push_back(std::move(lw));
  }
  m.final_norm = w.get("model.norm.weight", {c.dim});
  // Tied checkpoints usually omit lm_head.weight; when present it is the
  // embedding again, and Transformers ignores it in favour of the tie.
  m.classifier = c.tied_embeddings ? m.embedding : w.get("lm_head.weight", {c.vocab_size, c.dim});
  c.weight_dtype = w.weight_dtype();
  m.config = std::move(c);
  return m;
}

Model load_model(const std::string& spec) {
  Model m;
  if (is_demo_model(spec)) {
    m = make_demo_model(spec);
    if (m.config.name.empty()) m.config.name = spec;
  } else if (fs::is_directory(spec)) {
    if (!fs::exists(fs::path(spec) / "config.json")) {
      throw Error(spec +
                  ": a directory without config.json (expected a Hugging Face model "
                  "directory, a llama2.c .bin file or builtin:demo)");
    }
    m = load_hf(spec);
  } else {
    m = load_llama2c(spec);
    if (m.config.name.empty()) m.config.name = base_name(spec);
  }
  return m;
}

}  // namespace kvtune::worker
