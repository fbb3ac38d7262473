// A small HTTP/1.1 server and client (Boost.Beast over Boost.Asio) for the
// coordinator's JSON API; no API routes live here, only the plumbing.
//
// Server. Fully asynchronous on a caller-provided io_context and without
// threads of its own: the handler runs on whichever thread runs or polls that
// io_context (the coordinator's single-threaded main loop calls
// io_context.poll() between ZeroMQ polls). Connections are kept alive
// (HTTP/1.1); every response carries Content-Type, Content-Length,
// "Server: kvtune", Cache-Control: no-store and a Content-Security-Policy
// that lets a browser load nothing from elsewhere. The server never trusts
// its peers:
//   - with a bearer token, every request except GET /healthz and GET/HEAD of
//     the public_paths (static files) needs "Authorization: Bearer <token>"
//     (compared in constant time), else 401;
//   - a body over max_body_bytes is answered 413 and the connection closed;
//   - malformed HTTP (garbage, a bad request line, headers over
//     max_header_bytes, ...) is answered 400 where still possible and the
//     connection closed;
//   - a connection idle or slow for idle_timeout is closed;
//   - a request target that is not valid UTF-8 is answered 400 (the
//     connection stays open) without calling the handler;
//   - a handler that throws is answered 500 with its what().
// Refused requests (malformed, oversized, unauthorized) are counted in
// refused() and logged to stderr, one line each; other connections are not
// disturbed. Error bodies are JSON: {"error": "..."}.
//
// Like every Asio object, a Server is not thread-safe: construct and destroy
// it on the thread that runs the io_context, or while no thread runs it
// (refused(), connections(), address() and port() may be read from anywhere).
// Destroying it stops accepting and closes the open connections; their
// sessions are released as the io_context runs them down (or is destroyed),
// and the handler is never called again.
//
// Client. request() is synchronous (for the CLI and tests): one request on a
// fresh connection, one response, an overall timeout.
#pragma once

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kvtune/common/utf8.h"

namespace kvtune::http {

namespace detail {
struct ServerState;  // shared by the server and its connections
}

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent, e.g. "/v1/jobs/abc?x=1"
  std::string path;    // target without the query, e.g. "/v1/jobs/abc"
  std::string query;   // after the '?', e.g. "x=1" (empty when none)
  std::string body;
};

struct Response {
  int status = 200;
  std::string body;  // usually JSON
  std::string content_type = "application/json";
};

// {"error": message}, serialized; bytes of `message` that are not UTF-8 are
// written as \xNN (escape_utf8), so the body is always valid UTF-8 JSON.
std::string error_body(const std::string& message);

// UTF-8 checks and escaping (kvtune/common/utf8.h), also spelled http::.
using kvtune::escape_utf8;
using kvtune::valid_utf8;

using Handler = std::function<Response(const Request&)>;

struct ServerOptions {
  std::string bearer_token;                 // empty: no authentication
  std::vector<std::string> public_paths;    // GET/HEAD without the token (static files)
  std::size_t max_body_bytes = 1 << 20;     // larger bodies: 413
  std::size_t max_header_bytes = 16 << 10;  // larger request line + headers: 400
  std::chrono::seconds idle_timeout{30};    // a connection idle/slow this long is closed
};

class Server {
 public:
  // Listens on "HOST:PORT" (port 0: an ephemeral port); throws kvtune::Error
  // naming the address when it cannot parse, resolve or bind it.
  Server(boost::asio::io_context& io, const std::string& host_port, Handler handler,
         ServerOptions options = {});
  ~Server();  // stops accepting and closes open connections (see the file comment)
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  std::string address() const;  // "127.0.0.1:PORT" with the real port ("[::1]:PORT" for IPv6)
  std::uint16_t port() const;
  std::uint64_t refused() const;    // malformed / oversized / unauthorized requests so far
  std::size_t connections() const;  // connections open now

 private:
  std::shared_ptr<detail::ServerState> state_;
};

// Client (synchronous, for the CLI and tests): one request, one response.
struct ClientResponse {
  int status = 0;
  std::string body;
};

// Sends one request (Connection: close; Content-Type: application/json when
// `body` is not empty; Authorization: Bearer when `bearer_token` is set) and
// reads the response, all within `timeout`. Any HTTP status is returned as is;
// throws kvtune::Error "cannot reach the coordinator API at HOST:PORT: <reason>"
// on a bad address, connect/IO failure or timeout.
ClientResponse request(const std::string& host_port, const std::string& method,
                       const std::string& target, const std::string& body = {},
                       const std::string& bearer_token = {},
                       std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Splits "HOST:PORT" ("[::1]:PORT" for IPv6 literals); the port is 0..65535.
// Throws kvtune::Error naming the bad value.
std::pair<std::string, std::uint16_t> parse_host_port(const std::string& host_port);

}  // namespace kvtune::http
