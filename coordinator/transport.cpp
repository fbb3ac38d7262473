#include "transport.h"

#include <capnp/dynamic.h>
#include <kj/exception.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <vector>

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

CoordinatorSocket::CoordinatorSocket(const std::string& endpoint)
    : socket_(context_, zmq::socket_type::router) {
  set_common_options(socket_);
  // A reply to a worker that is gone fails loudly instead of vanishing.
  socket_.set(zmq::sockopt::router_mandatory, 1);
  socket_.bind(endpoint);
  endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
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
    return Incoming{std::move(identity), std::move(*decoded.message)};
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
