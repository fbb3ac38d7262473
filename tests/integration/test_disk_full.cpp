// A store that cannot write: the coordinator's RocksDB directory on a small
// tmpfs that the test fills mid-search. `kvtune coordinator` and `kvtune run`
// must stop with one error line naming the database and the cause (not abort
// with "terminate called"), and a restart after space is freed must resume
// the search to the frontier of an uninterrupted run.
//
// The tmpfs is 16 MiB: RocksDB preallocates (fallocate) each WAL file by
// 1.1 x the write buffer (about 70 MiB here), which fails and is skipped on a
// smaller filesystem, so once the filler has taken every free page the next
// synced write that needs a new page fails at once (only the WAL's last,
// partly used page can take a few more bytes). On a larger filesystem the
// preallocated WAL would go on taking writes long after the filler.
//
// Needs root (mount(2)); skipped otherwise, and without stories260K.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "../support/cluster.h"
#include "../support/shared_files.h"
#include "../support/temp_dir.h"

namespace kvtune::testing {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

const std::string& kModel = kStoriesModel;
const std::string kData = "sample:8:128:0";
constexpr int kMaxEvaluations = 120;

// A tmpfs mounted on `dir` for the object's lifetime (unmounted even when
// the test fails; lazily if something still holds it).
class Tmpfs {
 public:
  Tmpfs(const std::filesystem::path& dir, const std::string& size) : dir_(dir) {
    std::filesystem::create_directories(dir_);
    const std::string options = "size=" + size + ",mode=0755";
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~Tmpfs() {
    if (mounted_ && ::umount2(dir_.c_str(), 0) != 0) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  Tmpfs(const Tmpfs&) = delete;
  Tmpfs& operator=(const Tmpfs&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  // Writes `name` until the filesystem is full (ENOSPC); the bytes written.
  std::size_t fill(const std::string& name) const {
    const std::string path = file(name);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) throw std::runtime_error("cannot create " + path + ": " + std::strerror(errno));
    const std::vector<char> chunk(1 << 20, 'x');
    std::size_t total = 0;
    while (true) {
      const ssize_t n = ::write(fd, chunk.data(), chunk.size());
      if (n > 0) {
        total += static_cast<std::size_t>(n);
        continue;
      }
      const int error = errno;
      ::close(fd);
      if (n < 0 && error == ENOSPC) return total;
      throw std::runtime_error("writing " + path + " failed: " + std::strerror(error));
    }
  }
  void remove(const std::string& name) const { std::filesystem::remove(file(name)); }

 private:
  std::filesystem::path dir_;
  bool mounted_ = false;
  std::string error_;
};

json search_spec() {
  return {{"kind", "search"},
          {"model", kModel},
          {"data", kData},
          {"search",
           {{"candidates", {"KV8", "K8V4", "KV4", "K4V2", "KV2"}},
            {"max_bits", 8},
            {"max_evaluations", kMaxEvaluations},
            {"seed", 0}}}};
}

using Frontier = std::vector<std::pair<std::string, json>>;
Frontier frontier_of(const json& job) {
  Frontier out;
  for (const json& f : job["frontier"]) out.emplace_back(f["layers"], f["metrics"]);
  return out;
}

// The search on a normal directory, uninterrupted (computed once).
const json& uninterrupted() {
  static const json job = [] {
    TempDir dir("kvtune-disk-full-ref");
    CoordinatorProcess c(dir.file("db"), dir.file("coordinator.log"));
    auto w = start_worker(c.endpoint(), "ref", dir.file("w.log"));
    return c.wait_job(c.submit(search_spec()));
  }();
  return job;
}

std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.find(needle) != std::string::npos) out.push_back(line);
  }
  return out;
}

// A process stopped by the full disk: an exit code (no signal, no abort),
// no "terminate called", one error line naming `db` and ENOSPC.
void expect_clean_stop(int exit_code, const std::string& output, const std::string& db) {
  EXPECT_NE(exit_code, 0) << output;
  EXPECT_LT(exit_code, 128) << "killed by signal " << exit_code - 128 << ":\n" << output;
  EXPECT_EQ(output.find("terminate called"), std::string::npos) << output;
  const auto errors = lines_with(output, "No space left on device");
  ASSERT_EQ(errors.size(), 1u) << output;
  EXPECT_NE(errors[0].find(db), std::string::npos) << errors[0];
}

class DiskFull : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!disk.mounted()) {
      GTEST_SKIP() << "needs root to mount a tmpfs on " << dir.file("mnt")
                   << " (mount failed: " << disk.error() << ")";
    }
  }
  std::string log(const std::string& name) const { return dir.file(name + ".log"); }

  TempDir dir{"kvtune-disk-full"};  // logs, and the mount point
  Tmpfs disk{dir.path() / "mnt", "16m"};
};

TEST_F(DiskFull, CoordinatorStopsWithOneLineAndResumesToTheSameFrontier) {
  SKIP_WITHOUT_STORIES();
  const json& reference = uninterrupted();
  ASSERT_EQ(reference["state"], "done") << reference.dump(1);

  const std::string db = disk.file("db");
  std::string api, endpoint, id;
  auto first = std::make_unique<CoordinatorProcess>(db, log("coordinator-1"));
  api = first->api();
  endpoint = first->endpoint();
  auto w1 = start_worker(endpoint, "w1", log("w1"));
  auto w2 = start_worker(endpoint, "w2", log("w2"));
  id = first->submit(search_spec());
  // Past the 25 profile evaluations: the search is under way.
  ASSERT_TRUE(eventually(
      [&] { return first->get("/v1/jobs/" + id + "?view=summary")["progress"]["done"] >= 30; }));
  ASSERT_EQ(first->get("/v1/jobs/" + id)["state"], "running");
  disk.fill("filler");

  const int exit_code = first->process().wait(60s);
  ASSERT_NE(exit_code, -1) << "the coordinator still runs on a full disk:\n"
                           << first->process().log();
  expect_clean_stop(exit_code, first->process().log(), db);
  first.reset();

  disk.remove("filler");
  CoordinatorProcess second(db, log("coordinator-2"), {}, api, endpoint);
  const json resumed = second.wait_job(id);
  ASSERT_EQ(resumed["state"], "done") << resumed.dump(1);
  // The store held the job unfinished: the disk filled mid-search.
  EXPECT_NE(second.process().log().find("resumed 1 unfinished job(s)"), std::string::npos)
      << second.process().log();
  EXPECT_EQ(frontier_of(resumed), frontier_of(reference));
  EXPECT_EQ(resumed["search"]["evaluations"], reference["search"]["evaluations"]);
}

TEST_F(DiskFull, RunOnAFullDiskExitsWithOneLine) {
  // Full before it starts: the store cannot even be created.
  disk.fill("filler");
  const std::string full_db = disk.file("full");
  const CommandResult r = run_command(build_path("kvtune") +
                                          " run --kind evaluate --model builtin:demo "
                                          "--data sample:2:32:0 --config KV8 --workers 1 --db " +
                                          full_db,
                                      true);
  expect_clean_stop(r.exit_code, r.output, full_db);
  disk.remove("filler");
}

TEST_F(DiskFull, RunStopsWithOneLineMidSearchAndResumesToTheSameFrontier) {
  SKIP_WITHOUT_STORIES();
  const json& reference = uninterrupted();
  ASSERT_EQ(reference["state"], "done") << reference.dump(1);
  const std::string spec_file = dir.file("search.json");
  std::ofstream(spec_file) << search_spec().dump();
  const std::string run_dir = disk.file("run");
  const std::vector<std::string> argv = {
      build_path("kvtune"), "run", "--spec",   spec_file, "--db", run_dir,
      "--workers",          "2",   "--verbose"};
  {
    Process run(argv, log("run-1"));
    // The profile (generation 0) is stored and the search asked for more.
    ASSERT_TRUE(run.wait_for_log("search generation 2", 120s)) << run.log();
    disk.fill("filler");
    const int exit_code = run.wait(60s);
    ASSERT_NE(exit_code, -1) << "kvtune run still runs on a full disk:\n" << run.log();
    expect_clean_stop(exit_code, run.log(), run_dir + "/store");
  }
  disk.remove("filler");
  const CommandResult again = run_command(build_path("kvtune") + " run --spec " + spec_file +
                                          " --db " + run_dir + " --workers 2 --json");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  const json resumed = json::parse(again.output);
  ASSERT_EQ(resumed["state"], "done") << resumed.dump(1);
  EXPECT_EQ(frontier_of(resumed), frontier_of(reference));
  EXPECT_EQ(resumed["search"]["evaluations"], reference["search"]["evaluations"]);
}

}  // namespace
}  // namespace kvtune::testing
