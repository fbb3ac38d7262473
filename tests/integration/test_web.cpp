// The coordinator's web page (coordinator/web/) in a real browser: Debian's
// headless chromium (scripts/install-deps.sh --optional browser) loads / from
// a live coordinator started with --api-token while a local worker runs a
// search on the demo model. Without the token the page shows its token form;
// with it (handed over in the URL fragment, which no server sees: the page
// moves it to sessionStorage and out of the address bar) the job page shows
// the job queued, then, reloaded until the search is done, the finished
// frontier: one plotted marker per frontier config of the API's answer, and
// the recommended config's exports. No page logs anything to the console.
// Screenshots of the token form, the jobs, the job, the registry and the
// workers are saved in <build>/test-artifacts/web/ (their paths printed).
// Skipped only where chromium is missing or cannot start.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "../support/cluster.h"
#include "../support/temp_dir.h"

namespace kvtune::testing {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string kToken = "web-test-token-3f9c";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// The browser: $KVTUNE_CHROMIUM, else chromium (Debian) or chromium-browser on PATH.
std::string find_chromium() {
  if (const char* given = std::getenv("KVTUNE_CHROMIUM"); given != nullptr && *given != '\0') {
    return given;
  }
  const CommandResult found =
      run_command("command -v chromium || command -v chromium-browser", true);
  if (found.exit_code != 0 || found.output.empty()) return {};
  return found.output.substr(0, found.output.find('\n'));
}

// What one headless chromium run left: the DOM once the virtual time budget
// ran out, and the console lines (and uncaught errors) of its log.
struct PageLoad {
  int exit_code = -1;
  std::string dom;
  std::string log;
  std::vector<std::string> console;
  bool started() const { return exit_code == 0 && dom.find("</html>") != std::string::npos; }
};

class Browser {
 public:
  Browser(std::string chromium, const TempDir& dir)
      : chromium_(std::move(chromium)), profile_(dir.sub("chromium-profile")), dir_(dir) {}

  // Loads `url`, lets the page run for `budget_ms` of virtual time (its
  // timers run fast; it waits for the network), dumps the DOM and, with
  // `screenshot`, writes a PNG of a `width` x `height` window.
  PageLoad load(const std::string& url, int budget_ms = 2000, const std::string& screenshot = {},
                int width = 1280, int height = 900) const {
    const std::string out = dir_.file("dom.html"), err = dir_.file("chromium.log");
    std::string command = "timeout 60 '" + chromium_ +
                          "' --headless --no-sandbox --disable-gpu --disable-dev-shm-usage"
                          " --enable-logging=stderr --v=0 --no-first-run --hide-scrollbars"
                          " --disable-extensions --disable-background-networking"
                          " --disable-component-update --user-data-dir='" +
                          profile_ + "' --virtual-time-budget=" + std::to_string(budget_ms);
    if (!screenshot.empty()) {
      command += " --window-size=" + std::to_string(width) + "," + std::to_string(height) +
                 " --screenshot='" + screenshot + "'";
    }
    command += " --dump-dom '" + url + "' >'" + out + "' 2>'" + err + "'";
    PageLoad page;
    page.exit_code = run_command(command).exit_code;
    page.dom = read_text(out);
    page.log = read_text(err);
    std::istringstream lines(page.log);
    for (std::string line; std::getline(lines, line);) {
      if (line.find("CONSOLE") != std::string::npos || line.find("Uncaught") != std::string::npos) {
        page.console.push_back(line);
      }
    }
    return page;
  }

 private:
  std::string chromium_;
  std::string profile_;
  const TempDir& dir_;
};

// The value of `attribute` in the first tag of `dom` that starts with `tag_start`.
std::string attribute_of(const std::string& dom, const std::string& tag_start,
                         const std::string& attribute) {
  const std::size_t at = dom.find(tag_start);
  if (at == std::string::npos) return {};
  const std::string tag = dom.substr(at, dom.find('>', at) - at);
  std::smatch m;
  if (!std::regex_search(tag, m, std::regex(" " + attribute + "=\"([^\"]*)\""))) return {};
  return m[1];
}

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + needle.size())) {
    ++n;
  }
  return n;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// One plain HTTP/1.0 GET on loopback: the status line and headers as sent.
std::string raw_headers(const std::string& host_port, const std::string& target) {
  const auto colon = host_port.rfind(':');
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(std::stoi(host_port.substr(colon + 1))));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string request = "GET " + target + " HTTP/1.0\r\nHost: kvtune\r\n\r\n";
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) response.append(buffer, n);
    }
  }
  ::close(fd);
  return response.substr(0, response.find("\r\n\r\n"));
}

json api_get(const CoordinatorProcess& c, const std::string& target, const std::string& token) {
  const auto r = c.call("GET", target, {}, token);
  if (r.status != 200) throw std::runtime_error("GET " + target + ": " + r.body);
  return json::parse(r.body);
}

// Where the screenshots go: a fixed folder of the build, kept after the test.
fs::path artifacts() {
  const fs::path dir = fs::path(KVTUNE_BUILD_DIR) / "test-artifacts" / "web";
  fs::create_directories(dir);
  return dir;
}

void expect_png(const fs::path& path) {
  const std::string png = read_text(path);
  EXPECT_GT(png.size(), 1000u) << path;
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << path;
  std::cout << "screenshot: " << path.string() << std::endl;
}

class WebPage : public ::testing::Test {
 protected:
  void SetUp() override {
    chromium_ = find_chromium();
    if (chromium_.empty()) {
      GTEST_SKIP() << "chromium is not installed (scripts/install-deps.sh --optional browser "
                      "installs Debian's; or set KVTUNE_CHROMIUM to a Chromium binary)";
    }
  }
  // The first load also tells whether chromium can start here at all.
  bool started(const PageLoad& page) {
    if (page.started()) return true;
    skip_reason_ = "chromium (" + chromium_ + ") cannot start here: exit " +
                   std::to_string(page.exit_code) + "\n" +
                   page.log.substr(page.log.size() > 2000 ? page.log.size() - 2000 : 0);
    return false;
  }

  TempDir dir{"kvtune-web"};
  std::string chromium_;
  std::string skip_reason_;
};

TEST_F(WebPage, FollowsASearchToItsFrontierWithTheToken) {
  CoordinatorProcess coordinator(dir.file("db"), dir.file("coordinator.log"),
                                 {"--api-token", kToken});
  const Browser browser(chromium_, dir);
  const std::string page = "http://" + coordinator.api() + "/";

  // The page's files load without the token, with a policy against external loads.
  for (const char* file : {"/", "/index.html", "/app.js", "/style.css"}) {
    EXPECT_EQ(coordinator.call("GET", file).status, 200) << file;
  }
  const std::string headers = raw_headers(coordinator.api(), "/");
  EXPECT_NE(headers.find("Content-Type: text/html"), std::string::npos) << headers;
  EXPECT_NE(headers.find("Content-Security-Policy: default-src 'none'; script-src 'self'"),
            std::string::npos)
      << headers;
  EXPECT_NE(headers.find("Cache-Control: no-store"), std::string::npos) << headers;
  // ... and reference nothing outside the coordinator.
  for (const char* file : {"/", "/app.js", "/style.css"}) {
    const std::string body = coordinator.call("GET", file).body;
    EXPECT_EQ(body.find("http://"), std::string::npos) << file;
    EXPECT_EQ(body.find("https://"), std::string::npos) << file;
    EXPECT_EQ(body.find("url("), std::string::npos) << file;
    EXPECT_EQ(body.find("@import"), std::string::npos) << file;
  }
  // The data does need it.
  EXPECT_EQ(coordinator.call("GET", "/v1/jobs").status, 401);
  EXPECT_EQ(coordinator.call("GET", "/metrics").status, 401);

  // Submitted with no worker yet: the job waits, queued.
  const auto submitted =
      coordinator.call("POST", "/v1/jobs",
                       json{{"kind", "search"},
                            {"model", "builtin:demo"},
                            {"data", "sample:2:32:0"},
                            {"name", "web page test"},
                            {"search", {{"max_bits", 5}, {"max_evaluations", 60}}}}
                           .dump(),
                       kToken);
  ASSERT_EQ(submitted.status, 201) << submitted.body;
  const std::string id = json::parse(submitted.body)["id"];
  const auto started_at = std::chrono::steady_clock::now();

  // Without the token: the token form, and no job.
  const fs::path shots = artifacts();
  const PageLoad anonymous = browser.load(page, 1500, (shots / "token.png").string(), 1280, 420);
  if (!started(anonymous)) GTEST_SKIP() << skip_reason_;
  EXPECT_NE(anonymous.dom.find("id=\"token-form\""), std::string::npos) << anonymous.dom;
  EXPECT_EQ(anonymous.dom.find(id), std::string::npos);
  EXPECT_TRUE(anonymous.console.empty()) << joined(anonymous.console);
  expect_png(shots / "token.png");

  // With the token, in the fragment: the job page, queued.
  const std::string job_url = page + "#/jobs/" + id + "?token=" + kToken;
  const PageLoad queued = browser.load(job_url);
  EXPECT_EQ(attribute_of(queued.dom, "<section id=\"job\"", "data-state"), "queued") << queued.dom;
  EXPECT_EQ(queued.dom.find("id=\"token-form\""), std::string::npos);
  EXPECT_NE(queued.dom.find("id=\"pareto-plot\""), std::string::npos);
  EXPECT_NE(queued.dom.find("id=\"sensitivity-plot\""), std::string::npos);
  EXPECT_TRUE(queued.console.empty()) << joined(queued.console);

  // A worker: the search runs; the page, reloaded, follows it until done.
  const auto worker = start_worker(coordinator.endpoint(), "w1", dir.file("w1.log"));
  PageLoad job;
  std::vector<std::string> states;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < deadline) {
    job = browser.load(job_url, 2000, (shots / "job.png").string(), 1280, 2400);
    const std::string state = attribute_of(job.dom, "<section id=\"job\"", "data-state");
    states.push_back(state + " (" + attribute_of(job.dom, "<section id=\"job\"", "data-points") +
                     " points)");
    EXPECT_TRUE(job.console.empty()) << joined(job.console);
    if (state == "done" || state == "failed" || state == "cancelled") break;
  }
  std::cout << "job page states: " << joined(states);
  ASSERT_EQ(attribute_of(job.dom, "<section id=\"job\"", "data-state"), "done") << job.dom;

  // The finished frontier: as many plotted markers as the API's frontier has configs.
  const json finished = api_get(coordinator, "/v1/jobs/" + id, kToken);
  ASSERT_EQ(finished["state"], "done");
  const std::size_t frontier = finished["frontier"].size();
  ASSERT_GT(frontier, 0u);
  EXPECT_EQ(count_of(job.dom, "<circle class=\"frontier\""), frontier);
  EXPECT_EQ(attribute_of(job.dom, "<section id=\"job\"", "data-points"), std::to_string(frontier));
  EXPECT_EQ(count_of(job.dom, "<tr data-layers="), frontier);  // the frontier table
  // The target and the recommended config's exports, one tab per format.
  EXPECT_NE(job.dom.find("<dt>target</dt><dd>kvtune</dd>"), std::string::npos);
  const json exports = api_get(coordinator, "/v1/jobs/" + id + "/exports", kToken);
  ASSERT_FALSE(exports["exports"].empty()) << exports.dump();
  for (const json& e : exports["exports"]) {
    EXPECT_NE(job.dom.find("data-format=\"" + e["format"].get<std::string>() + "\""),
              std::string::npos)
        << e;
  }
  EXPECT_NE(job.dom.find(exports["recommended"].get<std::string>()), std::string::npos);
  expect_png(shots / "job.png");

  // The jobs, the registry (the entry's frontier, its exports) and the workers.
  const PageLoad jobs =
      browser.load(page + "#/jobs?token=" + kToken, 1500, (shots / "jobs.png").string(), 1280, 520);
  EXPECT_NE(jobs.dom.find("data-job=\"" + id + "\" data-state=\"done\""), std::string::npos)
      << jobs.dom;
  EXPECT_TRUE(jobs.console.empty()) << joined(jobs.console);
  expect_png(shots / "jobs.png");

  const json entries = api_get(coordinator, "/v1/registry", kToken)["entries"];
  ASSERT_EQ(entries.size(), 1u);
  const json entry =
      api_get(coordinator, "/v1/registry/" + entries[0]["id"].get<std::string>(), kToken);
  const PageLoad registry = browser.load(page + "#/registry?token=" + kToken, 2500,
                                         (shots / "registry.png").string(), 1280, 1000);
  EXPECT_NE(registry.dom.find("data-entry=\"" + entry["id"].get<std::string>() + "\""),
            std::string::npos)
      << registry.dom;
  EXPECT_EQ(count_of(registry.dom, "<tr data-layers="), entry["frontier"].size());
  EXPECT_NE(registry.dom.find("data-format=\"kvtuner\""), std::string::npos);  // copyable YAML
  EXPECT_NE(registry.dom.find("nbits_key"), std::string::npos);
  EXPECT_TRUE(registry.console.empty()) << joined(registry.console);
  expect_png(shots / "registry.png");

  const PageLoad workers = browser.load(page + "#/workers?token=" + kToken, 1500,
                                        (shots / "workers.png").string(), 1280, 420);
  EXPECT_NE(workers.dom.find("data-worker=\"w1\""), std::string::npos) << workers.dom;
  EXPECT_TRUE(workers.console.empty()) << joined(workers.console);
  expect_png(shots / "workers.png");

  // The token went from the fragment to the page, never to the server's log.
  EXPECT_EQ(coordinator.process().log().find(kToken), std::string::npos);
  std::cout << "the search ran and was followed in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - started_at).count()
            << " s" << std::endl;
}

TEST_F(WebPage, WithoutATokenThePageShowsTheJobsAtOnce) {
  CoordinatorProcess coordinator(dir.file("db"), dir.file("coordinator.log"));
  const std::string id = coordinator.submit(
      {{"kind", "evaluate"}, {"model", "builtin:demo"}, {"configs", {"KV4", "KV2"}}});
  const PageLoad jobs = Browser(chromium_, dir).load("http://" + coordinator.api() + "/", 1500);
  if (!started(jobs)) GTEST_SKIP() << skip_reason_;
  EXPECT_EQ(jobs.dom.find("id=\"token-form\""), std::string::npos) << jobs.dom;
  EXPECT_NE(jobs.dom.find("data-job=\"" + id + "\" data-state=\"queued\""), std::string::npos)
      << jobs.dom;
  EXPECT_TRUE(jobs.console.empty()) << joined(jobs.console);
}

}  // namespace
}  // namespace kvtune::testing
