// The coordinator <-> worker transport over real ZeroMQ sockets on loopback:
// messages arrive intact and routed to the right worker; garbage, malformed
// Cap'n Proto, wrong frame shapes and foreign protocol versions are refused
// without disturbing the next message.
#include <capnp/any.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "transport.h"

namespace {

using namespace std::chrono_literals;
using kvtune::transport::CoordinatorSocket;
using kvtune::transport::decode;
using kvtune::transport::encode;
using kvtune::transport::WorkerSocket;
namespace schema = kvtune::schema;

constexpr auto kWait = 3000ms;

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

}  // namespace
