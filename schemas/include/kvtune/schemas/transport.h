// The message transport between the coordinator and its workers: ZeroMQ
// ROUTER (coordinator) <-> DEALER (workers), carrying Cap'n Proto messages
// (schemas/kvtune.capnp: WorkerMessage up, CoordinatorMessage down).
//
// Framing and validation are in wire.h, CURVE keys in curve.h.
//
// Security: see curve.h. The coordinator's socket runs the ZAP handler that
// admits only authorized worker keys; refused handshakes are counted and logged.
//
// This is only the transport: leases, credit and heartbeats live above it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <zmq.hpp>

#include "kvtune/schemas/curve.h"
#include "kvtune/schemas/kvtune.capnp.h"
#include "kvtune/schemas/wire.h"

namespace kvtune::transport {

// The coordinator's end: a bound ROUTER socket.
class CoordinatorSocket {
 public:
  struct Incoming {
    std::string worker_identity;
    Decoded<schema::WorkerMessage> message;
    // With CURVE, the Z85 public key the worker authenticated with; empty
    // in plaintext.
    std::string worker_key = {};
  };

  // Binds to `endpoint` (e.g. "tcp://127.0.0.1:0" for an ephemeral port),
  // plaintext. Throws zmq::error_t when the endpoint cannot be bound.
  explicit CoordinatorSocket(const std::string& endpoint);
  // The same with `security` (see CoordinatorSecurity). Throws kvtune::Error
  // for an invalid key or when CURVE is asked for but unavailable.
  CoordinatorSocket(const std::string& endpoint, const CoordinatorSecurity& security);
  ~CoordinatorSocket();
  CoordinatorSocket(const CoordinatorSocket&) = delete;
  CoordinatorSocket& operator=(const CoordinatorSocket&) = delete;

  // Whether workers must authenticate with CURVE.
  bool secure() const { return guard_ != nullptr; }

  // The endpoint actually bound (ZMQ_LAST_ENDPOINT), with the real port.
  const std::string& endpoint() const { return endpoint_; }

  // True when a message (valid or not) is waiting, after at most `timeout`.
  bool poll(std::chrono::milliseconds timeout);

  // The next valid message, waiting at most `timeout` in all. Refused frames
  // are counted, logged to stderr and skipped; nullopt on timeout.
  std::optional<Incoming> receive(std::chrono::milliseconds timeout);

  // Sends `message` to the worker with `identity`. False (nothing sent) when
  // no such worker is connected or its queue is full.
  bool send(std::string_view identity, capnp::MessageBuilder& message);

  std::uint64_t refused() const { return refused_; }
  // Why the last refused message was refused (empty if none was).
  const std::string& last_refusal() const { return last_refusal_; }

  // With CURVE, how many worker handshakes were refused: a key not in the
  // authorized set, or a failed handshake (the wrong server key, a plaintext
  // peer, ...). Counted by a background thread; safe to call from any thread.
  // Always 0 in plaintext. Logged to stderr (at most once a minute for the
  // same key or reason, with the count of those not logged).
  std::uint64_t refused_handshakes() const;

 private:
  class Guard;  // the ZAP handler and handshake monitor (transport.cpp)

  void refuse(std::string_view identity, std::string reason);

  zmq::context_t context_{1};
  // Declared before socket_ so that the socket is closed first: no handshake
  // may complete once the ZAP handler has stopped.
  std::unique_ptr<Guard> guard_;
  zmq::socket_t socket_;
  std::string endpoint_;
  std::uint64_t refused_ = 0;
  std::string last_refusal_;
};

// A worker's end: a DEALER connecting to the coordinator. ZeroMQ reconnects
// by itself, with backoff, when the coordinator goes away and comes back.
class WorkerSocket {
 public:
  struct Options {
    std::chrono::milliseconds reconnect_interval{100};
    std::chrono::milliseconds reconnect_interval_max{5000};
    // Set: authenticate to a CURVE coordinator with these keys. Unset:
    // plaintext (refused by a CURVE coordinator).
    std::optional<CurveClient> curve;
  };

  // Connects to `endpoint` as `identity` (ZMQ_ROUTING_ID; non-empty, at most
  // 255 bytes, not starting with a zero byte). Throws zmq::error_t on a bad
  // endpoint, std::invalid_argument on a bad identity, kvtune::Error on bad
  // CURVE keys or when CURVE is asked for but unavailable. A handshake the
  // coordinator refuses is not reported here: messages just never arrive.
  // (libzmq 4.3.4 retries a failed handshake every reconnect interval, except
  // after the coordinator refused the worker's key: then never, and only a
  // new WorkerSocket tries again.)
  WorkerSocket(const std::string& endpoint, const std::string& identity);
  WorkerSocket(const std::string& endpoint, const std::string& identity, Options options);
  WorkerSocket(const WorkerSocket&) = delete;
  WorkerSocket& operator=(const WorkerSocket&) = delete;

  const std::string& identity() const { return identity_; }

  // Queues `message` for the coordinator; false when the queue is full.
  bool send(capnp::MessageBuilder& message);

  // The next message from the coordinator (or why it was unreadable), waiting
  // at most `timeout`; nullopt on timeout.
  std::optional<DecodeResult<schema::CoordinatorMessage>> receive(
      std::chrono::milliseconds timeout);

 private:
  zmq::context_t context_{1};
  zmq::socket_t socket_;
  std::string identity_;
};

}  // namespace kvtune::transport
