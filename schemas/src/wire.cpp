#include "kvtune/schemas/wire.h"

#include <capnp/dynamic.h>
#include <kj/exception.h>

#include <cstdio>
#include <cstring>
#include <exception>

namespace kvtune::transport {

namespace {

std::string byte_hex(unsigned char byte) {
  char text[5];
  std::snprintf(text, sizeof(text), "0x%02x", byte);
  return text;
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

}  // namespace kvtune::transport
