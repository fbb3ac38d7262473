// The coordinator's HTTP API at its edges, against a real `kvtune coordinator`
// process (no workers): request targets and job specs that are not UTF-8 are
// refused with a 4xx whose JSON body is valid UTF-8 and names what is wrong;
// and a seeded fuzz of 100,000 malformed requests (mutated request bytes,
// truncations, bad Content-Length, huge headers, chunked garbage, random job
// specs with wrong types, deep nesting, invalid UTF-8) never gets a 5xx and
// leaves the coordinator serving.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "../support/cluster.h"
#include "../support/temp_dir.h"

namespace kvtune::testing {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::uint16_t port_of(const std::string& host_port) {
  return static_cast<std::uint16_t>(std::stoi(host_port.substr(host_port.rfind(':') + 1)));
}

// One response as read off the wire.
struct RawResponse {
  int status = 0;
  std::string content_type;
  std::string body;
  bool close = false;  // "Connection: close"
};

// Parses the response at the start of `data` (`head`: a response to a HEAD
// request). The bytes it took, or 0 while it is incomplete; -1 when `data`
// does not start with a response.
long parse_response(std::string_view data, bool head, RawResponse& out) {
  const auto end = data.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    return data.size() >= 8 && !data.starts_with("HTTP/1.") ? -1 : 0;
  }
  const std::string_view header = data.substr(0, end + 2);
  if (!header.starts_with("HTTP/1.") || header.size() < 12) return -1;
  out = RawResponse{};
  try {
    out.status = std::stoi(std::string(header.substr(9, 3)));
  } catch (const std::exception&) {
    return -1;
  }
  std::size_t length = 0;
  std::size_t line = header.find("\r\n") + 2;
  while (line < header.size()) {
    const std::size_t next = header.find("\r\n", line);
    std::string field(header.substr(line, next - line));
    line = next + 2;
    const auto colon = field.find(':');
    if (colon == std::string::npos) continue;
    std::string name = field.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    std::string value = field.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    if (name == "content-length") length = std::stoul(value);
    if (name == "content-type") out.content_type = value;
    if (name == "connection" && value == "close") out.close = true;
  }
  if (out.status / 100 == 1 || out.status == 204 || out.status == 304) length = 0;
  // A response to HEAD has no body, unless the server did not read the
  // request as HEAD (a malformed request line): then the body is all there,
  // before the end of the data or the next response.
  if (head) {
    const std::string_view rest = data.substr(end + 4);
    if (rest.size() < length || rest.starts_with("HTTP/1.")) length = 0;
  }
  const std::size_t total = end + 4 + length;
  if (data.size() < total) return 0;
  out.body = std::string(data.substr(end + 4, length));
  return static_cast<long>(total);
}

// A blocking loopback TCP connection with timed reads, for raw bytes.
class Connection {
 public:
  explicit Connection(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) throw std::runtime_error("socket failed");
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
      const int error = errno;
      ::close(fd_);
      throw std::runtime_error("connect failed: " + std::string(std::strerror(error)));
    }
  }
  ~Connection() { ::close(fd_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // False when the peer has closed or reset the connection.
  bool send_all(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  void half_close() { ::shutdown(fd_, SHUT_WR); }

  enum class Read { kData, kClosed, kTimeout };
  // Appends what arrives within `timeout` to `in`.
  Read read_some(std::string& in, std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    int ready;
    do {
      ready = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (ready < 0 && errno == EINTR);
    if (ready == 0) return Read::kTimeout;
    std::array<char, 65536> chunk{};
    ssize_t n;
    do {
      n = ::recv(fd_, chunk.data(), chunk.size(), 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return Read::kClosed;  // EOF or a reset
    in.append(chunk.data(), static_cast<std::size_t>(n));
    return Read::kData;
  }

  // Sends one request and reads its final response (skipping 100 Continue).
  std::optional<RawResponse> exchange(const std::string& request, bool head = false) {
    if (!send_all(request)) return std::nullopt;
    std::string in;
    RawResponse response;
    const auto deadline = Clock::now() + 10s;
    while (Clock::now() < deadline) {
      const long used = parse_response(in, head, response);
      if (used < 0) return std::nullopt;
      if (used > 0) {
        in.erase(0, static_cast<std::size_t>(used));
        if (response.status / 100 != 1) return response;
        continue;
      }
      if (read_some(in, 1000ms) == Read::kClosed) return std::nullopt;
    }
    return std::nullopt;
  }

 private:
  int fd_ = -1;
};

std::string get_request(const std::string& target) {
  return "GET " + target + " HTTP/1.1\r\nHost: kvtune\r\n\r\n";
}
std::string post_request(const std::string& target, const std::string& body) {
  return "POST " + target + " HTTP/1.1\r\nHost: kvtune\r\nContent-Type: application/json\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// The JSON error body of a 4xx: valid UTF-8 (nlohmann's parser is strict).
json error_json(const RawResponse& response) {
  EXPECT_TRUE(http::valid_utf8(response.body)) << http::escape_utf8(response.body);
  EXPECT_EQ(response.content_type, "application/json");
  return json::parse(response.body);
}

class ApiEdges : public ::testing::Test {
 protected:
  void SetUp() override {
    coordinator_ = std::make_unique<CoordinatorProcess>(dir_.sub("db"), dir_.file("coord.log"));
  }
  RawResponse exchange(const std::string& request) {
    Connection connection(port_of(coordinator_->api()));
    auto response = connection.exchange(request);
    if (!response) throw std::runtime_error("no response");
    return *response;
  }
  // The field errors of a refused job spec.
  std::map<std::string, std::string> refused_fields(const std::string& spec) {
    const RawResponse response = exchange(post_request("/v1/jobs", spec));
    EXPECT_EQ(response.status, 400) << http::escape_utf8(spec) << " -> " << response.body;
    std::map<std::string, std::string> fields;
    const json body = error_json(response);
    EXPECT_EQ(body["error"], "invalid job spec");
    for (const json& f : body["fields"]) fields[f["field"]] = f["message"];
    return fields;
  }
  void expect_serving() {
    EXPECT_TRUE(coordinator_->process().running()) << coordinator_->process().log();
    const auto healthz = coordinator_->call("GET", "/healthz");
    EXPECT_EQ(healthz.status, 200) << healthz.body;
  }

  TempDir dir_{"kvtune-api-edges"};
  std::unique_ptr<CoordinatorProcess> coordinator_;
};

TEST_F(ApiEdges, TargetThatIsNotUtf8Is400WithReadableJson) {
  for (const std::string target :
       {"/v1/jobs/\xFF", "/v1/jobs/\xC3", "/v1/jobs/\xFF\xFE/cancel", "/v1/registry/\xED\xA0\x80",
        "/v1/registry/x/best?max_bits=3&format=\xC0\xAF", "/\x80"}) {
    const RawResponse response = exchange(get_request(target));
    EXPECT_EQ(response.status, 400) << http::escape_utf8(target) << ": " << response.body;
    const json body = error_json(response);
    EXPECT_EQ(body["error"], "the request target is not valid UTF-8: " + http::escape_utf8(target));
    EXPECT_NE(body["error"].get<std::string>().find("\\x"), std::string::npos);
  }
  // Percent-encoded bytes are not decoded: an unknown job, named as sent.
  const RawResponse encoded = exchange(get_request("/v1/jobs/%FF%FE"));
  EXPECT_EQ(encoded.status, 404) << encoded.body;
  EXPECT_EQ(error_json(encoded)["error"], "no job '%FF%FE'");
  // Valid UTF-8 is echoed as is.
  const RawResponse unicode = exchange(get_request("/v1/jobs/caf\xC3\xA9"));
  EXPECT_EQ(unicode.status, 404) << unicode.body;
  EXPECT_EQ(error_json(unicode)["error"], "no job 'caf\xC3\xA9'");
  expect_serving();
}

TEST_F(ApiEdges, JobSummaryViewHasStateAndProgressWithoutResults) {
  const std::string id = coordinator_->submit(
      {{"kind", "evaluate"}, {"model", "/m.bin"}, {"configs", {"KV4", "KV8"}}});
  const json full = coordinator_->get("/v1/jobs/" + id);
  const json summary = coordinator_->get("/v1/jobs/" + id + "?view=summary");
  EXPECT_TRUE(full.contains("results")) << full.dump();
  EXPECT_TRUE(full.contains("spec")) << full.dump();
  EXPECT_FALSE(summary.contains("results")) << summary.dump();
  EXPECT_FALSE(summary.contains("spec")) << summary.dump();
  EXPECT_EQ(summary["state"], full["state"]);
  EXPECT_EQ(summary["progress"], full["progress"]);
  EXPECT_EQ(summary["progress"]["total"], 2);
  EXPECT_EQ(coordinator_->get("/v1/jobs/" + id + "?view=full"), full);
  const RawResponse bad = exchange(get_request("/v1/jobs/" + id + "?view=brief"));
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_EQ(error_json(bad)["error"], "view must be full or summary, not 'brief'");
  expect_serving();
}

TEST_F(ApiEdges, JobSpecStringsThatAreNotUtf8Are400NamingTheField) {
  const std::string tail = R"(, "configs": ["KV4"]})";
  {
    auto fields = refused_fields(R"({"kind": "evaluate", "model": ")"
                                 "\xFF\xFE"
                                 R"(")" +
                                 tail);
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_EQ(fields.at("model"), "is not valid UTF-8: \"\\xFF\\xFE\"");
  }
  {
    auto fields = refused_fields(R"({"kind": "evaluate", "model": "/m.bin", "name": ")"
                                 "\xC3"
                                 R"(", "scheme": {"name": "kivi)"
                                 "\xED\xA0\x80"
                                 R"("}, "configs": ["KV4", "K8)"
                                 "\xF4\x90\x80\x80"
                                 R"("]})");
    EXPECT_EQ(fields.size(), 3u);
    EXPECT_EQ(fields["name"], "is not valid UTF-8: \"\\xC3\"");
    EXPECT_EQ(fields["scheme.name"], "is not valid UTF-8: \"kivi\\xED\\xA0\\x80\"");
    EXPECT_EQ(fields["configs[1]"], "is not valid UTF-8: \"K8\\xF4\\x90\\x80\\x80\"");
  }
  {
    // A field name that is not UTF-8, and one deep in the search options.
    auto fields = refused_fields(R"({"kind": "search", "model": "/m.bin", "x)"
                                 "\xFF"
                                 R"(": 1, "search": {"strategy": ")"
                                 "\xC0\x80"
                                 R"("}})");
    EXPECT_EQ(fields.size(), 2u);
    EXPECT_EQ(fields["x\\xFF"], "the field name is not valid UTF-8");
    EXPECT_EQ(fields["search.strategy"], "is not valid UTF-8: \"\\xC0\\x80\"");
  }
  {
    // Not JSON at all, with bad bytes outside any string: the parser's message, escaped.
    auto fields = refused_fields("{\"kind\": \xFF\xFE}");
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_TRUE(fields[""].starts_with("not valid JSON: ")) << fields[""];
    EXPECT_NE(fields[""].find("\\xFF"), std::string::npos) << fields[""];
  }
  {
    // A lone surrogate escape: nlohmann refuses it while parsing.
    auto fields = refused_fields(R"({"kind": "evaluate", "model": "\ud800")" + tail);
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_NE(fields[""].find("surrogate"), std::string::npos) << fields[""];
  }
  {
    // Nesting that would recurse through the coordinator's stack.
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    auto fields = refused_fields(
        R"({"kind": "search", "model": "/m.bin", "search": {"candidates": )" + deep + "}}");
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_EQ(fields[""], "arrays and objects nest deeper than 64 levels");
  }
  EXPECT_TRUE(coordinator_->get("/v1/jobs")["jobs"].empty());
  expect_serving();
}

// --- the fuzz ----------------------------------------------------------------

constexpr std::uint64_t kSeed = 20240611;
constexpr int kRequests = 100000;
constexpr int kClients = 8;
const std::string kToken = "fuzz-token";

// A deterministic source for request `index`: the same requests every run,
// whatever the threads' timing.
class Random {
 public:
  explicit Random(std::uint64_t index) : engine_(kSeed * 1000003u + index) {}
  std::uint64_t next() { return engine_(); }
  std::size_t below(std::size_t n) { return static_cast<std::size_t>(engine_() % n); }
  bool chance(int percent) { return below(100) < static_cast<std::size_t>(percent); }
  template <class T>
  const T& pick(const std::vector<T>& items) {
    return items[below(items.size())];
  }
  std::string bytes(std::size_t n) {
    std::string out(n, '\0');
    for (char& c : out) c = static_cast<char>(engine_() & 0xFF);
    return out;
  }

 private:
  std::mt19937_64 engine_;
};

// Bytes that are not UTF-8 (or barely are).
std::string bad_utf8(Random& r) {
  static const std::vector<std::string> pieces = {"\xFF",
                                                  "\xFE",
                                                  "\xC3",
                                                  "\xC0\x80",
                                                  "\xE0\x80\xAF",
                                                  "\xED\xA0\x80",
                                                  "\xF4\x90\x80\x80",
                                                  "\x80",
                                                  "\xBF",
                                                  "\xF8\x88\x80\x80\x80",
                                                  "\xE2\x82",
                                                  "\xF0\x9F\x98"};
  std::string out;
  for (std::size_t i = 0, n = 1 + r.below(3); i < n; ++i) out += r.pick(pieces);
  return out;
}

// A JSON string literal: sensible words, random text, raw bad bytes, odd escapes.
std::string json_string(Random& r) {
  static const std::vector<std::string> words = {"evaluate",
                                                 "profile",
                                                 "search",
                                                 "kivi",
                                                 "per-token-asym",
                                                 "int",
                                                 "float",
                                                 "kl",
                                                 "KV4",
                                                 "K8V4",
                                                 "KV2",
                                                 "K8V4,KV4,KV4,KV2,KV2",
                                                 "Kfp8Vnvfp4",
                                                 "KV16",
                                                 "K3V9",
                                                 "",
                                                 "/m/x.bin",
                                                 "sample:8:128:0",
                                                 "sample:0:0:0",
                                                 "kvtuner",
                                                 "hardware",
                                                 "nsga2",
                                                 "random",
                                                 "caf\xC3\xA9"};
  switch (r.below(8)) {
    case 0:
      return "\"" + bad_utf8(r) + "\"";
    case 1:
      return "\"x" + bad_utf8(r) + r.pick(words) + "\"";
    case 2:
      return r.pick(std::vector<std::string>{R"("\ud800")", R"("\udc00x")", R"("\u00")",
                                             R"("\x41")", R"("a\")", "\"\t\"", R"("\u0000")"});
    case 3: {
      std::string s = "\"";
      for (std::size_t i = 0, n = r.below(40); i < n; ++i) {
        const char c = static_cast<char>(0x20 + r.below(0x5F));
        if (c == '"' || c == '\\') s += '\\';
        s += c;
      }
      return s + "\"";
    }
    default:
      return "\"" + r.pick(words) + "\"";
  }
}

std::string json_value(Random& r, int depth);

std::string json_number(Random& r) {
  static const std::vector<std::string> numbers = {"0",
                                                   "1",
                                                   "-1",
                                                   "2",
                                                   "16",
                                                   "32",
                                                   "256",
                                                   "65536",
                                                   "1048577",
                                                   "1.5",
                                                   "-0",
                                                   "1e3",
                                                   "1e400",
                                                   "-1e400",
                                                   "3.999",
                                                   "2147483648",
                                                   "-2147483649",
                                                   "99999999999999999999999",
                                                   "18446744073709551615",
                                                   "4.0",
                                                   "0.5",
                                                   "NaN",
                                                   "Infinity",
                                                   "01"};
  return r.pick(numbers);
}

std::string json_array(Random& r, int depth) {
  std::string out = "[";
  for (std::size_t i = 0, n = r.below(5); i < n; ++i) {
    out += (i ? "," : "") + json_value(r, depth + 1);
  }
  return out + "]";
}

std::string json_object(Random& r, int depth, const std::vector<std::string>& keys) {
  std::string out = "{";
  for (std::size_t i = 0, n = r.below(5); i < n; ++i) {
    const std::string key = r.chance(80) ? "\"" + r.pick(keys) + "\"" : json_string(r);
    out += (i ? "," : "") + key + ":" + json_value(r, depth + 1);
  }
  return out + "}";
}

std::string json_value(Random& r, int depth) {
  static const std::vector<std::string> keys = {
      "name", "group_size", "residual", "zero_point", "candidates", "max_bits", "seed", "x"};
  const std::size_t choice = depth > 4 ? r.below(5) : r.below(7);
  switch (choice) {
    case 0:
      return r.pick(std::vector<std::string>{"null", "true", "false", "nul", "tru"});
    case 1:
    case 2:
      return json_number(r);
    case 3:
    case 4:
      return json_string(r);
    case 5:
      return json_array(r, depth);
    default:
      return json_object(r, depth, keys);
  }
}

// Arrays nested `n` deep (the depth limit, and a stack for anything that recurses).
std::string deep_nesting(std::size_t n, bool objects) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += objects ? "{\"a\":" : "[";
  out += "1";
  for (std::size_t i = 0; i < n; ++i) out += objects ? "}" : "]";
  return out;
}

// A job spec: the right fields with values of the right type or not, unknown
// fields, bad bytes, deep nesting; rarely a valid one.
std::string job_spec(Random& r) {
  struct Field {
    std::string key;
    std::vector<std::string> good;
  };
  static const std::vector<Field> fields = {
      {"kind", {R"("evaluate")", R"("profile")", R"("search")", R"("eval")"}},
      {"model", {R"("/models/none.bin")", R"("")", R"("m")"}},
      {"name", {R"("fuzz")", R"("")"}},
      {"data", {R"("sample:8:128:0")", R"("")"}},
      {"seq_len", {"256", "1", "2", "1048576", "1048577", "-5"}},
      {"scheme",
       {R"({"name": "kivi", "group_size": 32, "residual": 32, "zero_point": "int"})",
        R"({"name": "kivi", "group_size": 32, "residual": 33})", R"({"group_size": 0})",
        R"({"name": "per-token-asym", "zero_point": "float"})"}},
      {"metric", {R"("kl")", R"("l2")"}},
      {"configs", {R"(["KV4"])", R"(["KV4", "K8V4,KV4"])", "[]", R"(["KV5"])"}},
      {"candidates", {R"(["KV8", "KV4"])", R"(["KV8", "KV8"])", "[]"}},
      {"search",
       {R"({"candidates": ["KV8", "KV4"], "max_bits": 4.0, "max_evaluations": 50})",
        R"({"strategy": "nsga2", "population": 0, "seed": -1})",
        R"({"candidates": "kvtuner", "max_error": null, "patience": "3"})",
        R"({"candidates": [["KV8"]], "cluster_tolerance": "x"})", R"({"unknown": 1})",
        R"({"candidates": "none"})"}},
  };
  if (r.chance(3)) {
    // Deep nesting where the spec keeps it ("search") or anywhere.
    const std::string deep = deep_nesting(50 + r.below(r.chance(50) ? 30 : 200000), r.chance(30));
    return R"({"kind": "search", "model": "/m", "search": {"candidates": )" + deep + "}}";
  }
  std::string out = "{";
  bool first = true;
  for (const Field& f : fields) {
    if (!r.chance(f.key == "kind" || f.key == "model" ? 90 : 35)) continue;
    std::string value;
    const std::size_t how = r.below(100);
    if (how < 55) {
      value = r.pick(f.good);
    } else if (how < 95) {
      value = json_value(r, 1);
    } else {
      value = "\"" + bad_utf8(r) + "\"";
    }
    out += (first ? "" : ", ") + ("\"" + f.key + "\": ") + value;
    first = false;
  }
  if (r.chance(15)) out += std::string(first ? "" : ", ") + json_string(r) + ": 1";
  out += "}";
  // Most specs that would pass get one more fault (the last "kind" counts),
  // so that few jobs are created.
  if (r.chance(90)) out.insert(out.size() - 1, first ? "\"kind\": 7" : ", \"kind\": 7");
  return out;
}

const std::string kValidSpec =
    R"({"kind": "evaluate", "model": "/models/none.bin", "data": "sample:8:128:0", "seq_len": 64,)"
    R"( "scheme": {"name": "kivi", "group_size": 32, "residual": 32, "zero_point": "int"},)"
    R"( "configs": ["KV4", "K8V4,KV4,KV4,KV2,KV2"], "name": "fuzz"})";

// Refused only for its seq_len.
const std::string kRefusedSpec =
    R"({"kind": "evaluate", "model": "/models/none.bin", "data": "sample:8:128:0", "seq_len": 1,)"
    R"( "scheme": {"name": "kivi", "group_size": 32, "residual": 32, "zero_point": "int"},)"
    R"( "configs": ["KV4", "K8V4,KV4,KV4,KV2,KV2"], "name": "fuzz"})";

// A fuzzed request and how to read its answer.
struct Fuzzed {
  std::string bytes;
  bool framed = true;  // one complete request: the connection may be kept alive
  bool head = false;   // a HEAD request: responses carry no body
};

std::string auth_header(Random& r) {
  const std::size_t how = r.below(100);
  if (how < 92) return "Authorization: Bearer " + kToken + "\r\n";
  if (how < 96) return "Authorization: Bearer wrong-" + kToken + "\r\n";
  if (how < 98) return "Authorization: Basic Zm9vOmJhcg==\r\n";
  return "";
}

std::string target(Random& r) {
  static const std::vector<std::string> targets = {
      "/healthz",
      "/metrics",
      "/v1/workers",
      "/v1/jobs/abcdef",
      "/v1/jobs/abcdef/cancel",
      "/v1/jobs/",
      "/v1/jobs//cancel",
      "/v1/registry",
      "/v1/registry/abc",
      "/v1/registry/abc/best?max_bits=3.5&format=kvtuner",
      "/v1/registry/abc/best?max_kl=x",
      "/v1/jobs/%FF",
      "/",
      "*",
      "/v1/jobs?x=1",
      "http://kvtune/healthz",
      "/nope/../v1/jobs",
      "/v1/jobs/caf\xC3\xA9"};
  if (r.chance(1)) return "/v1/jobs";  // lists every job: kept rare
  return r.pick(targets);
}

std::string method(Random& r) {
  static const std::vector<std::string> methods = {"GET",     "GET",    "GET",  "POST",    "POST",
                                                   "PUT",     "DELETE", "HEAD", "OPTIONS", "PATCH",
                                                   "CONNECT", "FOO",    "get",  "M-SEARCH"};
  return r.pick(methods);
}

// A well-formed request (correct Content-Length).
std::string request(const std::string& m, const std::string& t, const std::string& body,
                    const std::string& extra_headers) {
  std::string out = m + " " + t + " HTTP/1.1\r\nHost: kvtune\r\n" + extra_headers;
  if (!body.empty() || m == "POST") {
    out +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  return out + "\r\n" + body;
}

// A valid request to mutate: any endpoint, or a job submission.
std::string base_request(Random& r) {
  if (r.chance(40)) {
    return request("POST", "/v1/jobs", r.chance(85) ? kRefusedSpec : kValidSpec, auth_header(r));
  }
  return request(method(r), target(r), "", auth_header(r));
}

// Byte-level damage: replaced, inserted, deleted bytes.
std::string mutate(Random& r, std::string s) {
  for (std::size_t i = 0, n = 1 + r.below(6); i < n && !s.empty(); ++i) {
    const std::size_t at = r.below(s.size());
    switch (r.below(5)) {
      case 0:
        s[at] = static_cast<char>(r.next() & 0xFF);
        break;
      case 1:
        s.insert(at, r.bytes(1 + r.below(8)));
        break;
      case 2:
        s.erase(at, 1 + r.below(16));
        break;
      case 3:
        s.insert(at,
                 r.pick(std::vector<std::string>{"\r\n", "\n", "\r", " ", ":", std::string(1, '\0'),
                                                 "\r\n\r\n", "\t", "%", "?", "HTTP/1.1"}));
        break;
      default:
        s.insert(at, bad_utf8(r));
        break;
    }
  }
  return s;
}

Fuzzed fuzzed_request(int index) {
  Random r(static_cast<std::uint64_t>(index));
  const std::size_t kind = r.below(100);
  Fuzzed f;
  if (kind < 14) {  // valid framing, any method and endpoint
    const std::string m = method(r);
    f.bytes = request(m, target(r), r.chance(10) ? json_value(r, 0) : "", auth_header(r));
  } else if (kind < 22) {  // a target with bad bytes (and so maybe bad framing)
    std::string t = target(r);
    t.insert(r.below(t.size() + 1), r.chance(60) ? bad_utf8(r) : r.bytes(1 + r.below(4)));
    f.framed = t.find_first_of(std::string(" \r\n\t\0", 5)) == std::string::npos &&
               std::none_of(t.begin(), t.end(), [](char c) { return c >= 0 && c < 0x20; });
    f.bytes = request("GET", t, "", auth_header(r));
  } else if (kind < 52) {  // random job specs
    f.bytes = request("POST", "/v1/jobs", job_spec(r), auth_header(r));
  } else if (kind < 60) {  // a valid spec with damaged bytes
    std::string body = mutate(r, kValidSpec);
    const auto last = body.rfind('}');
    if (r.chance(85) && last != std::string::npos) body.insert(last, ", \"kind\": 3");
    f.bytes = request("POST", "/v1/jobs", body, auth_header(r));
  } else if (kind < 64) {  // random bodies, anywhere
    f.bytes = request(r.chance(70) ? "POST" : method(r), r.chance(70) ? "/v1/jobs" : target(r),
                      r.bytes(r.below(r.chance(95) ? 200 : 100000)), auth_header(r));
  } else if (kind < 82) {  // damaged request bytes
    f.bytes = mutate(r, base_request(r));
    f.framed = false;
  } else if (kind < 88) {  // truncated
    const std::string whole = base_request(r);
    f.bytes = whole.substr(0, r.below(whole.size()));
    f.framed = false;
  } else if (kind < 93) {  // bad Content-Length
    static const std::vector<std::string> lengths = {"-1",
                                                     "abc",
                                                     "99999999999999999999",
                                                     "18446744073709551616",
                                                     "1048577",
                                                     "4294967296",
                                                     "1, 2",
                                                     "5\r\nContent-Length: 7",
                                                     " 10",
                                                     "0x10",
                                                     "",
                                                     "+5",
                                                     "1e3"};
    const std::string body = r.chance(50) ? kValidSpec : json_value(r, 0);
    const std::string length =
        r.chance(30) ? std::to_string(body.size() + 1 + r.below(50)) : r.pick(lengths);
    f.bytes = "POST /v1/jobs HTTP/1.1\r\nHost: kvtune\r\n" + auth_header(r) +
              "Content-Length: " + length + "\r\n\r\n" + body;
    f.framed = false;
  } else if (kind < 96) {  // huge headers
    std::string headers;
    const std::size_t size = 1000 + r.below(100000);
    if (r.chance(50)) {
      headers = "X-Filler: " + std::string(size, 'f') + "\r\n";
    } else {
      for (std::size_t i = 0; headers.size() < size; ++i) {
        headers += "X-H" + std::to_string(i) + ": " + bad_utf8(r) + "\r\n";
      }
    }
    f.bytes = request(r.chance(50) ? "GET" : "POST", target(r), "", headers + auth_header(r));
    f.framed = false;
  } else if (kind < 98) {  // chunked bodies, broken or not
    std::string body;
    for (std::size_t i = 0, n = r.below(4); i < n; ++i) {
      const std::string chunk = r.bytes(r.below(64));
      body += (r.chance(80) ? std::to_string(chunk.size()) : r.bytes(3)) + "\r\n" + chunk + "\r\n";
    }
    if (r.chance(70)) body += "0\r\n\r\n";
    f.bytes = "POST /v1/jobs HTTP/1.1\r\nHost: kvtune\r\n" + auth_header(r) +
              (r.chance(20) ? "Content-Length: 5\r\n" : "") +
              "Transfer-Encoding: " + (r.chance(80) ? "chunked" : "gzip, chunked, x") + "\r\n\r\n" +
              body;
    f.framed = false;
  } else {  // garbage; sometimes an Expect: 100-continue request that never sends its body
    if (r.chance(50)) {
      f.bytes = r.bytes(1 + r.below(2000));
    } else {
      f.bytes = "POST /v1/jobs HTTP/1.1\r\nHost: kvtune\r\n" + auth_header(r) +
                "Expect: 100-continue\r\nContent-Length: 40\r\n\r\n" + r.bytes(r.below(40));
    }
    f.framed = false;
  }
  f.head = f.bytes.starts_with("HEAD ");
  return f;
}

struct Tally {
  std::map<int, long> by_status;
  long no_response = 0;               // the connection ended without an answer
  long stalled = 0;                   // neither an answer nor a close within the time limit
  long bad_bodies = 0;                // a JSON body that is not valid UTF-8 JSON
  long unparsable = 0;                // bytes that are not an HTTP response
  long connect_failures = 0;          // the coordinator stopped accepting
  std::vector<std::string> examples;  // of 5xx and bad bodies, for the failure message

  void add(const Tally& other) {
    for (const auto& [status, n] : other.by_status) by_status[status] += n;
    no_response += other.no_response;
    stalled += other.stalled;
    bad_bodies += other.bad_bodies;
    unparsable += other.unparsable;
    connect_failures += other.connect_failures;
    for (const auto& e : other.examples) {
      if (examples.size() < 10) examples.push_back(e);
    }
  }
};

// Sends requests first, first + step, ... on one connection, reconnecting
// whenever the server closes it (or the request leaves it unusable).
void fuzz_client(std::uint16_t port, int first, int step, Tally& tally) {
  std::unique_ptr<Connection> connection;
  const auto note = [&](int index, const Fuzzed& f, const std::string& what) {
    if (tally.examples.size() < 10) {
      tally.examples.push_back("request " + std::to_string(index) + " " +
                               http::escape_utf8(f.bytes.substr(0, 300)) + " -> " + what);
    }
  };
  const auto count = [&](int index, const Fuzzed& f, const RawResponse& response) {
    ++tally.by_status[response.status];
    if (response.status >= 500)
      note(index, f, std::to_string(response.status) + " " + response.body);
    if (!f.head && response.content_type == "application/json" &&
        (!http::valid_utf8(response.body) || !json::accept(response.body))) {
      ++tally.bad_bodies;
      note(index, f, "a bad JSON body: " + http::escape_utf8(response.body.substr(0, 300)));
    }
  };
  for (int index = first; index < kRequests; index += step) {
    const Fuzzed f = fuzzed_request(index);
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool fresh = !connection;
      if (!connection) {
        try {
          connection = std::make_unique<Connection>(port);
        } catch (const std::exception& e) {  // the coordinator is gone
          ++tally.connect_failures;
          note(index, f, e.what());
          return;
        }
      }
      const bool sent = connection->send_all(f.bytes);
      if (!sent && !fresh) {  // the server closed our kept-alive connection first
        connection.reset();
        continue;
      }
      // Framed requests get their answer on a kept-alive connection; others
      // are followed by a half-close (so that the server sees the end of
      // what was sent) and answered until the server closes.
      bool half_closed = !f.framed;
      if (half_closed) connection->half_close();
      std::string in;
      bool answered = false, close = false, stalled = false;
      const auto start = Clock::now();
      while (true) {
        RawResponse response;
        const long used = parse_response(in, f.head, response);
        if (used < 0) {
          ++tally.unparsable;
          note(index, f, "unparsable: " + http::escape_utf8(in.substr(0, 200)));
          close = true;
          break;
        }
        if (used > 0) {
          in.erase(0, static_cast<std::size_t>(used));
          count(index, f, response);
          if (response.status / 100 == 1) continue;
          answered = true;
          if (response.close) close = true;
          if (!half_closed) break;  // one answer on a kept-alive connection
          continue;                 // read on until the server closes
        }
        // A framed request the server still waits on (it read the damage as
        // a longer request): end it with a half-close.
        const bool waited = Clock::now() - start > (half_closed ? 10s : 250ms);
        if (waited && !half_closed) {
          connection->half_close();
          half_closed = true;
          continue;
        }
        if (waited) {
          stalled = true;
          break;
        }
        const auto read = connection->read_some(in, 50ms);
        if (read == Connection::Read::kClosed) {
          close = true;
          break;
        }
      }
      if (stalled) ++tally.stalled;
      if (!answered && !stalled) {
        if (!fresh && in.empty() && f.framed) {  // a close racing our request: once more
          connection.reset();
          continue;
        }
        ++tally.no_response;
      }
      if (close || half_closed || stalled || !in.empty()) connection.reset();
      break;
    }
  }
}

TEST(ApiFuzz, HundredThousandMalformedRequestsGetNo5xxAndTheCoordinatorKeepsServing) {
  TempDir dir("kvtune-api-fuzz");
  CoordinatorProcess coordinator(dir.sub("db"), dir.file("coord.log"), {"--api-token", kToken});
  const std::uint16_t port = port_of(coordinator.api());

  const auto start = Clock::now();
  std::vector<Tally> tallies(kClients);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] { fuzz_client(port, c, kClients, tallies[c]); });
  }
  for (auto& t : clients) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  Tally total;
  for (const Tally& t : tallies) total.add(t);
  std::map<int, long> by_class;
  for (const auto& [status, n] : total.by_status) by_class[status / 100] += n;
  std::ostringstream report;
  report << kRequests << " requests (seed " << kSeed << ") in " << seconds << " s:";
  for (const auto& [c, n] : by_class) report << " " << c << "xx " << n;
  report << "; no response " << total.no_response << ", stalled " << total.stalled
         << ", unparsable " << total.unparsable << ", bad JSON bodies " << total.bad_bodies
         << ", failed connects " << total.connect_failures << "\n  by status:";
  for (const auto& [status, n] : total.by_status) report << " " << status << ":" << n;
  std::cout << report.str() << std::endl;
  RecordProperty("fuzz", report.str());

  std::string examples;
  for (const auto& e : total.examples) examples += "\n  " + e;
  EXPECT_EQ(by_class[5], 0) << report.str() << examples;
  EXPECT_EQ(total.bad_bodies, 0) << examples;
  EXPECT_EQ(total.unparsable, 0) << examples;
  EXPECT_EQ(total.stalled, 0) << examples;
  EXPECT_EQ(total.connect_failures, 0) << examples;
  // Nearly every request is answered (a request cut to nothing, or one that
  // is only a partial request line, may just be closed).
  EXPECT_GT(by_class[4], kRequests / 2) << report.str();
  EXPECT_GT(by_class[2], 1000) << report.str();

  ASSERT_TRUE(coordinator.process().running()) << coordinator.process().log().substr(0, 20000);
  const auto healthz = coordinator.call("GET", "/healthz");
  EXPECT_EQ(healthz.status, 200) << healthz.body;
  const auto jobs = coordinator.call("GET", "/v1/jobs", {}, kToken);
  EXPECT_EQ(jobs.status, 200);
  EXPECT_TRUE(http::valid_utf8(jobs.body));
  std::cout << "jobs created by the fuzz: " << json::parse(jobs.body)["jobs"].size() << std::endl;
  EXPECT_LT(seconds, 120.0) << report.str();
}

}  // namespace
}  // namespace kvtune::testing
