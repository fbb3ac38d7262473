#include "transport.h"

#include <capnp/dynamic.h>
#include <fcntl.h>
#include <kj/exception.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kvtune/common/error.h"

namespace kvtune::transport {

namespace {

constexpr std::size_t kMaxKeptFrames = 4;  // more are counted and dropped

std::string byte_hex(unsigned char byte) {
  char text[5];
  std::snprintf(text, sizeof(text), "0x%02x", byte);
  return text;
}

// Reads one whole multipart message without blocking; keeps at most
// kMaxKeptFrames frames, counts all of them in `total`.
std::vector<zmq::message_t> read_frames(zmq::socket_t& socket, std::size_t& total) {
  std::vector<zmq::message_t> frames;
  total = 0;
  for (;;) {
    zmq::message_t frame;
    if (!socket.recv(frame, zmq::recv_flags::dontwait)) break;
    ++total;
    const bool more = frame.more();
    if (frames.size() < kMaxKeptFrames) frames.push_back(std::move(frame));
    if (!more) break;
  }
  return frames;
}

bool poll_in(zmq::socket_t& socket, std::chrono::milliseconds timeout) {
  zmq::pollitem_t items[] = {{socket.handle(), 0, ZMQ_POLLIN, 0}};
  if (timeout.count() < 0) timeout = std::chrono::milliseconds{0};
  return zmq::poll(items, 1, timeout) > 0 && (items[0].revents & ZMQ_POLLIN) != 0;
}

std::chrono::milliseconds time_left(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return left.count() > 0 ? left : std::chrono::milliseconds{0};
}

void set_common_options(zmq::socket_t& socket) {
  socket.set(zmq::sockopt::linger, 0);
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxPayloadBytes + kHeaderBytes));
}

// Reads every field of `value` with its schema type (throws kj::Exception on
// a mismatch). Depth is bounded by the reader's nesting limit.
void read_all_fields(const capnp::DynamicValue::Reader& value) {
  switch (value.getType()) {
    case capnp::DynamicValue::STRUCT: {
      const auto record = value.as<capnp::DynamicStruct>();
      for (const auto field : record.getSchema().getNonUnionFields()) {
        read_all_fields(record.get(field));
      }
      KJ_IF_MAYBE (field, record.which()) {
        read_all_fields(record.get(*field));
      }
      break;
    }
    case capnp::DynamicValue::LIST:
      for (const auto element : value.as<capnp::DynamicList>()) read_all_fields(element);
      break;
    default:
      break;  // scalars, text and data were checked by get()
  }
}

}  // namespace

std::string encode(capnp::MessageBuilder& message) {
  const kj::Array<capnp::word> flat = capnp::messageToFlatArray(message);
  const auto bytes = flat.asBytes();
  std::string out;
  out.reserve(kHeaderBytes + bytes.size());
  out.push_back(kMagic);
  out.push_back(static_cast<char>(kProtocolVersion));
  out.append(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
  return out;
}

std::string validate(std::string_view payload, capnp::StructSchema root,
                     kj::Array<capnp::word>& words) {
  words = nullptr;
  if (payload.size() < kHeaderBytes) {
    return "payload of " + std::to_string(payload.size()) + " bytes is shorter than the header";
  }
  if (payload[0] != kMagic) {
    return "not a kvtune message (first byte " + byte_hex(static_cast<unsigned char>(payload[0])) +
           ", expected 'K')";
  }
  const auto version = static_cast<std::uint8_t>(payload[1]);
  if (version != kProtocolVersion) {
    return "protocol version " + std::to_string(version) + " is not supported (this side speaks " +
           std::to_string(kProtocolVersion) + ")";
  }
  const std::string_view body = payload.substr(kHeaderBytes);
  if (body.size() > kMaxPayloadBytes) {
    return "message of " + std::to_string(body.size()) + " bytes exceeds the limit";
  }
  if (body.empty() || body.size() % sizeof(capnp::word) != 0) {
    return "message length " + std::to_string(body.size()) +
           " is not a positive whole number of 8-byte words";
  }
  kj::Array<capnp::word> copy = kj::heapArray<capnp::word>(body.size() / sizeof(capnp::word));
  std::memcpy(copy.begin(), body.data(), body.size());
  try {
    // Validation walks the message twice, hence twice the readers' limit.
    capnp::FlatArrayMessageReader reader(
        copy, capnp::ReaderOptions{2 * kTraversalLimitWords, kNestingLimit});
    if (reader.getEnd() != copy.end()) {
      return "message has " + std::to_string((copy.end() - reader.getEnd()) * sizeof(capnp::word)) +
             " trailing bytes";
    }
    // Walks every pointer of the message (fields of a newer schema included),
    // so a malformed one fails here; then every known field by its type.
    reader.getRoot<capnp::AnyPointer>().targetSize();
    read_all_fields(reader.getRoot<capnp::DynamicStruct>(root));
  } catch (const kj::Exception& e) {
    return std::string("malformed Cap'n Proto message: ") + e.getDescription().cStr();
  } catch (const std::exception& e) {
    return std::string("malformed Cap'n Proto message: ") + e.what();
  }
  words = kj::mv(copy);
  return {};
}

std::string hex_escape(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      out.push_back(c);
    } else {
      char text[5];
      std::snprintf(text, sizeof(text), "\\x%02x", byte);
      out += text;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// CURVE keys

namespace {

namespace fs = std::filesystem;

constexpr std::size_t kCurveKeyBytes = 32;
// Where the ZAP handler of a context must be bound (RFC 27).
constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
constexpr const char* kMonitorEndpoint = "inproc://kvtune.handshakes";
constexpr const char* kZapDomain = "kvtune";
// ZMQ_ZAP_ENFORCE_DOMAIN, a draft option in libzmq 4.3's header: with it a
// CURVE handshake fails when no ZAP handler is bound instead of succeeding.
constexpr int kZapEnforceDomainOption = 93;

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

// ---------------------------------------------------------------------------

// Serves the coordinator context's ZAP requests (admitting only authorized
// keys) and watches its ROUTER's failed handshakes, on one thread. The thread
// ends when the context is shut down (the destructor does that, so the
// owner must have closed its other sockets first).
class CoordinatorSocket::Guard {
 public:
  Guard(zmq::context_t& context, std::set<std::string> authorized, zmq::socket_t& router)
      : context_(context),
        authorized_(std::move(authorized)),
        zap_(context, zmq::socket_type::rep),
        monitor_(context, zmq::socket_type::pair) {
    zap_.set(zmq::sockopt::linger, 0);
    zap_.bind(kZapEndpoint);
    if (zmq_socket_monitor(router.handle(), kMonitorEndpoint,
                           ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0) {
      throw zmq::error_t();
    }
    monitor_.set(zmq::sockopt::linger, 0);
    monitor_.connect(kMonitorEndpoint);
    thread_ = std::thread([this] { run(); });
  }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

  ~Guard() {
    context_.shutdown();
    if (thread_.joinable()) thread_.join();
  }

  std::uint64_t refused() const { return refused_.load(std::memory_order_relaxed); }

 private:
  struct Report {
    std::chrono::steady_clock::time_point last;
    std::uint64_t unreported = 0;
  };

  void run() {
    for (;;) {
      try {
        zmq::pollitem_t items[] = {{zap_.handle(), 0, ZMQ_POLLIN, 0},
                                   {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
        zmq::poll(items, 2, std::chrono::milliseconds{-1});
        if ((items[0].revents & ZMQ_POLLIN) != 0) serve_zap();
        if ((items[1].revents & ZMQ_POLLIN) != 0) read_event();
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
        if (e.num() == EINTR) continue;
        std::cerr << "kvtune coordinator: CURVE handshake guard: " << e.what() << '\n';
        std::this_thread::sleep_for(std::chrono::milliseconds{100});
      } catch (const std::exception& e) {
        std::cerr << "kvtune coordinator: CURVE handshake guard: " << e.what() << '\n';
        std::this_thread::sleep_for(std::chrono::milliseconds{100});
      }
    }
  }

  // One ZAP request (RFC 27): [version][request id][domain][address]
  // [identity][mechanism][credentials...]; always answered, so the REP
  // socket stays in step.
  void serve_zap() {
    std::vector<zmq::message_t> request;
    for (bool more = true; more;) {
      zmq::message_t frame;
      if (!zap_.recv(frame, zmq::recv_flags::none)) return;
      more = frame.more();
      if (request.size() < 16) request.push_back(std::move(frame));
    }
    std::string status = "500", text = "malformed ZAP request", user_id;
    if (request.size() >= 7 && request[0].to_string_view() == "1.0") {
      const std::string address = request[3].to_string();
      const std::string mechanism = request[5].to_string();
      if (mechanism != "CURVE" || request[6].size() != kCurveKeyBytes) {
        status = "400";
        text = "only CURVE keys are accepted";
        refused_.fetch_add(1, std::memory_order_relaxed);
        report("mechanism " + mechanism, "refused a worker from " + address + " using the " +
                                             hex_escape(mechanism) +
                                             " mechanism: only CURVE keys are accepted");
      } else {
        const std::string key = z85_encode(static_cast<const std::uint8_t*>(request[6].data()));
        if (authorized_.contains(key)) {
          status = "200";
          text = "OK";
          user_id = key;
        } else {
          status = "400";
          text = "CURVE key not authorized";
          refused_.fetch_add(1, std::memory_order_relaxed);
          report("key " + key, "refused worker with CURVE key " + key +
                                   ": not in the authorized keys (from " + address + ")");
        }
      }
    }
    const std::string request_id = request.size() > 1 ? request[1].to_string() : std::string();
    zap_.send(zmq::str_buffer("1.0"), zmq::send_flags::sndmore);
    zap_.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
    zap_.send(zmq::buffer(status), zmq::send_flags::sndmore);
    zap_.send(zmq::buffer(text), zmq::send_flags::sndmore);
    zap_.send(zmq::buffer(user_id), zmq::send_flags::sndmore);
    zap_.send(zmq::message_t(), zmq::send_flags::none);
  }

  // One monitor event: [16-bit event, 32-bit value][endpoint].
  void read_event() {
    zmq::message_t event;
    if (!monitor_.recv(event, zmq::recv_flags::none)) return;
    std::string endpoint;
    if (event.more()) {
      zmq::message_t address;
      if (monitor_.recv(address, zmq::recv_flags::none)) endpoint = address.to_string();
    }
    if (event.size() < 6) return;
    std::uint16_t id = 0;
    std::uint32_t value = 0;
    std::memcpy(&id, event.data(), sizeof(id));
    std::memcpy(&value, static_cast<const char*>(event.data()) + sizeof(id), sizeof(value));
    if (id != ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) return;
    refused_.fetch_add(1, std::memory_order_relaxed);
    std::string reason;
    switch (value) {
      case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
        reason = "cryptographic error (does the worker use this coordinator's public key?)";
        break;
      case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        reason = "security mechanism mismatch (a worker without CURVE keys?)";
        break;
      default: {
        char code[16];
        std::snprintf(code, sizeof(code), "0x%08x", value);
        reason = std::string("ZMTP protocol error ") + code;
      }
    }
    report("protocol " + std::to_string(value),
           "refused a worker's handshake on " + endpoint + ": " + reason);
  }

  // Logs `message`, except that the same `kind` is logged at most once a
  // minute (with the count of the ones not logged).
  void report(const std::string& kind, const std::string& message) {
    const auto now = std::chrono::steady_clock::now();
    if (reports_.size() >= 4096 && !reports_.contains(kind)) reports_.clear();
    auto [it, fresh] = reports_.try_emplace(kind);
    Report& entry = it->second;
    if (!fresh && now - entry.last < std::chrono::minutes{1}) {
      ++entry.unreported;
      return;
    }
    std::ostringstream line;
    line << "kvtune coordinator: " << message;
    if (entry.unreported > 0) line << " (" << entry.unreported << " more since the last report)";
    line << '\n';
    std::cerr << line.str();
    entry = {now, 0};
  }

  zmq::context_t& context_;
  const std::set<std::string> authorized_;
  zmq::socket_t zap_;
  zmq::socket_t monitor_;
  std::atomic<std::uint64_t> refused_{0};
  std::map<std::string, Report> reports_;  // only touched by the thread
  std::thread thread_;
};

// ---------------------------------------------------------------------------

CoordinatorSocket::CoordinatorSocket(const std::string& endpoint)
    : CoordinatorSocket(endpoint, CoordinatorSecurity{}) {}

CoordinatorSocket::CoordinatorSocket(const std::string& endpoint,
                                     const CoordinatorSecurity& security)
    : socket_(context_, zmq::socket_type::router) {
  set_common_options(socket_);
  // A reply to a worker that is gone fails loudly instead of vanishing.
  socket_.set(zmq::sockopt::router_mandatory, 1);
  if (security.server_keys) {
    require_curve("a CURVE coordinator");
    check_pair(*security.server_keys, "the coordinator's CURVE key pair");
    for (const std::string& key : security.authorized_workers) {
      check_key(key, "an authorized worker key");
    }
    // The ZAP handler is bound before the socket can accept anyone.
    guard_ = std::make_unique<Guard>(context_, security.authorized_workers, socket_);
    socket_.set(zmq::sockopt::curve_server, true);
    socket_.set(zmq::sockopt::curve_secretkey, security.server_keys->secret_key);
    socket_.set(zmq::sockopt::zap_domain, kZapDomain);
    // Defence in depth where libzmq has it (Debian 12's 4.3.4 does): fail
    // rather than admit anyone should the handler be missing. Where libzmq
    // refuses the option, the handler's lifetime (see guard_) still holds.
    const int enforce = 1;
    (void)zmq_setsockopt(socket_.handle(), kZapEnforceDomainOption, &enforce, sizeof(enforce));
  }
  socket_.bind(endpoint);
  endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
}

CoordinatorSocket::~CoordinatorSocket() {
  // Members go in reverse order: the ROUTER closes before the guard stops.
}

std::uint64_t CoordinatorSocket::refused_handshakes() const {
  return guard_ ? guard_->refused() : 0;
}
bool CoordinatorSocket::poll(std::chrono::milliseconds timeout) {
  return poll_in(socket_, timeout);
}

std::optional<CoordinatorSocket::Incoming> CoordinatorSocket::receive(
    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (!poll_in(socket_, time_left(deadline))) return std::nullopt;
    std::size_t total = 0;
    std::vector<zmq::message_t> frames = read_frames(socket_, total);
    if (frames.empty()) continue;
    std::string identity = frames[0].to_string();
    if (total != 3) {
      refuse(identity,
             "expected 3 frames ([identity][empty][payload]), got " + std::to_string(total));
      continue;
    }
    if (frames[1].size() != 0) {
      refuse(identity, "second frame is not the empty delimiter");
      continue;
    }
    auto decoded = decode<schema::WorkerMessage>(frames[2].to_string_view());
    if (!decoded.ok()) {
      refuse(identity, std::move(decoded.error));
      continue;
    }
    // The ZAP handler's user id: the key the worker authenticated with.
    const char* key = zmq_msg_gets(frames[2].handle(), "User-Id");
    return Incoming{std::move(identity), std::move(*decoded.message), key ? key : ""};
  }
}

bool CoordinatorSocket::send(std::string_view identity, capnp::MessageBuilder& message) {
  const std::string payload = encode(message);
  try {
    if (!socket_.send(zmq::buffer(identity),
                      zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      return false;
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) return false;
    throw;
  }
  // The rest of a multipart message cannot be refused once the first frame is.
  socket_.send(zmq::message_t(), zmq::send_flags::sndmore);
  socket_.send(zmq::buffer(payload), zmq::send_flags::none);
  return true;
}

void CoordinatorSocket::refuse(std::string_view identity, std::string reason) {
  ++refused_;
  std::cerr << "kvtune transport: refused a message from worker '" << hex_escape(identity)
            << "': " << reason << '\n';
  last_refusal_ = std::move(reason);
}

// ---------------------------------------------------------------------------

WorkerSocket::WorkerSocket(const std::string& endpoint, const std::string& identity)
    : WorkerSocket(endpoint, identity, Options{}) {}

WorkerSocket::WorkerSocket(const std::string& endpoint, const std::string& identity,
                           Options options)
    : socket_(context_, zmq::socket_type::dealer), identity_(identity) {
  if (identity.empty() || identity.size() > 255 || identity[0] == '\0') {
    throw std::invalid_argument("worker identity must be 1 to 255 bytes, not starting with \\0");
  }
  set_common_options(socket_);
  if (options.curve) {
    const CurveClient& curve = *options.curve;
    require_curve("a CURVE worker");
    check_key(curve.server_public_key, "the coordinator's public key");
    check_pair(curve.worker_keys, "the worker's key pair");
    socket_.set(zmq::sockopt::curve_serverkey, curve.server_public_key);
    socket_.set(zmq::sockopt::curve_publickey, curve.worker_keys.public_key);
    socket_.set(zmq::sockopt::curve_secretkey, curve.worker_keys.secret_key);
  }
  socket_.set(zmq::sockopt::routing_id, zmq::buffer(identity));
  socket_.set(zmq::sockopt::reconnect_ivl, static_cast<int>(options.reconnect_interval.count()));
  socket_.set(zmq::sockopt::reconnect_ivl_max,
              static_cast<int>(options.reconnect_interval_max.count()));
  socket_.connect(endpoint);
}

bool WorkerSocket::send(capnp::MessageBuilder& message) {
  const std::string payload = encode(message);
  if (!socket_.send(zmq::message_t(), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
    return false;
  }
  socket_.send(zmq::buffer(payload), zmq::send_flags::none);
  return true;
}

std::optional<DecodeResult<schema::CoordinatorMessage>> WorkerSocket::receive(
    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (!poll_in(socket_, time_left(deadline))) return std::nullopt;
    std::size_t total = 0;
    std::vector<zmq::message_t> frames = read_frames(socket_, total);
    if (frames.empty()) continue;
    DecodeResult<schema::CoordinatorMessage> result;
    if (total != 2) {
      result.error = "expected 2 frames ([empty][payload]), got " + std::to_string(total);
    } else if (frames[0].size() != 0) {
      result.error = "first frame is not the empty delimiter";
    } else {
      result = decode<schema::CoordinatorMessage>(frames[1].to_string_view());
    }
    return result;
  }
}

}  // namespace kvtune::transport
