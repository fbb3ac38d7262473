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
// Security. By default the sockets are plaintext (meant for loopback or a
// trusted network). Off-host workers use ZeroMQ CURVE (RFC 26): the
// coordinator has a long-term key pair whose public key every worker is given,
// each worker has its own key pair, and the coordinator admits only workers
// whose public key it was told to trust. The check runs in a ZAP handler
// (RFC 27) owned by the CoordinatorSocket; refused handshakes are counted and
// logged. A worker with an unknown key, the wrong server key or no CURVE at all
// gets no message through in either direction.
//
// This is only the transport: leases, credit and heartbeats live above it.
#pragma once

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
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

// ---------------------------------------------------------------------------
// CURVE keys
//
// Keys are Z85 text (ZeroMQ RFC 32) of 32-byte Curve25519 keys: 40 characters.
//
// Key files use ZeroMQ's certificate format (the one czmq's zcert and pyzmq's
// zmq.auth write and read), a subset of ZPL:
//
//   #   ZeroMQ CURVE **Secret** Certificate        <- '#' lines are comments
//   metadata                                       <- section; its entries are
//   curve                                             ignored
//       public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//       secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
//
// A secret key file has both keys (and they must belong together); a public
// key file (the same name plus ".pub") has only public-key. Values may be
// quoted with " or ' or bare. Any other line is an error.
//
// An authorized-keys source (for the coordinator) is either
//   - a text file with one Z85 public key per line (the first word of the
//     line; the rest of the line is free text, e.g. the worker's name), blank
//     lines and '#' comment lines; or
//   - a directory: every "*.pub" file in it (not in subdirectories) is a
//     public key file as above, e.g. the workers' files from `kvtune keygen`.
//
// Every problem with a key or a key file throws kvtune::Error naming the file
// (and line, where there is one); the secret key is never quoted.

inline constexpr std::size_t kCurveKeyChars = 40;

struct CurveKeyPair {
  std::string public_key;  // Z85
  std::string secret_key;  // Z85
};

// Whether this libzmq supports CURVE (zmq_has("curve"): built with libsodium).
bool curve_available();

// Whether `z85` is a canonical Z85 encoding of a 32-byte key (40 characters).
bool is_curve_key(std::string_view z85);

// A new random key pair. Throws kvtune::Error when CURVE is unavailable.
CurveKeyPair generate_curve_keypair();

// Writes `secret_file` (both keys, mode 0600) and `secret_file` + ".pub" (the
// public key, mode 0644 less the umask). Never overwrites: throws
// kvtune::Error, writing nothing, when either file already exists.
void save_curve_keypair(const CurveKeyPair& keys, const std::filesystem::path& secret_file);

// Reads a secret key file (both keys, checked to belong together).
CurveKeyPair load_curve_keypair(const std::filesystem::path& secret_file);

// Reads the public key from a public or a secret key file.
std::string load_curve_public_key(const std::filesystem::path& file);

// Reads an authorized-keys file or directory (see above). May be empty.
std::set<std::string> load_authorized_keys(const std::filesystem::path& path);

// How a CoordinatorSocket admits workers. No server keys: plaintext, every
// peer admitted (the default). With server keys: CURVE, and only workers
// whose public key is in `authorized_workers` are admitted (none if empty).
struct CoordinatorSecurity {
  std::optional<CurveKeyPair> server_keys;
  std::set<std::string> authorized_workers;  // Z85 public keys
};

// A worker's CURVE settings: the coordinator's public key and its own pair.
struct CurveClient {
  std::string server_public_key;
  CurveKeyPair worker_keys;
};

// ---------------------------------------------------------------------------

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
