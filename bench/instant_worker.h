// A simulated worker for the cluster benchmarks: a real ZeroMQ DEALER socket
// speaking the worker protocol, which answers a describe with a model of
// `layers` layers and every task at once with a fixed result, so that what
// is measured is the coordinator (dispatch, Cap'n Proto, synced RocksDB
// writes, its HTTP API), not the workers' compute.
#pragma once

#include <capnp/message.h>

#include <atomic>
#include <chrono>
#include <string>

#include "kvtune/schemas/kvtune.capnp.h"
#include "kvtune/schemas/transport.h"

namespace kvtune::bench {

inline void instant_worker(const std::string& endpoint, const std::string& id, unsigned layers,
                           std::atomic<bool>& stop) {
  transport::WorkerSocket socket(endpoint, id);
  auto send = [&](auto fill) {
    capnp::MallocMessageBuilder message;
    fill(message.initRoot<schema::WorkerMessage>());
    socket.send(message);
  };
  send([&](auto m) { m.initHello().setWorkerId(id); });
  send([](auto m) { m.initCredit().setCount(16); });
  while (!stop.load()) {
    auto in = socket.receive(std::chrono::milliseconds(50));
    if (!in || !in->ok()) continue;
    const auto msg = in->message->get();
    if (msg.isDescribe()) {
      const auto d = msg.getDescribe();
      send([&](auto m) {
        auto out = m.initDescribed();
        out.setTaskId(d.getTaskId());
        out.setDescribeKey(d.getDescribeKey());
        auto info = out.initModel();
        info.setName("simulated");
        info.setLayers(layers);
        info.setKvHeads(8);
        info.setHeadDim(128);
        info.setFingerprint("bench");
        info.setDataFingerprint("bench");
      });
    } else if (msg.isTask()) {
      const auto t = msg.getTask();
      send([&](auto m) {
        auto out = m.initResult();
        out.setTaskId(t.getTaskId());
        out.setEvalKey(t.getEvalKey());
        auto r = out.initResult();
        r.setKl(0.1);
        r.setAvgBits(4);
        r.initAttnRelErr(layers);
        r.setWorkerId(id);
      });
    } else {
      continue;
    }
    send([](auto m) { m.initCredit().setCount(1); });
  }
}

}  // namespace kvtune::bench
