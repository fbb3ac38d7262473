#include "kvtune/schemas/curve.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "curve_internal.h"
#include "kvtune/common/error.h"

namespace kvtune::transport {

namespace fs = std::filesystem;

namespace detail {

std::string z85_encode(const std::uint8_t* bytes) {
  char text[kCurveKeyChars + 1];
  if (zmq_z85_encode(text, bytes, kCurveKeyBytes) == nullptr) {
    throw Error("cannot Z85-encode a CURVE key");
  }
  return std::string(text, kCurveKeyChars);
}

void require_curve(const std::string& what) {
  if (!curve_available()) {
    throw Error(what +
                " needs ZeroMQ CURVE security, but this libzmq was built without it "
                "(no libsodium)");
  }
}

// `what` names the key in the error; the key itself is not quoted (it may be
// a secret).
void check_key(const std::string& key, const std::string& what) {
  if (!is_curve_key(key)) {
    throw Error(what + " is not a Z85 CURVE key (" + std::to_string(kCurveKeyChars) +
                " Z85 characters; got " + std::to_string(key.size()) + " characters)");
  }
}

std::string public_key_of(const std::string& secret_key) {
  char text[kCurveKeyChars + 1];
  if (zmq_curve_public(text, secret_key.c_str()) != 0) {
    throw Error("cannot derive a CURVE public key: " + std::string(zmq_strerror(zmq_errno())));
  }
  return std::string(text, kCurveKeyChars);
}

void check_pair(const CurveKeyPair& keys, const std::string& what) {
  check_key(keys.public_key, what + ": the public key");
  check_key(keys.secret_key, what + ": the secret key");
  if (public_key_of(keys.secret_key) != keys.public_key) {
    throw Error(what + ": the public key " + keys.public_key +
                " does not belong to the secret key");
  }
}

}  // namespace detail

namespace {

using detail::check_key;
using detail::check_pair;
using detail::kCurveKeyBytes;
using detail::public_key_of;
using detail::require_curve;
using detail::z85_encode;

std::string_view trim(std::string_view text) {
  const std::size_t begin = text.find_first_not_of(" \t\r");
  if (begin == std::string_view::npos) return {};
  const std::size_t end = text.find_last_not_of(" \t\r");
  return text.substr(begin, end - begin + 1);
}

std::string at_line(const fs::path& file, std::size_t line) {
  return file.string() + ":" + std::to_string(line);
}

// The lines of a regular file (not a directory or a device).
std::vector<std::string> read_lines(const fs::path& file, const char* what) {
  std::error_code ec;
  const fs::file_status status = fs::status(file, ec);
  if (ec || !fs::exists(status)) {
    throw Error(std::string("cannot read ") + what + " " + file.string() + ": " +
                (ec ? ec.message() : "no such file"));
  }
  if (!fs::is_regular_file(status)) {
    throw Error(std::string("cannot read ") + what + " " + file.string() + ": not a regular file");
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    throw Error(std::string("cannot read ") + what + " " + file.string() + ": " +
                std::strerror(errno));
  }
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
  if (in.bad()) throw Error(std::string("error reading ") + what + " " + file.string());
  return lines;
}

// The keys of a ZeroMQ certificate file (see transport.h), each checked to be
// a Z85 key.
struct Certificate {
  std::optional<std::string> public_key;
  std::optional<std::string> secret_key;
};

Certificate parse_certificate(const fs::path& file) {
  const std::vector<std::string> lines = read_lines(file, "CURVE key file");
  enum class Section { None, Metadata, Curve } section = Section::None;
  Certificate cert;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string where = at_line(file, i + 1);
    const std::string_view line = lines[i];
    const std::size_t indent = line.find_first_not_of(" \t\r");
    if (indent == std::string_view::npos) continue;
    const std::string_view body = trim(line);
    if (body.front() == '#') continue;
    if (indent == 0) {
      if (body == "metadata") {
        section = Section::Metadata;
      } else if (body == "curve") {
        section = Section::Curve;
      } else {
        throw Error(where +
                    ": expected a section name, \"metadata\" or \"curve\" (a ZeroMQ CURVE "
                    "certificate as written by kvtune keygen)");
      }
      continue;
    }
    if (section == Section::None) throw Error(where + ": indented line outside any section");
    if (section == Section::Metadata) continue;
    const std::size_t equals = body.find('=');
    if (equals == std::string_view::npos) {
      throw Error(where + ": expected name = \"value\" in the curve section");
    }
    const std::string name(trim(body.substr(0, equals)));
    std::string_view value = trim(body.substr(equals + 1));
    std::string_view rest;
    if (!value.empty() && (value.front() == '"' || value.front() == '\'')) {
      const std::size_t close = value.find(value.front(), 1);
      if (close == std::string_view::npos) throw Error(where + ": unterminated quoted value");
      rest = trim(value.substr(close + 1));
      value = value.substr(1, close - 1);
    } else {
      const std::size_t space = value.find_first_of(" \t");
      if (space != std::string_view::npos) {
        rest = trim(value.substr(space));
        value = value.substr(0, space);
      }
    }
    if (!rest.empty() && rest.front() != '#') {
      throw Error(where + ": unexpected text after the value of " + name);
    }
    std::optional<std::string>* slot = name == "public-key"   ? &cert.public_key
                                       : name == "secret-key" ? &cert.secret_key
                                                              : nullptr;
    if (slot == nullptr) {
      throw Error(where + ": unknown property \"" + name +
                  "\" in the curve section (expected public-key or secret-key)");
    }
    if (slot->has_value()) throw Error(where + ": " + name + " is given twice");
    check_key(std::string(value), where + ": " + name);
    *slot = std::string(value);
  }
  return cert;
}

// Creates `file` (failing if it exists) with exactly `mode` and `text`.
void write_new_file(const fs::path& file, const std::string& text, mode_t mode) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    const int error = errno;
    if (error == EEXIST) throw Error(file.string() + " already exists; not overwriting it");
    throw Error("cannot create " + file.string() + ": " + std::strerror(error));
  }
  bool ok = ::fchmod(fd, mode) == 0;
  for (std::size_t done = 0; ok && done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<std::size_t>(n);
  }
  ok = ok && ::fsync(fd) == 0;
  const int error = errno;
  ok = (::close(fd) == 0) && ok;
  if (!ok) {
    ::unlink(file.c_str());
    throw Error("cannot write " + file.string() + ": " + std::strerror(error));
  }
}

constexpr const char* kCertificateHeader = "#   ****  Generated by kvtune keygen  ****\n";

}  // namespace

bool curve_available() {
  return zmq_has("curve") != 0;
}

bool is_curve_key(std::string_view z85) {
  if (z85.size() != kCurveKeyChars) return false;
  const std::string text(z85);  // zmq_z85_decode wants a terminated string
  std::uint8_t bytes[kCurveKeyBytes];
  if (zmq_z85_decode(bytes, text.c_str()) == nullptr) return false;
  // Refuses the rare spellings that decode but are not canonical, so that a
  // key has one spelling in an authorized set.
  return z85_encode(bytes) == text;
}

CurveKeyPair generate_curve_keypair() {
  require_curve("generating a CURVE key pair");
  char public_key[kCurveKeyChars + 1];
  char secret_key[kCurveKeyChars + 1];
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    throw Error("cannot generate a CURVE key pair: " + std::string(zmq_strerror(zmq_errno())));
  }
  return {std::string(public_key, kCurveKeyChars), std::string(secret_key, kCurveKeyChars)};
}

void save_curve_keypair(const CurveKeyPair& keys, const std::filesystem::path& secret_file) {
  check_pair(keys, "the CURVE key pair to save");
  fs::path public_file = secret_file;
  public_file += ".pub";
  for (const fs::path& file : {secret_file, public_file}) {
    std::error_code ec;
    if (fs::exists(fs::symlink_status(file, ec))) {
      throw Error(file.string() + " already exists; not overwriting it");
    }
  }
  write_new_file(secret_file,
                 std::string(kCertificateHeader) +
                     "#   ZeroMQ CURVE **Secret** Certificate\n"
                     "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
                     "\n"
                     "metadata\n"
                     "curve\n"
                     "    public-key = \"" +
                     keys.public_key +
                     "\"\n"
                     "    secret-key = \"" +
                     keys.secret_key + "\"\n",
                 0600);
  try {
    write_new_file(public_file,
                   std::string(kCertificateHeader) +
                       "#   ZeroMQ CURVE Public Certificate\n"
                       "#   Exchange securely, or use a secure mechanism to verify the contents\n"
                       "#   of this file after exchange.\n"
                       "\n"
                       "metadata\n"
                       "curve\n"
                       "    public-key = \"" +
                       keys.public_key + "\"\n",
                   0644);
  } catch (...) {
    ::unlink(secret_file.c_str());
    throw;
  }
}

CurveKeyPair load_curve_keypair(const std::filesystem::path& secret_file) {
  const Certificate cert = parse_certificate(secret_file);
  if (!cert.secret_key) {
    throw Error(secret_file.string() +
                ": no secret-key in the curve section (a public key file? the secret key file "
                "is the one without .pub)");
  }
  if (!cert.public_key) throw Error(secret_file.string() + ": no public-key in the curve section");
  if (public_key_of(*cert.secret_key) != *cert.public_key) {
    throw Error(secret_file.string() + ": the public-key does not belong to the secret-key");
  }
  return {*cert.public_key, *cert.secret_key};
}

std::string load_curve_public_key(const std::filesystem::path& file) {
  const Certificate cert = parse_certificate(file);
  if (!cert.public_key) throw Error(file.string() + ": no public-key in the curve section");
  if (cert.secret_key && curve_available() && public_key_of(*cert.secret_key) != *cert.public_key) {
    throw Error(file.string() + ": the public-key does not belong to the secret-key");
  }
  return *cert.public_key;
}

std::set<std::string> load_authorized_keys(const std::filesystem::path& path) {
  std::set<std::string> keys;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> files;
    for (const fs::directory_entry& entry : fs::directory_iterator(path, ec)) {
      if (entry.path().extension() == ".pub" && entry.is_regular_file()) {
        files.push_back(entry.path());
      }
    }
    if (ec)
      throw Error("cannot list authorized keys directory " + path.string() + ": " + ec.message());
    std::sort(files.begin(), files.end());
    for (const fs::path& file : files) keys.insert(load_curve_public_key(file));
    return keys;
  }
  const std::vector<std::string> lines = read_lines(path, "authorized keys file");
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string_view line = trim(lines[i]);
    if (line.empty()) continue;
    const std::string_view word = line.substr(0, line.find_first_of(" \t"));
    // Z85 has '#' too, but a canonical key never starts with it (its first
    // group would exceed 32 bits); still, a key is recognised first.
    if (is_curve_key(word)) {
      keys.insert(std::string(word));
    } else if (line.front() != '#') {
      throw Error(at_line(path, i + 1) +
                  ": not a Z85 CURVE public key (expected 40 Z85 characters, then optionally a "
                  "space and a comment; got a first word of " +
                  std::to_string(word.size()) + " characters)");
    }
  }
  return keys;
}

}  // namespace kvtune::transport
