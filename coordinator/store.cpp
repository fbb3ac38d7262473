#include "store.h"

#include <capnp/message.h>
#include <capnp/schema.h>
#include <fcntl.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <system_error>

#include "kvtune/common/error.h"

namespace kvtune {
namespace {

// In the order of Store::Family.
constexpr std::array<const char*, 6> kFamilyNames = {"default", "jobs",     "evaluations",
                                                     "tasks",   "registry", "search"};
constexpr std::string_view kSchemaVersionKey = "schema_version";

rocksdb::Slice slice(std::string_view s) {
  return {s.data(), s.size()};
}

std::string text(capnp::Text::Reader t) {
  return {t.cStr(), t.size()};
}

// A printable form of a key for error messages (task keys hold a NUL).
std::string printable(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (c == '\0') {
      out += '/';
    } else if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[static_cast<unsigned char>(c) >> 4];
      out += kHex[static_cast<unsigned char>(c) & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

void check_id(std::string_view what, std::string_view id) {
  if (id.empty()) throw Error(std::string(what) + " must not be empty");
  if (id.find('\0') != std::string_view::npos) {
    throw Error(std::string(what) + " '" + printable(id) + "' contains a NUL character");
  }
}

std::string task_key(std::string_view job_id, std::string_view task_id) {
  std::string key(job_id);
  key += '\0';
  key += task_id;
  return key;
}

template <typename Reader>
std::string serialize(Reader record) {
  capnp::MallocMessageBuilder message;
  message.setRoot(record);
  const kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  const auto bytes = words.asBytes();
  return {reinterpret_cast<const char*>(bytes.begin()), bytes.size()};
}

// RocksDB's info log, LOG in the database directory (appended to, not
// rotated), written with plain appends whose failures are ignored: RocksDB's
// own logger refuses every line after a failed append with an assertion,
// which aborts the process in builds with assertions (Debian's), so a full
// disk would abort the coordinator at RocksDB's next log line.
class InfoLog final : public rocksdb::Logger {
 public:
  explicit InfoLog(const std::filesystem::path& file)
      : rocksdb::Logger(rocksdb::InfoLogLevel::INFO_LEVEL),
        fd_(::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) {}
  ~InfoLog() override {
    if (fd_ >= 0) ::close(fd_);
  }

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    if (fd_ < 0) return;
    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    tm local{};
    ::localtime_r(&now.tv_sec, &local);
    char line[8192];
    int n = std::snprintf(line, sizeof line, "%04d/%02d/%02d-%02d:%02d:%02d.%06ld %ld ",
                          local.tm_year + 1900, local.tm_mon + 1, local.tm_mday, local.tm_hour,
                          local.tm_min, local.tm_sec, now.tv_nsec / 1000,
                          static_cast<long>(::syscall(SYS_gettid)));
    if (n < 0) return;
    va_list copy;
    va_copy(copy, ap);
    const int m = std::vsnprintf(line + n, sizeof line - static_cast<std::size_t>(n), format, copy);
    va_end(copy);
    if (m < 0) return;
    n = std::min<int>(n + m, static_cast<int>(sizeof line) - 2);
    if (line[n - 1] != '\n') line[n++] = '\n';
    [[maybe_unused]] const ssize_t written = ::write(fd_, line, static_cast<std::size_t>(n));
  }

 private:
  int fd_;
};

rocksdb::WriteOptions synced() {
  rocksdb::WriteOptions options;
  options.sync = true;
  return options;
}

}  // namespace

std::uint32_t Store::schema_version() {
  return schema::SCHEMA_VERSION;
}

Store::Store(const std::filesystem::path& path) : path_(path) {
  const std::string where = "database " + path_.string();
  std::error_code ec;
  if (std::filesystem::exists(path_, ec) && !std::filesystem::is_directory(path_, ec)) {
    throw Error(where + ": the path is a file, not a database directory; pass a directory " +
                "(it is created when missing)");
  }
  std::filesystem::create_directories(path_, ec);
  if (ec) throw Error(where + ": cannot create the directory: " + ec.message());

  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.paranoid_checks = true;
  options.info_log = std::make_shared<InfoLog>(path_ / "LOG");
  // No resuming in the background after a failed write (a full disk): the
  // coordinator stops at the first failed write and writes nothing more; a
  // restart reopens the database. RocksDB's resume would race that exit and
  // touch the log writer that failed (an assertion, see InfoLog).
  options.max_bgerror_resume_count = 0;
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const char* name : kFamilyNames) {
    descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw_db = nullptr;
  const rocksdb::Status status =
      rocksdb::DB::Open(options, path_.string(), descriptors, &handles, &raw_db);
  db_.reset(raw_db);
  for (rocksdb::ColumnFamilyHandle* handle : handles) families_.emplace_back(handle);
  if (!status.ok()) {
    families_.clear();
    db_.reset();
    const std::string detail = status.ToString();
    if (status.IsIOError() &&
        (detail.find("lock") != std::string::npos || detail.find("LOCK") != std::string::npos)) {
      throw Error(where + " is in use by another coordinator (RocksDB lock " +
                  (path_ / "LOCK").string() + ": " + detail +
                  "); stop that coordinator or pass another database directory");
    }
    if (status.IsNoSpace()) {
      throw Error("cannot open " + where + ": no space left on device (RocksDB: " + detail +
                  "); free space on its filesystem and start again");
    }
    if (status.IsCorruption()) {
      throw Error(where + " is corrupt (RocksDB: " + detail +
                  "); restore it from a backup, or move it away to start afresh (cached "
                  "evaluations are then recomputed)");
    }
    throw Error("cannot open " + where + " (RocksDB: " + detail +
                "); if the database is damaged (e.g. its CURRENT or MANIFEST file), restore it "
                "from a backup or move it away to start afresh");
  }
  if (families_.size() != kFamilyCount) {
    throw Error("cannot open " + where + ": RocksDB returned " + std::to_string(families_.size()) +
                " column families, expected " + std::to_string(kFamilyCount));
  }
  try {
    check_schema_version();
  } catch (const Error&) {
    if (!write_failure_.empty()) {  // not closed: see ~Store
      for (auto& family : families_) static_cast<void>(family.release());
      static_cast<void>(db_.release());
    }
    throw;
  }
}

Store::~Store() {
  if (!write_failure_.empty()) {
    // Not closed after a failed write: closing flushes the log writer that
    // failed, which RocksDB refuses with an assertion (an abort, in builds
    // with assertions). The process is about to exit and release the lock;
    // the next open replays the log up to its last complete write.
    for (auto& family : families_) static_cast<void>(family.release());
    static_cast<void>(db_.release());
    return;
  }
  families_.clear();
  if (db_) db_->Close().PermitUncheckedError();
}

void Store::check_schema_version() {
  const std::string mine = std::to_string(schema_version());
  const std::optional<std::string> stored = get(kDefault, kSchemaVersionKey);
  if (!stored) {
    put(kDefault, kSchemaVersionKey, mine);
    return;
  }
  if (*stored != mine) {
    throw Error("database " + path_.string() + " has schema version " + printable(*stored) +
                " but this kvtune uses schema version " + mine +
                "; use a kvtune of the database's version, or another database directory");
  }
}

void Store::check_writable() const {
  if (!write_failure_.empty()) throw Error(write_failure_);
}

void Store::write_failed(std::string message) {
  write_failure_ = message;
  throw Error(std::move(message));
}

void Store::put(Family family, std::string_view key, std::string_view value) {
  check_writable();
  const rocksdb::Status status =
      db_->Put(synced(), families_[family].get(), slice(key), slice(value));
  if (!status.ok()) {
    write_failed("database " + path_.string() + ": cannot write key '" + printable(key) +
                 "' to column family " + kFamilyNames[family] + ": " + status.ToString());
  }
}

std::optional<std::string> Store::get(Family family, std::string_view key) const {
  std::string value;
  const rocksdb::Status status =
      db_->Get(rocksdb::ReadOptions(), families_[family].get(), slice(key), &value);
  if (status.IsNotFound()) return std::nullopt;
  if (!status.ok()) {
    throw Error(
        "database " + path_.string() + ": cannot read key '" + printable(key) +
        "' of column family " + kFamilyNames[family] + ": " + status.ToString() +
        (status.IsCorruption() ? "; the database is corrupt, restore it from a backup" : ""));
  }
  return value;
}

namespace {

// Copies `bytes` into aligned words and checks that they hold a complete,
// well-formed T; throws kvtune::Error naming `where` otherwise.
template <typename T>
Record<T> decode(std::string_view bytes, const std::string& where) {
  const std::string problem = where + " does not hold a valid " +
                              std::string(capnp::Schema::from<T>().getShortDisplayName().cStr()) +
                              " record: ";
  if (bytes.size() % sizeof(capnp::word) != 0 || bytes.empty()) {
    throw Error(problem + "its size " + std::to_string(bytes.size()) +
                " is not a positive multiple of 8 bytes");
  }
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  try {
    capnp::FlatArrayMessageReader message(words);
    if (message.getEnd() != words.end()) throw Error(problem + "trailing bytes after the message");
    message.getRoot<T>().totalSize();  // walks every pointer, so later reads cannot fail
  } catch (const kj::Exception& e) {
    throw Error(problem + e.getDescription().cStr());
  }
  return Record<T>(kj::mv(words));
}

}  // namespace

template <typename T>
std::optional<Record<T>> Store::get_record(Family family, std::string_view key) const {
  const std::optional<std::string> bytes = get(family, key);
  if (!bytes) return std::nullopt;
  return decode<T>(*bytes, "database " + path_.string() + ": column family " +
                               kFamilyNames[family] + ", key '" + printable(key) + "'");
}

template <typename T>
std::vector<Record<T>> Store::scan_records(Family family, std::string_view prefix) const {
  std::vector<Record<T>> records;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), families_[family].get()));
  for (it->Seek(slice(prefix)); it->Valid() && it->key().starts_with(slice(prefix)); it->Next()) {
    const std::string_view key(it->key().data(), it->key().size());
    records.push_back(decode<T>(std::string_view(it->value().data(), it->value().size()),
                                "database " + path_.string() + ": column family " +
                                    kFamilyNames[family] + ", key '" + printable(key) + "'"));
  }
  if (!it->status().ok()) {
    throw Error("database " + path_.string() + ": cannot scan column family " +
                kFamilyNames[family] + ": " + it->status().ToString());
  }
  return records;
}

void Store::put_job(schema::JobRecord::Reader job) {
  const std::string id = text(job.getId());
  check_id("job id", id);
  put(kJobs, id, serialize(job));
}

std::optional<Record<schema::JobRecord>> Store::get_job(std::string_view job_id) const {
  return get_record<schema::JobRecord>(kJobs, job_id);
}

std::vector<Record<schema::JobRecord>> Store::list_jobs() const {
  return scan_records<schema::JobRecord>(kJobs, "");
}

void Store::put_task(schema::TaskRecord::Reader task) {
  const std::string job_id = text(task.getJobId());
  const std::string task_id = text(task.getId());
  check_id("task job id", job_id);
  check_id("task id", task_id);
  put(kTasks, task_key(job_id, task_id), serialize(task));
}

std::optional<Record<schema::TaskRecord>> Store::get_task(std::string_view job_id,
                                                          std::string_view task_id) const {
  return get_record<schema::TaskRecord>(kTasks, task_key(job_id, task_id));
}

std::vector<Record<schema::TaskRecord>> Store::list_tasks(std::string_view job_id) const {
  check_id("job id", job_id);
  return scan_records<schema::TaskRecord>(kTasks, std::string(job_id) + '\0');
}

void Store::put_result(std::string_view eval_key, schema::EvalResult::Reader result,
                       schema::TaskRecord::Reader task) {
  check_id("evaluation key", eval_key);
  const std::string job_id = text(task.getJobId());
  const std::string task_id = text(task.getId());
  check_id("task job id", job_id);
  check_id("task id", task_id);
  check_writable();
  rocksdb::WriteBatch batch;
  rocksdb::Status status =
      batch.Put(families_[kEvaluations].get(), slice(eval_key), serialize(result));
  if (status.ok()) {
    status = batch.Put(families_[kTasks].get(), task_key(job_id, task_id), serialize(task));
  }
  const std::string what = "database " + path_.string() +
                           ": cannot write the result of evaluation " + printable(eval_key) +
                           " with task " + task_id + ": ";
  if (!status.ok()) throw Error(what + status.ToString());
  status = db_->Write(synced(), &batch);
  if (!status.ok()) write_failed(what + status.ToString());
}

void Store::Batch::put_job(schema::JobRecord::Reader job) {
  const std::string id = text(job.getId());
  check_id("job id", id);
  writes_.push_back({kJobs, id, serialize(job)});
}

void Store::Batch::put_task(schema::TaskRecord::Reader task) {
  const std::string job_id = text(task.getJobId());
  const std::string task_id = text(task.getId());
  check_id("task job id", job_id);
  check_id("task id", task_id);
  writes_.push_back({kTasks, task_key(job_id, task_id), serialize(task)});
}

void Store::Batch::put_result(std::string_view eval_key, schema::EvalResult::Reader result) {
  check_id("evaluation key", eval_key);
  writes_.push_back({kEvaluations, std::string(eval_key), serialize(result)});
}

void Store::Batch::put_search_state(std::string_view job_id, std::string_view state) {
  check_id("job id", job_id);
  writes_.push_back({kSearch, std::string(job_id), std::string(state)});
}

void Store::Batch::put_registry(std::string_view key, std::string_view value) {
  check_id("registry key", key);
  writes_.push_back({kRegistry, std::string(key), std::string(value)});
}

void Store::write(Batch& batch) {
  if (batch.empty()) return;
  check_writable();
  rocksdb::WriteBatch rocks;
  rocksdb::Status status;
  for (const Batch::Write& w : batch.writes_) {
    status = rocks.Put(families_[w.family].get(), slice(w.key), slice(w.value));
    if (!status.ok()) break;
  }
  const std::string what = "database " + path_.string() + ": cannot write a batch of " +
                           std::to_string(batch.size()) + " records: ";
  if (!status.ok()) throw Error(what + status.ToString());
  status = db_->Write(synced(), &rocks);
  if (!status.ok()) write_failed(what + status.ToString());
  batch.writes_.clear();
}

std::optional<Record<schema::EvalResult>> Store::get_result(std::string_view eval_key) const {
  return get_record<schema::EvalResult>(kEvaluations, eval_key);
}

bool Store::has_result(std::string_view eval_key) const {
  return get(kEvaluations, eval_key).has_value();
}

std::size_t Store::count_results() const {
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), families_[kEvaluations].get()));
  std::size_t count = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++count;
  if (!it->status().ok()) {
    throw Error("database " + path_.string() +
                ": cannot scan column family evaluations: " + it->status().ToString());
  }
  return count;
}

void Store::put_raw(Area area, std::string_view key, std::string_view value) {
  check_id("key", key);
  put(area == Area::Registry ? kRegistry : kSearch, key, value);
}

std::vector<std::pair<std::string, std::string>> Store::list_raw(Area area) const {
  const Family family = area == Area::Registry ? kRegistry : kSearch;
  std::vector<std::pair<std::string, std::string>> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), families_[family].get()));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    out.emplace_back(it->key().ToString(), it->value().ToString());
  }
  if (!it->status().ok()) {
    throw Error("database " + path_.string() + ": cannot scan column family " +
                kFamilyNames[family] + ": " + it->status().ToString());
  }
  return out;
}

std::optional<std::string> Store::get_raw(Area area, std::string_view key) const {
  return get(area == Area::Registry ? kRegistry : kSearch, key);
}

}  // namespace kvtune
