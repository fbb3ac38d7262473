// Checks on CURVE keys shared by the key files (curve.cpp) and the sockets
// (transport.cpp); not part of the library's interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvtune/schemas/curve.h"

namespace kvtune::transport::detail {

inline constexpr std::size_t kCurveKeyBytes = 32;

// Z85 text of a 32-byte key.
std::string z85_encode(const std::uint8_t* bytes);
// Throws kvtune::Error, saying `what` needs it, when libzmq has no CURVE.
void require_curve(const std::string& what);
// `what` names the key in the error; the key itself is not quoted (it may be
// a secret).
void check_key(const std::string& key, const std::string& what);
std::string public_key_of(const std::string& secret_key);
// Both keys valid and belonging together.
void check_pair(const CurveKeyPair& keys, const std::string& what);

}  // namespace kvtune::transport::detail
