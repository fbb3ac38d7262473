#include "http.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <exception>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "kvtune/common/error.h"

namespace kvtune::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

std::string error_body(const std::string& message) {
  return nlohmann::json{{"error", escape_utf8(message)}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

// How long a connection refused with 413/400 is drained before it is closed,
// so that the peer reads our answer instead of a reset.
constexpr std::chrono::seconds kLingerTime{2};
// A response body larger than this makes request() fail.
constexpr std::uint64_t kMaxResponseBytes = std::uint64_t{1} << 32;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

std::string endpoint_text(const tcp::endpoint& endpoint) {
  const auto address = endpoint.address();
  const std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(endpoint.port());
}

void log_line(const std::string& line) {
  std::cerr << (line + "\n") << std::flush;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Compares in time that depends only on the length of `expected`.
bool constant_time_equal(std::string_view given, std::string_view expected) {
  unsigned diff = given.size() == expected.size() ? 0u : 1u;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= g ^ static_cast<unsigned char>(expected[i]);
  }
  return diff == 0;
}

// "Bearer <token>" (the scheme is case-insensitive) carrying `token`.
bool bearer_matches(std::string_view header, const std::string& token) {
  constexpr std::string_view kScheme = "Bearer ";
  if (header.size() < kScheme.size() || !iequals(header.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  std::string_view given = header.substr(kScheme.size());
  while (!given.empty() && given.front() == ' ') given.remove_prefix(1);
  while (!given.empty() && given.back() == ' ') given.remove_suffix(1);
  return constant_time_equal(given, token);
}

// What every response allows a browser: nothing from elsewhere (the page's
// own files, the API by fetch, inline SVG), no framing, no sniffing, no
// caching (the page's files are small and must match the binary serving
// them; the API's answers are live and may be secret).
constexpr char kContentSecurityPolicy[] =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const boost::system::error_category& beast_http_category() {
  static const auto& category = bhttp::make_error_code(bhttp::error::bad_target).category();
  return category;
}

}  // namespace

namespace detail {

class Session;

struct ServerState {
  ServerState(asio::io_context& io, Handler handler_in, ServerOptions options_in)
      : acceptor(io),
        retry_timer(io),
        handler(std::move(handler_in)),
        options(std::move(options_in)) {}

  tcp::acceptor acceptor;
  asio::steady_timer retry_timer;  // after a failed accept (out of descriptors, ...)
  Handler handler;
  ServerOptions options;
  std::string address;
  std::uint16_t port = 0;
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::size_t> connections{0};
  bool stopped = false;                   // the Server is gone
  std::unordered_set<Session*> sessions;  // live ones, to close them when stopped
};

// One connection: read a request, answer it, repeat while kept alive. Owned
// by the handlers of its pending operation (shared_from_this).
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<ServerState> state)
      : stream_(std::move(socket)), state_(std::move(state)) {
    error_code ec;
    const auto remote = stream_.socket().remote_endpoint(ec);
    peer_ = ec ? std::string("an unknown peer") : endpoint_text(remote);
    state_->sessions.insert(this);
    ++state_->connections;
  }
  ~Session() {
    state_->sessions.erase(this);
    --state_->connections;
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start() { read_header(); }

  // Closes the connection; pending operations end with operation_aborted.
  void stop() {
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

 private:
  const ServerOptions& options() const { return state_->options; }

  void read_header() {
    parser_.emplace();
    parser_->body_limit(static_cast<std::uint64_t>(options().max_body_bytes));
    parser_->header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(
        options().max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
    // One deadline for the whole request: header and body.
    stream_.expires_after(options().idle_timeout);
    bhttp::async_read_header(
        stream_, buffer_, *parser_,
        [self = shared_from_this()](error_code ec, std::size_t) { self->on_header(ec); });
  }

  void on_header(error_code ec) {
    if (state_->stopped) return stop();
    if (ec) return on_read_error(ec);
    if (parser_->is_done()) return handle_request();
    const auto& request = parser_->get();
    const auto expect = request[bhttp::field::expect];
    if (request.version() >= 11 && iequals({expect.data(), expect.size()}, "100-continue")) {
      asio::async_write(stream_, asio::buffer(kContinue.data(), kContinue.size()),
                        [self = shared_from_this()](error_code write_ec, std::size_t) {
                          if (self->state_->stopped) return self->stop();
                          if (write_ec) return self->stop();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](error_code ec, std::size_t) {
                        if (self->state_->stopped) return self->stop();
                        if (ec) return self->on_read_error(ec);
                        self->handle_request();
                      });
  }

  void on_read_error(error_code ec) {
    if (ec == bhttp::error::end_of_stream) {  // the peer closed between requests
      error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      return stop();
    }
    if (ec == asio::error::operation_aborted) return stop();
    if (ec == beast::error::timeout) {
      // Idle keep-alive connections just end; one that stalled mid-request is refused.
      if (parser_ && parser_->got_some()) {
        refuse_quietly("no complete request within " +
                       std::to_string(options().idle_timeout.count()) + " s");
      }
      return stop();
    }
    if (ec == bhttp::error::body_limit) {
      return refuse(413,
                    "request body over " + std::to_string(options().max_body_bytes) + " bytes");
    }
    if (ec.category() == beast_http_category()) {
      return refuse(400, "malformed HTTP request: " + ec.message());
    }
    stop();  // reset by the peer and the like: nothing to answer
  }

  // Counts and logs a refused request.
  void refuse_quietly(const std::string& reason) {
    ++state_->refused;
    log_line("kvtune http: refused request from " + peer_ + ": " + reason);
  }

  // Answers, then drains and closes the connection. A request whose request
  // line was read as HEAD gets no body (what a HEAD client expects).
  void refuse(int status, const std::string& reason) {
    refuse_quietly(reason);
    const bool head_only = parser_ && parser_->get().method() == bhttp::verb::head;
    send(status, error_body(reason), "application/json", /*keep_alive=*/false, /*version=*/11,
         /*authenticate=*/false, /*linger=*/true, head_only);
  }

  bool authorized(const bhttp::request<bhttp::string_body>& request,
                  const std::string& path) const {
    const std::string& token = options().bearer_token;
    if (token.empty()) return true;
    if (request.method() == bhttp::verb::get && path == "/healthz") return true;
    const bool read = request.method() == bhttp::verb::get || request.method() == bhttp::verb::head;
    const auto& open = options().public_paths;
    if (read && std::find(open.begin(), open.end(), path) != open.end()) return true;
    const auto header = request[bhttp::field::authorization];
    return bearer_matches({header.data(), header.size()}, token);
  }

  void handle_request() {
    auto& message = parser_->get();
    Request request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    const auto question = request.target.find('?');
    request.path = request.target.substr(0, question);
    if (question != std::string::npos) request.query = request.target.substr(question + 1);
    request.body = std::move(message.body());
    const bool keep_alive = message.keep_alive();
    const unsigned version = message.version();
    const bool head_only = message.method() == bhttp::verb::head;

    if (!valid_utf8(request.target)) {
      const std::string reason =
          "the request target is not valid UTF-8: " + escape_utf8(request.target);
      refuse_quietly(reason);
      return send(400, error_body(reason), "application/json", keep_alive, version,
                  /*authenticate=*/false, /*linger=*/false, head_only);
    }
    if (!authorized(message, request.path)) {
      refuse_quietly("missing or wrong bearer token (" + request.method + " " + request.path + ")");
      return send(401, error_body("missing or wrong bearer token"), "application/json", keep_alive,
                  version, /*authenticate=*/true, /*linger=*/false, head_only);
    }

    Response response;
    try {
      const Handler handler = state_->handler;  // a copy: the handler may destroy the Server
      response = handler(request);
      if (response.status < 200 || response.status > 599) {
        throw Error("the handler returned HTTP status " + std::to_string(response.status));
      }
    } catch (const std::exception& e) {
      log_line("kvtune http: " + request.method + " " + request.target + " from " + peer_ +
               " failed: " + e.what());
      response = Response{500, error_body(e.what()), "application/json"};
    } catch (...) {
      log_line("kvtune http: " + request.method + " " + request.target + " from " + peer_ +
               " failed with an unknown exception");
      response = Response{500, error_body("unknown error"), "application/json"};
    }
    if (state_->stopped) return stop();
    send(response.status, std::move(response.body), response.content_type, keep_alive, version,
         /*authenticate=*/false, /*linger=*/false, head_only);
  }

  // `head_only` (an answer to HEAD): the headers of the response, without its body.
  void send(int status, std::string body, const std::string& content_type, bool keep_alive,
            unsigned version, bool authenticate, bool linger, bool head_only = false) {
    response_.emplace();
    response_->version(version == 10 ? 10 : 11);
    response_->result(static_cast<unsigned>(status));
    response_->set(bhttp::field::server, "kvtune");
    response_->set(bhttp::field::content_type, content_type);
    if (authenticate) response_->set(bhttp::field::www_authenticate, "Bearer");
    response_->set(bhttp::field::cache_control, "no-store");
    response_->set("Content-Security-Policy", kContentSecurityPolicy);
    response_->set("X-Content-Type-Options", "nosniff");
    response_->set("Referrer-Policy", "no-referrer");
    response_->body() = std::move(body);
    response_->keep_alive(keep_alive);
    response_->content_length(response_->body().size());
    if (head_only) response_->body().clear();
    stream_.expires_after(options().idle_timeout);
    bhttp::async_write(stream_, *response_,
                       [self = shared_from_this(), keep_alive, linger](error_code ec, std::size_t) {
                         self->response_.reset();
                         if (self->state_->stopped || ec) return self->stop();
                         if (linger) return self->linger();
                         if (!keep_alive) {
                           error_code ignored;
                           self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
                           return self->stop();
                         }
                         self->read_header();
                       });
  }

  // Half-closes, then discards what the peer still sends (until it closes,
  // or kLingerTime), so that it reads the answer rather than a reset.
  void linger() {
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(
        std::min<std::chrono::steady_clock::duration>(kLingerTime, options().idle_timeout));
    drain();
  }

  void drain() {
    stream_.async_read_some(asio::buffer(discard_),
                            [self = shared_from_this()](error_code ec, std::size_t) {
                              if (ec || self->state_->stopped) return self->stop();
                              self->drain();
                            });
  }

  beast::tcp_stream stream_;
  std::shared_ptr<ServerState> state_;
  std::string peer_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::optional<bhttp::response<bhttp::string_body>> response_;
  std::array<char, 4096> discard_{};
};

}  // namespace detail

namespace {

void accept_next(const std::shared_ptr<detail::ServerState>& state) {
  state->acceptor.async_accept([state](error_code ec, tcp::socket socket) {
    if (state->stopped || ec == asio::error::operation_aborted) return;
    if (ec) {
      log_line("kvtune http: accepting a connection on " + state->address +
               " failed: " + ec.message());
      state->retry_timer.expires_after(std::chrono::milliseconds(100));
      state->retry_timer.async_wait([state](error_code wait_ec) {
        if (!wait_ec && !state->stopped) accept_next(state);
      });
      return;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    std::make_shared<detail::Session>(std::move(socket), state)->start();
    accept_next(state);
  });
}

// The endpoint to bind for HOST (an address literal or a name; IPv4 preferred).
tcp::endpoint bind_endpoint(asio::io_context& io, const std::string& host, std::uint16_t port) {
  error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (!ec) return {address, port};
  tcp::resolver resolver(io);
  const auto results = resolver.resolve(
      host, std::to_string(port), tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    throw Error("cannot resolve host \"" + host + "\"" + (ec ? ": " + ec.message() : ""));
  }
  for (const auto& entry : results) {
    if (entry.endpoint().address().is_v4()) return entry.endpoint();
  }
  return results.begin()->endpoint();
}

}  // namespace

Server::Server(asio::io_context& io, const std::string& host_port, Handler handler,
               ServerOptions options)
    : state_(std::make_shared<detail::ServerState>(io, std::move(handler), std::move(options))) {
  if (!state_->handler) throw Error("kvtune http: a server needs a handler");
  const auto fail = [&](const std::string& reason) {
    return Error("cannot listen for HTTP on " + host_port + ": " + reason);
  };
  tcp::endpoint endpoint;
  try {
    const auto [host, port] = parse_host_port(host_port);
    endpoint = bind_endpoint(io, host, port);
  } catch (const Error& e) {
    throw fail(e.what());
  }
  auto& acceptor = state_->acceptor;
  error_code ec;
  if (acceptor.open(endpoint.protocol(), ec)) throw fail(ec.message());
  acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (acceptor.bind(endpoint, ec)) throw fail(ec.message());
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec)) throw fail(ec.message());
  const auto local = acceptor.local_endpoint(ec);
  if (ec) throw fail(ec.message());
  state_->port = local.port();
  state_->address = endpoint_text(local);
  accept_next(state_);
}

Server::~Server() {
  auto& state = *state_;
  state.stopped = true;
  error_code ignored;
  state.acceptor.close(ignored);
  state.retry_timer.cancel();
  const auto sessions = state.sessions;  // stop() does not erase, but be safe
  for (auto* session : sessions) session->stop();
  state.handler = nullptr;
}

std::string Server::address() const {
  return state_->address;
}
std::uint16_t Server::port() const {
  return state_->port;
}
std::uint64_t Server::refused() const {
  return state_->refused.load();
}
std::size_t Server::connections() const {
  return state_->connections.load();
}

std::pair<std::string, std::uint16_t> parse_host_port(const std::string& host_port) {
  const auto fail = [&](const std::string& reason) {
    return Error("invalid address \"" + host_port + "\": " + reason +
                 " (expected HOST:PORT, e.g. 127.0.0.1:7070)");
  };
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) throw fail("no \":PORT\"");
  std::string host = host_port.substr(0, colon);
  const std::string port_text = host_port.substr(colon + 1);
  if (host.empty()) throw fail("no host");
  if (port_text.empty()) throw fail("no port");
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') throw fail("unbalanced brackets in the host");
    host = host.substr(1, host.size() - 2);
    for (const char c : host) {
      if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.' && c != '%') {
        throw fail("a bracketed host must be an IPv6 address");
      }
    }
  } else {
    for (const char c : host) {
      if (c == ':') throw fail("an IPv6 host must be in brackets, e.g. [::1]:7070");
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') {
        throw fail("the host holds a character that is not allowed");
      }
    }
  }
  if (port_text.size() > 5 || !std::all_of(port_text.begin(), port_text.end(),
                                           [](char c) { return c >= '0' && c <= '9'; })) {
    throw fail("the port \"" + port_text + "\" is not a number from 0 to 65535");
  }
  const unsigned long port = std::stoul(port_text);
  if (port > 65535) throw fail("the port " + port_text + " is over 65535");
  return {host, static_cast<std::uint16_t>(port)};
}

ClientResponse request(const std::string& host_port, const std::string& method,
                       const std::string& target, const std::string& body,
                       const std::string& bearer_token, std::chrono::milliseconds timeout) {
  const auto fail = [&](const std::string& reason) {
    return Error("cannot reach the coordinator API at " + host_port + ": " + reason);
  };
  std::string host;
  std::uint16_t port = 0;
  try {
    std::tie(host, port) = parse_host_port(host_port);
  } catch (const Error& e) {
    throw fail(e.what());
  }
  if (port == 0) throw fail("port 0 cannot be connected to");

  asio::io_context io;
  error_code ec;
  tcp::resolver resolver(io);
  const auto endpoints =
      resolver.resolve(host, std::to_string(port), tcp::resolver::numeric_service, ec);
  if (ec) throw fail("cannot resolve host \"" + host + "\": " + ec.message());

  bhttp::request<bhttp::string_body> req;
  req.version(11);
  req.method_string(method);
  req.target(target);
  req.set(bhttp::field::host, host_port);
  req.set(bhttp::field::user_agent, "kvtune");
  if (!bearer_token.empty()) req.set(bhttp::field::authorization, "Bearer " + bearer_token);
  if (!body.empty()) req.set(bhttp::field::content_type, "application/json");
  req.body() = body;
  req.keep_alive(false);
  req.prepare_payload();

  beast::tcp_stream stream(io);
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(kMaxResponseBytes);
  error_code failure;
  std::string stage;
  bool done = false;

  // One deadline for connect, write and read.
  stream.expires_after(timeout);
  const auto read_response = [&](error_code write_ec) {
    // Read even after a failed write: the server may have answered (413) first.
    bhttp::async_read(stream, buffer, parser, [&, write_ec](error_code read_ec, std::size_t) {
      if (!read_ec) {
        done = true;
      } else if (write_ec) {
        failure = write_ec;
        stage = "sending the request";
      } else {
        failure = read_ec;
        stage = "reading the response";
      }
    });
  };
  stream.async_connect(endpoints, [&](error_code connect_ec, const tcp::endpoint&) {
    if (connect_ec) {
      failure = connect_ec;
      stage = "connecting";
      return;
    }
    bhttp::async_write(stream, req,
                       [&](error_code write_ec, std::size_t) { read_response(write_ec); });
  });
  io.run();

  if (!done) {
    if (failure == beast::error::timeout) {
      throw fail("no response within " + std::to_string(timeout.count()) + " ms (" + stage + ")");
    }
    throw fail(stage + ": " + failure.message());
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  const auto& response = parser.get();
  return ClientResponse{static_cast<int>(response.result_int()), response.body()};
}

}  // namespace kvtune::http
