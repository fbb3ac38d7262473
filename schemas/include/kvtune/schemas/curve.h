// ZeroMQ CURVE keys and key files for the coordinator <-> worker transport.
//
// Security. By default the sockets are plaintext (meant for loopback or a
// trusted network). Off-host workers use ZeroMQ CURVE (RFC 26): the
// coordinator has a long-term key pair whose public key every worker is given,
// each worker has its own key pair, and the coordinator admits only workers
// whose public key it was told to trust. The check runs in a ZAP handler
// (RFC 27) owned by the CoordinatorSocket; refused handshakes are counted and
// logged. A worker with an unknown key, the wrong server key or no CURVE at all
// gets no message through in either direction.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace kvtune::transport {

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

}  // namespace kvtune::transport
