// The message transport between the coordinator and its workers: ZeroMQ
// ROUTER (coordinator) <-> DEALER (workers), carrying Cap'n Proto messages
// (schemas/kvtune.capnp: WorkerMessage up, CoordinatorMessage down).
//
// Wire format. A worker's DEALER sends two frames, [empty delimiter][payload];
// the coordinator's ROUTER sees [worker identity][empty][payload] and answers
// the same way. A payload is a 2-byte header, the magic byte 'K' and the
// protocol version (kProtocolVersion), followed by one unpacked Cap'n Proto
// message in flat-array form (capnp::messageToFlatArray), so a stale or
// foreign peer is detected before its bytes are parsed.
//
// Decoding never throws and never trusts the bytes: the header, the length
// (a whole number of 8-byte words), the segment table and every pointer are
// checked (the whole message is traversed under a traversal and a nesting
// limit); anything malformed becomes an error string. The sockets refuse such
// frames (and frame sequences of the wrong shape), count and log them, and
// go on serving the next message.
//
// This is only the transport: leases, credit and heartbeats live above it.
#pragma once

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <zmq.hpp>

#include "kvtune/schemas/kvtune.capnp.h"

namespace kvtune::transport {

inline constexpr char kMagic = 'K';
inline constexpr std::uint8_t kProtocolVersion = 1;
inline constexpr std::size_t kHeaderBytes = 2;
// Largest payload accepted (also ZMQ_MAXMSGSIZE on the sockets).
inline constexpr std::size_t kMaxPayloadBytes = std::size_t{64} << 20;
// Reader limits used when decoding.
inline constexpr std::uint64_t kTraversalLimitWords = kMaxPayloadBytes / sizeof(capnp::word);
inline constexpr int kNestingLimit = 64;

// A decoded message that owns its (aligned) bytes; readers from get() live as
// long as it does.
template <typename T>
class Decoded {
 public:
  // `words` must already have passed validation (decode() does this).
  explicit Decoded(kj::Array<capnp::word> words)
      : words_(kj::mv(words)),
        reader_(std::make_unique<capnp::FlatArrayMessageReader>(
            words_, capnp::ReaderOptions{kTraversalLimitWords, kNestingLimit})) {}
  typename T::Reader get() const { return reader_->getRoot<T>(); }

 private:
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
};

// Either a decoded message or the reason it was refused.
template <typename T>
struct DecodeResult {
  std::optional<Decoded<T>> message;
  std::string error;  // empty when `message` is set
  bool ok() const { return message.has_value(); }
};

// Header + flat-array encoding of `message`.
std::string encode(capnp::MessageBuilder& message);

// Checks `payload` completely (see the file comment) as a message whose root
// is of type `root`: every field, at every depth, is read with its schema
// type, so a structurally sound message with a pointer of the wrong kind
// (a list where text belongs, ...) is refused here rather than throwing
// later. On success returns an empty string and fills `words` with the
// message's aligned words; otherwise returns the reason and leaves `words`
// empty.
std::string validate(std::string_view payload, capnp::StructSchema root,
                     kj::Array<capnp::word>& words);

template <typename T>
DecodeResult<T> decode(std::string_view payload) {
  kj::Array<capnp::word> words;
  std::string error = validate(payload, capnp::Schema::from<T>(), words);
  if (!error.empty()) return {std::nullopt, std::move(error)};
  return {Decoded<T>(kj::mv(words)), {}};
}

// `bytes` with printable ASCII kept and everything else as \xNN (for logs).
std::string hex_escape(std::string_view bytes);

// The coordinator's end: a bound ROUTER socket.
class CoordinatorSocket {
 public:
  struct Incoming {
    std::string worker_identity;
    Decoded<schema::WorkerMessage> message;
  };

  // Binds to `endpoint` (e.g. "tcp://127.0.0.1:0" for an ephemeral port).
  // Throws zmq::error_t when the endpoint cannot be bound.
  explicit CoordinatorSocket(const std::string& endpoint);
  CoordinatorSocket(const CoordinatorSocket&) = delete;
  CoordinatorSocket& operator=(const CoordinatorSocket&) = delete;

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

 private:
  void refuse(std::string_view identity, std::string reason);

  zmq::context_t context_{1};
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
  };

  // Connects to `endpoint` as `identity` (ZMQ_ROUTING_ID; non-empty, at most
  // 255 bytes, not starting with a zero byte). Throws zmq::error_t on a bad
  // endpoint or identity.
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
