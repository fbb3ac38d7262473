// The coordinator <-> worker transport over real ZeroMQ sockets on loopback:
// messages arrive intact and routed to the right worker; garbage, malformed
// Cap'n Proto, wrong frame shapes and foreign protocol versions are refused
// without disturbing the next message. With CURVE, only workers with an
// authorized key and the right server key get anything through; key files
// round-trip and bad ones are errors naming the file and line.
#include <capnp/any.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kvtune/common/error.h"
#include "kvtune/schemas/transport.h"

namespace {

using namespace std::chrono_literals;
using kvtune::transport::CoordinatorSecurity;
using kvtune::transport::CoordinatorSocket;
using kvtune::transport::CurveClient;
using kvtune::transport::CurveKeyPair;
using kvtune::transport::decode;
using kvtune::transport::encode;
using kvtune::transport::WorkerSocket;
namespace schema = kvtune::schema;

// The deadline for an event that normally comes within milliseconds (a
// message over loopback, a refused handshake counted by the ZAP thread).
// Waits return as soon as the event happens, so a deadline far above the
// normal time costs nothing; it only has to outlast a machine busy with a
// parallel build and test run (seen: 3 s was too short under ctest -j on
// 2 cores, because libzmq retries a failed handshake every reconnect
// interval and the handshake thread may not be scheduled for seconds).
constexpr auto kWait = 30000ms;

void build_hello(capnp::MallocMessageBuilder& builder, const std::string& worker_id) {
  auto hello = builder.initRoot<schema::WorkerMessage>().initHello();
  hello.setWorkerId(worker_id);
  hello.setDevice("cuda:0");
  hello.setMemoryBytes(80ull << 30);
  hello.setThreads(16);
  auto models = hello.initLoadedModels(2);
  models.set(0, "stories260K.bin");
  models.set(1, "qwen2-0.5b");
}

void expect_hello(schema::WorkerMessage::Reader message, const std::string& worker_id) {
  ASSERT_EQ(message.which(), schema::WorkerMessage::HELLO);
  const auto hello = message.getHello();
  EXPECT_EQ(std::string(hello.getWorkerId().cStr()), worker_id);
  EXPECT_EQ(std::string(hello.getDevice().cStr()), "cuda:0");
  EXPECT_EQ(hello.getMemoryBytes(), 80ull << 30);
  EXPECT_EQ(hello.getThreads(), 16u);
  ASSERT_EQ(hello.getLoadedModels().size(), 2u);
  EXPECT_EQ(std::string(hello.getLoadedModels()[0].cStr()), "stories260K.bin");
  EXPECT_EQ(std::string(hello.getLoadedModels()[1].cStr()), "qwen2-0.5b");
}

std::string hello_payload(const std::string& worker_id) {
  capnp::MallocMessageBuilder builder;
  build_hello(builder, worker_id);
  return encode(builder);
}

// A raw DEALER that can send any frames at all.
struct RawPeer {
  RawPeer(const std::string& endpoint, const std::string& identity)
      : socket(context, zmq::socket_type::dealer) {
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::routing_id, zmq::buffer(identity));
    socket.connect(endpoint);
  }
  void send(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      socket.send(zmq::buffer(frames[i]),
                  i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
  zmq::context_t context{1};
  zmq::socket_t socket;
};

TEST(TransportCodec, RoundTripWithoutSockets) {
  capnp::MallocMessageBuilder builder;
  auto result = builder.initRoot<schema::WorkerMessage>().initResult();
  result.setTaskId("task-7");
  const std::vector<capnp::byte> key = {1, 2, 3, 0, 255};
  result.setEvalKey(capnp::Data::Reader(key.data(), key.size()));
  auto eval = result.initResult();
  eval.setKl(0.125);
  eval.setTokens(4096);
  auto errs = eval.initAttnRelErr(3);
  errs.set(0, 0.5);
  errs.set(1, 0.25);
  errs.set(2, 1e-9);

  const std::string bytes = encode(builder);
  ASSERT_GE(bytes.size(), 10u);
  EXPECT_EQ(bytes[0], 'K');
  EXPECT_EQ(static_cast<std::uint8_t>(bytes[1]), kvtune::transport::kProtocolVersion);

  auto decoded = decode<schema::WorkerMessage>(bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.error;
  const auto message = decoded.message->get();
  ASSERT_EQ(message.which(), schema::WorkerMessage::RESULT);
  EXPECT_EQ(std::string(message.getResult().getTaskId().cStr()), "task-7");
  const auto got_key = message.getResult().getEvalKey();
  EXPECT_EQ(std::vector<capnp::byte>(got_key.begin(), got_key.end()), key);
  EXPECT_EQ(message.getResult().getResult().getKl(), 0.125);
  EXPECT_EQ(message.getResult().getResult().getTokens(), 4096u);
  const auto got_errs = message.getResult().getResult().getAttnRelErr();
  ASSERT_EQ(got_errs.size(), 3u);
  EXPECT_EQ(got_errs[0], 0.5);
  EXPECT_EQ(got_errs[1], 0.25);
  EXPECT_EQ(got_errs[2], 1e-9);
}

TEST(TransportCodec, TruncatedAndCorruptEncodingsAreErrors) {
  const std::string bytes = hello_payload("w");
  // Cut at a word boundary: the segment table promises more than is there.
  auto cut_word = decode<schema::WorkerMessage>(bytes.substr(0, bytes.size() - 8));
  EXPECT_FALSE(cut_word.ok());
  EXPECT_NE(cut_word.error.find("malformed"), std::string::npos) << cut_word.error;
  // Cut mid-word.
  auto cut_byte = decode<schema::WorkerMessage>(bytes.substr(0, bytes.size() - 3));
  EXPECT_FALSE(cut_byte.ok());
  EXPECT_NE(cut_byte.error.find("8-byte words"), std::string::npos) << cut_byte.error;
  // Only the header; nothing at all.
  EXPECT_FALSE(decode<schema::WorkerMessage>(bytes.substr(0, 2)).ok());
  EXPECT_FALSE(decode<schema::WorkerMessage>("").ok());
  // Trailing garbage after the message.
  EXPECT_FALSE(decode<schema::WorkerMessage>(bytes + std::string(8, '\0')).ok());
  // The root pointer points far outside the segment.
  std::string bad_root = bytes;
  bad_root[2 + 8 + 2] = '\x7f';  // high bits of the root struct pointer's offset
  auto out_of_bounds = decode<schema::WorkerMessage>(bad_root);
  EXPECT_FALSE(out_of_bounds.ok());
  EXPECT_NE(out_of_bounds.error.find("malformed"), std::string::npos) << out_of_bounds.error;
}

// Structurally sound Cap'n Proto whose pointers have the wrong kind for the
// schema (bit lists where text and a list of text belong): refused by decode,
// not left to throw when a field is read.
TEST(TransportCodec, WrongPointerKindsAreErrors) {
  capnp::MallocMessageBuilder builder;
  build_hello(builder, "w");
  auto pointers = capnp::toAny(builder.getRoot<schema::WorkerMessage>()).getPointerSection();
  ASSERT_GE(pointers.size(), 3u);
  for (auto pointer : pointers) pointer.initAs<capnp::List<bool>>(5);
  const std::string bytes = encode(builder);
  auto decoded = decode<schema::WorkerMessage>(bytes);
  EXPECT_FALSE(decoded.ok());
  EXPECT_NE(decoded.error.find("malformed"), std::string::npos) << decoded.error;
}

TEST(TransportCodec, RandomBytesNeverThrow) {
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> byte(0, 255);
  const std::string valid = hello_payload("fuzz");
  int accepted = 0;
  for (int round = 0; round < 2000; ++round) {
    std::string bytes = valid;
    if (round % 2 == 0) {
      // Flip a few bytes after the header of a valid message.
      for (int i = 0; i < 4; ++i) {
        bytes[2 + static_cast<std::size_t>(rng() % (bytes.size() - 2))] =
            static_cast<char>(byte(rng));
      }
    } else {
      bytes.assign(2 + 8 * (rng() % 16), '\0');
      for (std::size_t i = 2; i < bytes.size(); ++i) bytes[i] = static_cast<char>(byte(rng));
    }
    bytes[0] = 'K';
    bytes[1] = static_cast<char>(kvtune::transport::kProtocolVersion);
    EXPECT_NO_THROW({
      auto decoded = decode<schema::WorkerMessage>(bytes);
      if (decoded.ok()) {
        ++accepted;
        // A message that passed validation can be read without surprises.
        const auto message = decoded.message->get();
        switch (message.which()) {
          case schema::WorkerMessage::HELLO:
            for (const auto model : message.getHello().getLoadedModels()) (void)model.cStr();
            (void)message.getHello().getWorkerId().cStr();
            break;
          case schema::WorkerMessage::RESULT:
            (void)message.getResult().getTaskId().cStr();
            (void)message.getResult().getEvalKey().size();
            for (const double x : message.getResult().getResult().getAttnRelErr()) (void)x;
            (void)message.getResult().getResult().getWorkerId().cStr();
            break;
          default:
            break;
        }
      } else {
        EXPECT_FALSE(decoded.error.empty());
      }
    });
  }
  EXPECT_LT(accepted, 2000);
}

TEST(TransportSockets, MessagesArriveDecodedAndRepliesReachTheRightWorker) {
  CoordinatorSocket coordinator("tcp://127.0.0.1:0");
  ASSERT_EQ(coordinator.endpoint().rfind("tcp://127.0.0.1:", 0), 0u) << coordinator.endpoint();
  ASSERT_NE(coordinator.endpoint(), "tcp://127.0.0.1:0");

  WorkerSocket alice(coordinator.endpoint(), "alice");
  WorkerSocket bob(coordinator.endpoint(), "bob");

  {
    capnp::MallocMessageBuilder builder;
    build_hello(builder, "alice-id");
    ASSERT_TRUE(alice.send(builder));
  }
  auto hello = coordinator.receive(kWait);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->worker_identity, "alice");
  expect_hello(hello->message.get(), "alice-id");

  {
    capnp::MallocMessageBuilder builder;
    auto result = builder.initRoot<schema::WorkerMessage>().initResult();
    result.setTaskId("t-1");
    auto errs = result.initResult().initAttnRelErr(2);
    errs.set(0, 0.03125);
    errs.set(1, 0.0625);
    ASSERT_TRUE(bob.send(builder));
  }
  auto result = coordinator.receive(kWait);
  ASSERT_TRUE(result.has_value());
  EXPECT_EQ(result->worker_identity, "bob");
  const auto message = result->message.get();
  ASSERT_EQ(message.which(), schema::WorkerMessage::RESULT);
  EXPECT_EQ(std::string(message.getResult().getTaskId().cStr()), "t-1");
  const auto errs = message.getResult().getResult().getAttnRelErr();
  ASSERT_EQ(errs.size(), 2u);
  EXPECT_EQ(errs[0], 0.03125);
  EXPECT_EQ(errs[1], 0.0625);

  // A task for alice reaches alice and only alice.
  {
    capnp::MallocMessageBuilder builder;
    auto task = builder.initRoot<schema::CoordinatorMessage>().initTask();
    task.setTaskId("t-2");
    task.initRequest().setSeqLen(256);
    ASSERT_TRUE(coordinator.send("alice", builder));
  }
  auto task = alice.receive(kWait);
  ASSERT_TRUE(task.has_value());
  ASSERT_TRUE(task->ok()) << task->error;
  const auto task_message = task->message->get();
  ASSERT_EQ(task_message.which(), schema::CoordinatorMessage::TASK);
  EXPECT_EQ(std::string(task_message.getTask().getTaskId().cStr()), "t-2");
  EXPECT_EQ(task_message.getTask().getRequest().getSeqLen(), 256u);
  EXPECT_FALSE(bob.receive(300ms).has_value());

  // A reply to a worker that never connected is not sent.
  capnp::MallocMessageBuilder builder;
  builder.initRoot<schema::CoordinatorMessage>().setHeartbeat();
  EXPECT_FALSE(coordinator.send("carol", builder));
  EXPECT_EQ(coordinator.refused(), 0u);
}

// Sends `frames` from a raw peer, then a valid hello: the garbage is refused,
// the hello still arrives.
void expect_refused_then_served(const std::vector<std::string>& frames, const char* what) {
  SCOPED_TRACE(what);
  CoordinatorSocket coordinator("tcp://127.0.0.1:0");
  RawPeer peer(coordinator.endpoint(), std::string("raw\x01", 4));
  peer.send(frames);
  peer.send({"", hello_payload("after")});
  auto incoming = coordinator.receive(kWait);
  ASSERT_TRUE(incoming.has_value());
  expect_hello(incoming->message.get(), "after");
  EXPECT_EQ(coordinator.refused(), 1u);
  EXPECT_FALSE(coordinator.last_refusal().empty());
  EXPECT_FALSE(coordinator.receive(100ms).has_value());
  EXPECT_EQ(coordinator.refused(), 1u);
}

TEST(TransportSockets, GarbageIsRefusedAndTheNextMessageServed) {
  std::mt19937 rng(99);
  std::string random_bytes(61, '\0');
  for (auto& c : random_bytes) c = static_cast<char>(rng());
  expect_refused_then_served({"", random_bytes}, "random bytes");

  // Valid header and length, but a segment table claiming ~4 billion segments.
  std::string huge_segments = "K";
  huge_segments.push_back(static_cast<char>(kvtune::transport::kProtocolVersion));
  huge_segments += std::string("\xfe\xff\xff\xff\x01\x00\x00\x00", 8);
  huge_segments += std::string(8, '\0');
  expect_refused_then_served({"", huge_segments}, "huge segment count");

  // A valid Cap'n Proto message without the header.
  expect_refused_then_served({"", hello_payload("x").substr(2)}, "no version byte");

  expect_refused_then_served({"", hello_payload("x"), "extra"}, "three frames");
  expect_refused_then_served({hello_payload("x")}, "no delimiter");
  expect_refused_then_served({"not empty", hello_payload("x")}, "non-empty delimiter");
}

TEST(TransportSockets, NewerProtocolVersionIsRefusedNamingTheVersion) {
  CoordinatorSocket coordinator("tcp://127.0.0.1:0");
  RawPeer peer(coordinator.endpoint(), "future");
  std::string newer = hello_payload("x");
  newer[1] = static_cast<char>(kvtune::transport::kProtocolVersion + 1);
  peer.send({"", newer});
  EXPECT_FALSE(coordinator.receive(500ms).has_value());
  EXPECT_EQ(coordinator.refused(), 1u);
  EXPECT_NE(coordinator.last_refusal().find("version 2"), std::string::npos)
      << coordinator.last_refusal();
}

// A raw ROUTER stands in for the coordinator to send the worker a bad reply.
TEST(TransportSockets, WorkerReportsAMalformedReply) {
  capnp::MallocMessageBuilder hello;
  build_hello(hello, "w");
  zmq::context_t context{1};
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.bind("tcp://127.0.0.1:0");
  WorkerSocket other(router.get(zmq::sockopt::last_endpoint), "other");
  ASSERT_TRUE(other.send(hello));
  zmq::message_t identity, delimiter, payload;
  ASSERT_TRUE(router.recv(identity));
  ASSERT_TRUE(router.recv(delimiter));
  ASSERT_TRUE(router.recv(payload));
  EXPECT_EQ(identity.to_string(), "other");
  router.send(identity, zmq::send_flags::sndmore);
  router.send(zmq::message_t(), zmq::send_flags::sndmore);
  router.send(zmq::str_buffer("Kx-not-capnp"), zmq::send_flags::none);
  auto reply = other.receive(kWait);
  ASSERT_TRUE(reply.has_value());
  EXPECT_FALSE(reply->ok());
  EXPECT_NE(reply->error.find("version"), std::string::npos) << reply->error;
}

// ---------------------------------------------------------------------------
// CURVE

namespace fs = std::filesystem;
namespace kt = kvtune::transport;

#define SKIP_WITHOUT_CURVE()                                                        \
  do {                                                                              \
    if (!kt::curve_available()) {                                                   \
      GTEST_SKIP() << "this libzmq has no CURVE support (built without libsodium)"; \
    }                                                                               \
  } while (false)

// Test key pair of the zmq_curve(7) manual page (the "server" pair).
constexpr const char* kDocPublic = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
constexpr const char* kDocSecret = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";

// Within the time a refused worker would have had to get a message through.
constexpr auto kNothingWait = 1000ms;

bool wait_for(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

WorkerSocket::Options curve_options(const std::string& server_public_key,
                                    const CurveKeyPair& worker_keys) {
  WorkerSocket::Options options;
  options.curve = CurveClient{server_public_key, worker_keys};
  return options;
}

bool send_hello(WorkerSocket& worker, const std::string& worker_id) {
  capnp::MallocMessageBuilder builder;
  build_hello(builder, worker_id);
  return worker.send(builder);
}

// Sends a hello from `worker` and expects the coordinator to see nothing at
// all within kNothingWait, and no reply to get back.
void expect_nothing_through(CoordinatorSocket& coordinator, WorkerSocket& worker) {
  ASSERT_TRUE(send_hello(worker, "intruder"));
  EXPECT_FALSE(coordinator.poll(kNothingWait)) << "a message got through";
  EXPECT_FALSE(coordinator.receive(10ms).has_value());
  capnp::MallocMessageBuilder builder;
  builder.initRoot<schema::CoordinatorMessage>().setHeartbeat();
  EXPECT_FALSE(coordinator.send(worker.identity(), builder)) << "the worker is routable";
  EXPECT_FALSE(worker.receive(100ms).has_value());
}

// A fresh directory, removed afterwards.
struct TempDir {
  TempDir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path = fs::temp_directory_path() /
           ("kvtune-test-transport-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path file = path / name;
    std::ofstream(file) << text;
    return file;
  }
  fs::path path;
};

std::string read_file(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `f`, which must throw kvtune::Error containing every one of `parts`.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no kvtune::Error thrown";
  } catch (const kvtune::Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "'" << part << "' not in the error: " << message;
    }
  }
}

TEST(TransportCurve, KeysAreCanonicalZ85) {
  SKIP_WITHOUT_CURVE();
  EXPECT_TRUE(kt::is_curve_key(kDocPublic));
  EXPECT_TRUE(kt::is_curve_key(kDocSecret));
  const std::string key = kDocPublic;
  EXPECT_FALSE(kt::is_curve_key(key.substr(1)));
  EXPECT_FALSE(kt::is_curve_key(key + "0"));
  EXPECT_FALSE(kt::is_curve_key(""));
  std::string bad_char = key;
  bad_char[7] = '"';  // not in the Z85 alphabet
  EXPECT_FALSE(kt::is_curve_key(bad_char));
  // Decodes past 32 bits: not the encoding of any key.
  EXPECT_FALSE(kt::is_curve_key(key.substr(0, 35) + "#####"));

  const CurveKeyPair a = kt::generate_curve_keypair();
  const CurveKeyPair b = kt::generate_curve_keypair();
  EXPECT_TRUE(kt::is_curve_key(a.public_key));
  EXPECT_TRUE(kt::is_curve_key(a.secret_key));
  EXPECT_NE(a.public_key, b.public_key);
  EXPECT_NE(a.secret_key, b.secret_key);
  EXPECT_NE(a.public_key, a.secret_key);
}

TEST(TransportCurve, AuthorizedWorkerTalksBothWays) {
  SKIP_WITHOUT_CURVE();
  const CurveKeyPair server = kt::generate_curve_keypair();
  const CurveKeyPair alice_keys = kt::generate_curve_keypair();
  const CurveKeyPair bob_keys = kt::generate_curve_keypair();
  CoordinatorSocket coordinator(
      "tcp://127.0.0.1:0",
      CoordinatorSecurity{server, {alice_keys.public_key, bob_keys.public_key}});
  EXPECT_TRUE(coordinator.secure());
  WorkerSocket alice(coordinator.endpoint(), "alice", curve_options(server.public_key, alice_keys));
  WorkerSocket bob(coordinator.endpoint(), "bob", curve_options(server.public_key, bob_keys));

  ASSERT_TRUE(send_hello(alice, "alice-id"));
  auto hello = coordinator.receive(kWait);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->worker_identity, "alice");
  EXPECT_EQ(hello->worker_key, alice_keys.public_key);
  expect_hello(hello->message.get(), "alice-id");

  ASSERT_TRUE(send_hello(bob, "bob-id"));
  auto hello_bob = coordinator.receive(kWait);
  ASSERT_TRUE(hello_bob.has_value());
  EXPECT_EQ(hello_bob->worker_identity, "bob");
  EXPECT_EQ(hello_bob->worker_key, bob_keys.public_key);

  capnp::MallocMessageBuilder builder;
  auto task = builder.initRoot<schema::CoordinatorMessage>().initTask();
  task.setTaskId("t-secure");
  ASSERT_TRUE(coordinator.send("alice", builder));
  auto reply = alice.receive(kWait);
  ASSERT_TRUE(reply.has_value());
  ASSERT_TRUE(reply->ok()) << reply->error;
  EXPECT_EQ(std::string(reply->message->get().getTask().getTaskId().cStr()), "t-secure");
  EXPECT_FALSE(bob.receive(200ms).has_value());
  EXPECT_EQ(coordinator.refused_handshakes(), 0u);
  EXPECT_EQ(coordinator.refused(), 0u);
}

TEST(TransportCurve, PlaintextCoordinatorHasNoWorkerKeys) {
  CoordinatorSocket coordinator("tcp://127.0.0.1:0", CoordinatorSecurity{});
  EXPECT_FALSE(coordinator.secure());
  WorkerSocket worker(coordinator.endpoint(), "plain");
  ASSERT_TRUE(send_hello(worker, "plain"));
  auto hello = coordinator.receive(kWait);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->worker_key, "");
  EXPECT_EQ(coordinator.refused_handshakes(), 0u);
}

TEST(TransportCurve, UnauthorizedWorkerGetsNothingThroughAndIsLogged) {
  SKIP_WITHOUT_CURVE();
  const CurveKeyPair server = kt::generate_curve_keypair();
  const CurveKeyPair known = kt::generate_curve_keypair();
  const CurveKeyPair stranger = kt::generate_curve_keypair();
  CoordinatorSocket coordinator("tcp://127.0.0.1:0",
                                CoordinatorSecurity{server, {known.public_key}});
  testing::internal::CaptureStderr();
  {
    WorkerSocket intruder(coordinator.endpoint(), "intruder",
                          curve_options(server.public_key, stranger));
    expect_nothing_through(coordinator, intruder);
    EXPECT_TRUE(wait_for([&] { return coordinator.refused_handshakes() >= 1; }, kWait));
  }
  const std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("kvtune coordinator: refused worker with CURVE key " + stranger.public_key +
                     ": not in the authorized keys"),
            std::string::npos)
      << log;
  // The refusal was about the key: a worker with a known key still gets in.
  WorkerSocket worker(coordinator.endpoint(), "worker", curve_options(server.public_key, known));
  ASSERT_TRUE(send_hello(worker, "worker"));
  auto hello = coordinator.receive(kWait);
  ASSERT_TRUE(hello.has_value());
  EXPECT_EQ(hello->worker_identity, "worker");
}

TEST(TransportCurve, EmptyAuthorizedSetAdmitsNobody) {
  SKIP_WITHOUT_CURVE();
  const CurveKeyPair server = kt::generate_curve_keypair();
  CoordinatorSocket coordinator("tcp://127.0.0.1:0", CoordinatorSecurity{server, {}});
  WorkerSocket worker(coordinator.endpoint(), "w",
                      curve_options(server.public_key, kt::generate_curve_keypair()));
  expect_nothing_through(coordinator, worker);
  EXPECT_TRUE(wait_for([&] { return coordinator.refused_handshakes() >= 1; }, kWait));
}

TEST(TransportCurve, WorkerWithTheWrongServerKeyGetsNothingThrough) {
  SKIP_WITHOUT_CURVE();
  const CurveKeyPair server = kt::generate_curve_keypair();
  const CurveKeyPair impostor = kt::generate_curve_keypair();
  const CurveKeyPair worker_keys = kt::generate_curve_keypair();
  CoordinatorSocket coordinator("tcp://127.0.0.1:0",
                                CoordinatorSecurity{server, {worker_keys.public_key}});
  WorkerSocket worker(coordinator.endpoint(), "w", curve_options(impostor.public_key, worker_keys));
  expect_nothing_through(coordinator, worker);
  EXPECT_TRUE(wait_for([&] { return coordinator.refused_handshakes() >= 1; }, kWait));
}

TEST(TransportCurve, PlaintextWorkerGetsNothingThroughToACurveCoordinator) {
  SKIP_WITHOUT_CURVE();
  const CurveKeyPair server = kt::generate_curve_keypair();
  const CurveKeyPair worker_keys = kt::generate_curve_keypair();
  CoordinatorSocket coordinator("tcp://127.0.0.1:0",
                                CoordinatorSecurity{server, {worker_keys.public_key}});
  WorkerSocket plain(coordinator.endpoint(), "plain");
  expect_nothing_through(coordinator, plain);
  EXPECT_TRUE(wait_for([&] { return coordinator.refused_handshakes() >= 1; }, kWait));
  // Nor does a raw peer's garbage reach the message layer.
  RawPeer raw(coordinator.endpoint(), "raw");
  raw.send({"", "garbage"});
  EXPECT_FALSE(coordinator.poll(300ms));
  EXPECT_EQ(coordinator.refused(), 0u);
}

TEST(TransportCurve, CurveWorkerGetsNothingThroughToAPlaintextCoordinator) {
  SKIP_WITHOUT_CURVE();
  CoordinatorSocket coordinator("tcp://127.0.0.1:0");
  WorkerSocket worker(
      coordinator.endpoint(), "w",
      curve_options(kt::generate_curve_keypair().public_key, kt::generate_curve_keypair()));
  expect_nothing_through(coordinator, worker);
}

TEST(TransportCurve, InvalidKeysAreRefusedUpFront) {
  SKIP_WITHOUT_CURVE();
  const CurveKeyPair server = kt::generate_curve_keypair();
  const CurveKeyPair other = kt::generate_curve_keypair();
  expect_error(
      [&] {
        CoordinatorSocket c(
            "tcp://127.0.0.1:0",
            CoordinatorSecurity{CurveKeyPair{other.public_key, server.secret_key}, {}});
      },
      {"does not belong to the secret key"});
  expect_error(
      [&] {
        CoordinatorSocket c("tcp://127.0.0.1:0",
                            CoordinatorSecurity{server, {other.public_key, "not-a-key"}});
      },
      {"authorized worker key", "not a Z85 CURVE key"});
  expect_error([&] { WorkerSocket w("tcp://127.0.0.1:1", "w", curve_options("short", other)); },
               {"coordinator's public key"});
  expect_error(
      [&] {
        WorkerSocket w("tcp://127.0.0.1:1", "w",
                       curve_options(server.public_key, CurveKeyPair{other.public_key, ""}));
      },
      {"secret key"});
}

TEST(TransportCurve, KeyFilesRoundTrip) {
  SKIP_WITHOUT_CURVE();
  TempDir dir;
  const CurveKeyPair keys = kt::generate_curve_keypair();
  const fs::path secret = dir.path / "coordinator.key";
  kt::save_curve_keypair(keys, secret);
  const fs::path pub = dir.path / "coordinator.key.pub";
  ASSERT_TRUE(fs::exists(pub));

  const CurveKeyPair loaded = kt::load_curve_keypair(secret);
  EXPECT_EQ(loaded.public_key, keys.public_key);
  EXPECT_EQ(loaded.secret_key, keys.secret_key);
  EXPECT_EQ(kt::load_curve_public_key(pub), keys.public_key);
  EXPECT_EQ(kt::load_curve_public_key(secret), keys.public_key);

  struct stat info {};
  ASSERT_EQ(::stat(secret.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  // The public file does not hold the secret.
  EXPECT_EQ(read_file(pub).find(keys.secret_key), std::string::npos);
  EXPECT_NE(read_file(secret).find(keys.secret_key), std::string::npos);
  // A public key file is not a key pair.
  expect_error([&] { kt::load_curve_keypair(pub); }, {pub.string(), "no secret-key"});

  // Never overwrites, and writes nothing when either file exists.
  const std::string before = read_file(secret);
  expect_error([&] { kt::save_curve_keypair(kt::generate_curve_keypair(), secret); },
               {secret.string(), "already exists"});
  EXPECT_EQ(read_file(secret), before);
  const fs::path lone = dir.write("lone.key.pub", "x");
  expect_error([&] { kt::save_curve_keypair(keys, dir.path / "lone.key"); },
               {lone.string(), "already exists"});
  EXPECT_FALSE(fs::exists(dir.path / "lone.key"));
  EXPECT_EQ(read_file(lone), "x");
}

// A certificate as czmq/pyzmq write it (metadata entries, comments), with
// the zmq_curve(7) test pair; quotes are optional.
TEST(TransportCurve, ReadsZeroMQCertificates) {
  SKIP_WITHOUT_CURVE();
  TempDir dir;
  const fs::path secret = dir.write("server.key_secret",
                                    std::string("#   ****  Generated on 2024-01-01 by pyzmq  ****\n"
                                                "#   ZeroMQ CURVE **Secret** Certificate\n"
                                                "\n"
                                                "metadata\n"
                                                "    name = \"server\"\n"
                                                "curve\n"
                                                "    public-key = \"") +
                                        kDocPublic + "\"\n    secret-key = '" + kDocSecret +
                                        "'   # trailing comment\n");
  const CurveKeyPair keys = kt::load_curve_keypair(secret);
  EXPECT_EQ(keys.public_key, kDocPublic);
  EXPECT_EQ(keys.secret_key, kDocSecret);
  const fs::path pub =
      dir.write("server.key", std::string("curve\n\tpublic-key = ") + kDocPublic + "\r\n");
  EXPECT_EQ(kt::load_curve_public_key(pub), kDocPublic);
}

TEST(TransportCurve, MalformedKeyFilesNameTheFileAndLine) {
  SKIP_WITHOUT_CURVE();
  TempDir dir;
  const std::string pub = kDocPublic, sec = kDocSecret;
  struct Case {
    std::string name, text;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {"bad-public.key",
       "# comment\ncurve\n    public-key = \"" + pub.substr(1) + "\"\n    secret-key = \"" + sec +
           "\"\n",
       {":3: public-key", "not a Z85 CURVE key"}},
      {"bad-secret.key",
       "curve\n    public-key = \"" + pub + "\"\n\n    secret-key = \"" + sec.substr(0, 39) +
           "~\"\n",
       {":4: secret-key", "not a Z85 CURVE key"}},
      {"mismatch.key",
       "curve\n    public-key = \"" + kt::generate_curve_keypair().public_key +
           "\"\n    secret-key = \"" + sec + "\"\n",
       {"does not belong"}},
      {"unknown.key",
       "curve\n    public-key = \"" + pub + "\"\n    colour = \"red\"\n",
       {":3: unknown property \"colour\""}},
      {"twice.key",
       "curve\n    public-key = \"" + pub + "\"\n    public-key = \"" + pub + "\"\n",
       {":3: public-key is given twice"}},
      {"section.key", "metadata\nkeys\n", {":2: expected a section name"}},
      {"outside.key", "\n    public-key = \"" + pub + "\"\n", {":2: indented line outside"}},
      {"noequals.key", "curve\n    public-key\n", {":2: expected name = \"value\""}},
      {"unterminated.key",
       "curve\n    public-key = \"" + pub + "\n",
       {":2: unterminated quoted value"}},
      {"trailing.key",
       "curve\n    public-key = \"" + pub + "\" extra\n",
       {":2: unexpected text after the value of public-key"}},
      {"empty.key", "", {"no secret-key"}},
      {"bare.key", pub + "\n", {":1: expected a section name"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path file = dir.write(c.name, c.text);
    std::vector<std::string> expected = c.expected;
    expected.push_back(file.string());
    expect_error([&] { kt::load_curve_keypair(file); }, expected);
  }
  // The secret key is never quoted in an error.
  const fs::path mismatch = dir.path / "mismatch.key";
  try {
    kt::load_curve_keypair(mismatch);
  } catch (const kvtune::Error& e) {
    EXPECT_EQ(std::string(e.what()).find(sec), std::string::npos) << e.what();
  }
  expect_error([&] { kt::load_curve_public_key(dir.path / "missing.key"); },
               {(dir.path / "missing.key").string(), "No such file"});
  expect_error([&] { kt::load_curve_public_key(dir.path); }, {dir.path.string(), "not a regular"});
  expect_error([&] { kt::load_curve_public_key(dir.write("nopub.key", "curve\n")); },
               {"nopub.key", "no public-key"});
}

TEST(TransportCurve, AuthorizedKeysFromAFileOrADirectory) {
  SKIP_WITHOUT_CURVE();
  TempDir dir;
  const CurveKeyPair a = kt::generate_curve_keypair();
  const CurveKeyPair b = kt::generate_curve_keypair();
  const fs::path list =
      dir.write("authorized", "# workers\n\n" + a.public_key + "\n  " + b.public_key +
                                  "  gpu-node-7 (H100)\n#" + a.public_key + " (commented out)\n");
  EXPECT_EQ(kt::load_authorized_keys(list), (std::set<std::string>{a.public_key, b.public_key}));
  EXPECT_TRUE(kt::load_authorized_keys(dir.write("empty", "# nobody\n")).empty());

  const fs::path bad = dir.write("bad", a.public_key + "\nnot-a-key\n");
  expect_error([&] { kt::load_authorized_keys(bad); },
               {bad.string() + ":2:", "not a Z85 CURVE public key"});
  expect_error([&] { kt::load_authorized_keys(dir.path / "missing"); },
               {(dir.path / "missing").string()});

  const fs::path keys = dir.path / "workers";
  fs::create_directories(keys);
  kt::save_curve_keypair(a, keys / "a.key");  // a.key.pub; a.key (secret) is not read
  kt::save_curve_keypair(b, keys / "b.key");
  std::ofstream(keys / "README") << "not a key file\n";
  EXPECT_EQ(kt::load_authorized_keys(keys), (std::set<std::string>{a.public_key, b.public_key}));
  std::ofstream(keys / "broken.pub") << "curve\n    public-key = \"nope\"\n";
  expect_error([&] { kt::load_authorized_keys(keys); },
               {(keys / "broken.pub").string() + ":2:", "public-key"});
}

}  // namespace
