// Subcommands of the `kvtune` CLI. Each takes the arguments after its name
// and returns the process exit code.
#pragma once

#include <atomic>
#include <boost/program_options.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace kvtune::cli {

// Parses `args` into `vm`; prints the options and returns false for --help.
bool parse_options(
    const std::vector<std::string>& args, const boost::program_options::options_description& opts,
    boost::program_options::variables_map& vm,
    const boost::program_options::positional_options_description* positional = nullptr);

// `kvtune formats`: every KV format's storage cost and error on a synthetic cache.
int formats_command(const std::vector<std::string>& args);
// `kvtune fake-quant`: one layer's keys or values through one format, raw float32 in and out.
int fake_quant_command(const std::vector<std::string>& args);

// Replaces this process with `kvtune-worker <args...>` from the directory of
// the running executable, so arguments, output and exit code pass through.
// Returns only on failure (exit code 127, with the reason on stderr).
int exec_worker(const std::vector<std::string>& args);

// The cluster: `kvtune coordinator` (serves until SIGINT/SIGTERM) and the
// clients of its HTTP API.
int coordinator_command(const std::vector<std::string>& args);
int submit_command(const std::vector<std::string>& args);
int jobs_command(const std::vector<std::string>& args);
int status_command(const std::vector<std::string>& args);
int cancel_command(const std::vector<std::string>& args);
// `kvtune report JOB_ID [--out DIR]`: a finished search's report folder
// (coordinator/report.h), from the coordinator's API.
int report_command(const std::vector<std::string>& args);
int workers_command(const std::vector<std::string>& args);
// `kvtune registry list | show ID | best ID --max-bits B [--format F]`.
int registry_command(const std::vector<std::string>& args);

// Installs SIGINT/SIGTERM handlers that set the returned flag (and nothing
// else): for commands that serve until interrupted.
const std::atomic<bool>& stop_on_signals();

// `kvtune run`: a job on an embedded coordinator, store and local workers.
int run_command(const std::vector<std::string>& args);

// `v` with `digits` decimals ("%.*f").
std::string fixed(double v, int digits);
// A job (GET /v1/jobs/{id}) as a summary and a results table.
void print_job(const nlohmann::json& job);
// A config's per-layer list as the CLI names it: report::short_config_name,
// with " (all layers)" after a uniform config's one pair.
std::string config_display_name(const std::string& layers);
// True for the states a job does not leave: done, failed, cancelled.
bool job_finished(const std::string& state);

// A running job's progress from its `?view=summary`: phase (describe, profile
// layer l/L, generation g), evaluations done / planned, rate, ETA and the best
// config within the budget so far. On a terminal one live line on stderr;
// otherwise a plain line whenever the phase changes.
class ProgressLine {
 public:
  explicit ProgressLine(bool terminal);
  void update(const nlohmann::json& summary);
  // Clears the live line; without a terminal, says the final state (the
  // summary of the finished job) in one more line when it has not been said.
  void finish(const nlohmann::json& summary = nullptr);

 private:
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
  int first_done_ = -1;
  std::string last_line_, last_phase_;
};
// Makes spec[field] absolute when it is a relative path that exists here
// (workers open paths in their own working directory).
void absolutize_path(nlohmann::json& spec, const char* field);
// Appends each config file (KVTuner YAML preset, JSON list) to spec["configs"].
void add_config_files(nlohmann::json& spec, const std::vector<std::string>& files);

// `kvtune keygen --out PATH`: a CURVE key pair for off-host workers.
int keygen_command(const std::vector<std::string>& args);

}  // namespace kvtune::cli
