// The report folder as users get it: `kvtune run` on the demo model and on
// stories260K (README "Running a cluster"), and `kvtune report JOB_ID` of a
// coordinator's finished job. Each folder is checked as a whole: the JSON and
// the CSV parse and agree with each other and with the job, every SVG is
// well-formed XML with one frontier marker per frontier config, and the page
// references only files inside the folder.
#include <gtest/gtest.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <utility>

#include "../support/cluster.h"
#include "../support/csv.h"
#include "../support/temp_dir.h"

namespace kvtune::testing {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const std::string kModel = std::string(KVTUNE_SHARED_DIR) + "/models/stories260K.bin";

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// Elements named `name` with class `cls` in a parsed document.
int count_elements(xmlNodePtr node, const char* name, const char* cls) {
  int n = 0;
  for (xmlNodePtr c = node; c != nullptr; c = c->next) {
    if (c->type != XML_ELEMENT_NODE) continue;
    if (xmlStrcmp(c->name, BAD_CAST name) == 0) {
      xmlChar* value = xmlGetProp(c, BAD_CAST "class");
      if (value != nullptr && xmlStrcmp(value, BAD_CAST cls) == 0) ++n;
      xmlFree(value);
    }
    n += count_elements(c->children, name, cls);
  }
  return n;
}

// Parses `path` as XML; the number of `<circle class="frontier">`, or -1
// (with a test failure) when it is not well-formed.
int frontier_markers(const fs::path& path) {
  const std::string text = read_text(path);
  xmlDocPtr doc = xmlReadMemory(text.data(), static_cast<int>(text.size()), "report.xml", nullptr,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (doc == nullptr) {
    const xmlError* e = xmlGetLastError();
    ADD_FAILURE() << path << " is not well-formed XML: " << (e ? e->message : "?");
    return -1;
  }
  const int n = count_elements(xmlDocGetRootElement(doc), "circle", "frontier");
  xmlFreeDoc(doc);
  return n;
}

// frontier.json against the job, frontier.csv against frontier.json.
void expect_tables_agree(const fs::path& dir, const json& job) {
  std::ifstream in(dir / "frontier.json");
  const json written = json::parse(in);
  EXPECT_EQ(written["id"], job["id"]);
  EXPECT_EQ(written["frontier"], job["frontier"]);
  EXPECT_EQ(written["baselines"], job["baselines"]);
  std::vector<json> entries;
  for (const json& e : written["frontier"]) entries.push_back(e);
  for (const json& e : written["baselines"]) entries.push_back(e);

  const auto rows = parse_csv(read_text(dir / "frontier.csv"));
  ASSERT_EQ(rows.size(), entries.size() + 1);
  const auto& header = rows[0];
  const auto column = [&](const std::string& name) {
    return static_cast<std::size_t>(std::find(header.begin(), header.end(), name) - header.begin());
  };
  for (const char* name : {"kind", "layers", "kl", "avg_bits", "delta_nll", "top1_agreement"}) {
    ASSERT_LT(column(name), header.size()) << name;
  }
  for (std::size_t r = 1; r < rows.size(); ++r) {
    const json& e = entries[r - 1];
    ASSERT_EQ(rows[r].size(), header.size());
    EXPECT_EQ(rows[r][column("kind")], r <= written["frontier"].size() ? "frontier" : "baseline");
    EXPECT_EQ(rows[r][column("layers")], e["layers"]);
    for (const char* metric : {"kl", "avg_bits", "delta_nll", "top1_agreement"}) {
      EXPECT_EQ(std::stod(rows[r][column(metric)]), e["metrics"][metric].get<double>()) << metric;
    }
  }
}

// The whole folder of a finished search `job`.
void expect_report_folder(const fs::path& dir, const json& job) {
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  expect_tables_agree(dir, job);
  int svgs = 0;
  for (const auto& file : fs::directory_iterator(dir)) {
    if (file.path().extension() != ".svg") continue;
    ++svgs;
    const int markers = frontier_markers(file.path());
    // Only the Pareto plot draws the frontier; the heat map has no markers.
    EXPECT_EQ(markers,
              file.path().filename() == "pareto.svg" ? static_cast<int>(job["frontier"].size()) : 0)
        << file.path();
  }
  EXPECT_EQ(svgs, 2);
  EXPECT_GE(frontier_markers(dir / "index.html"), 0);  // well-formed too

  // Every src= and href= names a file of the folder: no URL, no path out of it.
  const std::string html = read_text(dir / "index.html");
  const std::regex reference(R"re((src|href)\s*=\s*["']([^"']*)["'])re");
  int references = 0;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), reference);
       it != std::sregex_iterator(); ++it, ++references) {
    const std::string target = (*it)[2];
    EXPECT_EQ(target.find_first_of("/:\\"), std::string::npos) << target;
    EXPECT_TRUE(fs::is_regular_file(dir / target)) << target;
  }
  EXPECT_GE(references, 4);
  EXPECT_EQ(html.find("url("), std::string::npos);  // no CSS fetch either
  // The recommended config's exports are in the folder and on the page.
  std::ifstream in(dir / "frontier.json");
  for (const json& e : json::parse(in)["exports"]) {
    EXPECT_TRUE(fs::is_regular_file(dir / e["file"].get<std::string>())) << e;
    EXPECT_NE(html.find(e["file"].get<std::string>()), std::string::npos) << e;
  }
}

// `kvtune run ... --json` with stderr to a file: the job, and stderr's text.
std::pair<json, std::string> run_json(const std::string& arguments, const TempDir& dir) {
  const std::string err = dir.file("run.err");
  const CommandResult r = run_command(build_path("kvtune") + " run " + arguments + " 2>" + err);
  const std::string stderr_text = read_text(err);
  EXPECT_EQ(r.exit_code, 0) << r.output << stderr_text;
  // stdout holds only the job's JSON; the report line goes to stderr.
  return {json::parse(r.output), stderr_text};
}

TEST(ReportRun, RunWritesTheReportOfTheDemoSearch) {
  const TempDir dir("kvtune-report-run");
  const fs::path out = dir.path() / "demo-report";
  const auto [job, err] = run_json(
      "--model builtin:demo --data sample:2:32:0 --max-bits 5 --max-evaluations 60 "
      "--workers 2 --json --report " +
          out.string(),
      dir);
  ASSERT_EQ(job["state"], "done");
  EXPECT_NE(err.find("report: " + (out / "index.html").string() + "\n"), std::string::npos) << err;
  expect_report_folder(out, job);
  // The demo search has a profile: the heat map shows it; the budget is drawn.
  EXPECT_NE(read_text(out / "sensitivity.svg").find("class=\"cell\""), std::string::npos);
  EXPECT_NE(read_text(out / "pareto.svg").find("class=\"budget\""), std::string::npos);
}

TEST(ReportRun, RunWritesTheReportOfStories260KInTheDefaultFolder) {
  if (!fs::exists(kModel)) {
    GTEST_SKIP() << "needs " << kModel << " (the ../shared directory beside the project)";
  }
  const TempDir dir("kvtune-report-run");
  // Without --report: ./kvtune-report/<job id>/ in the working directory.
  const std::string err = dir.file("run.err");
  const CommandResult r = run_command(
      "cd " + dir.path().string() + " && " + build_path("kvtune") + " run --model " + kModel +
      " --data sample:2:32:0 --max-bits 4 --max-evaluations 60 --workers 2 " + "--json 2>" + err);
  ASSERT_EQ(r.exit_code, 0) << r.output << read_text(err);
  const json job = json::parse(r.output);
  ASSERT_EQ(job["state"], "done");
  const fs::path out = dir.path() / "kvtune-report" / job["id"].get<std::string>();
  EXPECT_NE(
      read_text(err).find("report: kvtune-report/" + job["id"].get<std::string>() + "/index.html"),
      std::string::npos)
      << read_text(err);
  expect_report_folder(out, job);
}

TEST(ReportRun, ReportCommandWritesTheFolderOfAFinishedJobAndRefusesAnUnfinishedOne) {
  const TempDir dir("kvtune-report-run");
  CoordinatorProcess coordinator(dir.file("db"), dir.file("coordinator.log"));
  const std::string id =
      coordinator.submit({{"kind", "search"},
                          {"model", "builtin:demo"},
                          {"data", "sample:2:32:0"},
                          {"search", {{"max_bits", 5}, {"max_evaluations", 60}}}});
  const std::string report = build_path("kvtune") + " report " + id + " --api " + coordinator.api();
  // No worker yet: the job is queued, and there is nothing to report.
  const CommandResult queued = run_command(report + " --out " + dir.file("early"), true);
  EXPECT_EQ(queued.exit_code, 1) << queued.output;
  EXPECT_NE(queued.output.find("job " + id + " is queued"), std::string::npos) << queued.output;
  EXPECT_FALSE(fs::exists(dir.file("early")));

  const auto worker = start_worker(coordinator.endpoint(), "w1", dir.file("w1.log"));
  const json job = coordinator.wait_job(id);
  ASSERT_EQ(job["state"], "done") << job.dump(1);
  const CommandResult written = run_command(report + " --out " + dir.file("out"));
  ASSERT_EQ(written.exit_code, 0) << written.output;
  EXPECT_EQ(written.output, "report: " + dir.file("out") + "/index.html\n");
  expect_report_folder(dir.file("out"), job);
  // Without --out: ./kvtune-report/<id>/.
  const CommandResult default_dir = run_command("cd " + dir.path().string() + " && " + report);
  ASSERT_EQ(default_dir.exit_code, 0) << default_dir.output;
  expect_report_folder(dir.path() / "kvtune-report" / id, job);
}

}  // namespace
}  // namespace kvtune::testing
