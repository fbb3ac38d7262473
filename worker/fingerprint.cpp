// Content fingerprints (XXH3-128) of models and calibration data, with a
// per-host cache of file digests so a many-gigabyte checkpoint is read once.
#include "fingerprint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "demo_model.h"
#include "kvtune/common/error.h"
#include "mapped_file.h"

// Header-only, so there is no library to link.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvtune::worker {

// Defined in demo_model.cpp beside the generator it describes.

namespace {

namespace fs = std::filesystem;

constexpr size_t kDigestHexChars = 32;

// Streaming XXH3-128 that feeds integers little-endian, so digests agree
// across hosts.
class Hasher {
 public:
  Hasher() { XXH3_128bits_reset(&state_); }

  void update(const void* data, size_t size) { XXH3_128bits_update(&state_, data, size); }

  void update_u64(uint64_t v) {
    unsigned char bytes[8];
    for (int b = 0; b < 8; ++b) bytes[b] = static_cast<unsigned char>(v >> (8 * b));
    update(bytes, sizeof bytes);
  }

  // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
  void update_string(const std::string& s) {
    update_u64(s.size());
    update(s.data(), s.size());
  }

  std::string hex_digest() const {
    XXH128_canonical_t canonical;
    XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(&state_));
    static constexpr char kHex[] = "0123456789abcdef";
    std::string hex;
    for (unsigned char byte : canonical.digest) {
      hex += kHex[byte >> 4];
      hex += kHex[byte & 15];
    }
    return hex;
  }

 private:
  XXH3_state_t state_;
};

// What identifies a file's content without reading it: the cache key.
struct FileIdentity {
  std::string real_path;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t inode = 0;

  bool operator==(const FileIdentity&) const = default;
};

FileIdentity identify(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(path + ": cannot stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file");
  FileIdentity id;
  id.real_path = fs::canonical(path).string();
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  id.inode = static_cast<uint64_t>(st.st_ino);
  return id;
}

std::optional<fs::path> cache_file() {
  const auto env = [](const char* name) -> std::optional<fs::path> {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') return std::nullopt;
    return fs::path(value);
  };
  if (auto dir = env("KVTUNE_CACHE_DIR")) return *dir / "fingerprints.tsv";
  if (auto dir = env("XDG_CACHE_HOME")) return *dir / "kvtune" / "fingerprints.tsv";
  if (auto dir = env("HOME")) return *dir / ".cache" / "kvtune" / "fingerprints.tsv";
  return std::nullopt;
}

bool is_digest(const std::string& s) {
  return s.size() == kDigestHexChars && std::all_of(s.begin(), s.end(), [](char c) {
           return std::isxdigit(static_cast<unsigned char>(c)) != 0;
         });
}

std::string cache_line(const FileIdentity& id, const std::string& digest) {
  return id.real_path + '\t' + std::to_string(id.size) + '\t' + std::to_string(id.mtime_ns) + '\t' +
         std::to_string(id.inode) + '\t' + digest + '\n';
}

// The cached digest of `id`, if any. A cache that is missing, unreadable or
// partly garbage only costs a rehash; the last matching line wins.
std::optional<std::string> cache_lookup(const FileIdentity& id) {
  const auto file = cache_file();
  if (!file) return std::nullopt;
  std::ifstream in(*file);
  const std::string prefix = cache_line(id, "");
  const std::string key = prefix.substr(0, prefix.size() - 1);  // without the newline
  std::optional<std::string> found;
  for (std::string line; std::getline(in, line);) {
    if (line.size() != key.size() + kDigestHexChars || line.compare(0, key.size(), key) != 0) {
      continue;
    }
    std::string digest = line.substr(key.size());
    if (is_digest(digest)) found = std::move(digest);
  }
  return found;
}

// Appends one line with a single O_APPEND write, so concurrent workers on a
// host do not interleave partial lines. Failure only means a later rehash.
void cache_store(const FileIdentity& id, const std::string& digest) {
  const auto file = cache_file();
  if (!file || id.real_path.find_first_of("\t\n") != std::string::npos) return;
  std::error_code ignored;
  fs::create_directories(file->parent_path(), ignored);
  const int fd = ::open(file->c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string line = cache_line(id, digest);
  [[maybe_unused]] const ssize_t written = ::write(fd, line.data(), line.size());
  ::close(fd);
}

// XXH3-128 of the file's bytes (what `xxh128sum` prints), from the cache when
// the file is unchanged since it was last hashed on this host.
std::string file_digest(const std::string& path) {
  const FileIdentity before = identify(path);
  if (auto cached = cache_lookup(before)) return *cached;
  const auto mapped = MappedFile::open(path);
  Hasher h;
  h.update(mapped->data(), mapped->size());
  const std::string digest = h.hex_digest();
  // A file rewritten while we read it must not be cached under either identity.
  if (identify(path) == before) cache_store(before, digest);
  return digest;
}

// config.json and every *.safetensors file sorted by name, each mixed in with
// its name and size; other files (tokenizer, index, README) do not change the
// computation.
std::string hf_directory_digest(const fs::path& dir) {
  if (!fs::is_regular_file(dir / "config.json")) {
    throw Error(dir.string() + ": a model directory needs config.json (a Hugging Face model)");
  }
  std::vector<std::string> weights;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".safetensors") {
      weights.push_back(e.path().filename().string());
    }
  }
  if (weights.empty()) throw Error(dir.string() + ": no *.safetensors weight files");
  std::sort(weights.begin(), weights.end());
  weights.insert(weights.begin(), "config.json");
  Hasher h;
  h.update_string("kvtune-hf-dir-v1");
  for (const std::string& name : weights) {
    const fs::path path = dir / name;
    h.update_string(name);
    h.update_u64(fs::file_size(path));
    h.update_string(file_digest(path.string()));
  }
  return h.hex_digest();
}

}  // namespace

std::string model_fingerprint(const std::string& spec) {
  if (is_demo_model(spec)) {
    Hasher h;
    h.update_string(demo_model_recipe(spec));
    return h.hex_digest();
  }
  std::error_code ec;
  const fs::file_status status = fs::status(spec, ec);
  if (fs::is_directory(status)) return hf_directory_digest(spec);
  if (fs::is_regular_file(status)) return file_digest(spec);
  throw Error(spec + ": no such model file or directory (expected a llama2.c .bin file, a " +
              "Hugging Face directory with config.json, or builtin:demo / builtin:demo-hd64)");
}

std::string data_fingerprint(const std::vector<std::vector<int64_t>>& sequences,
                             const std::vector<int64_t>& prompts) {
  Hasher h;
  h.update_u64(sequences.size());
  std::vector<unsigned char> bytes;
  for (const std::vector<int64_t>& seq : sequences) {
    h.update_u64(seq.size());
    bytes.resize(seq.size() * 8);
    for (size_t i = 0; i < seq.size(); ++i) {
      const auto v = static_cast<uint64_t>(seq[i]);
      for (int b = 0; b < 8; ++b) bytes[i * 8 + b] = static_cast<unsigned char>(v >> (8 * b));
    }
    h.update(bytes.data(), bytes.size());
  }
  // JSONL prompt lengths, where any line has one (data without them keeps
  // the fingerprint it always had).
  if (std::any_of(prompts.begin(), prompts.end(), [](int64_t p) { return p >= 0; })) {
    h.update_u64(prompts.size());
    for (const int64_t p : prompts) h.update_u64(static_cast<uint64_t>(p));
  }
  return h.hex_digest();
}

}  // namespace kvtune::worker
