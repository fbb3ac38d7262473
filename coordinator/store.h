// The coordinator's persistent state in one RocksDB database: jobs, tasks,
// the content-addressed cache of evaluation results, and the registry and
// search state. A coordinator restarted after `kill -9` on the same directory
// finds every synced write. Records are Cap'n Proto messages (schemas/).
//
// Column families: "jobs" (job id -> JobRecord), "tasks" (job id, task id ->
// TaskRecord), "evaluations" (evaluation key -> EvalResult), "registry" and
// "search" (opaque bytes by key), and "default" for metadata such as the
// schema version. Every problem (a locked, corrupt or foreign database, a
// stored value that does not parse) is a kvtune::Error naming the path,
// family and key at fault.
#pragma once

#include <capnp/serialize.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvtune/schemas/kvtune.capnp.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace kvtune {

// One stored record, owned: its bytes and a reader over them. Readers
// returned by get() live as long as the Record.
template <typename T>
class Record {
 public:
  // `words` must already have passed validation (Store does this).
  explicit Record(kj::Array<capnp::word> words)
      : words_(kj::mv(words)), message_(std::make_unique<capnp::FlatArrayMessageReader>(words_)) {}
  typename T::Reader get() const { return message_->getRoot<T>(); }
  kj::ArrayPtr<const capnp::byte> bytes() const { return words_.asBytes(); }

 private:
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> message_;
};

class Store {
 public:
  // Opens (creating when missing) the database in directory `path`.
  // Throws kvtune::Error when it is in use by another process, corrupt, a
  // file, or written with another schema version.
  explicit Store(const std::filesystem::path& path);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::filesystem::path& path() const { return path_; }

  // Jobs, keyed by JobRecord.id. Synced.
  void put_job(schema::JobRecord::Reader job);
  std::optional<Record<schema::JobRecord>> get_job(std::string_view job_id) const;
  std::vector<Record<schema::JobRecord>> list_jobs() const;

  // Tasks, keyed by (TaskRecord.jobId, TaskRecord.id). Synced.
  void put_task(schema::TaskRecord::Reader task);
  std::optional<Record<schema::TaskRecord>> get_task(std::string_view job_id,
                                                     std::string_view task_id) const;
  std::vector<Record<schema::TaskRecord>> list_tasks(std::string_view job_id) const;

  // Stores the result of evaluation `eval_key` and the task that produced it
  // (normally in state done) in one synced, atomic write.
  void put_result(std::string_view eval_key, schema::EvalResult::Reader result,
                  schema::TaskRecord::Reader task);
  std::optional<Record<schema::EvalResult>> get_result(std::string_view eval_key) const;
  bool has_result(std::string_view eval_key) const;
  // Counts the stored results (a scan: for tests, status and metrics).
  std::size_t count_results() const;

  // Several writes applied together: atomically, with one sync (the
  // coordinator groups the results that arrive together).
  class Batch {
   public:
    void put_job(schema::JobRecord::Reader job);
    void put_task(schema::TaskRecord::Reader task);
    void put_result(std::string_view eval_key, schema::EvalResult::Reader result);
    void put_search_state(std::string_view job_id, std::string_view state);
    void put_registry(std::string_view key, std::string_view value);
    bool empty() const { return writes_.empty(); }
    std::size_t size() const { return writes_.size(); }

   private:
    friend class Store;
    struct Write {
      int family;
      std::string key;
      std::string value;
    };
    std::vector<Write> writes_;
  };
  void write(Batch& batch);

  // After a write fails (a full disk, an I/O error) the store takes no more
  // writes: every later one throws that first error again without reaching
  // RocksDB (which may have half-appended its log and, built with
  // assertions, aborts on a write after a failed one). Reads go on. Open
  // the database again (restart) to write: RocksDB replays its log up to
  // the last complete write. Such a store is not closed when destroyed
  // (closing would flush the log writer that failed): the process should
  // exit. Empty while every write succeeded.
  const std::string& write_failure() const { return write_failure_; }

  // Opaque registry and search state by key. Synced.
  enum class Area { Registry, Search };
  void put_raw(Area area, std::string_view key, std::string_view value);
  std::optional<std::string> get_raw(Area area, std::string_view key) const;
  // Every (key, value) of an area, in key order.
  std::vector<std::pair<std::string, std::string>> list_raw(Area area) const;

  // The version this build writes; a database with another one is refused.
  static std::uint32_t schema_version();

 private:
  enum Family { kDefault, kJobs, kEvaluations, kTasks, kRegistry, kSearch, kFamilyCount };

  void check_schema_version();
  void check_writable() const;
  [[noreturn]] void write_failed(std::string message);
  void put(Family family, std::string_view key, std::string_view value);
  std::optional<std::string> get(Family family, std::string_view key) const;
  template <typename T>
  std::optional<Record<T>> get_record(Family family, std::string_view key) const;
  template <typename T>
  std::vector<Record<T>> scan_records(Family family, std::string_view prefix) const;

  std::filesystem::path path_;
  // Destroyed in reverse order: the handles before the database.
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<std::unique_ptr<rocksdb::ColumnFamilyHandle>> families_;
  std::string write_failure_;
};

}  // namespace kvtune
