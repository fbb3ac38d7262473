// The report folder of a finished search job: what a person looks at after
// `kvtune run` or `kvtune report JOB_ID`. Everything is computed from the job
// JSON of `GET /v1/jobs/{id}` (full view), so a report can be written for any
// job of any coordinator, now or later, without the store.
//
// The folder holds:
//   frontier.json, frontier.csv  every frontier and uniform baseline config with its metrics
//   pareto.svg                   KL (log axis) against average bits
//   sensitivity.svg              the profile as a heat map, layers x candidate pairs
//   <export files>               the recommended config in each format that applies
//   index.html                   one self-contained page with all of the above
// The pictures are plain SVG written here (no plotting runtime on the
// user's machine); every file is well-formed XML and references only files
// inside the folder.
#pragma once

#include <filesystem>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace kvtune::report {

using json = nlohmann::json;

// Where `kvtune run` writes a job's report unless told: ./kvtune-report/<id>.
std::filesystem::path default_dir(const std::string& job_id);

// Writes the report of `job` into `dir` (created when missing; files of an
// earlier report there are overwritten). Throws kvtune::Error naming the
// path when it cannot write, and naming the job when it is not a search
// that is done (only a finished search has a frontier to show).
void write_report(const json& job, const std::filesystem::path& dir);

// The recommended config: the lowest-KL frontier entry (the frontier holds
// only configs within the job's budget); nullptr for an empty frontier.
const json* recommended(const json& job);

// One export of the recommended config, as written into the folder.
struct ExportFile {
  std::string format;  // exports::export_config's id: vllm, kvtuner, hf_quant_config, ...
  std::string file;    // its file name in the folder
  std::string text;
  bool deploy = false;  // the engine target's own deploy command (not an alternative export)
};
// The exports that apply to the recommended config: an engine target's
// `deploy.text`; for the kvtune and kvtuner targets each per-layer format of
// coordinator/exports.h that accepts the config. Empty without a frontier.
std::vector<ExportFile> recommended_exports(const json& job);
// The file name an export format is written to, e.g. "deploy-vllm.sh".
std::string export_file_name(std::string_view format);

// frontier.json: {"id", "model", "target", "max_bits", "recommended",
// "exports": [{format, file}], "frontier": [...], "baselines": [...]}, the
// entries as the job has them (config, layers, metrics, validation, ...).
json frontier_json(const json& job, const std::vector<ExportFile>& exports);
// frontier.csv (RFC 4180): a header, then one row per frontier config, then
// per baseline; a `kind` column (frontier|baseline), the metrics as flat
// columns (validation_* for the validation data's), numbers as the shortest
// text that reads back to the same double.
std::string frontier_csv(const json& job);

// pareto.svg: KL on a log10 axis against average bits. One
// `<circle class="frontier" ...>` per frontier config (joined by a step
// line), one hollow `class="predicted"` marker per point of the additive
// model's frontier, the uniform baselines (`class="baseline"`) labelled, and
// the budget as a dashed vertical line when max_bits < 16. KL below 1e-6
// (KL 0 included) is drawn at 1e-6, and the picture says so.
std::string pareto_svg(const json& job);
// sensitivity.svg: the profile (each candidate pair on each layer alone) as
// a heat map, colour = log10 KL, pruned pairs crossed out, clusters of layers
// bracketed; a picture saying there is no profile when the strategy has none.
std::string sensitivity_svg(const json& job);
// index.html: the plots inlined, the table, the recommended config's exports.
std::string index_html(const json& job, const std::vector<ExportFile>& exports);

// Small pieces, exposed for the tests.
// The array at `path` in `job` (e.g. {"search", "grouping"}); empty when absent.
const json& array_at(const json& job, std::initializer_list<const char*> path);
// The search's average-bits budget (spec.search.max_bits; 16: none).
double max_bits(const json& job);
std::string xml_escape(std::string_view text);
std::string csv_field(std::string_view text);
// The shortest decimal text that reads back as `v` ("0.1", "1e-07").
std::string number_text(double v);
// A decade's tick label: "1e-3", "0.1", "1", "10", "1e2".
std::string decade_label(int exponent);
// A KL in at most 6 characters, for a heat-map cell: "3.1e-3", "0.42", "1.6".
std::string kl_label(double kl);
// A config as the report and the CLI name it: a uniform config's one pair
// ("KV4" for "KV4,KV4,KV4"), else its runs of pairs ("KV8*2,K8V4,KV4*3");
// llama.cpp's types without their "llama.cpp:" ("Kq8_0Vq4_0").
std::string short_config_name(const std::string& layers);

}  // namespace kvtune::report
