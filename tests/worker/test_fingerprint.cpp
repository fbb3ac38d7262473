// Content fingerprints and their per-host cache. Every test points
// KVTUNE_CACHE_DIR at a temporary directory, so none touches $HOME.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "fingerprint.h"
#include "kvtune/common/error.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace kvtune::worker {
namespace {

namespace fs = std::filesystem;

// XXH3-128 of `bytes` as 32 hex digits, high half first: computed here
// independently of the implementation's canonical encoding.
std::string expected_digest(const std::string& bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// Makes a rewrite visible to the cache even on file systems whose timestamps
// are coarser than the test is fast.
void bump_mtime(const fs::path& path) {
  fs::last_write_time(path, fs::last_write_time(path) + std::chrono::seconds(2));
}

std::string some_weights(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string bytes(size, '\0');
  for (char& c : bytes) c = static_cast<char>(rng() & 0xff);
  return bytes;
}

class Fingerprint : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() / ("kvtune-fingerprint-" + std::to_string(rd()));
    fs::create_directories(dir_);
    if (const char* old = std::getenv("KVTUNE_CACHE_DIR")) saved_cache_dir_ = old;
    set_cache_dir(dir_ / "cache");
  }
  void TearDown() override {
    if (saved_cache_dir_) {
      setenv("KVTUNE_CACHE_DIR", saved_cache_dir_->c_str(), 1);
    } else {
      unsetenv("KVTUNE_CACHE_DIR");
    }
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  void set_cache_dir(const fs::path& dir) { setenv("KVTUNE_CACHE_DIR", dir.c_str(), 1); }
  fs::path cache_file() const { return dir_ / "cache" / "fingerprints.tsv"; }

  fs::path dir_;
  std::optional<std::string> saved_cache_dir_;
};

TEST_F(Fingerprint, FileDigestIsXxh3OfItsBytesAndStable) {
  const std::string bytes = some_weights(10000, 1);
  write_text(dir_ / "a.bin", bytes);
  write_text(dir_ / "b.bin", bytes);
  const std::string digest = model_fingerprint((dir_ / "a.bin").string());
  EXPECT_EQ(digest, expected_digest(bytes));
  EXPECT_EQ(digest.size(), 32u);
  EXPECT_EQ(model_fingerprint((dir_ / "a.bin").string()), digest);
  EXPECT_EQ(model_fingerprint((dir_ / "b.bin").string()), digest) << "same content, same digest";
}

TEST_F(Fingerprint, OneChangedByteChangesTheDigest) {
  const fs::path path = dir_ / "model.bin";
  std::string bytes = some_weights(4096, 2);
  write_text(path, bytes);
  const std::string before = model_fingerprint(path.string());
  bytes[1234] = static_cast<char>(bytes[1234] ^ 1);
  write_text(path, bytes);
  bump_mtime(path);
  const std::string after = model_fingerprint(path.string());
  EXPECT_NE(after, before);
  EXPECT_EQ(after, expected_digest(bytes));
}

TEST_F(Fingerprint, HuggingFaceDirectoryCoversConfigAndEveryShard) {
  const fs::path model = dir_ / "hf";
  fs::create_directories(model);
  write_text(model / "config.json", R"({"architectures": ["LlamaForCausalLM"]})");
  write_text(model / "model-00001-of-00002.safetensors", some_weights(3000, 3));
  std::string shard2 = some_weights(2000, 4);
  write_text(model / "model-00002-of-00002.safetensors", shard2);
  const std::string digest = model_fingerprint(model.string());
  EXPECT_EQ(digest.size(), 32u);
  EXPECT_EQ(model_fingerprint(model.string()), digest);

  write_text(model / "README.md", "not part of the computation");
  EXPECT_EQ(model_fingerprint(model.string()), digest);

  shard2[7] = static_cast<char>(shard2[7] ^ 0x80);
  write_text(model / "model-00002-of-00002.safetensors", shard2);
  bump_mtime(model / "model-00002-of-00002.safetensors");
  const std::string changed = model_fingerprint(model.string());
  EXPECT_NE(changed, digest);

  write_text(model / "config.json", R"({"architectures": ["MistralForCausalLM"]})");
  bump_mtime(model / "config.json");
  EXPECT_NE(model_fingerprint(model.string()), changed);
}

TEST_F(Fingerprint, DirectoryWithoutConfigOrWeightsIsAnError) {
  const fs::path model = dir_ / "empty-model";
  fs::create_directories(model);
  std::string message;
  try {
    model_fingerprint(model.string());
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("config.json"), std::string::npos) << message;
  write_text(model / "config.json", "{}");
  message.clear();
  try {
    model_fingerprint(model.string());
  } catch (const Error& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("safetensors"), std::string::npos) << message;
  EXPECT_THROW(model_fingerprint((dir_ / "missing.bin").string()), Error);
}

TEST_F(Fingerprint, BuiltinDemoHasAFixedDigest) {
  const std::string digest = model_fingerprint("builtin:demo");
  EXPECT_EQ(digest.size(), 32u);
  EXPECT_EQ(model_fingerprint("builtin:demo"), digest);
  EXPECT_FALSE(fs::exists(cache_file())) << "nothing to cache for a generated model";
}

TEST_F(Fingerprint, CachedDigestIsUsedWithoutRehashing) {
  const fs::path path = dir_ / "model.bin";
  const std::string bytes = some_weights(5000, 5);
  write_text(path, bytes);
  const std::string digest = model_fingerprint(path.string());
  ASSERT_TRUE(fs::exists(cache_file()));
  const std::string cache = read_text(cache_file());
  const std::string key = fs::canonical(path).string() + "\t5000\t";
  ASSERT_EQ(cache.rfind(key, 0), 0u) << cache;
  ASSERT_EQ(cache.substr(cache.size() - 33), digest + "\n") << cache;

  // A planted digest for the same path, size, mtime and inode is returned as
  // is: the proof that the file was not read again.
  const std::string planted = "0123456789abcdef0123456789abcdef";
  write_text(cache_file(), cache.substr(0, cache.size() - 33) + planted + "\n");
  EXPECT_EQ(model_fingerprint(path.string()), planted);

  // Rewritten content (a new mtime) is hashed afresh and cached again.
  const std::string new_bytes = some_weights(5000, 6);
  write_text(path, new_bytes);
  bump_mtime(path);
  EXPECT_EQ(model_fingerprint(path.string()), expected_digest(new_bytes));
  EXPECT_EQ(model_fingerprint(path.string()), expected_digest(new_bytes));
  const std::string after = read_text(cache_file());
  EXPECT_EQ(std::count(after.begin(), after.end(), '\n'), 2) << after;
}

TEST_F(Fingerprint, CorruptCacheIsTolerated) {
  const fs::path path = dir_ / "model.bin";
  const std::string bytes = some_weights(3000, 7);
  write_text(path, bytes);
  model_fingerprint(path.string());
  const std::string good = read_text(cache_file());
  const std::string key = good.substr(0, good.size() - 33);
  // Binary junk, a truncated line, too few fields, and a non-hex digest for
  // this very file: none may be believed, none may make fingerprinting fail.
  write_text(cache_file(), std::string("\x00\xff\x01garbage\n", 11) + "half a li" + "\n" +
                               "a\tb\tc\n" + key + "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\n" + key +
                               "0123\n");
  EXPECT_EQ(model_fingerprint(path.string()), expected_digest(bytes));
  // A cache that cannot be created at all (its directory is a file).
  write_text(dir_ / "not-a-dir", "x");
  set_cache_dir(dir_ / "not-a-dir");
  EXPECT_EQ(model_fingerprint(path.string()), expected_digest(bytes));
}

TEST_F(Fingerprint, DataDigestCoversCountLengthsAndIds) {
  const std::vector<std::vector<int64_t>> data = {{1, 2, 300}, {4}};
  // The layout: count, then each sequence's length and ids, all int64 little-endian.
  std::string bytes;
  const auto put = [&](int64_t v) {
    for (int b = 0; b < 8; ++b)
      bytes += static_cast<char>((static_cast<uint64_t>(v) >> (8 * b)) & 0xff);
  };
  put(2);
  put(3);
  put(1);
  put(2);
  put(300);
  put(1);
  put(4);
  EXPECT_EQ(data_fingerprint(data), expected_digest(bytes));
  EXPECT_EQ(data_fingerprint(data), data_fingerprint({{1, 2, 300}, {4}}));
  EXPECT_NE(data_fingerprint(data), data_fingerprint({{1, 2}, {300, 4}}));
  EXPECT_NE(data_fingerprint(data), data_fingerprint({{1, 2, 301}, {4}}));
  EXPECT_NE(data_fingerprint({}), data_fingerprint({{}}));
  // JSONL prompt lengths follow, where any sequence has one (-1: none).
  EXPECT_EQ(data_fingerprint(data, {-1, -1}), data_fingerprint(data));
  const std::string without = bytes;
  put(2);
  put(1);
  put(-1);
  EXPECT_EQ(data_fingerprint(data, {1, -1}), expected_digest(bytes));
  EXPECT_NE(data_fingerprint(data, {0, -1}), data_fingerprint(data, {1, -1}));
  EXPECT_NE(data_fingerprint(data, {0, -1}), expected_digest(without));
}

}  // namespace
}  // namespace kvtune::worker
