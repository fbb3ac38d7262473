// The HTTP/JSON server and client over real sockets on 127.0.0.1: requests
// round-trip with their method, path, query and body; connections are kept
// alive; the bearer token, body and header limits and idle timeout are
// enforced; garbage and handler exceptions are answered without disturbing
// the next request; the client names the address it could not reach; the
// server runs on a polled io_context and lets its sessions go when destroyed.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "http.h"
#include "kvtune/common/error.h"

namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using kvtune::Error;
using kvtune::http::parse_host_port;
using kvtune::http::Request;
using kvtune::http::Response;
using kvtune::http::Server;
using kvtune::http::ServerOptions;
using nlohmann::json;

// Answers with what it received, as JSON; POST gets 201.
Response echo(const Request& request) {
  const json body = {{"method", request.method},
                     {"target", request.target},
                     {"path", request.path},
                     {"query", request.query},
                     {"body", request.body}};
  return Response{request.method == "POST" ? 201 : 200, body.dump(), "application/json"};
}

// A client connection for raw HTTP (or garbage). Every operation gives up
// after 5 s, so that a broken server fails a test instead of hanging it
// (blocking Asio reads would ignore SO_RCVTIMEO).
class RawClient {
 public:
  explicit RawClient(std::uint16_t port) : stream_(io_) {
    stream_.expires_after(kLimit);
    stream_.async_connect(tcp::endpoint{asio::ip::make_address("127.0.0.1"), port},
                          [this](error_code ec) { error_ = ec; });
    run();
    EXPECT_FALSE(error_) << "connect: " << error_.message();
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  void write(const std::string& data) {
    stream_.expires_after(kLimit);
    asio::async_write(stream_, asio::buffer(data),
                      [this](error_code ec, std::size_t) { error_ = ec; });
    run();
    EXPECT_FALSE(error_) << "write: " << error_.message();
  }
  void write(bhttp::request<bhttp::string_body>& request) {
    stream_.expires_after(kLimit);
    bhttp::async_write(stream_, request, [this](error_code ec, std::size_t) { error_ = ec; });
    run();
    EXPECT_FALSE(error_) << "write: " << error_.message();
  }
  // One HTTP message into `into` (a response or a response parser).
  template <class Into>
  void read(Into& into) {
    stream_.expires_after(kLimit);
    bhttp::async_read(stream_, buffer_, into, [this](error_code ec, std::size_t) { error_ = ec; });
    run();
    EXPECT_FALSE(error_) << "read: " << error_.message();
  }
  bhttp::response<bhttp::string_body> read_response() {
    bhttp::response<bhttp::string_body> response;
    read(response);
    return response;
  }
  std::string read_exactly(std::size_t n) {
    std::string data(n, '\0');
    stream_.expires_after(kLimit);
    asio::async_read(stream_, asio::buffer(data),
                     [this](error_code ec, std::size_t) { error_ = ec; });
    run();
    EXPECT_FALSE(error_) << "read: " << error_.message();
    return data;
  }
  // Everything the server sends until it closes; the close must be orderly
  // (EOF, not a reset or the time limit).
  std::string read_until_closed() {
    std::string data = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    std::array<char, 4096> chunk{};
    std::function<void()> next = [&] {
      stream_.async_read_some(asio::buffer(chunk), [&](error_code ec, std::size_t n) {
        data.append(chunk.data(), n);
        if (ec) {
          error_ = ec;
          return;
        }
        next();
      });
    };
    stream_.expires_after(kLimit);
    next();
    run();
    EXPECT_EQ(error_, asio::error::eof) << error_.message();
    return data;
  }
  void close() { stream_.close(); }

 private:
  static constexpr auto kLimit = std::chrono::seconds(5);
  void run() {
    error_ = {};
    io_.restart();
    io_.run();
  }

  asio::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  error_code error_;
};

// Runs the io_context on a thread of its own (with a work guard) while a
// test talks to the server from the main thread.
class HttpServerTest : public ::testing::Test {
 protected:
  void start(kvtune::http::Handler handler, ServerOptions options = {}) {
    server_ = std::make_unique<Server>(io_, "127.0.0.1:0", std::move(handler), std::move(options));
    thread_ = std::thread([this] {
      io_thread_id_ = std::this_thread::get_id();
      io_.run();
    });
  }
  void TearDown() override {
    guard_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();  // with no thread running the io_context (see http.h)
  }
  std::unique_ptr<RawClient> connect_raw() { return std::make_unique<RawClient>(server_->port()); }
  // Waits (up to 5 s) for the server to report `n` open connections.
  bool wait_for_connections(std::size_t n) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (server_->connections() != n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(5ms);
    }
    return true;
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_ = asio::make_work_guard(io_);
  std::unique_ptr<Server> server_;
  std::thread thread_;
  std::atomic<std::thread::id> io_thread_id_{};
};

TEST_F(HttpServerTest, GetAndPostRoundTrip) {
  start(echo);
  EXPECT_EQ(server_->address(), "127.0.0.1:" + std::to_string(server_->port()));
  EXPECT_NE(server_->port(), 0);

  const auto got = kvtune::http::request(server_->address(), "GET", "/v1/jobs/abc?x=1&y=2");
  ASSERT_EQ(got.status, 200) << got.body;
  const json get_body = json::parse(got.body);
  EXPECT_EQ(get_body["method"], "GET");
  EXPECT_EQ(get_body["target"], "/v1/jobs/abc?x=1&y=2");
  EXPECT_EQ(get_body["path"], "/v1/jobs/abc");
  EXPECT_EQ(get_body["query"], "x=1&y=2");
  EXPECT_EQ(get_body["body"], "");

  const std::string payload = R"({"model": "stories260K.bin", "layers": [1, 2, 3]})";
  const auto posted = kvtune::http::request(server_->address(), "POST", "/v1/jobs", payload);
  ASSERT_EQ(posted.status, 201) << posted.body;
  const json post_body = json::parse(posted.body);
  EXPECT_EQ(post_body["method"], "POST");
  EXPECT_EQ(post_body["path"], "/v1/jobs");
  EXPECT_EQ(post_body["query"], "");
  EXPECT_EQ(post_body["body"], payload);
  EXPECT_EQ(server_->refused(), 0u);
}

TEST_F(HttpServerTest, KeepAliveServesTwoRequestsOnOneConnectionWithHeaders) {
  std::atomic<int> calls{0};
  std::atomic<bool> on_io_thread{true};
  start([&](const Request& request) {
    ++calls;
    if (std::this_thread::get_id() != io_thread_id_.load()) on_io_thread = false;
    return echo(request);
  });
  const auto client = connect_raw();
  for (const std::string target : {"/first", "/second?n=2"}) {
    bhttp::request<bhttp::string_body> request{bhttp::verb::get, target, 11};
    request.set(bhttp::field::host, server_->address());
    request.keep_alive(true);
    client->write(request);
    const auto response = client->read_response();
    EXPECT_EQ(response.result_int(), 200u);
    EXPECT_TRUE(response.keep_alive());
    EXPECT_EQ(response[bhttp::field::server], "kvtune");
    EXPECT_EQ(response[bhttp::field::content_type], "application/json");
    EXPECT_EQ(response[bhttp::field::content_length], std::to_string(response.body().size()));
    EXPECT_EQ(json::parse(response.body())["target"], target);
  }
  EXPECT_EQ(calls.load(), 2);
  EXPECT_TRUE(on_io_thread.load());
  EXPECT_EQ(server_->connections(), 1u);  // both on the same connection

  // A client's "Connection: close" is honoured.
  bhttp::request<bhttp::string_body> last{bhttp::verb::get, "/last", 11};
  last.keep_alive(false);
  client->write(last);
  EXPECT_FALSE(client->read_response().keep_alive());
  EXPECT_TRUE(client->read_until_closed().empty());
  EXPECT_TRUE(wait_for_connections(0));
}

TEST_F(HttpServerTest, ExpectContinueAndHead) {
  start(echo);
  const auto client = connect_raw();
  client->write(
      "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n");
  EXPECT_EQ(client->read_exactly(25), "HTTP/1.1 100 Continue\r\n\r\n");
  client->write(R"({"a":1})");
  const auto response = client->read_response();
  EXPECT_EQ(response.result_int(), 201u);
  EXPECT_EQ(json::parse(response.body())["body"], R"({"a":1})");

  // HEAD: the headers of a GET, no body; the connection goes on.
  client->write("HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n");
  bhttp::response_parser<bhttp::empty_body> head;
  head.skip(true);  // a response to HEAD has no body whatever its Content-Length
  client->read(head);
  EXPECT_EQ(head.get().result_int(), 200u);
  EXPECT_EQ(head.get()[bhttp::field::content_length],
            std::to_string(echo(Request{"HEAD", "/x", "/x", "", ""}).body.size()));
  client->write("GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto get = client->read_response();  // would parse a HEAD body as garbage
  EXPECT_EQ(get.result_int(), 200u);
  EXPECT_EQ(json::parse(get.body())["method"], "GET");
}

TEST_F(HttpServerTest, BearerTokenIsRequiredExceptForHealthz) {
  std::atomic<int> calls{0};
  ServerOptions options;
  options.bearer_token = "s3cret-token";
  start(
      [&](const Request& request) {
        ++calls;
        return echo(request);
      },
      options);
  const std::string address = server_->address();
  const std::string expected_error = R"({"error":"missing or wrong bearer token"})";

  const auto missing = kvtune::http::request(address, "GET", "/v1/jobs");
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(missing.body, expected_error);
  const auto wrong = kvtune::http::request(address, "POST", "/v1/jobs", "{}", "s3cret-tokem");
  EXPECT_EQ(wrong.status, 401);
  const auto prefix = kvtune::http::request(address, "GET", "/v1/jobs", {}, "s3cret");
  EXPECT_EQ(prefix.status, 401);
  const auto longer = kvtune::http::request(address, "GET", "/v1/jobs", {}, "s3cret-token2");
  EXPECT_EQ(longer.status, 401);
  const auto posted_healthz = kvtune::http::request(address, "POST", "/healthz");
  EXPECT_EQ(posted_healthz.status, 401);
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(server_->refused(), 5u);

  const auto right = kvtune::http::request(address, "POST", "/v1/jobs", "{}", "s3cret-token");
  EXPECT_EQ(right.status, 201) << right.body;
  const auto healthz = kvtune::http::request(address, "GET", "/healthz");
  EXPECT_EQ(healthz.status, 200) << healthz.body;
  EXPECT_EQ(calls.load(), 2);

  // The 401 names the scheme, and the connection stays usable.
  const auto client = connect_raw();
  bhttp::request<bhttp::string_body> request{bhttp::verb::get, "/v1/jobs", 11};
  request.set(bhttp::field::authorization, "Basic czNjcmV0LXRva2Vu");
  client->write(request);
  const auto refused = client->read_response();
  EXPECT_EQ(refused.result_int(), 401u);
  EXPECT_EQ(refused[bhttp::field::www_authenticate], "Bearer");
  request.set(bhttp::field::authorization,
              "bearer s3cret-token");  // the scheme is case-insensitive
  client->write(request);
  EXPECT_EQ(client->read_response().result_int(), 200u);
  EXPECT_EQ(server_->refused(), 6u);
}

TEST_F(HttpServerTest, OversizedBodyIs413AndClosed) {
  std::atomic<int> calls{0};
  ServerOptions options;
  options.max_body_bytes = 1024;
  start(
      [&](const Request& request) {
        ++calls;
        return echo(request);
      },
      options);
  const auto small =
      kvtune::http::request(server_->address(), "POST", "/v1/jobs", std::string(1024, 'a'));
  EXPECT_EQ(small.status, 201);
  EXPECT_EQ(calls.load(), 1);

  const auto big =
      kvtune::http::request(server_->address(), "POST", "/v1/jobs", std::string(1025, 'a'));
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(big.body, R"({"error":"request body over 1024 bytes"})");
  // Much larger than the socket buffers: the client still reads the answer.
  const auto huge =
      kvtune::http::request(server_->address(), "POST", "/v1/jobs", std::string(8u << 20, 'a'));
  EXPECT_EQ(huge.status, 413);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(server_->refused(), 2u);

  // The rest of a refused body is drained, so a client that sends all of it
  // before reading (most do) can: its write succeeds, then it reads the 413
  // and an orderly close, not a reset.
  {
    const auto client = connect_raw();
    client->write("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 16777216\r\n\r\n" +
                  std::string(16u << 20, 'c'));
    const std::string answer = client->read_until_closed();
    EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer;
    EXPECT_NE(answer.find("Connection: close"), std::string::npos) << answer;
  }
  // A chunked body is limited as it arrives.
  {
    const auto client = connect_raw();
    std::string chunked = "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 3; ++i) chunked += "200\r\n" + std::string(512, 'b') + "\r\n";
    chunked += "0\r\n\r\n";
    client->write(chunked);
    const std::string answer = client->read_until_closed();
    EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer;
  }
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(server_->refused(), 4u);
  EXPECT_TRUE(wait_for_connections(0));
}

TEST_F(HttpServerTest, GarbageIs400AndTheServerGoesOn) {
  start(echo);
  {
    const auto client = connect_raw();
    // The start of a TLS ClientHello (with NUL bytes), then more junk.
    static constexpr char kGarbage[] =
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n";
    client->write(std::string(kGarbage, sizeof(kGarbage) - 1));
    const std::string answer = client->read_until_closed();
    EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
    EXPECT_NE(answer.find("Connection: close"), std::string::npos) << answer;
    EXPECT_NE(answer.find(R"({"error":"malformed HTTP request: )"), std::string::npos) << answer;
  }
  EXPECT_EQ(server_->refused(), 1u);
  {
    const auto client = connect_raw();  // a bad request line
    client->write("GET /x HTTP/9.Z\r\nHost: x\r\n\r\n");
    const std::string answer = client->read_until_closed();
    EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
  }
  EXPECT_EQ(server_->refused(), 2u);
  const auto after = kvtune::http::request(server_->address(), "GET", "/v1/status");
  EXPECT_EQ(after.status, 200);
  EXPECT_EQ(server_->refused(), 2u);
}

TEST_F(HttpServerTest, HeadersOverTheLimitAre400) {
  ServerOptions options;
  options.max_header_bytes = 1024;
  start(echo, options);
  const auto client = connect_raw();
  client->write("GET / HTTP/1.1\r\nHost: x\r\nX-Filler: " + std::string(2048, 'f') + "\r\n\r\n");
  const std::string answer = client->read_until_closed();
  EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
  EXPECT_NE(answer.find("header limit"), std::string::npos) << answer;
  EXPECT_EQ(server_->refused(), 1u);
  EXPECT_EQ(kvtune::http::request(server_->address(), "GET", "/").status, 200);
}

TEST_F(HttpServerTest, HandlerExceptionIs500WithItsMessage) {
  start([](const Request& request) -> Response {
    if (request.path == "/boom") throw Error("no job \"abc\" in the store");
    if (request.path == "/bad-status") return Response{42, "{}", "application/json"};
    return echo(request);
  });
  const auto boom = kvtune::http::request(server_->address(), "GET", "/boom");
  EXPECT_EQ(boom.status, 500);
  EXPECT_EQ(json::parse(boom.body), json({{"error", "no job \"abc\" in the store"}}));
  const auto bad_status = kvtune::http::request(server_->address(), "GET", "/bad-status");
  EXPECT_EQ(bad_status.status, 500);
  EXPECT_NE(bad_status.body.find("HTTP status 42"), std::string::npos) << bad_status.body;
  EXPECT_EQ(kvtune::http::request(server_->address(), "GET", "/fine").status, 200);
  EXPECT_EQ(server_->refused(), 0u);
}

TEST(HttpUtf8, ErrorBodyIsValidUtf8JsonWhateverTheMessage) {
  using kvtune::http::valid_utf8;
  // error_body() never throws and always writes valid UTF-8 JSON.
  const std::string body = kvtune::http::error_body("no job '\xFF\xC3'");
  EXPECT_TRUE(valid_utf8(body));
  EXPECT_EQ(json::parse(body), json({{"error", "no job '\\xFF\\xC3'"}}));
}

TEST_F(HttpServerTest, TargetThatIsNotUtf8Is400AndTheConnectionGoesOn) {
  std::atomic<int> calls{0};
  start([&](const Request& request) {
    ++calls;
    return echo(request);
  });
  const auto client = connect_raw();
  client->write("GET /v1/jobs/\xFF\xFE?x=\xC3 HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto refused = client->read_response();
  EXPECT_EQ(refused.result_int(), 400u);
  EXPECT_TRUE(refused.keep_alive());
  EXPECT_TRUE(kvtune::http::valid_utf8(refused.body())) << refused.body();
  EXPECT_EQ(
      json::parse(refused.body()),
      json({{"error", "the request target is not valid UTF-8: /v1/jobs/\\xFF\\xFE?x=\\xC3"}}));
  EXPECT_EQ(calls.load(), 0);
  EXPECT_EQ(server_->refused(), 1u);

  // Valid UTF-8, raw or percent-encoded, reaches the handler as sent.
  client->write("GET /v1/jobs/caf\xC3\xA9 HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto raw = client->read_response();
  EXPECT_EQ(raw.result_int(), 200u);
  EXPECT_EQ(json::parse(raw.body())["path"], "/v1/jobs/caf\xC3\xA9");
  client->write("GET /v1/jobs/%FF HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto encoded = client->read_response();
  EXPECT_EQ(encoded.result_int(), 200u);
  EXPECT_EQ(json::parse(encoded.body())["path"], "/v1/jobs/%FF");
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(server_->refused(), 1u);
}

TEST_F(HttpServerTest, HandlerExceptionThatIsNotUtf8IsStillValidJson) {
  start([](const Request& request) -> Response {
    if (request.path == "/boom") throw Error("no job '\xFF\xFE' in the store");
    return echo(request);
  });
  const auto boom = kvtune::http::request(server_->address(), "GET", "/boom");
  EXPECT_EQ(boom.status, 500);
  EXPECT_TRUE(kvtune::http::valid_utf8(boom.body)) << boom.body;
  EXPECT_EQ(json::parse(boom.body), json({{"error", "no job '\\xFF\\xFE' in the store"}}));
  EXPECT_EQ(kvtune::http::request(server_->address(), "GET", "/fine").status, 200);
}

TEST_F(HttpServerTest, IdleAndSlowConnectionsAreClosed) {
  ServerOptions options;
  options.idle_timeout = 1s;
  start(echo, options);
  const auto idle = connect_raw();
  const auto slow = connect_raw();
  slow->write("GET / HTTP/1.1\r\nHost: x\r\n");  // never ends
  ASSERT_TRUE(wait_for_connections(2));
  const auto start_time = std::chrono::steady_clock::now();
  EXPECT_TRUE(idle->read_until_closed().empty());
  EXPECT_TRUE(slow->read_until_closed().empty());
  const auto waited = std::chrono::steady_clock::now() - start_time;
  EXPECT_GE(waited, 900ms);
  EXPECT_LT(waited, 4s);
  EXPECT_TRUE(wait_for_connections(0));
  EXPECT_EQ(server_->refused(), 1u);  // the slow one; an idle connection is no fault
}

TEST(HttpServer, RunsOnAPolledIoContext) {
  asio::io_context io;
  std::thread::id handler_thread;
  Server server(io, "127.0.0.1:0", [&](const Request& request) {
    handler_thread = std::this_thread::get_id();
    return echo(request);
  });
  auto reply = std::async(std::launch::async, [address = server.address()] {
    return kvtune::http::request(address, "POST", "/v1/jobs?dry=1", "{}");
  });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (reply.wait_for(0s) != std::future_status::ready &&
         std::chrono::steady_clock::now() < deadline) {
    io.poll();  // never blocks: the coordinator's loop
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(reply.wait_for(0s), std::future_status::ready);
  const auto response = reply.get();
  EXPECT_EQ(response.status, 201);
  EXPECT_EQ(json::parse(response.body)["query"], "dry=1");
  EXPECT_EQ(handler_thread, std::this_thread::get_id());
}

TEST(HttpServer, DestroyingTheServerReleasesItsSessions) {
  asio::io_context io;
  auto calls = std::make_shared<int>(0);
  auto server = std::make_unique<Server>(io, "127.0.0.1:0", [calls](const Request& request) {
    ++*calls;
    return echo(request);
  });
  std::weak_ptr<int> handler_alive = calls;
  calls.reset();  // the server's handler holds the only reference now
  RawClient client(server->port());
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (server->connections() != 1 && std::chrono::steady_clock::now() < deadline) io.poll();
  ASSERT_EQ(server->connections(), 1u);
  const std::uint16_t port = server->port();

  server.reset();
  EXPECT_TRUE(handler_alive.expired());  // the handler and its captures are gone
  // With no acceptor and no session left, run() finds no work and returns at
  // once (an idle session would hold it for idle_timeout, 30 s).
  const auto start_time = std::chrono::steady_clock::now();
  io.run_for(10s);
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, 2s);
  EXPECT_TRUE(client.read_until_closed().empty());
  // The port is free again.
  EXPECT_NO_THROW(Server(io, "127.0.0.1:" + std::to_string(port), echo));
}

TEST(HttpServer, ConstructorNamesAnAddressItCannotUse) {
  asio::io_context io;
  Server first(io, "127.0.0.1:0", echo);
  try {
    Server second(io, first.address(), echo);
    FAIL() << "bound the same port twice";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(first.address()), std::string::npos) << e.what();
  }
  try {
    Server bad(io, "127.0.0.1", echo);
    FAIL() << "accepted an address without a port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"127.0.0.1\""), std::string::npos) << e.what();
  }
  try {
    Server bad(io, "192.0.2.1:8080", echo);  // TEST-NET-1: no local interface has it
    FAIL() << "bound an address of no local interface";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("192.0.2.1:8080"), std::string::npos) << e.what();
  }
}

TEST(HttpClient, ErrorsNameTheAddress) {
  // A port with nothing listening: bind one, note it, close it.
  asio::io_context io;
  std::uint16_t port = 0;
  {
    tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
    port = acceptor.local_endpoint().port();
  }
  const std::string closed = "127.0.0.1:" + std::to_string(port);
  try {
    kvtune::http::request(closed, "GET", "/healthz", {}, {}, 2s);
    FAIL() << "reached a closed port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot reach the coordinator API at " + closed + ": "),
              std::string::npos)
        << e.what();
  }

  // Listening but never answering: the timeout.
  tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
  const std::string silent_address = "127.0.0.1:" + std::to_string(silent.local_endpoint().port());
  const auto start_time = std::chrono::steady_clock::now();
  try {
    kvtune::http::request(silent_address, "GET", "/healthz", {}, {}, 300ms);
    FAIL() << "got an answer from a silent peer";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cannot reach the coordinator API at " + silent_address), std::string::npos)
        << what;
    EXPECT_NE(what.find("no response within 300 ms"), std::string::npos) << what;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start_time, 3s);

  try {
    kvtune::http::request("localhost", "GET", "/");
    FAIL() << "accepted an address without a port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot reach the coordinator API at localhost"),
              std::string::npos)
        << e.what();
  }
}

TEST(HttpParseHostPort, AcceptsHostAndPort) {
  EXPECT_EQ(parse_host_port("127.0.0.1:8080"),
            std::make_pair(std::string("127.0.0.1"), std::uint16_t{8080}));
  EXPECT_EQ(parse_host_port("localhost:0"),
            std::make_pair(std::string("localhost"), std::uint16_t{0}));
  EXPECT_EQ(parse_host_port("coordinator-0.kvtune.svc:65535"),
            std::make_pair(std::string("coordinator-0.kvtune.svc"), std::uint16_t{65535}));
  EXPECT_EQ(parse_host_port("[::1]:7070"), std::make_pair(std::string("::1"), std::uint16_t{7070}));
}

TEST(HttpParseHostPort, RefusesBadValuesNamingThem) {
  for (const std::string bad :
       {"localhost", "1.2.3.4:99999", ":80", "host:", "host:http", "host:-1", "host:123456",
        "host: 80", "::1:80", "[::1:80", "[]:80", "[host]:80", "a b:80", "", ":"}) {
    try {
      parse_host_port(bad);
      ADD_FAILURE() << "accepted \"" << bad << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("\"" + bad + "\""), std::string::npos) << e.what();
    }
  }
}

}  // namespace
