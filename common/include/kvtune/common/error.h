// The error type of kvtune: a message that names the file, field or value at
// fault, so that a user can fix the input without reading code.
#pragma once

#include <stdexcept>
#include <string>

namespace kvtune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace kvtune
