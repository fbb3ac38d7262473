// The framing of kvtune's wire messages (coordinator <-> workers), below any
// socket: a 2-byte header then one Cap'n Proto message, and the validation
// every received payload passes before it is read.
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
#pragma once

#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

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

}  // namespace kvtune::transport
