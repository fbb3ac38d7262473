// Keeps the deployment files (deploy/) true: every `kvtune <command> --option`
// they run must be an option of that command's --help, the Kubernetes
// manifests must parse, the systemd units must start something, whatever
// stops a worker must wait longer than the worker's --grace-seconds, and the
// workers' probes must check the status file the worker writes.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../support/process.h"

namespace {

namespace fs = std::filesystem;
using kvtune::testing::build_path;
using kvtune::testing::run_command;

const fs::path kDeployDir = fs::path(KVTUNE_SOURCE_DIR) / "deploy";

// One `kvtune <command> ...` found in a file.
struct Invocation {
  std::string where;              // file:line
  std::string command;            // coordinator, worker, "worker health", ...
  std::vector<std::string> args;  // the words after the command
  double stop_wait = 0;           // Kubernetes: the pod's terminationGracePeriodSeconds
};

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string shown(const fs::path& file) {
  return file.lexically_relative(KVTUNE_SOURCE_DIR).string();
}

// The option names (without "--") among `args`: "--db", "--api=HOST:PORT".
std::vector<std::string> option_names(const std::vector<std::string>& args) {
  std::vector<std::string> names;
  for (const std::string& arg : args) {
    if (arg.size() > 2 && arg.starts_with("--")) names.push_back(arg.substr(2, arg.find('=') - 2));
  }
  return names;
}

// The value after `--name` (or in `--name=value`), if given.
std::optional<std::string> option_value(const std::vector<std::string>& args,
                                        const std::string& name) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--" + name && i + 1 < args.size()) return args[i + 1];
    if (args[i].starts_with("--" + name + "=")) return args[i].substr(name.size() + 3);
  }
  return std::nullopt;
}

// `kvtune worker health ...` is the health check, with options of its own.
Invocation subcommand(Invocation call) {
  if (call.command == "worker" && !call.args.empty() && call.args[0] == "health") {
    call.command = "worker health";
    call.args.erase(call.args.begin());
  }
  return call;
}

// Shell-like text (scripts, units, Dockerfiles, Markdown): every `kvtune
// COMMAND` on a line (lines ending in a backslash continue on the next),
// with the words after it up to the end of that command (a newline, a
// backtick, `;`, `|`, `&`, `)` or a ` #` comment).
std::vector<Invocation> scan_text(const std::string& text, const std::string& name) {
  static const std::regex kCall(
      R"((?:^|[^A-Za-z0-9_.-])kvtune[ \t]+([a-z][a-z0-9-]*)(?=[^A-Za-z0-9_.:/-]|$))");
  static const std::regex kComment(R"([ \t]#)");
  std::vector<Invocation> found;
  std::istringstream in(text);
  std::string physical;
  int number = 0;
  while (std::getline(in, physical)) {
    ++number;
    const int first = number;
    std::string line = physical;
    while (!line.empty() && line.back() == '\\' && std::getline(in, physical)) {
      ++number;
      line.back() = ' ';
      line += physical;
    }
    for (auto it = std::sregex_iterator(line.begin(), line.end(), kCall);
         it != std::sregex_iterator(); ++it) {
      std::string rest = it->suffix().str();
      rest = rest.substr(0, rest.find_first_of("`;|&)"));
      std::smatch comment;
      if (std::regex_search(rest, comment, kComment)) {
        rest = rest.substr(0, static_cast<size_t>(comment.position(0)));
      }
      Invocation call;
      call.where = name + ":" + std::to_string(first);
      call.command = (*it)[1].str();
      std::istringstream words(rest);
      for (std::string word; words >> word;) {
        word.erase(
            std::remove_if(word.begin(), word.end(), [](char c) { return c == '"' || c == '\''; }),
            word.end());
        if (!word.empty()) call.args.push_back(word);
      }
      found.push_back(subcommand(std::move(call)));
    }
  }
  return found;
}

// node[key], or an undefined node when `node` is no map or lacks `key` (yaml-cpp
// throws when indexing into a missing key's result).
YAML::Node child(const YAML::Node& node, const char* key) {
  if (!node.IsDefined() || !node.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  const YAML::Node value = node[key];
  return value.IsDefined() ? value : YAML::Node(YAML::NodeType::Undefined);
}

YAML::Node pod_spec(const YAML::Node& doc) {
  return child(child(child(doc, "spec"), "template"), "spec");
}

// The Kubernetes probes a container has.
constexpr const char* kProbes[] = {"startupProbe", "readinessProbe", "livenessProbe"};

// `kvtune COMMAND ...` in `argv` (its first word named kvtune), if any.
std::optional<Invocation> kvtune_call(const std::vector<std::string>& argv) {
  const auto kvtune = std::find_if(argv.begin(), argv.end(), [](const std::string& word) {
    return fs::path(word).filename() == "kvtune";
  });
  if (kvtune == argv.end() || kvtune + 1 == argv.end()) return std::nullopt;
  Invocation call;
  call.command = *(kvtune + 1);
  call.args.assign(kvtune + 2, argv.end());
  return subcommand(std::move(call));
}

std::vector<std::string> words_of(const YAML::Node& sequence) {
  std::vector<std::string> words;
  for (const YAML::Node& word : sequence) words.push_back(word.as<std::string>());
  return words;
}

// Kubernetes workloads: each container's command + args (no command: the
// image's entrypoint, `kvtune`), and the command of each of its exec probes
// (where: "... container NAME, livenessProbe)").
std::vector<Invocation> scan_yaml(const fs::path& file) {
  std::vector<Invocation> found;
  int index = 0;
  for (const YAML::Node& doc : YAML::LoadAllFromFile(file.string())) {
    ++index;
    const YAML::Node pod = pod_spec(doc);
    if (!pod.IsMap()) continue;
    // Kubernetes' default is 30 s.
    const double stop_wait = child(pod, "terminationGracePeriodSeconds").as<double>(30);
    for (const char* list : {"initContainers", "containers"}) {
      for (const YAML::Node& container : child(pod, list)) {
        std::vector<std::string> argv;
        const YAML::Node command = child(container, "command");
        if (command.IsSequence()) {
          for (const YAML::Node& word : command) argv.push_back(word.as<std::string>());
        } else {
          argv.push_back("kvtune");
        }
        for (const std::string& word : words_of(child(container, "args"))) argv.push_back(word);
        const std::string where = shown(file) + " (document " + std::to_string(index) +
                                  ", container " + child(container, "name").as<std::string>("?");
        if (std::optional<Invocation> call = kvtune_call(argv)) {
          call->where = where + ")";
          call->stop_wait = stop_wait;
          found.push_back(std::move(*call));
        }
        for (const char* probe : kProbes) {
          const YAML::Node exec = child(child(container, probe), "exec");
          if (std::optional<Invocation> call = kvtune_call(words_of(child(exec, "command")))) {
            call->where = where + ", " + probe + ")";
            call->stop_wait = stop_wait;
            found.push_back(std::move(*call));
          }
        }
      }
    }
  }
  return found;
}

// `kvtune COMMAND --help`, run once per command.
const kvtune::testing::CommandResult& help(const std::string& command) {
  static std::map<std::string, kvtune::testing::CommandResult> cache;
  auto it = cache.find(command);
  if (it == cache.end()) {
    it = cache.emplace(command, run_command(build_path("kvtune") + " " + command + " --help", true))
             .first;
  }
  return it->second;
}

// The options a --help lists, as Boost.Program_options prints them:
// "  --db arg (=kvtune.db)", "  -o [ --out ] PATH".
std::set<std::string> help_options(const std::string& text) {
  static const std::regex kOption(R"(^[ \t]+(?:-[A-Za-z0-9] \[ )?--([a-z0-9][a-z0-9-]*))");
  std::set<std::string> names;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, kOption)) names.insert(m[1].str());
  }
  return names;
}

// Every option of every invocation that its command's --help does not list.
std::vector<std::string> problems(const std::vector<Invocation>& calls) {
  std::vector<std::string> found;
  for (const Invocation& call : calls) {
    const std::vector<std::string> names = option_names(call.args);
    if (names.empty()) continue;  // prose ("the kvtune coordinator"), or nothing to check
    const auto& result = help(call.command);
    if (result.exit_code != 0) {
      found.push_back(call.where + ": `kvtune " + call.command + " --help` failed (" +
                      std::to_string(result.exit_code) + "): " + result.output);
      continue;
    }
    const std::set<std::string> known = help_options(result.output);
    for (const std::string& name : names) {
      if (!known.contains(name)) {
        found.push_back(call.where + ": kvtune " + call.command + " has no option --" + name);
      }
    }
  }
  return found;
}

std::vector<fs::path> deploy_files() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(kDeployDir)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

bool is_yaml(const fs::path& file) {
  return file.extension() == ".yaml" || file.extension() == ".yml";
}

std::vector<Invocation> all_invocations() {
  std::vector<Invocation> calls;
  for (const fs::path& file : deploy_files()) {
    for (Invocation& call : scan_text(read_text(file), shown(file))) {
      calls.push_back(std::move(call));
    }
    if (is_yaml(file)) {
      for (Invocation& call : scan_yaml(file)) calls.push_back(std::move(call));
    }
  }
  return calls;
}

// `Key=value` lines of a systemd unit, in order.
std::vector<std::pair<std::string, std::string>> unit_settings(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> settings;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && line.back() == '\\') {
      std::string next;
      if (!std::getline(in, next)) break;
      line.back() = ' ';
      line += next;
    }
    if (line.empty() || line[0] == '#' || line[0] == ';' || line[0] == '[') continue;
    const size_t equals = line.find('=');
    if (equals != std::string::npos) {
      settings.emplace_back(line.substr(0, equals), line.substr(equals + 1));
    }
  }
  return settings;
}

// A systemd time span in seconds ("150", "150s", "2min 30s"); nullopt if unparsed.
std::optional<double> systemd_seconds(const std::string& text) {
  static const std::regex kPart(R"(([0-9.]+)[ \t]*(s|sec|m|min|h)?)");
  double total = 0;
  bool any = false;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kPart);
       it != std::sregex_iterator(); ++it) {
    const std::string unit = (*it)[2].str();
    const double factor = unit == "h" ? 3600 : (unit == "m" || unit == "min") ? 60 : 1;
    total += std::stod((*it)[1].str()) * factor;
    any = true;
  }
  return any ? std::optional<double>(total) : std::nullopt;
}

// The default of `kvtune COMMAND --help`'s numeric --OPTION.
double help_default(const std::string& command, const std::string& option) {
  const std::regex pattern("--" + option + R"( arg \(=([0-9.]+)\))");
  std::smatch m;
  const std::string& text = help(command).output;
  if (!std::regex_search(text, m, pattern)) {
    ADD_FAILURE() << "no --" << option << " default in `kvtune " << command << " --help`:\n"
                  << text;
    return 0;
  }
  return std::stod(m[1].str());
}

// The worker's --grace-seconds in `args`, else the default its --help shows.
double worker_grace(const std::vector<std::string>& args) {
  if (const auto value = option_value(args, "grace-seconds")) return std::stod(*value);
  return help_default("worker", "grace-seconds");
}

// --- the scanner itself: it must find, and fail on, what it is meant to ---

TEST(DeployScanner, FindsCommandsAcrossLineContinuationsAndStopsAtTheirEnd) {
  const auto calls = scan_text(
      "ExecStart=/opt/kvtune/bin/kvtune coordinator --db /d \\\n"
      "    --api=0.0.0.0:8470 # a comment --not-an-option\n"
      "CUDA_VISIBLE_DEVICES=1 kvtune worker --connect \"$C\" --id \"w-$i\" & pids+=(--x)\n"
      "the kvtune coordinator.key file, docker run kvtune:1 worker --y, `kvtune jobs`\n",
      "t");
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].where, "t:1");
  EXPECT_EQ(calls[0].command, "coordinator");
  EXPECT_EQ(option_names(calls[0].args), (std::vector<std::string>{"db", "api"}));
  EXPECT_EQ(calls[1].command, "worker");
  EXPECT_EQ(option_names(calls[1].args), (std::vector<std::string>{"connect", "id"}));
  EXPECT_EQ(option_value(calls[1].args, "id"), "w-$i");
  EXPECT_EQ(calls[2].command, "jobs");
  EXPECT_TRUE(calls[2].args.empty());
}

TEST(DeployScanner, TellsTheHealthCheckFromTheWorker) {
  const auto calls = scan_text(
      "kvtune worker health --health-file /tmp/h.json --max-task-s 60\n"
      "kvtune worker --health-file /tmp/h.json\n",
      "t");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].command, "worker health");
  EXPECT_EQ(option_names(calls[0].args), (std::vector<std::string>{"health-file", "max-task-s"}));
  EXPECT_EQ(calls[1].command, "worker");
  EXPECT_TRUE(problems(calls).empty());
  const auto misspelled = problems(scan_text("kvtune worker health --max-task 60\n", "t"));
  ASSERT_EQ(misspelled.size(), 1u);
  EXPECT_NE(misspelled[0].find("--max-task"), std::string::npos) << misspelled[0];
}

TEST(DeployScanner, ReportsAMisspelledOptionAndAnUnknownCommand) {
  const auto misspelled = problems(scan_text("kvtune coordinator --db x --bnid tcp://*:1\n", "t"));
  ASSERT_EQ(misspelled.size(), 1u);
  EXPECT_NE(misspelled[0].find("--bnid"), std::string::npos) << misspelled[0];

  const auto worker = problems(scan_text("kvtune worker \\\n  --conect tcp://h:1\n", "t"));
  ASSERT_EQ(worker.size(), 1u);
  EXPECT_NE(worker[0].find("--conect"), std::string::npos) << worker[0];

  EXPECT_EQ(problems(scan_text("kvtune wroker --connect tcp://h:1\n", "t")).size(), 1u);
  EXPECT_TRUE(problems(scan_text("kvtune keygen --out k && kvtune worker --id w\n", "t")).empty());
}

// --- the deployment files ---

TEST(DeployFiles, AllArePresent) {
  for (const char* name :
       {"README.md", "Dockerfile", "kubernetes/coordinator.yaml", "kubernetes/workers.yaml",
        "slurm/kvtune-workers.sbatch", "slurm/kvtune-coordinator.sbatch",
        "systemd/kvtune-coordinator.service", "systemd/kvtune-worker@.service"}) {
    EXPECT_TRUE(fs::is_regular_file(kDeployDir / name)) << (kDeployDir / name);
  }
}

TEST(DeployFiles, EveryKvtuneOptionTheyUseIsInThatCommandsHelp) {
  const std::vector<Invocation> calls = all_invocations();
  for (const std::string& problem : problems(calls)) ADD_FAILURE() << problem;

  // The scan must see the commands each file is there to run.
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"deploy/kubernetes/coordinator.yaml (", "coordinator"},
      {"deploy/kubernetes/workers.yaml (", "worker"},
      {"deploy/kubernetes/workers.yaml (", "worker health"},
      {"deploy/slurm/kvtune-workers.sbatch:", "worker"},
      {"deploy/slurm/kvtune-coordinator.sbatch:", "coordinator"},
      {"deploy/systemd/kvtune-coordinator.service:", "coordinator"},
      {"deploy/systemd/kvtune-worker@.service:", "worker"},
  };
  for (const auto& [prefix, command] : expected) {
    const bool seen = std::any_of(calls.begin(), calls.end(), [&](const Invocation& call) {
      return call.where.starts_with(prefix) && call.command == command &&
             !option_names(call.args).empty();
    });
    EXPECT_TRUE(seen) << "no `kvtune " << command << " --...` found in " << prefix;
  }
}

TEST(DeployFiles, KubernetesManifestsParse) {
  int workloads = 0;
  for (const fs::path& file : deploy_files()) {
    if (!is_yaml(file)) continue;
    std::vector<YAML::Node> docs;
    try {
      docs = YAML::LoadAllFromFile(file.string());
    } catch (const YAML::Exception& e) {
      ADD_FAILURE() << shown(file) << ": " << e.what();
      continue;
    }
    EXPECT_FALSE(docs.empty()) << shown(file);
    for (const YAML::Node& doc : docs) {
      ASSERT_TRUE(doc.IsMap()) << shown(file);
      EXPECT_TRUE(child(doc, "apiVersion").IsScalar()) << shown(file);
      EXPECT_TRUE(child(doc, "kind").IsScalar()) << shown(file);
      EXPECT_TRUE(child(child(doc, "metadata"), "name").IsScalar()) << shown(file);
      const YAML::Node pod = pod_spec(doc);
      if (!pod.IsMap()) continue;
      ++workloads;
      const std::string kind = child(doc, "kind").as<std::string>("");
      ASSERT_TRUE(child(pod, "containers").IsSequence()) << shown(file) << " " << kind;
      if (kind == "StatefulSet") {  // the coordinator: one replica, a volume, health probes
        const YAML::Node spec = child(doc, "spec");
        EXPECT_EQ(child(spec, "replicas").as<int>(0), 1) << shown(file);
        EXPECT_TRUE(child(spec, "volumeClaimTemplates").IsSequence()) << shown(file);
        const YAML::Node containers = child(pod, "containers");
        const YAML::Node container = containers[0];
        for (const char* probe : {"livenessProbe", "readinessProbe"}) {
          const YAML::Node path = child(child(child(container, probe), "httpGet"), "path");
          EXPECT_EQ(path.as<std::string>(""), "/healthz") << shown(file) << " " << probe;
        }
      }
    }
  }
  EXPECT_GE(workloads, 2);
}

// The coordinator's --lease-seconds in coordinator.yaml, else its --help default.
double coordinator_lease() {
  for (const Invocation& call : scan_yaml(kDeployDir / "kubernetes" / "coordinator.yaml")) {
    if (call.command != "coordinator") continue;
    if (const auto value = option_value(call.args, "lease-seconds")) return std::stod(*value);
  }
  return help_default("coordinator", "lease-seconds");
}

TEST(DeployFiles, WorkerProbesCheckTheStatusFileTheWorkerWrites) {
  const fs::path file = kDeployDir / "kubernetes" / "workers.yaml";
  const std::vector<Invocation> calls = scan_yaml(file);
  const auto worker = std::find_if(calls.begin(), calls.end(),
                                   [](const Invocation& call) { return call.command == "worker"; });
  ASSERT_NE(worker, calls.end()) << shown(file);
  const std::optional<std::string> status_file = option_value(worker->args, "health-file");
  ASSERT_TRUE(status_file.has_value()) << worker->where << ": no --health-file";
  std::set<std::string> probes;
  for (const Invocation& call : calls) {
    const size_t comma = call.where.rfind(", ");
    if (call.command != "worker health" || comma == std::string::npos) continue;
    const std::string probe = call.where.substr(comma + 2, call.where.size() - comma - 3);
    probes.insert(probe);
    EXPECT_EQ(option_value(call.args, "health-file"), status_file)
        << call.where << ": the probe reads another file than the worker writes";
    // Liveness restarts a worker stuck in one task past the coordinator's
    // lease, not before (the default --max-task-s is the default lease).
    if (probe == "livenessProbe") {
      const double max_task = std::stod(option_value(call.args, "max-task-s").value_or("600"));
      EXPECT_EQ(max_task, coordinator_lease()) << call.where;
    }
  }
  EXPECT_TRUE(probes.contains("readinessProbe")) << shown(file) << ": no readinessProbe";
  EXPECT_TRUE(probes.contains("livenessProbe")) << shown(file) << ": no livenessProbe";
  // Each probe's timeout leaves the check time to start (it loads LibTorch).
  for (const YAML::Node& doc : YAML::LoadAllFromFile(file.string())) {
    for (const YAML::Node& container : child(pod_spec(doc), "containers")) {
      for (const char* probe : kProbes) {
        const YAML::Node node = child(container, probe);
        if (!node.IsDefined()) continue;
        EXPECT_GE(child(node, "timeoutSeconds").as<int>(1), 5) << shown(file) << " " << probe;
      }
    }
  }
}

TEST(DeployFiles, SystemdUnitsHaveExecStart) {
  int units = 0;
  for (const fs::path& file : deploy_files()) {
    if (file.extension() != ".service") continue;
    ++units;
    std::map<std::string, std::string> settings;
    for (const auto& [key, value] : unit_settings(read_text(file))) settings[key] = value;
    EXPECT_TRUE(settings["ExecStart"].starts_with("/"))
        << shown(file) << ": ExecStart=" << settings["ExecStart"];
    EXPECT_NE(settings["ExecStart"].find("kvtune "), std::string::npos) << shown(file);
    EXPECT_EQ(settings["Restart"], "on-failure") << shown(file);
    EXPECT_EQ(settings["KillSignal"], "SIGTERM") << shown(file);
  }
  EXPECT_EQ(units, 2);
}

TEST(DeployFiles, WhatStopsAWorkerWaitsLongerThanItsGrace) {
  int checked = 0;
  for (const fs::path& file : deploy_files()) {
    if (is_yaml(file)) {
      for (const Invocation& call : scan_yaml(file)) {
        if (call.command != "worker") continue;
        ++checked;
        EXPECT_GT(call.stop_wait, worker_grace(call.args))
            << call.where << ": terminationGracePeriodSeconds is not above --grace-seconds";
      }
    }
    if (file.extension() == ".service") {
      const std::string text = read_text(file);
      std::optional<double> timeout = 90;  // systemd's DefaultTimeoutStopSec
      for (const auto& [key, value] : unit_settings(text)) {
        if (key == "TimeoutStopSec") timeout = systemd_seconds(value);
      }
      for (const Invocation& call : scan_text(text, shown(file))) {
        if (call.command != "worker") continue;
        ++checked;
        ASSERT_TRUE(timeout.has_value()) << shown(file) << ": unparsed TimeoutStopSec";
        EXPECT_GT(*timeout, worker_grace(call.args))
            << call.where << ": TimeoutStopSec is not above --grace-seconds";
      }
    }
  }
  EXPECT_GE(checked, 2);
}

}  // namespace
