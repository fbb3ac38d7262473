// The report folder: tables (JSON, CSV), exports of the recommended config,
// the HTML page, and writing them. The pictures are in report_pareto.cpp and
// report_sensitivity.cpp.
#include "report.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <vector>

#include "exports.h"
#include "kvtune/common/error.h"
#include "kvtune/common/precision.h"

namespace kvtune::report {
namespace {

namespace fs = std::filesystem;

std::string printf_text(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// A JSON value as one CSV/HTML cell: numbers round-trip, arrays joined by ';'
// (attn_rel_err: one value per layer; ',' would only add quoting).
std::string cell_text(const json& v) {
  if (v.is_null()) return "";
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<long long>());
  if (v.is_number()) return number_text(v.get<double>());
  if (v.is_string()) return v.get<std::string>();
  if (v.is_array()) {
    std::string out;
    for (const json& e : v) out += (out.empty() ? "" : ";") + cell_text(e);
    return out;
  }
  return v.dump();
}

// One frontier or baseline entry as flat named cells (the CSV's columns).
std::map<std::string, std::string> flat_row(const json& entry) {
  std::map<std::string, std::string> row;
  row["config"] = entry.value("config", "");
  row["layers"] = entry.value("layers", "");
  // (items() of a temporary would dangle: keep the objects alive here.)
  const json metrics = entry.value("metrics", json::object());
  const json validation = entry.value("validation", json::object());
  for (const auto& [key, value] : metrics.items()) {
    row[key] = cell_text(value);
  }
  if (entry.contains("predicted_kl")) row["predicted_kl"] = cell_text(entry["predicted_kl"]);
  for (const auto& [key, value] : validation.items()) {
    if (value.is_object()) {  // free_run {agreement, first_divergence, prompts}
      for (const auto& [sub, v] : value.items()) {
        row["validation_" + key + "_" + sub] = cell_text(v);
      }
    } else {
      row["validation_" + key] = cell_text(value);
    }
  }
  if (entry.contains("deploy")) {
    const json& d = entry["deploy"];
    row["deploy_format"] = d.value("format", "");
    row["deploy_released"] = cell_text(d.value("released", json()));
    row["deploy_needs"] = d.value("needs", "");
  }
  row["eval_key"] = entry.value("eval_key", "");
  return row;
}

// Column order: identity, the headline metrics, other metrics, the
// prediction, validation (headline first), deploy, the evaluation key.
std::tuple<int, int, std::string> column_rank(const std::string& name) {
  static const std::vector<std::string> kFirst = {
      "kind",   "config",    "layers", "avg_bits", "bytes_per_token", "kl",
      "kl_all", "delta_nll", "ppl_fp", "ppl_q",    "top1_agreement",  "tokens"};
  static const std::vector<std::string> kValidation = {"validation_kl",
                                                       "validation_kl_all",
                                                       "validation_delta_nll",
                                                       "validation_top1_agreement",
                                                       "validation_free_run_agreement",
                                                       "validation_free_run_first_divergence",
                                                       "validation_rank_flip"};
  const auto at = [&](const std::vector<std::string>& list) {
    return static_cast<int>(std::find(list.begin(), list.end(), name) - list.begin());
  };
  if (at(kFirst) < static_cast<int>(kFirst.size())) return {0, at(kFirst), name};
  if (name == "eval_key") return {5, 0, name};
  if (name.starts_with("deploy_")) return {4, 0, name};
  if (name.starts_with("validation_")) return {3, at(kValidation), name};
  if (name == "predicted_kl") return {2, 0, name};
  return {1, 0, name};
}

// A config's layer list, for the exports; empty when it does not parse.
std::vector<PrecisionPair> parse_layers(const std::string& layers) {
  if (layers.empty()) return {};
  const int count = static_cast<int>(std::count(layers.begin(), layers.end(), ',')) + 1;
  try {
    return parse_layer_config(layers, count);
  } catch (const Error&) {
    return {};
  }
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (out) out << text;
  if (out) out.close();
  if (!out) {
    throw Error("cannot write the report file " + path.string() + ": " + std::strerror(errno));
  }
}

// Only a finished search has a frontier, a profile and exports to show.
void check_reportable(const json& job) {
  const std::string id = job.value("id", "?"), state = job.value("state", "?");
  if (state != "done") {
    throw Error("job " + id + " is " + state +
                (state == "queued" || state == "running"
                     ? ": a report needs a finished job (kvtune status " + id + " --watch waits)"
                     : ": only a job that is done has a report"));
  }
  if (!job.contains("frontier")) {
    throw Error("job " + id + " is a " + job.value("kind", "?") +
                " job: only a search has a frontier to report");
  }
}

// The page's fixed style: readable without any external asset.
constexpr const char* kStyle = R"(
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td.name { text-align: left; font-family: monospace; word-break: break-all; max-width: 28em; }
tr.recommended td { background: #fff6d5; } tr.baseline td { color: #555; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; font-family: monospace; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.6em; overflow-x: auto; }
figure { margin: 1em 0; overflow-x: auto; } .note { color: #555; font-size: 0.9em; }
)";

std::string escaped_or(const json& v, const std::string& fallback) {
  return xml_escape(v.is_string() ? v.get<std::string>() : fallback);
}

// The facts at the top of the page.
std::string facts_html(const json& job) {
  const json spec = job.value("spec", json::object());
  const json search = job.value("search", json::object());
  std::string out = "<dl class=\"facts\">\n";
  const auto fact = [&](const std::string& name, const std::string& value) {
    out += "<dt>" + name + "</dt><dd>" + value + "</dd>\n";
  };
  fact("model", escaped_or(job.value("model", json()), "?") +
                    (job.value("model_info", json::object()).value("synthetic", false)
                         ? " (a synthetic, generated model, not a trained LM)"
                         : ""));
  fact("target", escaped_or(spec.value("target", json()), "kvtune"));
  if (spec.contains("scheme")) fact("scheme", xml_escape(spec["scheme"].dump()));
  fact("data", escaped_or(spec.value("data", json()), "?"));
  const double budget = max_bits(job);
  fact("budget", budget < 16 ? number_text(budget) + " average bits" : "none (16 bits)");
  fact("search", escaped_or(search.value("strategy", json()), "?") + ", " +
                     std::to_string(search.value("evaluations", 0)) + " evaluations");
  if (job.contains("validation")) {
    fact("validation data", escaped_or(job["validation"].value("data", json()), "?"));
  }
  return out + "</dl>\n";
}

// The recommended config and its exports.
std::string exports_html(const json& job, const std::vector<ExportFile>& exports) {
  const json* best = recommended(job);
  if (best == nullptr) return "<p>The frontier is empty: no config to recommend.</p>\n";
  const json& m = (*best)["metrics"];
  std::string out = "<p>The lowest KL within the budget: <code>" +
                    xml_escape(best->value("layers", "")) + "</code> (" +
                    printf_text("%.3f", m.value("avg_bits", 0.0)) + " average bits, KL " +
                    printf_text("%.4g", m.value("kl", 0.0)) + ").</p>\n";
  if (exports.empty() && best->contains("deploy")) {
    out += "<p class=\"note\">No deploy command: " +
           xml_escape((*best)["deploy"].value("error", std::string("none given"))) + "</p>\n";
  } else if (exports.empty()) {
    out +=
        "<p class=\"note\">No export format accepts this config: integer KV formats run "
        "only in kvtune's and KVTuner's own caches.</p>\n";
  }
  for (const ExportFile& e : exports) {
    std::string heading = e.deploy ? "deploy (" + e.format + ")" : e.format;
    if (e.deploy && best->contains("deploy") && !(*best)["deploy"].value("released", true)) {
      heading += ", needs " + (*best)["deploy"].value("needs", std::string("an unreleased engine"));
    }
    out += "<h3>" + xml_escape(heading) + ": <a href=\"" + xml_escape(e.file) + "\">" +
           xml_escape(e.file) + "</a></h3>\n<pre>" + xml_escape(e.text) + "</pre>\n";
  }
  return out;
}

// One row of the page's table.
std::string table_row(const json& entry, const std::string& kind, bool recommended_row,
                      bool predicted, bool validated) {
  const json& m = entry["metrics"];
  const auto num = [&](const json& obj, const char* key, const char* format) {
    return obj.contains(key) && obj[key].is_number() ? printf_text(format, obj[key].get<double>())
                                                     : std::string("-");
  };
  const std::string layers = entry.value("layers", "");
  std::string out = "<tr class=\"" + std::string(recommended_row ? "recommended" : kind) +
                    "\"><td class=\"name\">" + kind + "</td><td class=\"name\">" +
                    xml_escape(short_config_name(layers)) + "</td><td>" +
                    num(m, "avg_bits", "%.3f") + "</td><td>" + num(m, "bytes_per_token", "%.1f") +
                    "</td><td>" + num(m, "kl", "%.4g") + "</td>";
  if (predicted) out += "<td>" + num(entry, "predicted_kl", "%.4g") + "</td>";
  out += "<td>" + num(m, "delta_nll", "%.4g") + "</td><td>" + num(m, "top1_agreement", "%.4f") +
         "</td>";
  if (validated) {
    const json v = entry.value("validation", json::object());
    const json f = v.value("free_run", json::object());
    out += "<td>" + num(v, "kl", "%.4g") + (v.value("rank_flip", false) ? " *" : "") + "</td><td>" +
           num(f, "agreement", "%.3f") + "</td><td>" + num(f, "first_divergence", "%.1f") + "</td>";
  }
  return out + "</tr>\n";
}

std::string table_html(const json& job) {
  const json* best = recommended(job);
  const auto any = [&](const auto& has) {
    for (const char* field : {"frontier", "baselines"}) {
      for (const json& e : array_at(job, {field})) {
        if (has(e)) return true;
      }
    }
    return false;
  };
  const bool predicted = any([](const json& e) { return e.contains("predicted_kl"); });
  const bool validated = any([](const json& e) { return e.contains("validation"); });
  std::string out =
      "<table>\n<tr><th>kind</th><th>config</th><th>avg bits</th><th>bytes/token</th>"
      "<th>KL</th>";
  if (predicted) out += "<th>predicted KL</th>";
  out += "<th>&#916;NLL</th><th>top-1</th>";
  if (validated)
    out += "<th>validation KL</th><th>free-run agreement</th><th>first divergence</th>";
  out += "</tr>\n";
  for (const json& e : array_at(job, {"frontier"})) {
    out += table_row(e, "frontier", &e == best, predicted, validated);
  }
  for (const json& e : array_at(job, {"baselines"})) {
    out += table_row(e, "baseline", false, predicted, validated);
  }
  out += "</table>\n<p class=\"note\">KL: mean KL(fp &#8214; quantized), nats/token. ";
  if (predicted) out += "Predicted KL: the additive model's (per-layer KLs summed). ";
  if (validated)
    out +=
        "Validation columns: the same config on the validation data; * ranks differently there. ";
  return out + "Highlighted: the recommended config.</p>\n";
}

// An SVG to inline in the page: without its XML declaration.
std::string inline_svg(const std::string& svg) {
  const std::size_t start = svg.find("<svg");
  return start == std::string::npos ? svg : svg.substr(start);
}

}  // namespace

const json& array_at(const json& job, std::initializer_list<const char*> path) {
  static const json kEmpty = json::array();
  const json* at = &job;
  for (const char* key : path) {
    if (!at->is_object() || !at->contains(key)) return kEmpty;
    at = &(*at)[key];
  }
  return at->is_array() ? *at : kEmpty;
}

double max_bits(const json& job) {
  if (!job.contains("spec") || !job["spec"].contains("search")) return 16;
  const json& search = job["spec"]["search"];
  return search.is_object() ? search.value("max_bits", 16.0) : 16;
}

fs::path default_dir(const std::string& job_id) {
  return fs::path("kvtune-report") / job_id;
}

std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        // Control characters other than tab/newline are not allowed in XML 1.0.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') {
          out += '?';
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string csv_field(std::string_view text) {
  if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
  std::string out = "\"";
  for (char c : text) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string number_text(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : printf_text("%.17g", v);
}

std::string short_config_name(const std::string& layers) {
  std::vector<std::string> pairs;
  std::istringstream in(layers);
  for (std::string pair; std::getline(in, pair, ',');) pairs.push_back(pair);
  // llama.cpp's types all carry their engine's name, which the target says once.
  const std::string prefix = "llama.cpp:";
  if (std::all_of(pairs.begin(), pairs.end(),
                  [&](const std::string& p) { return p.find(prefix) != std::string::npos; })) {
    for (std::string& p : pairs) {
      for (std::size_t at; (at = p.find(prefix)) != std::string::npos;) p.erase(at, prefix.size());
    }
  }
  std::string out;
  for (std::size_t i = 0; i < pairs.size();) {
    std::size_t n = 1;
    while (i + n < pairs.size() && pairs[i + n] == pairs[i]) ++n;
    if (n == pairs.size()) return pairs[0];
    out += (out.empty() ? "" : ",") + pairs[i] + (n > 1 ? "*" + std::to_string(n) : "");
    i += n;
  }
  return out;
}

// A decade's tick label: 1e-3, ..., 0.1, 1, 10, 1e2.
std::string decade_label(int e) {
  if (e == -1) return "0.1";
  if (e == 0) return "1";
  if (e == 1) return "10";
  return "1e" + std::to_string(e);
}

// A KL in at most 6 characters for a heat-map cell: "3.1e-3", "0.42", "1.6".
std::string kl_label(double v) {
  if (v <= 0) return "0";
  char buf[32];
  if (v >= 0.1 && v < 100) {
    std::snprintf(buf, sizeof buf, v < 10 ? "%.2g" : "%.0f", v);
    return buf;
  }
  int e = static_cast<int>(std::floor(std::log10(v)));
  double m = v / std::pow(10.0, e);
  if (std::round(m * 10) >= 100) {  // 9.96 rounds to 10.0
    m /= 10;
    ++e;
  }
  std::snprintf(buf, sizeof buf, "%.1fe%d", m, e);
  return buf;
}

const json* recommended(const json& job) {
  const json* best = nullptr;
  for (const json& e : array_at(job, {"frontier"})) {
    const json m = e.value("metrics", json::object());
    const auto key = [](const json& x) {
      constexpr double kNone = std::numeric_limits<double>::infinity();
      return std::pair(x.value("kl", kNone), x.value("avg_bits", kNone));
    };
    if (best == nullptr || key(m) < key((*best)["metrics"])) best = &e;
  }
  return best;
}

std::string export_file_name(std::string_view format) {
  static const std::map<std::string, std::string, std::less<>> kNames = {
      {"vllm", "deploy-vllm.sh"},
      {"sglang-launch", "deploy-sglang-launch.sh"},
      {"trtllm-serve", "deploy-trtllm-serve.yaml"},
      {"llama.cpp", "deploy-llama.cpp.sh"},
      {"ik_llama.cpp", "deploy-ik_llama.cpp.sh"},
      {"kvtuner", "kvtuner.yaml"},
      {"trtllm", "trtllm-kv-cache-dtype.txt"},
      {"sglang", "sglang-kv-cache-per-layer-dtype.yaml"},
      {"hf_quant_config", "hf_quant_config.json"},
      {"hf_config_json", "config-quantization_config.json"}};
  if (auto it = kNames.find(format); it != kNames.end()) return it->second;
  std::string safe;
  for (char c : format) safe += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
  return "export-" + safe + ".txt";
}

std::vector<ExportFile> recommended_exports(const json& job) {
  const json* best = recommended(job);
  if (best == nullptr) return {};
  std::vector<ExportFile> out;
  // An engine target's frontier carries the engine's own command.
  if (best->contains("deploy")) {
    const json& d = (*best)["deploy"];
    if (d.contains("text")) {
      const std::string format = d.value("format", "deploy");
      out.push_back({format, export_file_name(format), d["text"].get<std::string>(), true});
    }
    return out;
  }
  // kvtune / kvtuner targets: each per-layer format that can express the config.
  const std::vector<PrecisionPair> layers = parse_layers(best->value("layers", ""));
  if (layers.empty()) return out;
  for (const char* format : {"kvtuner", "trtllm", "sglang", "hf_quant_config", "hf_config_json"}) {
    try {
      out.push_back(
          {format, export_file_name(format), exports::export_config(format, layers), false});
    } catch (const Error&) {
      // The format's rules refuse this config (integer widths for an engine, KV16 for KVTuner).
    }
  }
  return out;
}

json frontier_json(const json& job, const std::vector<ExportFile>& exports) {
  const json spec = job.value("spec", json::object());
  json files = json::array();
  for (const ExportFile& e : exports) files.push_back({{"format", e.format}, {"file", e.file}});
  const json* best = recommended(job);
  return {{"id", job.value("id", "")},
          {"model", job.value("model", "")},
          {"target", spec.value("target", "kvtune")},
          {"max_bits", max_bits(job)},
          {"recommended", best != nullptr ? best->value("layers", "") : ""},
          {"exports", files},
          {"frontier", array_at(job, {"frontier"})},
          {"baselines", array_at(job, {"baselines"})}};
}

std::string frontier_csv(const json& job) {
  std::vector<std::map<std::string, std::string>> rows;
  std::set<std::string> names = {"kind"};
  for (const char* field : {"frontier", "baselines"}) {
    for (const json& e : array_at(job, {field})) {
      rows.push_back(flat_row(e));
      rows.back()["kind"] = field == std::string("frontier") ? "frontier" : "baseline";
      for (const auto& [name, value] : rows.back()) names.insert(name);
    }
  }
  std::vector<std::string> columns(names.begin(), names.end());
  std::stable_sort(columns.begin(), columns.end(),
                   [](const auto& a, const auto& b) { return column_rank(a) < column_rank(b); });
  std::string out;
  const auto line = [&](const auto& cell) {
    for (std::size_t c = 0; c < columns.size(); ++c) out += (c ? "," : "") + cell(columns[c]);
    out += "\r\n";  // RFC 4180's line break
  };
  line([](const std::string& name) { return csv_field(name); });
  for (const auto& row : rows) {
    line([&](const std::string& name) {
      const auto it = row.find(name);
      return it == row.end() ? std::string() : csv_field(it->second);
    });
  }
  return out;
}

std::string index_html(const json& job, const std::vector<ExportFile>& exports) {
  const std::string id = xml_escape(job.value("id", ""));
  std::string out =
      "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n"
      "<meta charset=\"utf-8\"/>\n<title>kvtune report " +
      id + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n<h1>kvtune report: job " +
      id + "</h1>\n" + facts_html(job);
  out += "<h2>Recommended config</h2>\n" + exports_html(job, exports);
  out += "<h2>Pareto frontier</h2>\n<figure>" + inline_svg(pareto_svg(job)) +
         "</figure>\n<p class=\"note\">Also as <a href=\"pareto.svg\">pareto.svg</a>.</p>\n";
  out += "<h2>Layer sensitivity</h2>\n<figure>" + inline_svg(sensitivity_svg(job)) +
         "</figure>\n<p class=\"note\">Also as <a href=\"sensitivity.svg\">sensitivity.svg"
         "</a>.</p>\n";
  out += "<h2>Frontier and uniform baselines</h2>\n" + table_html(job) +
         "<p class=\"note\">Every metric: <a href=\"frontier.csv\">frontier.csv</a>, "
         "<a href=\"frontier.json\">frontier.json</a>.</p>\n";
  return out + "</body>\n</html>\n";
}

void write_report(const json& job, const fs::path& dir) {
  check_reportable(job);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    throw Error("cannot create the report folder " + dir.string() + ": " +
                (ec ? ec.message() : "not a directory"));
  }
  const std::vector<ExportFile> exports = recommended_exports(job);
  write_file(dir / "frontier.json", frontier_json(job, exports).dump(2) + "\n");
  write_file(dir / "frontier.csv", frontier_csv(job));
  for (const ExportFile& e : exports) {
    write_file(dir / e.file, e.text.ends_with('\n') ? e.text : e.text + "\n");
  }
  write_file(dir / "pareto.svg", pareto_svg(job));
  write_file(dir / "sensitivity.svg", sensitivity_svg(job));
  write_file(dir / "index.html", index_html(job, exports));
}

}  // namespace kvtune::report
