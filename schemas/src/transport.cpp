#include "kvtune/schemas/transport.h"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "curve_internal.h"
#include "kvtune/common/error.h"

namespace kvtune::transport {

namespace {

using detail::check_key;
using detail::check_pair;
using detail::kCurveKeyBytes;
using detail::require_curve;
using detail::z85_encode;

// Where the ZAP handler of a context must be bound (RFC 27).
constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
constexpr const char* kMonitorEndpoint = "inproc://kvtune.handshakes";
constexpr const char* kZapDomain = "kvtune";
// ZMQ_ZAP_ENFORCE_DOMAIN, a draft option in libzmq 4.3's header: with it a
// CURVE handshake fails when no ZAP handler is bound instead of succeeding.
constexpr int kZapEnforceDomainOption = 93;

constexpr std::size_t kMaxKeptFrames = 4;  // more are counted and dropped

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

}  // namespace

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
    // A refused peer shows up as a protocol failure when this side reads the
    // peer's greeting first, and as a failure without detail when the peer
    // has already given up and reset the connection (it does not retry after
    // a protocol error): which one depends on scheduling, so both count.
    if (zmq_socket_monitor(
            router.handle(), kMonitorEndpoint,
            ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0) {
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
    if (id == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
      refused_.fetch_add(1, std::memory_order_relaxed);
      report("no detail", "a worker's handshake on " + endpoint +
                              " failed: the connection broke during the handshake (" +
                              std::strerror(static_cast<int>(value)) +
                              "; a worker without CURVE keys, or with the wrong ones?)");
      return;
    }
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
