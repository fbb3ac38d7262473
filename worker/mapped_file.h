// A read-only memory map of a whole file: model weights are used in place,
// never copied into a second buffer.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace kvtune::worker {

class MappedFile {
 public:
  // Maps `path`; throws kvtune::Error naming the file when it cannot.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  struct Key {};  // only open() constructs

 public:
  MappedFile(Key, std::string path, const std::byte* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

 private:
  std::string path_;
  const std::byte* data_;
  size_t size_;
};

}  // namespace kvtune::worker
